"""Objections: a department that reads or receives a dataset flags records or fields as wrong;
the owning stewards answer within a set time, and overdue objections go to the governance
reviewers."""
