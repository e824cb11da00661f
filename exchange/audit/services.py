"""Appending to and checking the hash-chained audit trail.

Every governance change and every data movement calls :func:`audit_record` (or, on bulk
paths, :func:`audit_record_many`). Each event's ``hash`` is SHA-256 over a canonical JSON
form of the event including the previous event's hash, so editing, deleting or inserting a
row breaks the chain at that point. Removing the *tail* leaves a shorter chain that is still
consistent; signed checkpoints (:func:`audit_checkpoint_create`) catch that: each one names
an event and its hash under an HMAC whose key is not in the database.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import hmac
import ipaddress
import json
import json.scanner
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, connections, transaction
from django.db.models import Max, Min, Model
from django.utils import timezone
from django.utils.ipv6 import clean_ipv6_address

from exchange.audit.models import ActorKind, AuditCheckpoint, AuditEvent, AuditOutcome, CheckpointReason

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


def current_request_context() -> RequestContext:
    """The client address and request id that events appended now would carry. A streamed
    response is produced after its request's middleware has returned, so a generator that
    audits at its end takes this along when it is created."""
    return _request_context.get()


# Fields that enter the hash, in a fixed order. Adding a field here changes every hash, so
# a new field must be appended, and only together with a migration of the verifier.
HASHED_FIELDS = (
    "occurred_at", "actor_kind", "actor_id", "actor_label", "action", "object_type", "object_id",
    "object_label", "department_id", "dataset_id", "fields", "row_count", "filters", "purpose",
    "outcome", "client_ip", "request_id", "details", "prev_hash",
)
_JSON_FIELDS = ("fields", "filters", "details")
_JSON_POSITIONS = tuple(HASHED_FIELDS.index(name) for name in _JSON_FIELDS)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# One encoder, built once: the same output as json.dumps(..., sort_keys=True,
# separators=(",", ":"), ensure_ascii=False) but without re-reading the options per event,
# which matters when a million events are verified. Values reaching it are plain JSON types
# (timestamps are already strings), so DjangoJSONEncoder's extra types are never needed.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical_time(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, as ``strftime(_TIME_FORMAT)`` spells it."""
    if value.tzinfo is not None and value.utcoffset():
        value = value.astimezone(UTC)
    if value.year < 1000:  # strftime does not zero-pad such years; keep its spelling
        return value.strftime(_TIME_FORMAT)
    text = value.isoformat(timespec="microseconds")  # the same text, in half the time
    return (text[:-6] if value.tzinfo is not None else text) + "Z"


def _canonical_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _canonical_time(value)
    return value


def event_hash(values: dict[str, Any]) -> str:
    payload = {name: values[name] for name in HASHED_FIELDS}
    payload["occurred_at"] = _canonical_value(payload["occurred_at"])
    return hashlib.sha256(_ENCODER.encode(payload).encode("utf-8")).hexdigest()


def _actor(actor: User | AnonymousUser | None, actor_label: str) -> tuple[str, int | None, str]:
    if actor is None:
        return ActorKind.SYSTEM, None, actor_label or "system"
    if not actor.is_authenticated:
        return ActorKind.ANONYMOUS, None, actor_label or "anonymous"
    return ActorKind.USER, actor.pk, actor.get_username()


def _plain(value: Any) -> bool:
    """Whether ``value`` survives a JSON round trip unchanged (the common case)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return False  # floats too: the database may return another spelling of them


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so that what is hashed is exactly what the database returns."""
    if _plain(value):
        return value
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _normalised_ip(value: str | None) -> str | None:
    """The address as the database will give it back (PostgreSQL rewrites IPv6 addresses into
    their canonical form, which would change the hash); None for anything that is not an
    address (a forged X-Forwarded-For must not make the audit write, and so the request, fail)."""
    if not value:
        return None
    try:
        if ":" in value:
            return clean_ipv6_address(value)
        return str(ipaddress.IPv4Address(value))
    except (ValueError, ValidationError):
        return None


_TABLE = AuditEvent._meta.db_table
_INSERT_COLUMNS = (*HASHED_FIELDS, "hash")
_CLIENT_IP_POSITION = HASHED_FIELDS.index("client_ip")


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    # SQLite: every transaction already holds the database's single write lock from BEGIN
    # (transaction_mode=IMMEDIATE in settings), so appends are serialised by the engine.


