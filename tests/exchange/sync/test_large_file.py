"""A ~200 MB CSV upload through the real ingest path: exact counts and contents, and worker
memory that does not grow with the file (it is read as a stream, never held whole).

About 800,000 rows: on PostgreSQL they go through the COPY path of CSV files (typed and checked
in SQL) in well under a minute; on the embedded run they would take minutes through the
per-value Python path, so it runs on the PostgreSQL run only, the one CI runs it on.
"""

from __future__ import annotations

import resource
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from exchange.records.store import ident, store_table
from exchange.sync.models import RunStatus, Source
from tests.exchange.sync.helpers import run_ingest
from tests.sync_factories import PERMIT_FIELDS, identity_mapping, published_dataset

pytestmark = pytest.mark.django_db

TARGET_BYTES = 200 * 1024 * 1024
FILLER = "Applicant of a permit whose name is long enough to make rows wide " * 3  # ~200 characters
BAD_EVERY = 100_000  # these rows carry a fee that is not a number and go to quarantine


def write_csv(path: Path) -> int:
    """Write the file line by line (never whole in memory); return the number of data rows."""
    n = 0
    size = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        header = ",".join(f[0] for f in PERMIT_FIELDS) + "\n"
        out.write(header)
        size += len(header)
        while size < TARGET_BYTES:
            n += 1
            fee = "n/a" if n % BAD_EVERY == 0 else f"{n % 1000}.25"
            line = (f'{n},"{n} Main Street, Unit {n % 7}",{FILLER}{n},{fee},{"true" if n % 2 else "false"},'
                    f"2024-{1 + n % 12:02d}-{1 + n % 28:02d},2024-02-01T10:{n % 60:02d}:00+00:00\n")
            out.write(line)
            size += len(line)
    return n


def test_a_200_mb_csv_is_ingested_exactly_with_bounded_memory(department, tmp_path, settings):
    if connection.vendor != "postgresql":
        pytest.skip("the 200 MB file runs on the PostgreSQL run (minutes on the embedded one too)")
    settings.MEDIA_ROOT = str(tmp_path)
    relative = Path("sources") / "large.csv"
    (tmp_path / "sources").mkdir()
    rows = write_csv(tmp_path / relative)
    assert (tmp_path / relative).stat().st_size >= TARGET_BYTES
    dataset = published_dataset(department=department)
    source = Source.objects.create(dataset=dataset, upload=str(relative), file_format="csv", encoding="utf-8",
                                   mapping=identity_mapping())
    bad = rows // BAD_EVERY

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    run = run_ingest(source)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (run.rows_read, run.rows_inserted, run.rows_quarantined, run.rows_deleted) == (rows, rows - bad, bad, 0)
    assert run.quarantined.count() == bad
    assert set(run.quarantined.values_list("row_number", flat=True)) == {i * BAD_EVERY for i in range(1, bad + 1)}
    # Held whole, the file alone would add 200 MB (and its Python objects several times that).
    assert grown_mib < 100, f"peak RSS grew by {grown_mib:.0f} MiB"

    table = store_table(dataset)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), sum(fee), count(*) FILTER (WHERE approved), min(issued_on), max(issued_on), "  # noqa: S608
            f"max(permit_id) FROM {table.qualified} WHERE NOT {ident('_deleted')}")
        count, fee_sum, approved, first_day, last_day, top = cursor.fetchone()
        cursor.execute(f"SELECT permit_id, address, applicant, fee, approved FROM {table.qualified} "  # noqa: S608
                       f"WHERE permit_id IN (1, 99999, 100000, %s) ORDER BY permit_id", [rows])
        spots = cursor.fetchall()
    good = [n for n in range(1, rows + 1) if n % BAD_EVERY]
    assert count == len(good) and top == rows
    assert fee_sum == sum(Decimal(f"{n % 1000}.25") for n in good)
    assert approved == sum(1 for n in good if n % 2)
    assert (str(first_day), str(last_day)) == ("2024-01-01", "2024-12-28")
    assert spots == [
        (1, "1 Main Street, Unit 1", f"{FILLER}1", Decimal("1.25"), True),
        (99999, "99999 Main Street, Unit 4", f"{FILLER}99999", Decimal("999.25"), True),
        (rows, f"{rows} Main Street, Unit {rows % 7}", f"{FILLER}{rows}", Decimal(f"{rows % 1000}.25"), bool(rows % 2)),
    ]
