"""Ingest from files and databases into the store, in-process (the worker tests live in
tests/exchange/sync/test_worker.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection

from exchange.audit.models import AuditEvent
from exchange.records.store import ident, store_table
from exchange.sync import ingest
from exchange.sync.models import QuarantinedRow, RunMode, RunStatus
from tests.exchange.sync.helpers import run_ingest, store_rows
from tests.sync_factories import PERMIT_FIELDS, csv_bytes, permit_rows, published_dataset, upload_source

HEADER = [f[0] for f in PERMIT_FIELDS]
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def dataset(department):
    return published_dataset(department=department)


def test_full_ingest_loads_typed_records_and_audits(dataset):
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(120)))
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (run.rows_read, run.rows_inserted, run.rows_quarantined) == (120, 120, 0)
    rows = store_rows(dataset)
    assert len(rows) == 120
    assert rows[0]["permit_id"] == 1 and Decimal(str(rows[0]["fee"])) == Decimal("101.50")
    assert run.seq_from == 1 and run.seq_to == 120
    assert AuditEvent.objects.filter(action="ingest.run", dataset_id=dataset.pk, row_count=120).exists()


def test_rerun_of_unchanged_source_rewrites_nothing(dataset):
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(50)))
    run_ingest(source)
    before = store_rows(dataset)
    run = run_ingest(source)
    assert (run.rows_inserted, run.rows_updated, run.rows_unchanged, run.rows_deleted) == (0, 0, 50, 0)
    assert store_rows(dataset) == before
    assert run.seq_from is None


def test_full_run_updates_changed_and_tombstones_missing_rows(dataset):
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(50)))
    run_ingest(source)
    changed = permit_rows(40)  # rows 41-50 deleted at the source
    changed[0][3] = "999.00"
    changed += permit_rows(5, start=100)  # five new
    upload_source_path = source
    from pathlib import Path

    from django.conf import settings
    (Path(settings.MEDIA_ROOT) / upload_source_path.upload).write_bytes(csv_bytes(HEADER, changed))
    run = run_ingest(source)
    assert (run.rows_inserted, run.rows_updated, run.rows_deleted, run.rows_unchanged) == (5, 1, 10, 39)
    live = store_rows(dataset)
    assert len(live) == 45 and {r["permit_id"] for r in live} == set(range(1, 41)) | set(range(100, 105))
    everything = store_rows(dataset, include_deleted=True)
    tombstones = [r for r in everything if r["_deleted"]]
    assert {r["permit_id"] for r in tombstones} == set(range(41, 51))
    # Changes are numbered above everything the first run wrote, tombstones last.
    assert min(r["_seq"] for r in tombstones) > max(r["_seq"] for r in live if r["permit_id"] != 1)
    assert run.seq_from == 51


def test_bad_rows_are_quarantined_with_row_number_and_reason(dataset):
    rows = permit_rows(10)
    rows[2][0] = "abc"  # row 3: bad key type
    rows[4][0] = ""  # row 5: missing key
    rows[6][3] = "lots"  # row 7: bad decimal
    rows[7] = rows[7][:3]  # row 8: ragged
    rows[8][0] = "2"  # row 9: duplicate of row 2
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, rows))
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED
    assert run.rows_quarantined == 5 and run.rows_inserted == 5
    reasons = dict(QuarantinedRow.objects.filter(run=run).values_list("row_number", "reason"))
    assert set(reasons) == {3, 5, 7, 8, 9}
    assert "not an integer" in reasons[3]
    assert "missing key permit_id" in reasons[5]
    assert "fee" in reasons[7]
    assert "ragged row: 3 values, the header has 7" in reasons[8]
    assert "duplicate key (permit_id=2)" in reasons[9] and "row 2 was kept" in reasons[9]
    assert QuarantinedRow.objects.get(run=run, row_number=7).raw["fee"] == "lots"


def test_quarantined_row_of_a_known_record_is_not_taken_for_a_deletion(dataset):
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(5)))
    run_ingest(source)
    rows = permit_rows(5)
    rows[1][3] = "not money"
    from pathlib import Path

    from django.conf import settings
    (Path(settings.MEDIA_ROOT) / source.upload).write_bytes(csv_bytes(HEADER, rows))
    run = run_ingest(source)
    assert run.rows_deleted == 0 and run.rows_quarantined == 1
    assert len(store_rows(dataset)) == 5


def test_bom_is_accepted(dataset):
    source = upload_source(dataset=dataset, content=b"\xef\xbb\xbf" + csv_bytes(HEADER, permit_rows(3)))
    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED and run.rows_inserted == 3


def test_wrong_encoding_is_quarantined_with_a_clear_reason(dataset):
    rows = permit_rows(3)
    rows[1][2] = "Jürgen Müller"
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, rows, encoding="latin-1"))
    run = run_ingest(source)
    assert run.rows_quarantined == 1
    reason = QuarantinedRow.objects.get(run=run).reason
    assert "not valid utf-8" in reason and "Windows-1252" in reason
    source.encoding = "latin-1"
    source.save()
    run = run_ingest(source)
    assert run.rows_quarantined == 0
    assert store_rows(dataset)[1]["applicant"] == "Jürgen Müller"


def test_header_mismatch_fails_fast_and_notifies_the_steward(dataset, people):
    header = [h if h != "fee" else "amount" for h in HEADER]
    source = upload_source(dataset=dataset, content=csv_bytes(header, permit_rows(3)))
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED
    assert "Schema mismatch" in run.error and "fee" in run.error and "amount" in run.error
    assert store_rows(dataset) == []
    assert people["steward"].notifications.filter(kind="sync.ingest.failed").exists()


def test_failure_mid_merge_leaves_the_store_unchanged(dataset, monkeypatch):
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(20)))
    run_ingest(source)
    before = store_rows(dataset, include_deleted=True)
    from pathlib import Path

    from django.conf import settings
    rows = permit_rows(10, fee_bump=7) + permit_rows(3, start=500)
    (Path(settings.MEDIA_ROOT) / source.upload).write_bytes(csv_bytes(HEADER, rows))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest, "merge_deletes", boom)
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED and "disk full" in run.error
    assert store_rows(dataset, include_deleted=True) == before


def test_ndjson_and_json_sources(dataset):
    import json

    records = [dict(zip(HEADER, r, strict=True)) for r in permit_rows(4)]
    lines = "\n".join(json.dumps(r) for r in records) + "\nnot json\n"
    source = upload_source(dataset=dataset, content=lines.encode(), file_format="ndjson", name="d.ndjson")
    run = run_ingest(source)
    assert (run.rows_inserted, run.rows_quarantined) == (4, 1)
    source.file_format = "json"
    source.save()
    from pathlib import Path

    from django.conf import settings
    (Path(settings.MEDIA_ROOT) / source.upload).write_text(json.dumps(records[:2]))
    run = run_ingest(source)
    assert (run.rows_unchanged, run.rows_deleted) == (2, 2)


def test_incremental_by_hash_does_not_delete(dataset):
    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(10)))
    run_ingest(source)
    from pathlib import Path

    from django.conf import settings
    (Path(settings.MEDIA_ROOT) / source.upload).write_bytes(csv_bytes(HEADER, permit_rows(2, fee_bump=1)))
    run = run_ingest(source, mode=RunMode.INCREMENTAL)
    assert (run.rows_updated, run.rows_deleted) == (2, 0)
    assert len(store_rows(dataset)) == 10


def _top_seq(dataset) -> int:  # type: ignore[no-untyped-def]
    return max(r["_seq"] for r in store_rows(dataset, include_deleted=True))


def test_an_incremental_run_numbers_its_changes_after_the_store_top(dataset):
    """The merge works out the run's last change number without asking the store when every
    good row updated a record; with an unchanged row or a quarantined one last, it is still the
    store's top."""
    from pathlib import Path

    from django.conf import settings
    from django.test.utils import CaptureQueriesContext

    source = upload_source(dataset=dataset, content=csv_bytes(HEADER, permit_rows(10)))
    run_ingest(source)
    path = Path(settings.MEDIA_ROOT) / source.upload
    # Two changed rows, then a quarantined one (a fee that is no number).
    bad = [11, "11 Main Street", "Applicant 11", "lots", "true", "2024-01-12", "2024-02-01T10:11:00+00:00"]
    path.write_bytes(csv_bytes(HEADER, [*permit_rows(2, fee_bump=1), bad]))
    with CaptureQueriesContext(connection) as queries:
        run = run_ingest(source, mode=RunMode.INCREMENTAL)
    assert (run.rows_updated, run.rows_inserted, run.rows_quarantined) == (2, 0, 1), run.error
    assert (run.seq_from, run.seq_to) == (11, 12) and _top_seq(dataset) == 12
    store = store_table(dataset).qualified
    sql = [q["sql"] for q in queries.captured_queries]
    assert any(s.startswith(f"UPDATE {store} ") for s in sql)
    # No insert pass, no search for live records (an incremental run deletes nothing), no search
    # for the top afterwards.
    for asked in (f"INSERT INTO {store} ", f"FROM {store} WHERE NOT ", f"FROM {store} WHERE {ident('_seq')} >"):
        assert not any(asked in s for s in sql), asked
    # An unchanged row last: the insert pass runs (it finds nothing), and the top is asked for.
    path.write_bytes(csv_bytes(HEADER, [*permit_rows(1, fee_bump=2), *permit_rows(1, start=2, fee_bump=1)]))
    run = run_ingest(source, mode=RunMode.INCREMENTAL)
    assert (run.rows_updated, run.rows_unchanged, run.rows_inserted) == (1, 1, 0), run.error
    assert (run.seq_from, run.seq_to) == (13, 13) and _top_seq(dataset) == 13


