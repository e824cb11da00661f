"""Reads about access requests and grants, always scoped to what the asking user may see.

Who sees a request: its requester, its principal (the user, or the stewards and admins of the
department it is for), the stewards and auditors of the owning department, data protection
officers, city auditors and operators. Grants: the grantee (the user, or every member of the
grantee department), the stewards and auditors of the owning department, DPOs, city auditors
and operators. Anything else is answered with 404, never 403, so its existence does not leak.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import BooleanField, Case, Exists, OuterRef, Prefetch, Q, QuerySet, Subquery, Value, When
from django.utils import timezone

from catalog.models import Dataset, Field
from config.api.errors import NotFoundError
from departments.models import CityRole, CityRoleAssignment, Department, Membership, Role
from departments.selectors import Principal, principal_of
from exchange.access.models import AccessRequest, Grant, GrantField, GrantStatus, RequestStatus

AnyUser = User | AnonymousUser

# Roles that speak for a department when it is the principal of a request.
DEPARTMENT_REQUESTER_ROLES = (Role.STEWARD, Role.ADMIN)


def _sees_everything(p: Principal) -> bool:
    return p.is_staff or p.is_dpo or p.is_city_auditor


# --- Datasets -------------------------------------------------------------------------------

def current_fields(dataset: Dataset) -> dict[str, Field]:
    """The fields of the dataset's published schema by name (empty before publication)."""
    if dataset.current_schema_id is None:
        return {}
    return {f.name: f for f in Field.objects.filter(schema_id=dataset.current_schema_id).order_by("position")}


# --- Access requests ------------------------------------------------------------------------

def _request_base() -> QuerySet[AccessRequest]:
    return AccessRequest.objects.select_related(
        "dataset", "dataset__department", "requested_by", "principal_user", "principal_department",
    )


def access_request_list(*, user: AnyUser, to_decide: bool = False, mine: bool = False) -> QuerySet[AccessRequest]:
    """Requests the user may see. ``mine``: made by or for them (or their department);
    ``to_decide``: submitted requests on their departments' datasets that they, as steward,
    may decide (four eyes already applied)."""
    p = principal_of(user)
    if p.user_id is None:
        return AccessRequest.objects.none()
    qs = _request_base()
    if to_decide:
        return access_request_decidable(p)
    own = (Q(requested_by_id=p.user_id) | Q(principal_user_id=p.user_id)
           | Q(principal_department_id__in=p.departments_where(*DEPARTMENT_REQUESTER_ROLES)))
    if mine:
        return qs.filter(own)
    if _sees_everything(p):
        return qs
    owning = Q(dataset__department_id__in=p.departments_where(Role.STEWARD, Role.AUDITOR))
    return qs.filter(own | owning)


def access_request_decidable(p: Principal) -> QuerySet[AccessRequest]:
    """Submitted requests this principal may decide as a steward of the owning department."""
    if p.user_id is None:
        return AccessRequest.objects.none()
    return (
        _request_base()
        .filter(status=RequestStatus.SUBMITTED, dataset__department_id__in=p.departments_where(Role.STEWARD))
        .exclude(requested_by_id=p.user_id)
        .exclude(principal_user_id=p.user_id)
        .exclude(principal_department_id__in=p.department_ids)
    )


def access_request_get(*, user: AnyUser, request_id: int) -> AccessRequest:
    """Fetch a request the user may see (404 otherwise), with its decisions and timeline."""
    access_request = (
        access_request_list(user=user)
        .prefetch_related("decisions", "decisions__decided_by", "events", "events__actor")
        .filter(pk=request_id)
        .first()
    )
    if access_request is None:
        raise NotFoundError("No such access request.")
    return access_request


def request_grant_id(access_request: AccessRequest) -> int | None:
    return Grant.objects.filter(request_id=access_request.pk).values_list("pk", flat=True).first()


# --- Grants ---------------------------------------------------------------------------------

