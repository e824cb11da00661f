"""The one rule of access.

:func:`effective_view` answers, for a principal (a user, or a department through its
subscriptions) on a dataset at a moment: which fields are visible, each in which form, and
which rows. It is the union of the active grants that apply; owners see their own data in
clear. Every path that returns or moves record values builds its SQL from an
:class:`EffectiveView` (exchange/records.py); nothing reads the store any other way.

Union semantics, per field and per row: a value is shown if at least one applicable grant
covers that field *and* that row (its row filter matches); among those grants, the most
revealing form wins (clear > pseudonymised > masked). A row is returned if at least one grant
covers it. A grant with no row filter covers every row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Prefetch, Q
from django.utils import timezone

from catalog.models import Dataset, Field
from departments.models import Department, Role
from departments.selectors import principal_of
from exchange.access.models import FORM_ORDER, AccessForm, Grant, GrantField, GrantStatus, PrincipalKind

T = TypeVar("T")

# Department grants reach the members who work with data; administrators and auditors of
# the department do not read records through them (auditors read evidence, not values).
DEPARTMENT_GRANT_ROLES = (Role.STEWARD, Role.ANALYST)
# Members of the owning department who see its records in clear.
OWNER_ROLES = (Role.STEWARD, Role.ANALYST, Role.ADMIN)

RowFilter = tuple[dict[str, Any], ...]  # conditions ANDed together; () = every row


@dataclass(frozen=True)
class Rule:
    """One applicable grant's contribution to a field: this form, on rows matching this filter."""

    form: str
    row_filter: RowFilter
    grant_id: int | None


@dataclass(frozen=True)
class FieldAccess:
    name: str
    type: str
    sensitivity: str
    position: int
    rules: tuple[Rule, ...]

    @property
    def form(self) -> str:
        """The most revealing form any grant gives (on at least some rows)."""
        return min((r.form for r in self.rules), key=lambda form: FORM_ORDER.index(AccessForm(form)))

    @property
    def effective_forms(self) -> tuple[str, ...]:
        """The forms that can apply, most revealing first, up to the first one that covers
        every row (the less revealing ones after it never apply)."""
        forms: list[str] = []
        for form in sorted({r.form for r in self.rules}, key=lambda f: FORM_ORDER.index(AccessForm(f))):
            forms.append(form)
            if any(not r.row_filter for r in self.rules if r.form == form):
                break
        return tuple(forms)

    @property
    def output_type(self) -> str:
        """The type of the values shown: the field's own in clear, text when masked or
        pseudonymised on some rows."""
        return self.type if self.effective_forms == (AccessForm.CLEAR,) else "text"

    @property
    def grant_ids(self) -> tuple[int, ...]:
        return tuple(sorted({r.grant_id for r in self.rules if r.grant_id is not None}))

    @property
    def unconditional(self) -> bool:
        return any(not r.row_filter for r in self.rules)


@dataclass(frozen=True)
class GrantSummary:
    id: int
    principal_kind: str
    principal: str
    valid_from: datetime
    valid_until: datetime
    purpose: str
    legal_basis: str
    row_filter: RowFilter
    fields: dict[str, str]


@dataclass(frozen=True)
class EffectiveView:
    dataset_id: int
    principal: str
    at: datetime
    is_owner: bool
    fields: dict[str, FieldAccess]  # in schema order
    row_scopes: tuple[RowFilter, ...]  # a row is visible if it matches any; () in it = all rows
    grants: tuple[GrantSummary, ...]
    hidden: dict[str, str] = field(default_factory=dict)  # field -> why it is not visible
    schema_fields: dict[str, Field] = field(default_factory=dict)
    # What other modules work out from this view alone (the records' SQL projections of its
    # fields), remembered with it; the copies ``dataclasses.replace`` makes (the read cache's,
    # one per request) share it. Nothing in it may depend on ``at``.
    derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def can_read(self) -> bool:
        return bool(self.fields)

    @property
    def all_rows(self) -> bool:
        return any(not scope for scope in self.row_scopes)

    def visible(self, name: str) -> bool:
        return name in self.fields

    def remembered(self, name: str, key: Any, limit: int, build: Callable[[], T]) -> T:
        """``build()``, worked out once per ``key`` and kept in ``derived[name]``: at most
        ``limit`` keys, then all forgotten at once (so a few hot keys never pay for a lock or
        an order of use)."""
        kept = self.derived.setdefault(name, {})
        value = kept.get(key)
        if value is None:
            value = build()
            if len(kept) >= limit:
                kept.clear()
            kept[key] = value
        return value