def _chain_head(cursor: Any) -> str:
    """Take the chain lock (to the end of the transaction) and return the hash of the last
    event. On PostgreSQL one round trip: a server-side function (migration 0007) that locks,
    then reads the end of the chain in a statement of its own, started after the lock was
    granted; reading it in the locking statement itself would fork the chain. Ids follow
    chain order because every insert happens under this lock, so the last id is the end."""
    if connection.vendor == "postgresql":
        cursor.execute("SELECT exchange_audit_chain_head(%s)", [_CHAIN_LOCK_KEY])
        return str(cursor.fetchone()[0])
    cursor.execute(f"SELECT hash FROM {_TABLE} ORDER BY id DESC LIMIT 1")  # noqa: S608 - fixed name
    row = cursor.fetchone()
    return str(row[0]) if row else GENESIS_HASH


@functools.cache
def _insert_sql(vendor: str) -> str:
    """One INSERT of an event as raw SQL: the ORM's per-field preparation of a model
    instance costs more than the rest of an append together on a records page."""
    marks = ["%s"] * len(_INSERT_COLUMNS)
    if vendor == "postgresql":
        for position in _JSON_POSITIONS:
            marks[position] = "%s::jsonb"
        marks[_CLIENT_IP_POSITION] = "%s::inet"
    return (
        f"INSERT INTO {_TABLE} ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join(marks)}) RETURNING id"  # noqa: S608
    )


def _row_for_insert(values: dict[str, Any], adapt_time: Callable[[Any], Any],
                    columns: Sequence[str] = _INSERT_COLUMNS) -> list[Any]:
    """The values of ``columns`` (which start with occurred_at and hold the JSON fields at
    their HASHED_FIELDS positions): the timestamp as the backend takes it, the JSON fields
    as the very text Django's JSONField writes (SQLite keeps it as it is, and Django's
    lookups there compare with that spelling)."""
    row = [values[c] for c in columns]
    row[0] = adapt_time(row[0])
    for index in _JSON_POSITIONS:
        row[index] = json.dumps(row[index])
    return row


# event_hash's canonical text has its keys sorted, so it splits into the fields before
# "prev_hash" and those after it; the append function (migration 0007) hashes
# head + previous hash + tail on the server, the same bytes that event_hash hashes.
_HEAD_FIELDS = tuple(name for name in sorted(HASHED_FIELDS) if name < "prev_hash")
_TAIL_FIELDS = tuple(name for name in sorted(HASHED_FIELDS) if name > "prev_hash")
_APPEND_MARKS = ", ".join(
    "%s::jsonb" if name in _JSON_FIELDS else "%s::inet" if name == "client_ip" else "%s" for name in HASHED_FIELDS[:-1]
)
_APPEND_SQL = (
    f"SELECT event_id, event_prev_hash, event_hash FROM exchange_audit_append(%s, %s, %s, {_APPEND_MARKS})"  # noqa: S608
)


def _canonical_parts(values: dict[str, Any]) -> tuple[bytes, bytes]:
    head = {name: values[name] for name in _HEAD_FIELDS}
    head["occurred_at"] = _canonical_value(head["occurred_at"])
    tail = {name: values[name] for name in _TAIL_FIELDS}
    return (
        (_ENCODER.encode(head)[:-1] + ',"prev_hash":"').encode("utf-8"),
        ('",' + _ENCODER.encode(tail)[1:]).encode("utf-8"),
    )


@dataclass(frozen=True)
class AuditEntry:
    """One event for :func:`audit_record_many`; the same fields as :func:`audit_record`."""

    action: str
    actor: User | AnonymousUser | None = None
    obj: Model | None = None
    actor_label: str = ""
    object_type: str = ""
    object_id: str = ""
    object_label: str = ""
    department_id: int | None = None
    dataset_id: int | None = None
    fields: Sequence[str] = ()
    row_count: int | None = None
    filters: dict[str, Any] | None = None
    purpose: str = ""
    outcome: str = AuditOutcome.ALLOWED
    details: dict[str, Any] | None = None
    occurred_at: datetime | None = None


