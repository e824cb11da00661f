"""How grants react to a published schema version, connected in ExchangeConfig.ready().

When a schema version is published (catalog.signals.schema_version_published, sent after
commit with ``dataset``, ``schema_version`` and ``previous``), grants lapse for the fields that
were removed, renamed, retyped or made more sensitive (:func:`on_schema_version_published`).
The record store's table follows in exchange.records.receivers.
"""

from __future__ import annotations

from typing import Any

from catalog.models import SENSITIVITY_RANK, Dataset, Field, SchemaVersion, Sensitivity
from exchange.access.services import grant_fields_lapse

# Changes after which a grant no longer covers the field: its values are gone, now live under
# another name, or mean something else. A field that became more sensitive lapses too: the
# steward (and the DPO) approved it under the old, lower class.
LAPSING_CHANGES = frozenset({"removed", "renamed", "retyped"})


def _rank(value: Any) -> int | None:
    return SENSITIVITY_RANK.get(Sensitivity(value)) if value in Sensitivity.values else None


def lapsing_field_names(*, changes: list[dict[str, Any]], previous_fields: dict[str, Field] | None = None,
                        new_fields: dict[str, Field] | None = None) -> list[str]:
    """Names (as grants know them: the names of the previous version) of the fields that a
    schema change removed, renamed, retyped or made more sensitive.

    Works from ``SchemaVersion.changes`` and, when both versions' fields are given, also from
    comparing them, so a change the list does not spell out is still caught."""
    names: set[str] = set()
    for change in changes or []:
        if not isinstance(change, dict):
            continue
        kind = change.get("change")
        if kind in LAPSING_CHANGES:
            # A rename is named by its new name with the old one beside it; grants know the old.
            keys = ("field", "from", "old", "old_name", "renamed_from", "previous_name") if kind == "renamed" \
                else ("field",)
            names.update(change[key] for key in keys if isinstance(change.get(key), str))
        elif kind == "sensitivity":
            before = _rank(change.get("from", change.get("old")))
            after = _rank(change.get("to", change.get("new")))
            if before is None or after is None or after > before:
                if isinstance(change.get("field"), str):
                    names.add(change["field"])
    if previous_fields is not None and new_fields is not None:
        renamed_away = {f.renamed_from for f in new_fields.values() if f.renamed_from}
        for name, old in previous_fields.items():
            new = new_fields.get(name)
            if (new is None or name in renamed_away or new.type != old.type
                    or SENSITIVITY_RANK[Sensitivity(new.sensitivity)] > SENSITIVITY_RANK[Sensitivity(old.sensitivity)]):
                names.add(name)
    return sorted(names)


def _fields_of(schema_version: SchemaVersion | None) -> dict[str, Field] | None:
    if schema_version is None:
        return None
    return {f.name: f for f in schema_version.fields.all()}


def on_schema_version_published(
    sender: Any, *, dataset: Dataset, schema_version: SchemaVersion, previous: SchemaVersion | None = None,
    **_: Any,
) -> None:
    """Lapse granted fields that the newly published schema version removed or changed, and
    tell their grantees (grant_fields_lapse audits and notifies). New fields need nothing:
    they are never granted by default."""
    names = lapsing_field_names(
        changes=list(schema_version.changes or []),
        previous_fields=_fields_of(previous),
        new_fields=_fields_of(schema_version) if previous is not None else None,
    )
    if names:
        grant_fields_lapse(
            dataset=dataset, removed_or_changed=names,
            reason=f"Schema version {schema_version.number} removed or changed the field.",
        )
