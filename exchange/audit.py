"""Appending to and checking the hash-chained audit trail.

Every governance change and every data movement calls :func:`audit_record`. Each event's
``hash`` is SHA-256 over a canonical JSON form of the event including the previous event's
hash, so editing, deleting or inserting a row breaks the chain at that point.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from exchange.models.audit import ActorKind, AuditEvent, AuditOutcome

GENESIS_HASH = "0" * 64
# Any constant works; it names the one lock every append takes on PostgreSQL.
_CHAIN_LOCK_KEY = 7_310_442_901


@dataclass(frozen=True)
class RequestContext:
    client_ip: str | None = None
    request_id: str = ""


_request_context: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "audit_request_context", default=RequestContext()  # noqa: B039 - frozen, immutable
)


def set_request_context(ctx: RequestContext) -> contextvars.Token[RequestContext]:
    return _request_context.set(ctx)


def reset_request_context(token: contextvars.Token[RequestContext]) -> None:
    _request_context.reset(token)


# Fields that enter the hash, in a fixed order. Adding a field here changes every hash, so
# a new field must be appended, and only together with a migration of the verifier.
HASHED_FIELDS = (
    "occurred_at", "actor_kind", "actor_id", "actor_label", "action", "object_type", "object_id",
    "object_label", "department_id", "dataset_id", "fields", "row_count", "filters", "purpose",
    "outcome", "client_ip", "request_id", "details", "prev_hash",
)


def _canonical_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def event_hash(values: dict[str, Any]) -> str:
    payload = {name: _canonical_value(values[name]) for name in HASHED_FIELDS}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, cls=DjangoJSONEncoder)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _actor(actor: User | AnonymousUser | None, actor_label: str) -> tuple[str, int | None, str]:
    if actor is None:
        return ActorKind.SYSTEM, None, actor_label or "system"
    if not actor.is_authenticated:
        return ActorKind.ANONYMOUS, None, actor_label or "anonymous"
    return ActorKind.USER, actor.pk, actor.get_username()


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so that what is hashed is exactly what the database returns."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    # SQLite: every transaction already holds the database's single write lock from BEGIN
    # (transaction_mode=IMMEDIATE in settings), so appends are serialised by the engine.


def _last_hash() -> str:
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    return last or GENESIS_HASH


def _build(
    *, actor: User | AnonymousUser | None, action: str, obj: Model | None, actor_label: str,
    object_type: str, object_id: str, object_label: str, department_id: int | None,
    dataset_id: int | None, fields: Iterable[str], row_count: int | None, filters: dict[str, Any] | None,
    purpose: str, outcome: str, details: dict[str, Any] | None, occurred_at: datetime | None,
) -> dict[str, Any]:
    kind, actor_id, label = _actor(actor, actor_label)
    ctx = _request_context.get()
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
        object_label = object_label or str(obj)[:300]
    return {
        # Microsecond precision survives every database backend unchanged.
        "occurred_at": (occurred_at or timezone.now()).astimezone(UTC),
        "actor_kind": str(kind),
        "actor_id": actor_id,
        "actor_label": label[:200],
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "object_label": object_label[:300],
        "department_id": department_id,
        "dataset_id": dataset_id,
        "fields": _jsonable(list(fields)),
        "row_count": row_count,
        "filters": _jsonable(filters or {}),
        "purpose": purpose,
        "outcome": str(outcome),
        "client_ip": ctx.client_ip,
        "request_id": ctx.request_id,
        "details": _jsonable(details or {}),
    }


def audit_record(
    *,
    actor: User | AnonymousUser | None,
    action: str,
    obj: Model | None = None,
    actor_label: str = "",
    object_type: str = "",
    object_id: str = "",
    object_label: str = "",
    department_id: int | None = None,
    dataset_id: int | None = None,
    fields: Iterable[str] = (),
    row_count: int | None = None,
    filters: dict[str, Any] | None = None,
    purpose: str = "",
    outcome: str = AuditOutcome.ALLOWED,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain.

    Call it inside the transaction that makes the change, so the change and its record
    commit or roll back together. It takes the chain lock (held to the end of the caller's
    transaction), so take any row locks *before* calling it, never after.
    """
    values = _build(
        actor=actor, action=action, obj=obj, actor_label=actor_label, object_type=object_type,
        object_id=object_id, object_label=object_label, department_id=department_id,
        dataset_id=dataset_id, fields=fields, row_count=row_count, filters=filters, purpose=purpose,
        outcome=outcome, details=details, occurred_at=None,
    )
    with transaction.atomic():
        _lock_chain()
        values["prev_hash"] = _last_hash()
        values["hash"] = event_hash(values)
        return AuditEvent.objects.create(**values)


@dataclass(frozen=True)
class VerifyResult:
    intact: bool
    checked: int
    broken_at: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.intact:
            return f"intact, {self.checked} events"
        return f"BROKEN at event #{self.broken_at}: {self.reason} ({self.checked} events checked before it)"


def _iter_events(batch: int = 5000) -> Iterator[dict[str, Any]]:
    last_id = 0
    columns = ("id", "hash", *HASHED_FIELDS)
    while True:
        rows = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id").values(*columns)[:batch])
        if not rows:
            return
        yield from rows
        last_id = rows[-1]["id"]


def audit_verify() -> VerifyResult:
    """Walk the whole chain in id order and report the first broken link, if any."""
    expected_prev = GENESIS_HASH
    checked = 0
    for row in _iter_events():
        if row["prev_hash"] != expected_prev:
            return VerifyResult(False, checked, row["id"], "its prev_hash does not match the event before it")
        if event_hash(row) != row["hash"]:
            return VerifyResult(False, checked, row["id"], "its content does not match its hash")
        expected_prev = row["hash"]
        checked += 1
    return VerifyResult(True, checked)