def active_grants_q(at: datetime) -> Q:
    """Grants in force at ``at``: activated (not pending or rejected), within their period,
    and not revoked before ``at``. Works for the past too (point-in-time questions)."""
    return (
        Q(status__in=[GrantStatus.ACTIVE, GrantStatus.REVOKED, GrantStatus.EXPIRED])
        & Q(valid_from__lte=at, valid_until__gt=at)
        & (Q(revoked_at__isnull=True) | Q(revoked_at__gt=at))
    )


def applicable_grants(
    *, dataset: Dataset, user: User | None, department: Department | None, at: datetime,
    department_ids: frozenset[int] = frozenset(),
) -> list[Grant]:
    who = Q()
    if user is not None:
        who |= Q(principal_kind=PrincipalKind.USER, principal_user=user)
        if department_ids:
            who |= Q(principal_kind=PrincipalKind.DEPARTMENT, principal_department_id__in=department_ids)
    if department is not None:
        who |= Q(principal_kind=PrincipalKind.DEPARTMENT, principal_department=department)
    live_fields = GrantField.objects.filter(Q(lapsed_at__isnull=True) | Q(lapsed_at__gt=at))
    return list(
        Grant.objects.filter(who, active_grants_q(at), dataset=dataset)
        .select_related("principal_user", "principal_department")
        .prefetch_related(Prefetch("fields", queryset=live_fields, to_attr="live_fields"))
        .order_by("id")
    )


def effective_view(
    *,
    dataset: Dataset,
    user: User | AnonymousUser | None = None,
    department: Department | None = None,
    at: datetime | None = None,
) -> EffectiveView:
    """The effective view of one principal (a user, or a department) on ``dataset`` at ``at``.

    Costs a constant number of queries whatever the number of grants: the principal's roles
    (cached per request), the current schema's fields, the grants with their fields.
    """
    if (user is None) == (department is None):
        raise ValueError("effective_view needs exactly one principal: a user or a department")
    at = at or timezone.now()
    schema_fields = (
        {f.name: f for f in Field.objects.filter(schema_id=dataset.current_schema_id).order_by("position")}
        if dataset.current_schema_id else {}
    )
    real_user = user if isinstance(user, User) and user.is_active else None
    if user is not None and real_user is None:
        return EffectiveView(dataset.pk, "anonymous", at, False, {}, (), (),
                             {n: "not signed in" for n in schema_fields}, schema_fields)

    if real_user is not None:
        principal = principal_of(real_user)
        label = real_user.get_username()
        is_owner = principal.has_role(dataset.department_id, *OWNER_ROLES)
        department_ids = principal.departments_where(*DEPARTMENT_GRANT_ROLES)
    else:
        assert department is not None
        label = f"department:{department.code}"
        is_owner = department.pk == dataset.department_id
        department_ids = frozenset()

    if is_owner:
        owner_fields = {
            name: FieldAccess(name, f.type, f.sensitivity, f.position, (Rule(AccessForm.CLEAR, (), None),))
            for name, f in schema_fields.items()
        }
        return EffectiveView(dataset.pk, label, at, True, owner_fields, ((),), (), {}, schema_fields)

    grants = applicable_grants(dataset=dataset, user=real_user, department=department, at=at,
                               department_ids=department_ids)
    rules: dict[str, list[Rule]] = {}
    summaries = []
    lapsed: dict[str, str] = {}
    for grant in grants:
        row_filter: RowFilter = tuple(grant.row_filter or ())
        given = {}
        for gf in grant.live_fields:  # type: ignore[attr-defined]
            if gf.field_name not in schema_fields:
                lapsed[gf.field_name] = "granted, but no longer in the published schema"
                continue
            rules.setdefault(gf.field_name, []).append(Rule(gf.form, row_filter, grant.pk))
            given[gf.field_name] = gf.form
        summaries.append(GrantSummary(
            id=grant.pk, principal_kind=grant.principal_kind,
            principal=(grant.principal_user.get_username() if grant.principal_user
                       else grant.principal_department.code if grant.principal_department else ""),
            valid_from=grant.valid_from, valid_until=grant.valid_until, purpose=grant.purpose,
            legal_basis=grant.legal_basis, row_filter=row_filter, fields=given,
        ))
    fields = {
        name: FieldAccess(name, f.type, f.sensitivity, f.position, tuple(rules[name]))
        for name, f in schema_fields.items() if name in rules
    }
    hidden = {
        name: ("no active grant covers this field" if grants else "no active grant on this dataset")
        for name in schema_fields if name not in fields
    }
    hidden.update({k: v for k, v in lapsed.items() if k not in fields})
    scopes = {json.dumps(s.row_filter, sort_keys=True, default=str): s.row_filter for s in summaries if s.fields}
    row_scopes = tuple(scopes.values())
    return EffectiveView(dataset.pk, label, at, False, fields, row_scopes, tuple(summaries), hidden,
                         schema_fields)
