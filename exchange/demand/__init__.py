"""Requests for data that is not in the catalogue yet: an analyst or steward describes what they
need, governance reviewers route it to the department that should hold it (or close it as a
duplicate), that department's stewards accept or decline it and, once they publish a dataset
for it, link it, which offers the requester and everyone who joined a pre-filled access request."""