def recertification_cutoff(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(days=settings.GRANT_RECERTIFY_DAYS)


def needs_recertification_q(now: datetime | None = None) -> Q:
    return Q(status=GrantStatus.ACTIVE) & (
        Q(last_certified_at__lt=recertification_cutoff(now))
        | Q(last_certified_at__isnull=True, created_at__lt=recertification_cutoff(now))
    )


def _grant_base(now: datetime | None = None) -> QuerySet[Grant]:
    return (
        Grant.objects.select_related(
            "dataset", "dataset__department", "principal_user", "principal_department", "approved_by",
            "dpo_approved_by", "dpo_rejected_by", "revoked_by",
        )
        .prefetch_related(Prefetch("fields", queryset=GrantField.objects.order_by("id")))
        .annotate(needs_recertification=Case(When(needs_recertification_q(now), then=Value(True)),
                                             default=Value(False), output_field=BooleanField()))
    )


def grant_list(*, user: AnyUser, mine: bool = False, status: str = "", dataset_id: int | None = None,
               now: datetime | None = None) -> QuerySet[Grant]:
    """Grants the user may see, each annotated with ``needs_recertification``.

    ``mine``: only grants the user holds, themself or through one of their departments."""
    p = principal_of(user)
    if p.user_id is None:
        return Grant.objects.none()
    qs = _grant_base(now)
    own = Q(principal_user_id=p.user_id) | Q(principal_department_id__in=p.department_ids)
    if mine:
        qs = qs.filter(own)
    elif not _sees_everything(p):
        qs = qs.filter(own | Q(dataset__department_id__in=p.departments_where(Role.STEWARD, Role.AUDITOR)))
    if status:
        qs = qs.filter(status=status)
    if dataset_id is not None:
        qs = qs.filter(dataset_id=dataset_id)
    return qs


def grant_get(*, user: AnyUser, grant_id: int) -> Grant:
    grant = grant_list(user=user).filter(pk=grant_id).first()
    if grant is None:
        raise NotFoundError("No such grant.")
    return grant


def grants_awaiting_dpo(p: Principal) -> QuerySet[Grant]:
    """Grants waiting for this DPO's second approval, without those they may not decide."""
    if not p.is_dpo or p.user_id is None:
        return Grant.objects.none()
    return (
        _grant_base()
        .filter(status=GrantStatus.PENDING_DPO)
        .exclude(approved_by_id=p.user_id)
        .exclude(request__requested_by_id=p.user_id)
        .exclude(principal_user_id=p.user_id)
        .exclude(principal_department_id__in=p.department_ids)
    )


def grants_to_recertify(p: Principal, now: datetime | None = None) -> QuerySet[Grant]:
    return _grant_base(now).filter(
        needs_recertification_q(now), dataset__department_id__in=p.departments_where(Role.STEWARD)
    )


@dataclass(frozen=True)
class PendingForUser:
    requests_to_decide: QuerySet[AccessRequest]
    grants_awaiting_dpo: QuerySet[Grant]
    grants_to_recertify: QuerySet[Grant]


def pending_for(*, user: AnyUser, now: datetime | None = None) -> PendingForUser:
    """What waits on this user: decisions as steward, second approvals as DPO, recertifications."""
    p = principal_of(user)
    return PendingForUser(
        requests_to_decide=access_request_decidable(p),
        grants_awaiting_dpo=grants_awaiting_dpo(p),
        grants_to_recertify=grants_to_recertify(p, now),
    )


# --- People to tell -------------------------------------------------------------------------

def stewards_of(department_id: int) -> list[User]:
    return list(
        User.objects.filter(
            is_active=True,
            memberships__department_id=department_id,
            memberships__role=Role.STEWARD,
        ).distinct()
    )


def data_protection_officers() -> list[User]:
    return list(
        User.objects.filter(
            Exists(CityRoleAssignment.objects.filter(user=OuterRef("pk"), role=CityRole.DATA_PROTECTION_OFFICER)),
            is_active=True,
        )
    )


def grantee_recipients(grant: Grant | AccessRequest) -> list[User]:
    """Who speaks for the principal of a grant or request: the user, or the stewards (and
    admins, if no steward) of the department."""
    if grant.principal_user_id is not None:
        return [grant.principal_user] if grant.principal_user is not None else []
    assert grant.principal_department_id is not None
    people = stewards_of(grant.principal_department_id)
    if not people:
        people = list(User.objects.filter(
            is_active=True, memberships__department_id=grant.principal_department_id,
            memberships__role=Role.ADMIN,
        ).distinct())
    return people


def department_by_slug(*, slug: str) -> Department | None:
    return Department.objects.filter(slug=slug, is_active=True).first()


def is_member(*, user_id: int, department_id: int) -> bool:
    return Membership.objects.filter(user_id=user_id, department_id=department_id).exists()


def grant_needs_recertification(grant: Grant, now: datetime | None = None) -> bool:
    """The flag as annotated by the selector, or computed for an instance that was not."""
    flagged = getattr(grant, "needs_recertification", None)
    if flagged is not None:
        return bool(flagged)
    if grant.status != GrantStatus.ACTIVE:
        return False
    return (grant.last_certified_at or grant.created_at) < recertification_cutoff(now)


# --- Explain --------------------------------------------------------------------------------

def _when(value: datetime | None) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M") if value else "?"


def explain_hidden(*, dataset: Dataset, user: User | None, department: Department | None,
                   hidden: dict[str, str]) -> dict[str, str]:
    """The policy's reasons for hidden fields, made specific from the principal's grants and
    requests that are not (or no longer) in force: pending, revoked, expired, rejected, lapsed,
    not yet started, denied or still undecided. Two queries whatever the number of grants."""
    if not hidden:
        return hidden
    from exchange.access.policy import DEPARTMENT_GRANT_ROLES

    if user is not None:
        department_ids = principal_of(user).departments_where(*DEPARTMENT_GRANT_ROLES)
        who = Q(principal_user=user) | Q(principal_department_id__in=department_ids)
    else:
        who = Q(principal_department=department)
    now = timezone.now()
    reasons: dict[str, str] = {}
    grant_fields = (
        GrantField.objects.filter(grant__in=Grant.objects.filter(who, dataset=dataset), field_name__in=list(hidden))
        .select_related("grant")
        .order_by("-grant__created_at", "-grant_id")
    )
    for gf in grant_fields:
        g = gf.grant
        if gf.field_name in reasons:
            continue
        if gf.lapsed_at is not None:
            why = f"grant #{g.pk} gave it, but it lapsed on {_when(gf.lapsed_at)}: {gf.lapse_reason}"
        elif g.status == GrantStatus.PENDING_DPO:
            why = f"approved by the steward in grant #{g.pk}, waiting for the data protection officer"
        elif g.status == GrantStatus.REJECTED:
            why = f"grant #{g.pk} was rejected by the data protection officer"
        elif g.status == GrantStatus.REVOKED:
            why = f"grant #{g.pk} was revoked on {_when(g.revoked_at)}: {g.revoke_reason}"
        elif g.status == GrantStatus.EXPIRED or g.valid_until <= now:
            why = f"grant #{g.pk} ended on {_when(g.valid_until)}"
        elif g.valid_from > now:
            why = f"grant #{g.pk} starts on {_when(g.valid_from)}"
        else:
            continue
        reasons[gf.field_name] = why
    # The latest requests are the ones that explain; older ones were superseded by them.
    requests = AccessRequest.objects.filter(who, dataset=dataset).prefetch_related("decisions").order_by(
        "-created_at", "-id")[:50]
    for access_request in requests:
        decided = {d.field_name: d for d in access_request.decisions.all()}
        for name in access_request.fields:
            if name not in hidden or name in reasons:
                continue
            if access_request.status == RequestStatus.SUBMITTED:
                reasons[name] = f"requested in request #{access_request.pk}, waiting for the steward's decision"
            elif name in decided and not decided[name].approved:
                reasons[name] = f"denied in request #{access_request.pk}: {decided[name].reason}"
    return {name: f"{why}; {reasons[name]}" if name in reasons else why for name, why in hidden.items()}


def grant_fields_with_sensitivity() -> Prefetch:
    """Prefetch of a grant's fields, each annotated with its ``sensitivity`` in the dataset's
    current schema (empty when no longer there): one query for every grant of a page."""
    sensitivity = Subquery(Field.objects.filter(
        schema_id=OuterRef("grant__dataset__current_schema_id"), name=OuterRef("field_name"),
    ).values("sensitivity")[:1])
    return Prefetch("fields", queryset=GrantField.objects.annotate(sensitivity=sensitivity).order_by("id"))
