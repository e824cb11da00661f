"""Walk the audit chain and report "intact, N events" or the first broken link."""

from __future__ import annotations

import os
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from exchange.audit.models import AuditOutcome, CheckpointReason
from exchange.audit.services import audit_checkpoint_create, audit_record, audit_verify


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain and signed checkpoints; exit status 1 if broken."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--workers", type=int, default=min(os.cpu_count() or 1, 8),
            help="Processes that hash stretches of the chain in parallel (default: CPUs, at most 8).",
        )
        parser.add_argument(
            "--no-checkpoint", action="store_true",
            help="Do not sign a checkpoint at the end of an intact chain.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()

        def progress(checked: int) -> None:
            rate = checked / max(time.monotonic() - started, 1e-6)
            self.stderr.write(f"  {checked:,} events checked ({rate:,.0f}/s)")

        workers = max(1, options["workers"])
        if workers > 1:
            self.stderr.write(f"  verifying with {workers} processes")
        result = audit_verify(progress=progress if options["verbosity"] >= 1 else None, workers=workers)
        elapsed = time.monotonic() - started
        audit_record(
            actor=None, actor_label="manage.py verify_audit", action="audit.verify",
            outcome=AuditOutcome.ALLOWED if result.intact else AuditOutcome.FAILED,
            details={"intact": result.intact, "checked": result.checked, "broken_at": result.broken_at},
        )
        if not result.intact:
            raise CommandError(str(result))
        self.stdout.write(str(result))
        if options["verbosity"] >= 2:
            self.stdout.write(f"{result.checkpoints} checkpoints confirmed in {elapsed:.1f} s")
        if not options["no_checkpoint"]:
            checkpoint = audit_checkpoint_create(reason=CheckpointReason.VERIFY)
            if checkpoint is not None and options["verbosity"] >= 1:
                self.stdout.write(f"signed checkpoint #{checkpoint.pk} at event #{checkpoint.last_event_id}")
