"""Export old audit events to a compressed, hash-verified NDJSON file with a manifest.

Export only: the events stay in the live table, which is append-only (the triggers would
refuse removing them, and verification walks the chain from its first event). What this
gives is a self-contained copy that can be verified anywhere without the database: each
line carries the event's canonical fields and hashes, and the manifest (signed with the
audit HMAC key) names the count, the first and last ids, the hash the file's first event
links to and the file's SHA-256. A signed checkpoint at the last archived event ties the
live chain to the file.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import hmac
import json
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from exchange.audit.models import AuditEvent, CheckpointReason
from exchange.audit.services import GENESIS_HASH, HASHED_FIELDS, audit_checkpoint_create, audit_record, event_hash

ARCHIVE_FORMAT = "exchange-audit-archive/1"


def _canonical_line(row: dict[str, Any]) -> dict[str, Any]:
    line = {"id": row["id"], **{name: row[name] for name in HASHED_FIELDS}, "hash": row["hash"]}
    line["occurred_at"] = row["occurred_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return line


def manifest_signature(manifest: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in manifest.items() if k != "signature"}, sort_keys=True).encode()
    return hmac.new(settings.AUDIT_HMAC_KEY.encode(), body, hashlib.sha256).hexdigest()


def verify_archive(path: Path, manifest: dict[str, Any]) -> str | None:
    """Re-read an archive and check it against its manifest; the problem found, or None."""
    digest = hashlib.sha256()
    with path.open("rb") as raw:
        for block in iter(lambda: raw.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != manifest["sha256"]:
        return "the file's SHA-256 differs from the manifest"
    if not hmac.compare_digest(manifest_signature(manifest), manifest.get("signature", "")):
        return "the manifest's signature is invalid"
    expected_prev, count, first_id, last_id = manifest["first_prev_hash"], 0, None, None
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for text in lines:
            event = json.loads(text)
            if event["prev_hash"] != expected_prev:
                return f"event #{event['id']} does not link to the one before it"
            if event_hash(event) != event["hash"]:
                return f"event #{event['id']} does not match its hash"
            expected_prev, count, last_id = event["hash"], count + 1, event["id"]
            first_id = event["id"] if first_id is None else first_id
    if (count, first_id, last_id, expected_prev) != (
        manifest["count"], manifest["first_id"], manifest["last_id"], manifest["last_hash"]
    ):
        return "count, first/last id or last hash differ from the manifest"
    return None


def _iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from exc


class Command(BaseCommand):
    help = "Export audit events older than a date to a gzip NDJSON file plus a signed manifest."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--before", required=True, type=_iso_date,
                            help="YYYY-MM-DD: events before the start of this day (TIME_ZONE).")
        parser.add_argument("--out", required=True, type=Path, help="Output file, e.g. audit-2026.ndjson.gz")
        parser.add_argument("--after-id", type=int, default=0,
                            help="Start after this event id (the last id of the previous archive).")
        parser.add_argument("--force", action="store_true", help="Overwrite an existing output file.")

    def handle(self, *args: Any, **options: Any) -> None:
        out: Path = options["out"]
        manifest_path = out.with_name(out.name + ".manifest.json")
        if (out.exists() or manifest_path.exists()) and not options["force"]:
            raise CommandError(f"{out} or its manifest exists already (use --force to overwrite).")
        cutoff = timezone.make_aware(datetime.combine(options["before"], time.min))
        after_id: int = options["after_id"]
        # The archive is a contiguous stretch of the chain: everything after --after-id up to
        # the last event that happened before the cutoff (ids follow the chain, timestamps
        # only nearly), so it can be verified on its own.
        last_id = (
            AuditEvent.objects.filter(id__gt=after_id, occurred_at__lt=cutoff)
            .order_by("-id").values_list("id", flat=True).first()
        )
        if last_id is None:
            raise CommandError(f"No events before {options['before']} after event #{after_id}.")
        first_prev = GENESIS_HASH
        if after_id:
            previous = AuditEvent.objects.filter(id__lte=after_id).order_by("-id").values_list("hash", flat=True)
            first_prev = previous.first() or GENESIS_HASH

        rows = (
            AuditEvent.objects.filter(id__gt=after_id, id__lte=last_id).order_by("id")
            .values("id", "hash", *HASHED_FIELDS).iterator(chunk_size=5000)
        )
        count, first_id, last_hash = 0, None, first_prev
        out.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(out, "wt", encoding="utf-8") as archive:
            for row in rows:
                archive.write(json.dumps(_canonical_line(row), ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
                first_id = row["id"] if first_id is None else first_id
                last_hash = row["hash"]
                if count % 100_000 == 0:
                    self.stderr.write(f"  {count:,} events written")

        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        manifest: dict[str, Any] = {
            "format": ARCHIVE_FORMAT, "file": out.name, "sha256": digest, "count": count,
            "first_id": first_id, "last_id": last_id, "first_prev_hash": first_prev, "last_hash": last_hash,
            "before": options["before"].isoformat(), "created_at": timezone.now().isoformat(),
            "hashed_fields": list(HASHED_FIELDS),
        }
        manifest["signature"] = manifest_signature(manifest)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")

        problem = verify_archive(out, manifest)
        if problem:
            raise CommandError(f"The written archive does not verify: {problem}. Keep the live events; retry.")
        audit_checkpoint_create(reason=CheckpointReason.ARCHIVE, upto=last_id)
        audit_record(
            actor=None, actor_label="manage.py archive_audit", action="audit.archive",
            details={k: manifest[k] for k in ("file", "sha256", "count", "first_id", "last_id", "before")},
        )
        self.stdout.write(
            f"archived {count} events (#{first_id}..#{last_id}) to {out}, sha256 {digest}; "
            f"manifest {manifest_path}; verified by re-reading"
        )
