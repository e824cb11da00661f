"""Django's ``flush``, able to empty the append-only audit tables.

Flushing erases the whole database, the audit trail included; it is what the test suite
does between transactional tests and what a developer does to start over. The audit
triggers would refuse it, so they are lifted for the flush only, in its transaction. On
PostgreSQL that needs the tables' owner: a deployment whose everyday role does not own them
cannot flush the audit trail at all, which is the point.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands import flush

from exchange.audit import guard as audit_guard


class Command(flush.Command):
    def handle(self, **options: Any) -> None:
        with audit_guard.suspended(using=options["database"]):
            super().handle(**options)
