"""Stored masks (exchange/records/store.py): on PostgreSQL a personal or confidential text
field keeps its masked form in a generated column, which every masked read uses; it follows
the field through schema changes and first loads, and shows exactly what computing the mask
when read shows (SQLite, which computes it, runs the same value checks)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from catalog import services as catalog
from exchange.records.selectors import mask
from exchange.records.store import is_postgres, mask_column, store_table
from tests.exchange.sync.helpers import run_ingest
from tests.records_support import grant, load_rows, published_dataset
from tests.sync_factories import published_dataset as sync_dataset
from tests.sync_factories import upload_source

pytestmark = pytest.mark.django_db

VALUES = ["", "a", "abcd", "abcde", "ñandú-ß", "日本語の文字列です", "tab\there", "line\nbreak", None,
          "x" * 300]


def _columns(dataset) -> set[str]:
    table = store_table(dataset)
    with connection.cursor() as cursor:
        if is_postgres():
            cursor.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                           "AND NOT attisdropped", [table.qualified])
        else:
            cursor.execute("SELECT name FROM pragma_table_info(%s)", [table.name])
        return {r[0] for r in cursor.fetchall()}


def _masks(dataset) -> set[str]:
    return {c for c in _columns(dataset) if c.startswith("_mask_")}


@pytest.fixture
def permits(department, people):
    dataset = published_dataset(department)
    load_rows(dataset, [{"permit_id": i, "applicant_name": v, "phone": v, "secret_note": v, "district": v}
                        for i, v in enumerate(VALUES, start=1)])
    grant(dataset, user=people["outsider"], approved_by=people["steward"],
          fields={"permit_id": "clear", "applicant_name": "masked", "phone": "pseudonymised",
                  "secret_note": "masked", "district": "masked"})
    return dataset


def test_personal_and_confidential_text_fields_have_a_stored_mask_on_postgresql(permits):
    expected = {"_mask_applicant_name", "_mask_phone", "_mask_secret_note"} if is_postgres() else set()
    assert _masks(permits) == expected  # district is public: masked when read, never stored


def test_masked_pages_and_exports_show_the_stored_mask(as_user, people, permits):
    api = as_user(people["outsider"])
    with CaptureQueriesContext(connection) as statements:
        page = api.get(f"/api/v1/datasets/{permits.pk}/records/", {"page_size": 100}).json()["results"]
    by_key = {row["permit_id"]: row for row in page}
    for key, value in enumerate(VALUES, start=1):
        expected = mask(value)
        assert by_key[key]["applicant_name"] == expected, (value, by_key[key])
        assert by_key[key]["secret_note"] == expected
        assert by_key[key]["district"] == expected  # computed when read: the same answer
        assert by_key[key]["phone"] != value or value is None
    if is_postgres():
        page_sql = next(q["sql"] for q in statements.captured_queries
                        if f"FROM {store_table(permits).qualified}" in q["sql"])
        assert '"_mask_applicant_name"' in page_sql and '"_mask_secret_note"' in page_sql
        assert page_sql.count("lpad(") == 1  # district's, computed when read
        assert '"_mask_phone"' not in page_sql  # a pseudonym is never read from a mask

    response = api.get(f"/api/v1/datasets/{permits.pk}/export/", {"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    for row in rows:
        value = VALUES[int(row["permit_id"]) - 1]
        assert row["applicant_name"] == (mask(value) or "")
    response = api.get(f"/api/v1/datasets/{permits.pk}/export/", {"format": "ndjson"})
    for line in b"".join(response.streaming_content).decode().splitlines():
        row = json.loads(line)
        assert row["secret_note"] == mask(VALUES[row["permit_id"] - 1])


def test_a_filter_on_a_masked_field_filters_the_masked_values(as_user, people, permits):
    api = as_user(people["outsider"])
    body = api.get(f"/api/v1/datasets/{permits.pk}/records/", {"applicant_name": "abcde"}).json()
    assert [row["permit_id"] for row in body["results"]] == []  # the clear value cannot be probed
    body = api.get(f"/api/v1/datasets/{permits.pk}/records/", {"applicant_name": mask("abcde")}).json()
    assert [row["permit_id"] for row in body["results"]] == [VALUES.index("abcde") + 1]


FIELDS: list[dict[str, Any]] = [
    {"name": "permit_id", "type": "integer", "is_key": True, "nullable": False, "sensitivity": "public"},
    {"name": "phone", "type": "text", "sensitivity": "personal"},
    {"name": "note", "type": "text", "sensitivity": "internal"},
    {"name": "code", "type": "text", "sensitivity": "confidential"},
    {"name": "spot", "type": "geopoint", "sensitivity": "confidential"},
    {"name": "size", "type": "text", "sensitivity": "confidential"},
]


def _publish(dataset, steward, reviewer, capture, fields) -> None:
    catalog.dataset_schema_set(actor=steward, dataset=dataset, fields=fields)
    with capture(execute=True):
        catalog.dataset_transition(actor=steward, dataset=dataset, action="submit", comment="please")
        catalog.dataset_transition(actor=reviewer, dataset=dataset, action="approve", comment="ok")
    dataset.refresh_from_db()


def _stored(dataset, column: str, key: str = "permit_id") -> list[Any]:
    table = store_table(dataset)
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT "{column}" FROM {table.qualified} ORDER BY "{key}"')  # noqa: S608
        return [r[0] for r in cursor.fetchall()]


def test_stored_masks_follow_their_fields_through_schema_versions(people, department,
                                                                  django_capture_on_commit_callbacks):
    if not is_postgres():
        pytest.skip("masks are stored on PostgreSQL only")
    steward, reviewer = people["steward"], people["reviewer"]
    dataset = catalog.dataset_create(actor=steward, department=department, title="Permits", slug="permits",
                                     description="Building permits.", themes=["REGI"], contact=steward)
    _publish(dataset, steward, reviewer, django_capture_on_commit_callbacks, FIELDS)
    assert _masks(dataset) == {"_mask_phone", "_mask_code", "_mask_spot", "_mask_size"}
    load_rows(dataset, [{"permit_id": 1, "phone": "5551234", "note": "hello there", "code": "AB-12345",
                         "spot": "48.1,11.5", "size": "12"}])
    assert _stored(dataset, "_mask_phone") == ["***1234"]

    # v2: phone renamed to mobile (value and mask kept in step), note made confidential (a mask
    # appears), code retyped to integer (its mask goes), spot removed (with its mask), size
    # renamed and retyped at once (the column is converted, its mask goes).
    _publish(dataset, steward, reviewer, django_capture_on_commit_callbacks, [
        FIELDS[0], {**FIELDS[1], "name": "mobile", "renamed_from": "phone"},
        {**FIELDS[2], "sensitivity": "confidential"}, {**FIELDS[3], "type": "integer"},
        {**FIELDS[5], "name": "size_m2", "renamed_from": "size", "type": "integer"},
    ])
    assert _masks(dataset) == {"_mask_mobile", "_mask_note"}
    with connection.cursor() as cursor:
        cursor.execute("SELECT atttypid::regtype::text FROM pg_attribute WHERE attrelid = %s::regclass "
                       "AND attname = 'size_m2'", [store_table(dataset).qualified])
        assert cursor.fetchone()[0] == "bigint"
    assert _stored(dataset, "mobile") == ["5551234"] and _stored(dataset, "_mask_mobile") == ["***1234"]
    assert _stored(dataset, "_mask_note") == ["*******here"]

    # v3: note back to internal: its mask goes; an unchanged schema leaves the table alone.
    v3 = [FIELDS[0], {**FIELDS[1], "name": "mobile"}, FIELDS[2], {**FIELDS[3], "type": "integer"},
          {**FIELDS[5], "name": "size_m2", "type": "integer"}]
    _publish(dataset, steward, reviewer, django_capture_on_commit_callbacks, v3)
    assert _masks(dataset) == {"_mask_mobile"}
    from exchange.records.store import store_ensure_table

    with CaptureQueriesContext(connection) as statements:
        store_ensure_table(dataset)
    assert not [q for q in statements.captured_queries if q["sql"].startswith("ALTER TABLE")]


def test_the_migration_gives_existing_store_tables_their_masks(permits):
    if not is_postgres():
        pytest.skip("masks are stored on PostgreSQL only")
    import importlib

    from django.apps import apps

    table = store_table(permits).qualified
    with connection.cursor() as cursor:  # a table as it was before stored masks
        cursor.execute(f'ALTER TABLE {table} DROP COLUMN "_mask_applicant_name", DROP COLUMN "_mask_phone", '
                       f'DROP COLUMN "_mask_secret_note"')
    migration = importlib.import_module("exchange.migrations.0020_stored_masks")
    with connection.schema_editor() as editor:
        migration.add_stored_masks(apps, editor)
    assert _masks(permits) == {"_mask_applicant_name", "_mask_phone", "_mask_secret_note"}
    assert _stored(permits, "_mask_applicant_name") == [mask(v) for v in VALUES]


def test_a_long_field_name_gets_a_mask_name_postgresql_keeps_whole():
    short, long_a, long_b = "phone", "a" * 60, "a" * 59 + "b"
    assert mask_column(short) == "_mask_phone"
    assert len(mask_column(long_a)) <= 63 and mask_column(long_a) != mask_column(long_b)


def test_a_csv_first_load_into_an_empty_store_keeps_the_stored_masks(department):
    fields = [("k", "integer", True, "public"), ("name", "text", False, "personal")]
    dataset = sync_dataset(department=department, slug="people", fields=fields)
    content = b"k,name\n1,Ada Lovelace\n2,Bo\n3,\n"
    source = upload_source(dataset=dataset, content=content, mapping={"k": "k", "name": "name"})
    with CaptureQueriesContext(connection) as statements:
        run = run_ingest(source)
    assert run.status == "succeeded", run.error
    if is_postgres():
        table = f'"exchange_store"."ds_{dataset.pk}'
        assert any(q["sql"].startswith(f"ALTER TABLE {table}_stage\" RENAME TO") for q in statements.captured_queries)
        assert _stored(dataset, "_mask_name", "k") == ["********lace", "**", None]
    with connection.cursor() as cursor:  # the store's columns are those of the schema (and masks)
        cursor.execute(f"SELECT count(*) FROM {store_table(dataset).qualified}")  # noqa: S608
        assert cursor.fetchone()[0] == 3
