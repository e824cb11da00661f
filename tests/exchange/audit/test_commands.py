"""verify_audit and archive_audit, as an operator runs them."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from exchange.audit import guard as audit_guard
from exchange.audit.models import AuditCheckpoint, AuditEvent
from exchange.audit.services import AuditEntry, audit_record, audit_record_many, audit_verify, event_hash
from exchange.management.commands.archive_audit import verify_archive

pytestmark = pytest.mark.django_db


def _chain(n: int) -> list[AuditEvent]:
    return [audit_record(actor=None, action="test.event", details={"n": i, "text": "ü"}) for i in range(n)]


def test_verify_command_reports_an_intact_chain_and_signs_a_checkpoint(capsys):
    _chain(4)
    call_command("verify_audit")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "intact, 4 events"
    checkpoint = AuditCheckpoint.objects.get()
    assert checkpoint.reason == "verify" and f"signed checkpoint #{checkpoint.pk}" in out
    assert AuditEvent.objects.filter(action="audit.verify", details__intact=True).exists()
    call_command("verify_audit", "--no-checkpoint")
    assert capsys.readouterr().out.strip() == "intact, 5 events" and AuditCheckpoint.objects.count() == 1


def test_verify_command_names_the_first_broken_link_and_fails():
    events = _chain(4)
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk=events[1].pk).update(action="test.edited")
    with pytest.raises(CommandError, match=rf"BROKEN at event #{events[1].pk}: its content does not match") as exc:
        call_command("verify_audit")
    assert exc.value.returncode == 1
    assert not AuditCheckpoint.objects.exists()  # a broken chain is never signed


def test_verify_command_shows_progress_on_long_chains(capsys):
    audit_record_many([AuditEntry(action="test.bulk") for _ in range(250)])
    from exchange.management.commands import verify_audit

    seen: list[int] = []
    assert audit_verify(progress=seen.append, progress_every=100).intact
    assert seen == [100, 200]
    call_command(verify_audit.Command(), verbosity=1)
    assert "intact, 250 events" in capsys.readouterr().out


def test_archive_writes_a_verified_file_and_manifest(tmp_path, capsys):
    old = datetime(2025, 6, 1, 12, tzinfo=UTC)
    audit_record_many([AuditEntry(action="test.old", details={"i": i, "text": "ü"}, occurred_at=old)
                       for i in range(30)])
    recent = _chain(3)
    out = tmp_path / "audit-2025.ndjson.gz"
    call_command("archive_audit", "--before", "2026-01-01", "--out", str(out))
    assert "archived 30 events" in capsys.readouterr().out

    manifest = json.loads((tmp_path / "audit-2025.ndjson.gz.manifest.json").read_text())
    archived = list(AuditEvent.objects.filter(action="test.old").order_by("id"))
    assert manifest["count"] == 30
    assert (manifest["first_id"], manifest["last_id"]) == (archived[0].pk, archived[-1].pk)
    assert manifest["first_prev_hash"] == "0" * 64 and manifest["last_hash"] == archived[-1].hash
    assert verify_archive(out, manifest) is None

    with gzip.open(out, "rt", encoding="utf-8") as lines:
        events = [json.loads(line) for line in lines]
    assert [e["id"] for e in events] == [e.pk for e in archived]
    assert all(event_hash(e) == e["hash"] for e in events) and events[0]["details"]["text"] == "ü"

    # Export only: the live chain is untouched and still verifies, with an anchoring checkpoint.
    assert AuditEvent.objects.filter(pk=recent[-1].pk).exists()
    result = audit_verify()
    assert result.intact and result.checkpoints == 1
    assert AuditCheckpoint.objects.get().last_event_id == archived[-1].pk
    assert AuditEvent.objects.get(action="audit.archive").details["sha256"] == manifest["sha256"]


def test_an_altered_archive_or_manifest_is_detected(tmp_path):
    audit_record_many([AuditEntry(action="test.old", occurred_at=datetime(2025, 1, 1, tzinfo=UTC)) for _ in range(5)])
    out = tmp_path / "a.ndjson.gz"
    call_command("archive_audit", "--before", "2025-02-01", "--out", str(out))
    manifest = json.loads((tmp_path / "a.ndjson.gz.manifest.json").read_text())
    assert verify_archive(out, {**manifest, "count": 4}) == "the manifest's signature is invalid"
    with gzip.open(out, "rt") as f:
        lines = f.read().splitlines()
    lines[2] = lines[2].replace("test.old", "test.new")
    with gzip.open(out, "wt") as f:
        f.write("\n".join(lines) + "\n")
    assert verify_archive(out, manifest) == "the file's SHA-256 differs from the manifest"


def test_archive_refuses_empty_ranges_and_existing_files(tmp_path):
    _chain(2)
    out = tmp_path / "x.ndjson.gz"
    with pytest.raises(CommandError, match="No events before"):
        call_command("archive_audit", "--before", "2000-01-01", "--out", str(out))
    call_command("archive_audit", "--before", "2999-01-01", "--out", str(out))
    with pytest.raises(CommandError, match="exists already"):
        call_command("archive_audit", "--before", "2999-01-01", "--out", str(out))


def test_incremental_archives_continue_from_the_previous_one(tmp_path):
    first = audit_record_many([AuditEntry(action="test.a", occurred_at=datetime(2025, 1, 1, tzinfo=UTC))] * 3)
    assert first == 3
    audit_record_many([AuditEntry(action="test.b", occurred_at=datetime(2025, 3, 1, tzinfo=UTC))] * 2)
    call_command("archive_audit", "--before", "2025-02-01", "--out", str(tmp_path / "1.ndjson.gz"))
    m1 = json.loads((tmp_path / "1.ndjson.gz.manifest.json").read_text())
    call_command("archive_audit", "--before", "2025-04-01", "--out", str(tmp_path / "2.ndjson.gz"),
                 "--after-id", str(m1["last_id"]))
    m2 = json.loads((tmp_path / "2.ndjson.gz.manifest.json").read_text())
    assert m2["count"] == 2 and m2["first_prev_hash"] == m1["last_hash"]
    assert verify_archive(tmp_path / "2.ndjson.gz", m2) is None
    assert audit_verify().intact