def _build(entry: AuditEntry, client_ip: str | None, request_id: str, now: datetime) -> dict[str, Any]:
    kind, actor_id, label = _actor(entry.actor, entry.actor_label)
    object_type, object_id, object_label = entry.object_type, entry.object_id, entry.object_label
    if entry.obj is not None:
        object_type = object_type or entry.obj._meta.label_lower
        object_id = object_id or str(entry.obj.pk)
        object_label = object_label or str(entry.obj)[:300]
    return {
        # Microsecond precision survives every database backend unchanged.
        "occurred_at": (entry.occurred_at or now).astimezone(UTC),
        "actor_kind": str(kind),
        "actor_id": actor_id,
        "actor_label": label[:200],
        "action": entry.action,
        "object_type": object_type,
        "object_id": object_id,
        "object_label": object_label[:300],
        "department_id": entry.department_id,
        "dataset_id": entry.dataset_id,
        "fields": _jsonable(list(entry.fields)),
        "row_count": entry.row_count,
        "filters": _jsonable(entry.filters or {}),
        "purpose": entry.purpose,
        "outcome": str(entry.outcome),
        "client_ip": client_ip,
        "request_id": request_id,
        "details": _jsonable(entry.details or {}),
    }


def _link(rows: list[dict[str, Any]], prev: str) -> None:
    """Set ``prev_hash`` and ``hash`` of each row in turn, the first linking to ``prev``.
    The same bytes as :func:`event_hash`: a row holds exactly the hashed fields, so it is
    copied instead of rebuilt, and rows of one batch share their timestamp's spelling."""
    encode, sha256 = _ENCODER.encode, hashlib.sha256
    spelled: dict[datetime, str] = {}
    for values in rows:
        values["prev_hash"] = prev
        payload = dict(values)
        when = payload["occurred_at"]
        text = spelled.get(when)
        if text is None:
            text = spelled[when] = _canonical_time(when)
        payload["occurred_at"] = text
        prev = values["hash"] = sha256(encode(payload).encode("utf-8")).hexdigest()


def event_values(entry: AuditEntry) -> dict[str, Any]:
    """The hashed fields of ``entry`` but the link (``prev_hash``), stamped now, with the
    current request's client address and id."""
    ctx = _request_context.get()
    return _build(entry, _normalised_ip(ctx.client_ip), ctx.request_id, timezone.now())


def append_statement(values: dict[str, Any]) -> tuple[str, list[Any]]:
    """PostgreSQL: the one statement that appends the event of ``values`` (from
    :func:`event_values`) and returns its id, previous hash and hash. It takes the chain lock,
    links and hashes on the server (migration 0007); run outside a transaction it is one of
    its own, committed when the statement's answer arrives."""
    head, tail = _canonical_parts(values)
    row = _row_for_insert(values, connection.ops.adapt_datetimefield_value, HASHED_FIELDS[:-1])
    return _APPEND_SQL, [_CHAIN_LOCK_KEY, head, tail, *row]


_ROW_COUNT_POSITION = HASHED_FIELDS.index("row_count")
# The canonical text's tail ends with the row count (the last hashed field after "prev_hash").
_ROW_COUNT_END = ',"row_count":null}'


def append_call(values: dict[str, Any], row_count_sql: str) -> tuple[str, list[Any]]:
    """PostgreSQL: the append function called as a FROM item of a statement that reads
    records, for the event of ``values`` with its row count the SQL expression
    ``row_count_sql`` (over that statement's own result). The statement appends the record of
    its read and commits both together; outside a transaction its answer arrives only after
    that commit is flushed, so nothing of the read reaches Python unrecorded. The row count is
    spelled into the canonical text on the server the way the encoder spells an integer."""
    head, tail = _canonical_parts({**values, "row_count": None})
    if not tail.endswith(_ROW_COUNT_END.encode()):
        raise ValueError("the event's canonical text does not end with its row count")
    row = _row_for_insert(values, connection.ops.adapt_datetimefield_value, HASHED_FIELDS[:-1])
    marks = _APPEND_MARKS.split(", ")
    marks[_ROW_COUNT_POSITION] = f"({row_count_sql})::bigint"
    del row[_ROW_COUNT_POSITION]
    count_text = f"convert_to(({row_count_sql})::bigint::text || '}}', 'UTF8')"
    sql = f"exchange_audit_append(%s, %s, %s || {count_text}, {', '.join(marks)})"
    return sql, [_CHAIN_LOCK_KEY, head, tail[: -len(b"null}")], *row]


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
    entry = AuditEntry(
        actor=actor, action=action, obj=obj, actor_label=actor_label, object_type=object_type,
        object_id=object_id, object_label=object_label, department_id=department_id,
        dataset_id=dataset_id, fields=tuple(fields), row_count=row_count, filters=filters, purpose=purpose,
        outcome=outcome, details=details,
    )
    values = event_values(entry)
    # This runs once per records page, so it is raw SQL. On PostgreSQL one statement, which
    # outside a transaction is a transaction of its own; on SQLite the head and the INSERT
    # in one transaction (its write lock serialises appends).
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(*append_statement(values))
            event_id, values["prev_hash"], values["hash"] = cursor.fetchone()
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            _link([values], _chain_head(cursor))
            cursor.execute(_insert_sql(connection.vendor),
                           _row_for_insert(values, connection.ops.adapt_datetimefield_value))
            event_id = cursor.fetchone()[0]
    event = AuditEvent(id=event_id, **values)
    event._state.adding, event._state.db = False, connection.alias
    return event