def test_sqlite_source_with_watermark(dataset, settings, tmp_path):
    import sqlite3

    settings.SYNC_SQLITE_DIRS = [str(tmp_path)]
    path = tmp_path / "permits.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE permits (permit_id INTEGER PRIMARY KEY, address TEXT, applicant TEXT, fee NUMERIC, "
               "approved INTEGER, issued_on TEXT, updated_at TEXT)")
    db.executemany("INSERT INTO permits VALUES (?,?,?,?,?,?,?)", permit_rows(30))
    db.commit()
    from exchange.sync.models import Source
    from tests.sync_factories import connection as make_connection
    from tests.sync_factories import identity_mapping

    conn = make_connection(department=dataset.department, kind="sqlite", secret=str(path))
    source = Source.objects.create(dataset=dataset, connection=conn, table="permits", mapping=identity_mapping(),
                                   watermark_column="updated_at")
    run = run_ingest(source)
    assert run.rows_inserted == 30
    source.refresh_from_db()
    assert source.watermark_value == max(r[6] for r in permit_rows(30))
    db.execute("UPDATE permits SET fee = 1, updated_at = '2030-01-01T00:00:00+00:00' WHERE permit_id IN (3, 4)")
    db.commit()
    run = run_ingest(source, mode=RunMode.INCREMENTAL)
    assert (run.rows_read, run.rows_updated, run.rows_deleted) == (2, 2, 0)


