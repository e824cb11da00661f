"""Building published datasets with rows in the store, for tests of the read paths."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.utils import timezone

from catalog.models import Dataset, DatasetStatus, Field, SchemaStatus, SchemaVersion, Visibility
from departments.models import Department
from exchange.access.models import Grant, GrantField, GrantStatus, PrincipalKind
from exchange.records.store import ident, is_postgres, store_ensure_table, store_table

PERMIT_FIELDS: list[dict[str, Any]] = [
    {"name": "permit_id", "type": "integer", "is_key": True, "nullable": False, "sensitivity": "public"},
    {"name": "applicant_name", "type": "text", "sensitivity": "personal"},
    {"name": "phone", "type": "text", "sensitivity": "personal"},
    {"name": "district", "type": "text", "sensitivity": "public"},
    {"name": "fee_eur", "type": "decimal", "sensitivity": "internal"},
    {"name": "approved", "type": "boolean", "sensitivity": "public"},
    {"name": "submitted_on", "type": "date", "sensitivity": "public"},
    {"name": "secret_note", "type": "text", "sensitivity": "confidential"},
]


def published_dataset(
    department: Department, *, slug: str = "permits", fields: Sequence[dict[str, Any]] = PERMIT_FIELDS,
    visibility: str = Visibility.CITY,
) -> Dataset:
    dataset = Dataset.objects.create(
        department=department, title=slug.replace("-", " ").title(), slug=slug, description="Test dataset.",
        status=DatasetStatus.PUBLISHED, visibility=visibility, published_at=timezone.now(),
    )
    schema = SchemaVersion.objects.create(dataset=dataset, number=1, status=SchemaStatus.PUBLISHED,
                                          published_at=timezone.now())
    for position, spec in enumerate(fields):
        Field.objects.create(schema=schema, position=position, **{"nullable": True, "is_key": False, **spec})
    dataset.current_schema = schema
    dataset.save(update_fields=["current_schema"])
    store_ensure_table(dataset)
    return dataset


def load_rows(dataset: Dataset, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows straight into the store table (test set-up only)."""
    table = store_table(dataset)
    names = list(table.field_names)
    columns = ", ".join(ident(n) for n in [*names, "_seq", "_hash", "_deleted", "_first_seen", "_last_seen"])
    placeholders = ", ".join(["%s"] * (len(names) + 5))
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(MAX({ident('_seq')}), 0) FROM {table.qualified}")
        seq = cursor.fetchone()[0]
        for row in rows:
            seq += 1
            values = [_db(row.get(n)) for n in names]
            digest = hashlib.sha256(json.dumps(values, default=str).encode()).hexdigest()
            stamp = now if is_postgres() else now.isoformat()
            cursor.execute(f"INSERT INTO {table.qualified} ({columns}) VALUES ({placeholders})",
                           [*values, seq, digest, False, stamp, stamp])


def _db(value: Any) -> Any:
    if is_postgres():
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def grant(
    dataset: Dataset, *, user: Any = None, department: Department | None = None, fields: dict[str, str],
    row_filter: list[dict[str, Any]] | None = None, approved_by: Any, days: int = 30,
    status: str = GrantStatus.ACTIVE, purpose: str = "Road works planning",
) -> Grant:
    now = timezone.now()
    g = Grant.objects.create(
        dataset=dataset, principal_kind=PrincipalKind.USER if user else PrincipalKind.DEPARTMENT,
        principal_user=user, principal_department=department, purpose=purpose,
        legal_basis="Municipal Act §12", row_filter=row_filter or [], valid_from=now - dt.timedelta(days=1),
        valid_until=now + dt.timedelta(days=days), status=status, approved_by=approved_by,
    )
    for name, form in fields.items():
        GrantField.objects.create(grant=g, field_name=name, form=form)
    return g