def audit_record_many(events: Sequence[AuditEntry]) -> int:
    """Append many events at once, in the given order, and return how many: one lock and
    read of the chain's end, then one COPY (PostgreSQL) or one executemany (SQLite). Same
    transaction rule as :func:`audit_record`.

    Ids must follow chain order, which holds because every insert into the table happens
    under the chain lock and a COPY or a sequence of INSERTs takes its ids in row order.
    """
    if not events:
        return 0
    ctx, now = _request_context.get(), timezone.now()
    client_ip = _normalised_ip(ctx.client_ip)
    rows = [_build(entry, client_ip, ctx.request_id, now) for entry in events]
    adapt_time = connection.ops.adapt_datetimefield_value
    names = ", ".join(_INSERT_COLUMNS)
    with transaction.atomic(), connection.cursor() as cursor:
        _link(rows, _chain_head(cursor))
        prepared = [_row_for_insert(values, adapt_time) for values in rows]
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {_TABLE} ({names}) FROM STDIN") as copy:
                for row in prepared:
                    copy.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(_INSERT_COLUMNS))
            cursor.executemany(f"INSERT INTO {_TABLE} ({names}) VALUES ({marks})", prepared)  # noqa: S608
    return len(rows)


# --- Checkpoints ----------------------------------------------------------------------------

def checkpoint_signature(*, last_event_id: int, last_hash: str, event_count: int, created_at: datetime) -> str:
    message = f"v1|{last_event_id}|{last_hash}|{event_count}|{_canonical_time(created_at)}"
    return hmac.new(settings.AUDIT_HMAC_KEY.encode(), message.encode(), hashlib.sha256).hexdigest()


def _checkpoint_valid(checkpoint: AuditCheckpoint) -> bool:
    expected = checkpoint_signature(
        last_event_id=checkpoint.last_event_id, last_hash=checkpoint.last_hash,
        event_count=checkpoint.event_count, created_at=checkpoint.created_at,
    )
    return hmac.compare_digest(expected, checkpoint.signature)


def audit_checkpoint_create(
    *, reason: str = CheckpointReason.SCHEDULED, upto: int | None = None
) -> AuditCheckpoint | None:
    """Sign the current end of the chain (or the last event with id <= ``upto``). Returns None
    (and writes nothing) when there is no such event or a checkpoint already names it, so a
    quiet system does not pile up identical checkpoints."""
    with transaction.atomic():
        # Under the chain lock nobody appends between reading the last event and counting.
        _lock_chain()
        events = AuditEvent.objects.all() if upto is None else AuditEvent.objects.filter(id__lte=upto)
        last = events.order_by("-id").values_list("id", "hash").first()
        if last is None or AuditCheckpoint.objects.filter(last_event_id=last[0]).exists():
            return None
        count = events.count()
        created_at = timezone.now().astimezone(UTC)
        return AuditCheckpoint.objects.create(
            created_at=created_at, last_event_id=last[0], last_hash=last[1], event_count=count,
            reason=reason,
            signature=checkpoint_signature(
                last_event_id=last[0], last_hash=last[1], event_count=count, created_at=created_at
            ),
        )


# --- Verification ---------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyResult:
    intact: bool
    checked: int
    broken_at: int | None = None
    reason: str = ""
    checkpoints: int = 0
    last_event_id: int | None = None
    last_hash: str = field(default="")

    def __str__(self) -> str:
        if self.intact:
            return f"intact, {self.checked} events"
        return f"BROKEN at event #{self.broken_at}: {self.reason} ({self.checked} events checked before it)"