def test_sqlite_file_outside_allowed_directories_is_refused(dataset, tmp_path):
    from exchange.sync.models import Source
    from tests.sync_factories import connection as make_connection
    from tests.sync_factories import identity_mapping

    conn = make_connection(department=dataset.department, kind="sqlite",
                           secret=str(connection.settings_dict["NAME"]))
    source = Source.objects.create(dataset=dataset, connection=conn, table="auth_user", mapping=identity_mapping())
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED and "SYNC_SQLITE_DIRS" in run.error


def _json_records(n: int) -> list[dict[str, object]]:
    records: list[dict[str, object]] = [dict(zip(HEADER, r, strict=True)) for r in permit_rows(n)]
    for r in records:
        r["fee"] = float(str(r["fee"]))  # numbers as numbers, as JSON sources send them
        r["approved"] = r["approved"] == "true"
    return records


def test_json_array_is_streamed_across_chunks_and_batches(dataset, settings):
    import json
    import tracemalloc

    from exchange.sync.readers import open_source

    settings.SYNC_BATCH_SIZE = 500
    records = _json_records(30_000)
    # The records sit in an object next to other members, nested ones included; Latin-1 text.
    records[7]["applicant"] = "Zoë Müller"
    document = {"meta": {"source": "permits", "pages": [1, 2]}, "count": 30_000, "permits": records, "after": []}
    content = json.dumps(document, ensure_ascii=False).encode("latin-1")
    assert len(content) > 5_000_000  # many times ijson's buffer and the read chunk
    source = upload_source(dataset=dataset, content=content, file_format="json", encoding="latin-1", name="p.json")

    tracemalloc.start()
    with open_source(source) as reader:
        assert reader.columns == HEADER
        assert sum(1 for _ in reader.rows) == 30_000
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Parsed whole, the records alone would take several times the document's size.
    assert peak < len(content) / 2, f"{peak} bytes at the peak: the document was held whole"

    run = run_ingest(source)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (run.rows_read, run.rows_inserted, run.rows_quarantined) == (30_000, 30_000, 0)
    rows = store_rows(dataset)
    assert rows[7]["applicant"] == "Zoë Müller" and rows[-1]["permit_id"] == 30_000
    assert Decimal(str(rows[0]["fee"])) == Decimal("101.5") and bool(rows[0]["approved"]) is True


