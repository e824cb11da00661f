"""Reads about data requests, always scoped to what the asking user may see.

Open, routed, accepted and fulfilled requests are seen by every signed-in user, so that others
join one instead of filing a duplicate. A declined, withdrawn or duplicate-closed request stays
visible only to its requester, those who joined it, governance reviewers and the members of the
department it was routed to. Anything else is answered with 404, never 403.
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet

from config.api.errors import NotFoundError
from departments.models import CityRole, Department, Role
from departments.selectors import Principal, principal_of
from exchange.demand.models import PUBLIC_STATUSES, DataRequest, DataRequestSupporter

AnyUser = User | AnonymousUser


def _base() -> QuerySet[DataRequest]:
    return DataRequest.objects.select_related(
        "requested_by", "department", "routed_department", "routed_by", "decided_by", "duplicate_of",
        "dataset", "dataset__department",
    )


def _visible_q(p: Principal, user_id: int) -> Q:
    # Exists rather than a join on supporters: one row per request, so lists need no DISTINCT
    # (and keep the page's total in the page's own statement).
    joined = Exists(DataRequestSupporter.objects.filter(request_id=OuterRef("pk"), user_id=user_id))
    return (Q(status__in=PUBLIC_STATUSES) | Q(requested_by_id=user_id)
            | Q(routed_department_id__in=p.department_ids) | Q(joined))


def data_request_list(*, user: AnyUser, status: str = "", department: str = "", search: str = "",
                      mine: bool = False) -> QuerySet[DataRequest]:
    """Requests the user may see, newest first. ``department`` (a slug) matches the department
    a request was routed to; ``mine``: made or joined by the user; ``search``: title,
    description or a requested field's name."""
    p = principal_of(user)
    user_id = p.user_id
    if user_id is None:
        return DataRequest.objects.none()
    qs = _base()
    if not p.is_reviewer:
        qs = qs.filter(_visible_q(p, user_id))
    if mine:
        qs = qs.filter(Q(requested_by_id=user_id)
                       | Q(Exists(DataRequestSupporter.objects.filter(request_id=OuterRef("pk"), user_id=user_id))))
    if status:
        qs = qs.filter(status=status)
    if department:
        qs = qs.filter(routed_department__slug=department)
    if search:
        qs = qs.filter(Q(title__icontains=search) | Q(description__icontains=search)
                       | Q(fields__icontains=search))
    return qs.order_by("-created_at", "-id")


def data_request_get(*, user: AnyUser, data_request_id: int) -> DataRequest:
    """Fetch a request the user may see (404 otherwise), with its supporters and timeline."""
    data_request = (
        data_request_list(user=user)
        .prefetch_related(Prefetch("supporters", queryset=DataRequestSupporter.objects.select_related("user")),
                          "events", "events__actor")
        .filter(pk=data_request_id)
        .first()
    )
    if data_request is None:
        raise NotFoundError("No such data request.")
    return data_request


def has_joined(*, data_request: DataRequest, user_id: int | None) -> bool:
    """From the prefetched supporters (no query)."""
    return any(s.user_id == user_id for s in data_request.supporters.all())


# --- People to tell -------------------------------------------------------------------------

def reviewers() -> list[User]:
    return list(User.objects.filter(city_roles__role=CityRole.GOVERNANCE_REVIEWER, is_active=True).distinct())


def stewards_of(department_id: int) -> list[User]:
    return list(User.objects.filter(is_active=True, memberships__department_id=department_id,
                                    memberships__role=Role.STEWARD).distinct())


def routing_departments() -> QuerySet[Department]:
    return Department.objects.filter(is_active=True).order_by("name")


def department_by_slug(*, slug: str) -> Department | None:
    return Department.objects.filter(slug=slug, is_active=True).first()