# The C scanner that json.loads runs after two whitespace regexes and a wrapper; called
# directly it parses the database's JSON text in less than half the time.
_SCAN_JSON = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed names it oddly


def _json_loader(value: Any) -> Any:
    if isinstance(value, str):
        if value == "{}":
            return {}
        if value == "[]":
            return []
        try:
            parsed, end = _SCAN_JSON(value, 0)
        except StopIteration:
            end = -1
        if end == len(value):
            return parsed
        return json.loads(value)  # surrounding whitespace, or not JSON: json's own answer
    return value


_COLUMNS = ("id", "hash", *HASHED_FIELDS)
# SQL giving occurred_at exactly as _canonical_time() spells it. SQLite stores Django's
# "YYYY-MM-DD HH:MM:SS[.ffffff]" (no fraction when it is zero) in UTC.
_CANONICAL_TIME_SQL = {
    "postgresql": "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    "sqlite": (
        "CASE WHEN length(occurred_at) = 19 THEN replace(occurred_at, ' ', 'T') || '.000000Z' "
        "ELSE replace(occurred_at, ' ', 'T') || 'Z' END"
    ),
}


def _iter_rows(batch: int, after: int = 0, upto: int | None = None) -> Iterator[list[tuple[Any, ...]]]:
    """Events with ``after < id <= upto`` as raw tuples in id order, in batches, without
    building model instances.

    On PostgreSQL a server-side cursor inside a transaction streams the rows (outside one it
    would be WITH HOLD and materialised first); on SQLite a plain cursor already streams,
    and a transaction there would take the write lock for the whole walk.
    """
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    # Field name == column name. The timestamp comes back already in canonical text: the
    # database formats it in its own process, beside the Python one that hashes.
    names = ", ".join(_CANONICAL_TIME_SQL.get(connection.vendor, c) if c == "occurred_at" else c for c in _COLUMNS)
    where, params = "id > %s", [after]
    if upto is not None:
        where, params = where + " AND id <= %s", [after, upto]
    sql = f"SELECT {names} FROM {table} WHERE {where} ORDER BY id"  # noqa: S608 - fixed names
    in_transaction = transaction.atomic() if connection.vendor == "postgresql" else nullcontext()
    with in_transaction, connection.chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(batch):
            yield rows


def _row_hash(row: tuple[Any, ...]) -> str:
    payload = dict(zip(HASHED_FIELDS, row[2:], strict=True))
    occurred_at = payload["occurred_at"]
    if isinstance(occurred_at, datetime):
        payload["occurred_at"] = _canonical_time(occurred_at)
    for name in _JSON_FIELDS:
        payload[name] = _json_loader(payload[name])
    return hashlib.sha256(_ENCODER.encode(payload).encode("utf-8")).hexdigest()


@dataclass
class _RangeReport:
    """What one walk over a stretch of the chain found; merged in id order by _merge()."""

    first_id: int | None = None
    last_id: int | None = None
    first_prev: str = ""
    last_hash: str = ""
    count: int = 0
    # The first row that fails on its own: (id, events before it in the range, reason).
    bad: tuple[int, int, str] | None = None
    # For each checkpointed id in the range up to ``bad``: (its hash, or None when the event is
    # missing; events in the range up to and including that id).
    positions: dict[int, tuple[str | None, int]] = field(default_factory=dict)


def _verify_range(
    after: int, upto: int | None, checkpoint_ids: list[int], batch: int,
    progress: Callable[[int], None] | None = None, progress_every: int = 100_000,
) -> _RangeReport:
    report = _RangeReport()
    wanted = sorted(i for i in set(checkpoint_ids) if i > after and (upto is None or i <= upto))
    w = 0
    prev = ""
    for rows in _iter_rows(batch, after, upto):
        for row in rows:
            event_id = row[0]
            while w < len(wanted) and wanted[w] < event_id:
                report.positions[wanted[w]] = (None, report.count)
                w += 1
            if report.first_id is None:
                report.first_id, report.first_prev = event_id, row[-1]
            elif row[-1] != prev:
                report.bad = (event_id, report.count, "its prev_hash does not match the event before it")
                return report
            if _row_hash(row) != row[1]:
                report.bad = (event_id, report.count, "its content does not match its hash")
                return report
            prev = report.last_hash = row[1]
            report.last_id = event_id
            report.count += 1
            if w < len(wanted) and wanted[w] == event_id:
                report.positions[event_id] = (row[1], report.count)
                w += 1
            if progress is not None and report.count % progress_every == 0:
                progress(report.count)
    return report


