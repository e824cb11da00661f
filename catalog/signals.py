"""Signals the catalogue sends for the other parts of the exchange to react to.

Both are sent after the approving transaction has committed (``transaction.on_commit``), so
a receiver always sees the new schema in the database and never acts on a rolled-back change.
"""

from django.dispatch import Signal

# A schema version became the dataset's current schema (first publication included).
# Arguments: dataset (Dataset), schema_version (SchemaVersion, now current),
# previous (SchemaVersion | None, now superseded). The record store alters its table here.
schema_version_published = Signal()

# The version just published removed, renamed or retyped fields (or changed the key).
# Arguments: dataset, schema_version, previous, changes (list of the breaking change dicts of
# SchemaVersion.changes). The grants code notifies grantees and re-checks granted field names.
breaking_change_published = Signal()