def test_malformed_json_mid_stream_fails_the_run_with_nothing_merged(dataset):
    import json

    source = upload_source(dataset=dataset, content=json.dumps(_json_records(3)).encode(), file_format="json",
                           name="p.json")
    assert run_ingest(source).rows_inserted == 3
    before = store_rows(dataset, include_deleted=True)
    body = json.dumps(_json_records(5_000))
    broken = body[: len(body) // 2].rsplit("}, {", 1)[0] + "}, {\"permit_id\": 9999, oops} ]"
    from pathlib import Path

    from django.conf import settings
    (Path(settings.MEDIA_ROOT) / source.upload).write_text(broken)
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("The file is not valid JSON after record ")
    good = int(run.error.split("after record ")[1].split(" ")[0])
    assert 2_000 < good < 3_000  # the records before the break were read, then the run stopped
    assert store_rows(dataset, include_deleted=True) == before
    for document, message in (("[1, 2", "not valid JSON"), ("{\"a\": 1}", "must be an array"),
                              ("42", "must be an array"),
                              (json.dumps(_json_records(1)) + " trailing", "not valid JSON after record 1")):
        (Path(settings.MEDIA_ROOT) / source.upload).write_text(document)
        run = run_ingest(source)
        assert run.status == RunStatus.FAILED and message in run.error, (document, run.error)
    assert store_rows(dataset, include_deleted=True) == before


def test_read_ahead_hands_out_every_item_in_order_then_the_error_in_its_place():
    def items():
        yield b"one"
        yield b"two"
        raise ValueError("the third is bad")

    seen = []
    with pytest.raises(ValueError, match="the third is bad"), ingest.read_ahead(items()) as chunks:
        for chunk in chunks:
            seen.append(chunk)
    assert seen == [b"one", b"two"]


def test_read_ahead_left_early_stops_its_thread_and_closes_the_items():
    import threading

    closed = threading.Event()

    def endless():
        try:
            while True:
                yield b"x"
        finally:
            closed.set()

    with ingest.read_ahead(endless(), depth=1) as chunks:
        assert next(chunks) == b"x"
    assert closed.is_set()
    assert not any(t.name == "exchange-csv-read-ahead" for t in threading.enumerate())


@pytest.mark.parametrize("limit", [0, 1, 3, 5])
def test_lines_within_the_limit_agrees_with_measuring_every_line(limit):
    import itertools

    from exchange.sync import readers

    for n in range(9):
        for chunk in map(bytes, itertools.product(b"a\n\r", repeat=n)):
            longest = max(map(len, chunk.split(b"\n")))
            assert readers._lines_within(chunk, limit) == (longest <= limit), (chunk, limit)
