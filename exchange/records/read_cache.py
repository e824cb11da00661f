"""What a records request must know before it reads a page, kept in memory between requests.

Before its page, a records request needs the dataset (404 when the caller may not know it
exists), the caller's effective view (``exchange.access.policy.effective_view``) and whether the
dataset has a store table. Computed afresh that is eight statements, and planning the
dataset's visibility query alone costs more than the page. None of it changes between two
requests unless a grant, a grant's field, a membership, a department, a city role, an object
permission, the dataset or its schema changes, or a grant starts, ends or lapses with time.

So each web process keeps the answer, keyed by the caller, the dataset and the **access
version**: a number that triggers (migration ``exchange/0011``) move in the same transaction as
any change to those tables. A request reads the version first (token authentication reads it
in the same statement as the token, see ``departments/authentication.py``); a context built
under another version is never used, so a revoked grant, a removed member or a withdrawn
dataset is never served from here once its change is committed. Time does the rest: an entry
is used only until the next moment at which a grant of the dataset starts, ends, is revoked
(a revocation dated ahead) or one of its fields lapses.

The context is still built by the one policy function; this module only remembers its answer.
A context is built from a snapshot at least as new as the version it is filed under, so a hit
is never older than what the reader's own version says.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import connection
from django.db.models import Min, Q, Subquery
from django.utils import timezone

from catalog.models import Dataset
from catalog.selectors import dataset_get_for_user
from departments.access_version import VERSION_ATTR, VERSION_SQL
from exchange.access.models import Grant, GrantField
from exchange.access.policy import EffectiveView, effective_view
from exchange.records.store import store_exists

MAX_ENTRIES = 4096


@dataclass(frozen=True)
class ReadContext:
    dataset: Dataset
    view: EffectiveView
    store_exists: bool


@dataclass(frozen=True)
class _Entry:
    context: ReadContext
    until: datetime | None  # the next moment a grant of the dataset changes by itself


_lock = threading.Lock()
_entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()


def clear() -> None:
    with _lock:
        _entries.clear()


def access_version(user: User | AnonymousUser | None = None) -> int:
    """The current access version: the one token authentication read with the token, if it
    did for this request (taken once), else read now (one statement)."""
    if user is not None:
        known = user.__dict__.pop(VERSION_ATTR, None)
        if known is not None:
            return int(known)
    with connection.cursor() as cursor:
        cursor.execute(VERSION_SQL)
        row = cursor.fetchone()
    return int(row[0])


def _next_change(dataset_id: int, now: datetime) -> datetime | None:
    """The first moment after ``now`` at which a grant of the dataset comes into force, ends,
    is revoked, or one of its fields lapses: the policy's answer may change then without any
    write."""
    lapses = GrantField.objects.filter(grant__dataset_id=dataset_id, lapsed_at__gt=now).order_by().values(
        "grant__dataset_id").annotate(at=Min("lapsed_at")).values("at")
    grants = Grant.objects.filter(dataset_id=dataset_id).aggregate(
        starts=Min("valid_from", filter=Q(valid_from__gt=now)),
        ends=Min("valid_until", filter=Q(valid_until__gt=now)),
        revoked=Min("revoked_at", filter=Q(revoked_at__gt=now)),
        lapses=Min(Subquery(lapses)),
    )
    moments = [m for m in grants.values() if m is not None]
    return min(moments) if moments else None


def _build(user: User | AnonymousUser, dataset_id: int) -> ReadContext:
    dataset = dataset_get_for_user(user=user, dataset_id=dataset_id)
    view = effective_view(dataset=dataset, user=user)
    return ReadContext(dataset, view, store_exists(dataset))


def read_context(*, user: User | AnonymousUser, dataset_id: int) -> ReadContext:
    """The dataset (404 as ``dataset_get_for_user`` gives it), the user's effective view of it
    and whether its store table exists; from memory when nothing they depend on has changed."""
    if not isinstance(user, User) or not user.is_active:
        return _build(user, dataset_id)
    key = (user.pk, user.is_staff, user.is_superuser, dataset_id, access_version(user))
    now = timezone.now()
    with _lock:
        entry = _entries.get(key)
        if entry is not None:
            _entries.move_to_end(key)
    if entry is not None and (entry.until is None or now < entry.until):
        context = entry.context
        return dataclasses.replace(context, view=dataclasses.replace(context.view, at=now))
    until = _next_change(dataset_id, now)
    context = _build(user, dataset_id)
    if context.store_exists:
        # A missing table is looked for again next time: the first load creates it without
        # touching anything the version follows. An existing one only goes with its dataset.
        with _lock:
            _entries[key] = _Entry(context, until)
            _entries.move_to_end(key)
            while len(_entries) > MAX_ENTRIES:
                _entries.popitem(last=False)
    return context
