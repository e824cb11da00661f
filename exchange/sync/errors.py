"""The two kinds of source failure that a run treats differently: fix something first, or
try again later. Every reader raises them; the URL guard raises them for refused addresses."""


class SourceError(Exception):
    """The source cannot be read as configured; retrying will not help."""


class TransientSourceError(SourceError):
    """The source could not be reached or went away; a later attempt may succeed."""
