"""SQLite connections name a database file below SYNC_SQLITE_DIRS, and nothing else: no
``..``, no symbolic link leading out, no directory, device or pipe (which would hang a worker)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from exchange.sync import readers
from exchange.sync.models import Connection, RunStatus, Source
from tests.exchange.sync.helpers import run_ingest
from tests.sync_factories import connection, identity_mapping, published_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def allowed(settings, tmp_path) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    settings.SYNC_SQLITE_DIRS = [str(root)]
    db = sqlite3.connect(root / "permits.sqlite3")
    db.execute("CREATE TABLE permits (permit_id integer primary key)")
    db.commit()
    db.close()
    outside = sqlite3.connect(tmp_path / "outside.sqlite3")
    outside.execute("CREATE TABLE secrets (permit_id integer)")
    outside.commit()
    outside.close()
    return root


def _create(api, secret: str):
    return api.post("/api/v1/sync/connections/", {"department": "transport", "name": "file", "kind": "sqlite",
                                                  "secret": secret})


def _refusals(allowed: Path) -> list[tuple[str, str]]:
    (allowed / "to-outside.sqlite3").symlink_to(allowed.parent / "outside.sqlite3")
    (allowed / "to-passwd").symlink_to("/etc/passwd")
    (allowed / "to-zero").symlink_to("/dev/zero")
    (allowed / "sub").mkdir()
    os.mkfifo(allowed / "pipe.sqlite3")
    return [
        (str(allowed / "sub" / ".." / "permits.sqlite3"), "may not contain '..'"),
        (str(allowed / ".." / "outside.sqlite3"), "may not contain '..'"),
        (f"sqlite:///{allowed}/../outside.sqlite3", "may not contain '..'"),
        (str(allowed / "to-outside.sqlite3"), "to-outside.sqlite3 is a symbolic link to a file outside"),
        (str(allowed / "to-passwd"), "to-passwd is a symbolic link to a file outside"),
        (str(allowed / "to-zero"), "to-zero is a symbolic link to a file outside"),
        (str(allowed / "sub"), "sub is not a regular file"),
        (str(allowed / "pipe.sqlite3"), "pipe.sqlite3 is not a regular file"),
        ("/etc/passwd", "must live in one of the directories configured in SYNC_SQLITE_DIRS"),
    ]


def test_each_way_out_is_refused_with_a_clear_message_on_save(as_user, people, allowed):
    api = as_user(people["steward"])
    for secret, message in _refusals(allowed):
        response = _create(api, secret)
        assert response.status_code == 400, (secret, response.content)
        assert message in response.json()["error"]["message"], secret
    assert not Connection.objects.exists()
    (allowed / "inside-link.sqlite3").symlink_to(allowed / "permits.sqlite3")  # a link that stays inside is fine
    assert _create(api, str(allowed / "inside-link.sqlite3")).status_code == 201


def test_runs_and_connection_tests_refuse_them_too(as_user, people, department, allowed):
    """A connection saved before the file was swapped for a link or a pipe."""
    dataset = published_dataset(department=department)
    for n, (secret, message) in enumerate(_refusals(allowed)):
        conn = connection(department=department, kind="sqlite", secret=secret, name=f"file {n}")
        body = as_user(people["steward"]).post(f"/api/v1/sync/connections/{conn.pk}/test/").json()
        assert body["ok"] is False and message in body["message"], secret
        source = Source.objects.create(dataset=dataset, connection=conn, table="permits", mapping=identity_mapping())
        run = run_ingest(source)  # a pipe would block here for ever if it were opened
        assert run.status == RunStatus.FAILED and message in run.error, secret
        source.delete()


def test_a_delivery_target_may_not_exist_yet(allowed):
    assert readers.sqlite_path(str(allowed / "new-target.sqlite3")) == allowed / "new-target.sqlite3"
