"""Published datasets with store tables, sources and connections for the sync tests.

The catalogue services are written elsewhere; these build the rows directly, as the
catalogue would leave them after publication."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from catalog.models import Dataset, Field, SchemaVersion
from departments.models import Department
from exchange.records.store import store_drop_table, store_ensure_table
from exchange.sync import secrets
from exchange.sync.models import Connection, FileFormat, Source

# (name, type, is_key, sensitivity)
PERMIT_FIELDS: list[tuple[str, str, bool, str]] = [
    ("permit_id", "integer", True, "public"),
    ("address", "text", False, "internal"),
    ("applicant", "text", False, "personal"),
    ("fee", "decimal", False, "internal"),
    ("approved", "boolean", False, "public"),
    ("issued_on", "date", False, "public"),
    ("updated_at", "timestamp", False, "public"),
]


def published_dataset(
    *, department: Department, slug: str = "permits", fields: Sequence[tuple[str, str, bool, str]] = PERMIT_FIELDS,
) -> Dataset:
    dataset = Dataset.objects.create(department=department, title=slug.replace("-", " ").title(), slug=slug,
                                     description=f"Test dataset {slug}.")
    schema = SchemaVersion.objects.create(dataset=dataset, number=1, status="published", published_at=timezone.now())
    for position, (name, type_, is_key, sensitivity) in enumerate(fields):
        Field.objects.create(schema=schema, position=position, name=name, type=type_, is_key=is_key,
                             nullable=not is_key, sensitivity=sensitivity)
    dataset.current_schema = schema
    dataset.status = "published"
    dataset.published_at = timezone.now()
    dataset.save()
    # Store tables are not Django's: a transactional test's flush leaves them behind, and on
    # SQLite a later dataset can get the same id again.
    store_drop_table(dataset.pk)
    store_ensure_table(dataset)
    return dataset


def connection(*, department: Department, kind: str, secret: str, name: str = "") -> Connection:
    return Connection.objects.create(department=department, name=name or f"{kind} connection", kind=kind,
                                     secret_encrypted=secrets.encrypt(secret), redacted=secrets.redact(secret))


def identity_mapping(fields: Sequence[tuple[str, str, bool, str]] = PERMIT_FIELDS) -> dict[str, str]:
    return {f[0]: f[0] for f in fields}


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]], *, encoding: str = "utf-8") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def upload_source(*, dataset: Dataset, content: bytes, mapping: dict[str, str] | None = None,
                  file_format: str = FileFormat.CSV, encoding: str = "utf-8", name: str = "data.csv") -> Source:
    relative = Path("sources") / f"test-{dataset.pk}-{name}"
    path = Path(settings.MEDIA_ROOT) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return Source.objects.create(dataset=dataset, upload=str(relative), file_format=file_format, encoding=encoding,
                                 mapping=mapping if mapping is not None else identity_mapping())


def permit_rows(n: int, *, start: int = 1, fee_bump: int = 0) -> list[list[Any]]:
    return [
        [i, f"{i} Main Street", f"Applicant {i}", f"{100 + i + fee_bump}.50", "true" if i % 2 else "false",
         f"2024-01-{1 + i % 28:02d}", f"2024-02-01T10:{i % 60:02d}:00+00:00"]
        for i in range(start, start + n)
    ]
