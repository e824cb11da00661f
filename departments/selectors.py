"""Reads about departments and people, always scoped to what the asking user may see."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from knox.models import AuthToken

from config.api.errors import NotFoundError, PermissionDeniedError
from departments.access_version import VERSION_ATTR
from departments.models import CityRole, CityRoleAssignment, Department, Membership, Role

_CACHE_ATTR = "_exchange_principal"


@dataclass(frozen=True)
class Principal:
    """What a user is in the exchange: their departments with a role in each, and their
    city-wide roles. Built once per request (two queries) and cached on the user object."""

    user_id: int | None
    is_staff: bool = False
    department_roles: dict[int, str] = field(default_factory=dict)
    city_roles: frozenset[str] = frozenset()

    @property
    def department_ids(self) -> frozenset[int]:
        return frozenset(self.department_roles)

    def role_in(self, department_id: int) -> str | None:
        return self.department_roles.get(department_id)

    def has_role(self, department_id: int, *roles: str) -> bool:
        return self.department_roles.get(department_id) in roles

    def departments_where(self, *roles: str) -> frozenset[int]:
        return frozenset(d for d, r in self.department_roles.items() if r in roles)

    def has_city_role(self, role: str) -> bool:
        return role in self.city_roles

    @property
    def is_reviewer(self) -> bool:
        return CityRole.GOVERNANCE_REVIEWER in self.city_roles

    @property
    def is_dpo(self) -> bool:
        return CityRole.DATA_PROTECTION_OFFICER in self.city_roles

    @property
    def is_city_auditor(self) -> bool:
        return CityRole.AUDITOR in self.city_roles


# Principals by (user, is_staff, access version), for requests whose authentication read the
# access version (token authentication does, in the statement that finds the token): the
# version moves in the same transaction as any change to memberships, departments and city
# roles (migration exchange/0011), so a principal filed under the version a request read is
# what the two queries would answer, or newer (it was built after the version was read).
_principals: OrderedDict[tuple[int, bool, int], Principal] = OrderedDict()
_principals_lock = threading.Lock()
PRINCIPALS_KEPT = 4096


def principal_of(user: User | AnonymousUser) -> Principal:
    if not user.is_authenticated:
        return Principal(user_id=None)
    cached = getattr(user, _CACHE_ATTR, None)
    if cached is not None:
        return cached
    version = getattr(user, VERSION_ATTR, None)  # through the lazy user of a web request too
    key = (user.pk, bool(getattr(user, "is_staff", False)), int(version)) if version is not None else None
    if key is not None:
        with _principals_lock:
            known = _principals.get(key)
            if known is not None:
                _principals.move_to_end(key)
        if known is not None:
            setattr(user, _CACHE_ATTR, known)
            return known
    principal = _build_principal(user)
    setattr(user, _CACHE_ATTR, principal)
    if key is not None:
        with _principals_lock:
            _principals[key] = principal
            while len(_principals) > PRINCIPALS_KEPT:
                _principals.popitem(last=False)
    return principal


def principals_forget_all() -> None:
    """Empty the per-process principal cache (tests that change roles behind the triggers)."""
    with _principals_lock:
        _principals.clear()


def _build_principal(user: User) -> Principal:
    return Principal(
        user_id=user.pk,
        is_staff=bool(getattr(user, "is_staff", False)),
        department_roles=dict(
            Membership.objects.filter(user_id=user.pk, department__is_active=True).values_list(
                "department_id", "role"
            )
        ),
        city_roles=frozenset(CityRoleAssignment.objects.filter(user_id=user.pk).values_list("role", flat=True)),
    )


def principal_forget(user: User) -> None:
    """Drop the cached principal after a role change made through this user object, and the
    access version read before it: the next principal is read afresh, not from the process
    cache under a version that predates the change."""
    for attr in (_CACHE_ATTR, VERSION_ATTR):
        if hasattr(user, attr):
            delattr(user, attr)


# --- Departments ----------------------------------------------------------------------------

def department_list(*, user: User | AnonymousUser, search: str = "") -> QuerySet[Department]:
    """Departments are known city-wide: every signed-in user sees the directory."""
    qs = Department.objects.annotate(member_count=Count("memberships", distinct=True))
    if not principal_of(user).is_staff:
        qs = qs.filter(is_active=True)
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(code__icontains=search))
    return qs.order_by("name")


def department_get(*, user: User | AnonymousUser, slug: str, manage: bool = False) -> Department:
    """Fetch a department by slug and check the user's right to it.

    404 when it does not exist (or is deactivated and the user is not staff); with
    ``manage=True``, 403 unless the user is staff or an admin of that department.
    """
    department = department_list(user=user).filter(slug=slug).first()
    if department is None:
        raise NotFoundError("No such department.")
    if manage and not can_manage_department(user=user, department=department):
        raise PermissionDeniedError("Only the department's administrators may do this.")
    return department


def can_manage_department(*, user: User | AnonymousUser, department: Department) -> bool:
    p = principal_of(user)
    return p.is_staff or p.has_role(department.pk, Role.ADMIN)


def can_view_members(*, user: User | AnonymousUser, department: Department) -> bool:
    p = principal_of(user)
    return p.is_staff or p.is_city_auditor or department.pk in p.department_ids


# --- Memberships ----------------------------------------------------------------------------

def membership_list(*, user: User | AnonymousUser, department: Department) -> QuerySet[Membership]:
    if not can_view_members(user=user, department=department):
        raise PermissionDeniedError("Only members of this department may see its members.")
    return (
        Membership.objects.filter(department=department)
        .select_related("user", "department", "added_by")
        .order_by("user__username")
    )


def membership_get(*, user: User | AnonymousUser, department: Department, membership_id: int) -> Membership:
    membership = membership_list(user=user, department=department).filter(pk=membership_id).first()
    if membership is None:
        raise NotFoundError("No such membership.")
    return membership


def user_memberships(*, user: User | AnonymousUser) -> QuerySet[Membership]:
    if not isinstance(user, User):
        return Membership.objects.none()
    return Membership.objects.filter(user=user).select_related("department").order_by("department__name")


def user_by_username(*, username: str) -> User | None:
    return User.objects.filter(username=username, is_active=True).first()


def city_role_list() -> QuerySet[CityRoleAssignment]:
    return CityRoleAssignment.objects.select_related("user", "granted_by").order_by("role", "user__username")


def token_list(*, user: User) -> QuerySet[AuthToken]:
    """The user's API tokens that still work, newest first (their digests, never the tokens)."""
    return AuthToken.objects.filter(user=user, expiry__gt=timezone.now()).order_by("-created")
