"""Malformed and oversized uploads: a clear 4xx, or a run that fails with a readable reason;
never a 5xx, nothing half-written (the records of the last good file stay as they were, no
file left behind by a refused upload), and the process that ran it carries on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exchange.sync.models import FileFormat, Run, RunStatus, Source
from tests.exchange.sync.helpers import store_rows
from tests.sync_factories import PERMIT_FIELDS, csv_bytes, identity_mapping, permit_rows, published_dataset

pytestmark = pytest.mark.django_db
HEADER = [f[0] for f in PERMIT_FIELDS]
GOOD = csv_bytes(HEADER, permit_rows(5))
FULL = json.dumps(dict(zip(HEADER, permit_rows(1)[0], strict=True))).encode()  # one whole record


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def dataset(department):
    return published_dataset(department=department)


def _source(dataset, file_format: str = FileFormat.CSV) -> Source:
    return Source.objects.create(dataset=dataset, file_format=file_format, mapping=identity_mapping())


@pytest.fixture
def upload(django_capture_on_commit_callbacks):
    """Upload through the API; the run it queues after commit is executed in this process,
    as a worker would."""
    def post(api, dataset, path: Path, **extra):
        with django_capture_on_commit_callbacks(execute=True), path.open("rb") as handle:
            return api.post(f"/api/v1/datasets/{dataset.pk}/source/upload/", {"file": handle, **extra},
                            format="multipart")

    return post


def _status(response) -> str:
    return Run.objects.get(pk=response.json()["id"]).status


def _loaded(upload, api, dataset, tmp_path) -> list[dict]:
    """A good file first: what a bad one must leave alone."""
    good = tmp_path / "good.csv"
    good.write_bytes(GOOD)
    response = upload(api, dataset, good)
    assert response.status_code == 202 and _status(response) == RunStatus.SUCCEEDED, response.content
    before = store_rows(dataset)
    assert len(before) == 5
    return before


def _stored_files(settings) -> set[Path]:
    root = Path(settings.MEDIA_ROOT)
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _refused(response, status: int, words: str) -> None:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["status"] == status and "file" in error["fields"]
    assert words in error["message"] + " " + " ".join(error["fields"]["file"])


@pytest.mark.parametrize(("name", "content", "status", "words"), [
    ("empty.csv", b"", 400, "The submitted file is empty."),
    ("blank.csv", b"\n\n  \r\n", 400, "The file is empty"),
    ("picture.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40, 400, "looks binary"),
    ("archive.csv", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00\xff" * 3000, 400, "looks binary"),
])
def test_files_that_cannot_be_sources_are_refused_before_anything_is_stored(
        upload, settings, as_user, people, dataset, tmp_path, name, content, status, words):
    _source(dataset)
    api = as_user(people["steward"])
    before = _loaded(upload, api, dataset, tmp_path)
    files, runs = _stored_files(settings), Run.objects.count()
    path = tmp_path / name
    path.write_bytes(content)
    _refused(upload(api, dataset, path), status, words)
    assert _stored_files(settings) == files and Run.objects.count() == runs
    assert store_rows(dataset) == before


def test_a_file_above_the_upload_limit_is_413_and_not_kept(upload, settings, as_user, people, dataset, tmp_path):
    _source(dataset)
    api = as_user(people["steward"])
    before = _loaded(upload, api, dataset, tmp_path)
    settings.SYNC_UPLOAD_MAX_BYTES = 2000
    files = _stored_files(settings)
    big = tmp_path / "big.csv"
    big.write_bytes(csv_bytes(HEADER, permit_rows(100)))
    assert big.stat().st_size > 2000
    _refused(upload(api, dataset, big), 413, "larger than the upload limit of 2000 bytes")
    # Far above the limit: refused on its Content-Length, before the body is read.
    huge = tmp_path / "huge.csv"
    huge.write_bytes(csv_bytes(HEADER, permit_rows(3000)))
    _refused(upload(api, dataset, huge), 413, "SYNC_UPLOAD_MAX_BYTES")
    assert _stored_files(settings) == files and store_rows(dataset) == before


def _failed_run(upload, api, dataset, path: Path, before: list[dict], words: str) -> Run:
    response = upload(api, dataset, path)
    assert response.status_code == 202, response.content
    run = Run.objects.get(pk=response.json()["id"])
    assert run.status == RunStatus.FAILED and words in run.error, run.error
    assert run.attempts == 1  # not retried: the same file would fail the same way
    assert store_rows(dataset) == before  # nothing half-written
    return run


def test_one_line_of_50_mb_fails_the_run_with_the_reason(upload, as_user, people, dataset, tmp_path):
    _source(dataset)
    api = as_user(people["steward"])
    before = _loaded(upload, api, dataset, tmp_path)
    path = tmp_path / "long-line.csv"
    with path.open("wb") as out:
        out.write(",".join(HEADER).encode() + b"\n")
        out.write(b"1,")
        for _ in range(50):
            out.write(b"x" * (1024 * 1024))
        out.write(b",a,1.5,true,2024-01-01,2024-02-01T10:00:00+00:00\n")
    _failed_run(upload, api, dataset, path, before,
                "Line 2 of the file is longer than 8388608 bytes (SYNC_MAX_LINE_BYTES)")
    # The process that ran it goes on: the good file loads again.
    good = tmp_path / "good-again.csv"
    good.write_bytes(csv_bytes(HEADER, permit_rows(6)))
    assert _status(upload(api, dataset, good)) == RunStatus.SUCCEEDED
    assert len(store_rows(dataset)) == 6


def test_one_ndjson_line_of_50_mb_fails_the_run_too(upload, as_user, people, dataset, tmp_path):
    _source(dataset, FileFormat.NDJSON)
    api = as_user(people["steward"])
    ok = tmp_path / "ok.ndjson"
    ok.write_text("\n".join(json.dumps(dict(zip(HEADER, row, strict=True))) for row in permit_rows(5)) + "\n")
    assert _status(upload(api, dataset, ok)) == RunStatus.SUCCEEDED
    before = store_rows(dataset)
    path = tmp_path / "long.ndjson"
    path.write_bytes(ok.read_bytes() + b'{"permit_id": 9, "address": "' + b"y" * (50 * 1024 * 1024) + b'"}\n')
    _failed_run(upload, api, dataset, path, before, "Line 6 of the file is longer than")


def test_ten_thousand_columns_fail_the_run_with_the_reason(upload, as_user, people, dataset, tmp_path):
    _source(dataset)
    api = as_user(people["steward"])
    before = _loaded(upload, api, dataset, tmp_path)
    extra = [f"c{i}" for i in range(10_000 - len(HEADER))]
    path = tmp_path / "wide.csv"
    path.write_bytes(csv_bytes(HEADER + extra, [row + ["0"] * len(extra) for row in permit_rows(3)]))
    _failed_run(upload, api, dataset, path, before,
                "The source has 10000 columns; at most 1600 are read (SYNC_MAX_COLUMNS)")


def test_a_header_only_file_into_an_empty_dataset_reads_no_rows(upload, as_user, people, dataset, tmp_path):
    _source(dataset)
    path = tmp_path / "header.csv"
    path.write_bytes(",".join(HEADER).encode() + b"\r\n")
    run = Run.objects.get(pk=upload(as_user(people["steward"]), dataset, path).json()["id"])
    assert (run.status, run.rows_read, run.rows_quarantined) == (RunStatus.SUCCEEDED, 0, 0), run.error
    assert store_rows(dataset) == []


@pytest.mark.parametrize("content", [
    ",".join(HEADER).encode() + b"\r\n",  # a header and nothing else
    csv_bytes(HEADER, [[*row[:-1], "not a date"] for row in permit_rows(3)]),  # every row quarantined
], ids=["header-only", "all-quarantined"])
def test_a_file_without_a_valid_row_does_not_delete_every_record(upload, as_user, people, dataset, tmp_path,
                                                                   content):
    """A full run deletes what its file does not hold; a file with no valid row at all is far
    more often a broken export than an emptied register, so it fails and changes nothing."""
    _source(dataset)
    api = as_user(people["steward"])
    before = _loaded(upload, api, dataset, tmp_path)
    path = tmp_path / "empty-export.csv"
    path.write_bytes(content)
    run = _failed_run(upload, api, dataset, path, before, "a full run would delete every record of the dataset. "
                                                          "Nothing was changed.")
    assert store_rows(dataset, include_deleted=True) == before  # no tombstone either
    assert (run.rows_deleted, run.seq_to) == (0, None)


def test_a_file_allowed_to_be_empty_deletes_every_record(upload, as_user, people, dataset, tmp_path):
    from exchange.audit.models import AuditEvent

    _source(dataset)
    api = as_user(people["steward"])
    _loaded(upload, api, dataset, tmp_path)
    path = tmp_path / "header.csv"
    path.write_bytes(",".join(HEADER).encode() + b"\r\n")
    response = upload(api, dataset, path, allow_empty=True)
    assert response.json()["allow_empty"] is True
    run = Run.objects.get(pk=response.json()["id"])
    assert (run.status, run.rows_read, run.rows_deleted) == (RunStatus.SUCCEEDED, 0, 5), run.error
    assert store_rows(dataset) == []
    queued = AuditEvent.objects.filter(action="run.queue", object_id=str(run.pk)).get()
    assert queued.actor_id == people["steward"].pk and queued.details["allow_empty"] is True


def test_invalid_utf8_is_quarantined_row_by_row_or_fails_on_the_header(upload, as_user, people, dataset, tmp_path):
    _source(dataset)
    api = as_user(people["steward"])
    before = _loaded(upload, api, dataset, tmp_path)
    rows = csv_bytes(HEADER, permit_rows(3)).splitlines(keepends=True)
    rows[2] = rows[2].replace(b"Applicant 2", b"Applicant \xff\xfe 2")
    path = tmp_path / "latin.csv"
    path.write_bytes(b"".join(rows))
    run = Run.objects.get(pk=upload(api, dataset, path).json()["id"])
    assert (run.status, run.rows_quarantined) == (RunStatus.SUCCEEDED, 1), run.error
    assert "not valid utf-8" in run.quarantined.get().reason
    path = tmp_path / "bad-header.csv"
    path.write_bytes(b"permit_id,addr\xe9ss\n1,x\n")
    _failed_run(upload, api, dataset, path, store_rows(dataset), "The header row is not valid utf-8")
    assert len(before) == 5


@pytest.mark.parametrize(("content", "words"), [
    (b"[" + FULL + b', {"permit_id": 2, "addr', "The file is not valid JSON after record"),
    (b"[" + FULL + b"] trailing garbage", "not valid JSON after record 1"),
    (b"[" + FULL + b', {"permit_id": 2, "address": "\xff"}]', "The file is not valid utf-8 after record"),
    (b'{"permit_id": 1}', "must be an array of objects"),
    (b'"just a string"', "must be an array of objects"),
    (b"[" * 100_000, "not valid JSON"),
    (b"\xff\xfe[\x00{\x00", None),  # UTF-16 where UTF-8 is expected: NUL bytes, refused on upload
    (b"nul\x00l", None),  # binary: refused on upload
])
def test_malformed_json_fails_the_run_with_the_reason(upload, as_user, people, dataset, tmp_path, content, words):
    _source(dataset, FileFormat.JSON)
    api = as_user(people["steward"])
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps([dict(zip(HEADER, row, strict=True)) for row in permit_rows(5)]))
    assert _status(upload(api, dataset, ok)) == RunStatus.SUCCEEDED
    before = store_rows(dataset)
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    if words is None:
        _refused(upload(api, dataset, path), 400, "looks binary")
        return
    _failed_run(upload, api, dataset, path, before, words)


def test_malformed_ndjson_lines_are_quarantined_with_the_reason(upload, as_user, people, dataset, tmp_path):
    _source(dataset, FileFormat.NDJSON)
    api = as_user(people["steward"])
    good = [json.dumps(dict(zip(HEADER, row, strict=True))) for row in permit_rows(3)]
    path = tmp_path / "mixed.ndjson"
    path.write_bytes("\n".join([good[0], '{"permit_id": 2, "address": ', "[1, 2]", good[2]]).encode()
                     + b'\n{"permit_id": 5, "address": "\xff"}\n')
    run = Run.objects.get(pk=upload(api, dataset, path).json()["id"])
    assert run.status == RunStatus.SUCCEEDED and run.rows_inserted == 2, run.error
    reasons = dict(run.quarantined.values_list("row_number", "reason"))
    assert "not valid JSON" in reasons[2] and reasons[3] == "not a JSON object" and "not valid utf-8" in reasons[5]