def _verify_range_in_child(after: int, upto: int | None, checkpoint_ids: list[int], batch: int) -> _RangeReport:
    try:
        return _verify_range(after, upto, checkpoint_ids, batch)
    finally:
        connection.close()


def _merge(reports: list[_RangeReport], checkpoints: list[AuditCheckpoint]) -> VerifyResult:
    """Combine range reports, in id order, into the verdict a single walk would give."""
    pending = list(checkpoints)  # sorted by last_event_id
    expected_prev, checked, last_id = GENESIS_HASH, 0, None

    def missing(cp: AuditCheckpoint, before: int, tail: bool = False) -> VerifyResult:
        why = f"it is missing, but checkpoint #{cp.pk} signed it"
        why += ": the tail of the chain was removed" if tail else ""
        return VerifyResult(False, before, cp.last_event_id, why)

    for report in reports:
        if report.first_id is None:
            continue
        if pending and pending[0].last_event_id < report.first_id:
            return missing(pending[0], checked)
        if report.first_prev != expected_prev:
            return VerifyResult(False, checked, report.first_id, "its prev_hash does not match the event before it")
        while pending and pending[0].last_event_id in report.positions:
            cp = pending.pop(0)
            found, position = report.positions[cp.last_event_id]
            if found is None:
                return missing(cp, checked + position)
            if found != cp.last_hash or checked + position != cp.event_count:
                return VerifyResult(
                    False, checked + position - 1, cp.last_event_id,
                    f"it differs from checkpoint #{cp.pk} (hash or position changed)",
                )
        if report.bad is not None:
            bad_id, before, reason = report.bad
            return VerifyResult(False, checked + before, bad_id, reason)
        checked += report.count
        expected_prev = report.last_hash
        last_id = report.last_id
    if pending:
        return missing(pending[0], checked, tail=True)
    return VerifyResult(True, checked, checkpoints=len(checkpoints), last_event_id=last_id, last_hash=expected_prev)


def audit_verify(
    *, progress: Callable[[int], None] | None = None, progress_every: int = 100_000, batch: int = 10_000,
    workers: int = 1,
) -> VerifyResult:
    """Walk the whole chain in id order and report the first broken link, if any.

    Checkpoints are read first: they only ever name events that were committed before them,
    so every one of them must be found in the walk that follows, with the same hash and at
    the same position; one whose event is missing means the tail was cut.

    With ``workers`` > 1 the id range is split and walked by that many processes (each event's
    hash depends only on its own row, so stretches can be checked apart and their ends joined
    afterwards). Not inside a transaction: the processes see only committed rows, and the
    connection is closed before they fork.
    """
    checkpoints = list(AuditCheckpoint.objects.order_by("last_event_id", "id"))
    for cp in checkpoints:
        if not _checkpoint_valid(cp):
            return VerifyResult(
                False, 0, cp.last_event_id,
                f"checkpoint #{cp.pk} has an invalid signature (forged, or signed with another key)",
            )
    checkpoint_ids = [cp.last_event_id for cp in checkpoints]
    bounds = AuditEvent.objects.aggregate(low=Min("id"), high=Max("id"))
    if workers <= 1 or bounds["low"] is None or connection.in_atomic_block:
        return _merge([_verify_range(0, None, checkpoint_ids, batch, progress, progress_every)], checkpoints)
    low, high = bounds["low"] - 1, bounds["high"]
    step = -(-(high - low) // workers)
    ranges: list[tuple[int, int | None]] = [(a, min(a + step, high)) for a in range(low, high, step)]
    # The last range is open-ended: it also covers what is appended during the walk.
    ranges[-1] = (ranges[-1][0], None)
    connections.close_all()  # a forked child must not share the parent's socket
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_verify_range_in_child, a, b, checkpoint_ids, batch) for a, b in ranges]
        reports = [f.result() for f in futures]
    return _merge(reports, checkpoints)
