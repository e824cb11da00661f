"""Backup and restore as docs/operations.md tells an operator to do it: `pg_dump` of the whole
database, `pg_restore` into an empty one, then `verify_audit` on the restored copy. The audit
chain, its signed checkpoints and the record store come back whole, and the restored trail
still refuses and detects edits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

from departments.models import Department
from exchange.audit.models import CheckpointReason
from exchange.audit.services import audit_checkpoint_create
from exchange.records.store import table_name
from tests.conftest import database_url_of_test_db
from tests.records_support import grant, load_rows, published_dataset

ROOT = Path(__file__).resolve().parents[3]

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL backup (pg_dump/pg_restore)"),
    pytest.mark.skipif(not shutil.which("pg_dump"), reason="pg_dump is not installed"),
]


def _url_with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _manage(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "config.test_settings"}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _psql(database_url: str, sql: str) -> str:
    result = subprocess.run(["psql", database_url, "-Atqc", sql], capture_output=True, text=True, timeout=60,
                            check=True)
    return result.stdout.strip()


@pytest.fixture
def restored_database(tmp_path, people, department: Department):
    """A world with governance events, reads and a checkpoint, dumped and restored into a new
    database; yields the restored database's URL."""
    dataset = published_dataset(department)
    load_rows(dataset, [{"permit_id": i, "district": "North", "applicant_name": f"n{i}"} for i in range(1, 51)])
    grant(dataset, user=people["outsider"], fields={"permit_id": "clear", "district": "clear"},
          approved_by=people["steward"])
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(people["outsider"])
    assert client.get(f"/api/v1/datasets/{dataset.pk}/records/").status_code == 200  # an audited read
    assert audit_checkpoint_create(reason=CheckpointReason.SCHEDULED) is not None

    source = database_url_of_test_db()
    dump = tmp_path / "exchange.dump"
    subprocess.run(["pg_dump", "--format=custom", "--file", str(dump), source], check=True, timeout=300)
    name = f"exchange_restore_{uuid.uuid4().hex[:10]}"
    maintenance = _url_with_database(source, "postgres")
    _psql(maintenance, f'CREATE DATABASE "{name}"')
    target = _url_with_database(source, name)
    try:
        subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "--single-transaction", "--dbname", target,
                        str(dump)], check=True, timeout=300, capture_output=True)
        yield {"url": target, "dataset": dataset}
    finally:
        _psql(maintenance, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_restored_database_has_an_intact_chain_and_the_same_records(restored_database):
    target = restored_database["url"]
    result = _manage(target, "verify_audit", "--no-checkpoint")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("intact, ")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), (SELECT hash FROM exchange_auditevent ORDER BY id DESC LIMIT 1) "
                       "FROM exchange_auditevent")
        events, last_hash = cursor.fetchone()
    # verify_audit appended its own audit.verify event to the restored copy, after the dumped ones
    assert result.stdout.splitlines()[0] == f"intact, {events} events"
    assert _psql(target, f"SELECT hash FROM exchange_auditevent ORDER BY id LIMIT 1 OFFSET {events - 1}") == last_hash
    schema, table = table_name(restored_database["dataset"].pk)
    assert _psql(target, f'SELECT count(*) FROM "{schema}"."{table}"') == "50"
    assert _psql(target, "SELECT count(*) FROM exchange_auditcheckpoint") == "1"


def test_the_restored_trail_refuses_and_detects_edits(restored_database):
    target = restored_database["url"]
    edit = "UPDATE exchange_auditevent SET action = 'edited' WHERE id = (SELECT min(id) FROM exchange_auditevent)"
    with pytest.raises(subprocess.CalledProcessError) as refused:
        _psql(target, edit)
    assert "append-only" in refused.value.stderr
    _psql(target, f"ALTER TABLE exchange_auditevent DISABLE TRIGGER USER; {edit}; "
                  "ALTER TABLE exchange_auditevent ENABLE TRIGGER USER")
    result = _manage(target, "verify_audit", "--no-checkpoint")
    assert result.returncode == 1
    assert "BROKEN at event #" in result.stderr
