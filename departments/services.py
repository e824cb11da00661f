"""Every change to departments, memberships and city roles goes through these functions.

Each one validates, writes, keeps the department's Django group (and so guardian's
object permissions) in step, and appends an audit event in the same transaction.
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, Group, User
from django.db import IntegrityError, transaction
from django.utils.text import slugify
from knox.models import AuthToken

from config.api.errors import ApplicationError, ConflictError, NotFoundError
from departments.models import CityRole, CityRoleAssignment, Department, Membership, Role
from departments.selectors import principal_forget
from exchange.audit.models import AuditOutcome
from exchange.audit.services import audit_record

# Who acted: a signed-in user, or None for the system (seeding, jobs).
Actor = User | AnonymousUser | None

DEPARTMENT_EDITABLE = ("name", "description", "contact_email", "contact_phone", "homepage", "is_active")


def _as_user(actor: Actor) -> User | None:
    return actor if isinstance(actor, User) else None


def _check_role(role: str, choices: type[Role] | type[CityRole]) -> None:
    if role not in choices.values:
        raise ApplicationError(
            f"Unknown role {role!r}.",
            fields={"role": [f"Choose one of: {', '.join(choices.values)}."]},
            code="unknown_role",
        )


@transaction.atomic
def department_create(
    *,
    actor: Actor,
    code: str,
    name: str,
    slug: str = "",
    description: str = "",
    contact_email: str = "",
    contact_phone: str = "",
    homepage: str = "",
) -> Department:
    department = Department(
        code=code,
        name=name,
        slug=slug or slugify(name)[:80],
        description=description,
        contact_email=contact_email,
        contact_phone=contact_phone,
        homepage=homepage,
    )
    # Validate before creating the group so that a bad code leaves nothing behind.
    department.full_clean(exclude=["group"])
    department.group = Group.objects.create(name=f"department:{code}")
    department.save()
    audit_record(
        actor=actor, action="department.create", obj=department, department_id=department.pk,
        details={"code": code, "name": name},
    )
    return department


@transaction.atomic
def department_update(*, actor: Actor, department: Department, **changes: object) -> Department:
    unknown = set(changes) - set(DEPARTMENT_EDITABLE)
    if unknown:
        raise ApplicationError(
            "These fields cannot be changed.", fields={f: ["Not editable."] for f in sorted(unknown)}
        )
    before = {f: getattr(department, f) for f in changes}
    for name, value in changes.items():
        setattr(department, name, value)
    department.full_clean()
    department.save()
    audit_record(
        actor=actor, action="department.update", obj=department, department_id=department.pk,
        details={"before": before, "after": changes},
    )
    return department


@transaction.atomic
def membership_add(
    *, actor: Actor, department: Department, user: User, role: str
) -> Membership:
    _check_role(role, Role)
    if Membership.objects.filter(department=department, user=user).exists():
        raise ConflictError(
            f"{user.get_username()} is already a member of {department.name}; change their role instead.",
            fields={"username": ["Already a member of this department."]},
            code="duplicate_membership",
        )
    try:
        with transaction.atomic():
            membership = Membership.objects.create(
                department=department, user=user, role=role, added_by=_as_user(actor)
            )
    except IntegrityError as exc:  # a concurrent add won the race
        raise ConflictError(
            f"{user.get_username()} is already a member of {department.name}.",
            code="duplicate_membership",
        ) from exc
    user.groups.add(department.group)
    principal_forget(user)
    audit_record(
        actor=actor, action="membership.add", obj=membership, department_id=department.pk,
        details={"user": user.get_username(), "role": role},
    )
    return membership


def _ensure_an_admin_remains(membership: Membership) -> None:
    others = Membership.objects.filter(department_id=membership.department_id, role=Role.ADMIN).exclude(
        pk=membership.pk
    )
    if membership.role == Role.ADMIN and not others.exists():
        raise ConflictError(
            "A department must keep at least one administrator; appoint another one first.",
            code="last_admin",
        )


@transaction.atomic
def membership_change_role(*, actor: Actor, membership: Membership, role: str) -> Membership:
    _check_role(role, Role)
    membership = Membership.objects.select_for_update().select_related("user", "department").get(pk=membership.pk)
    if membership.role == role:
        return membership
    if role != Role.ADMIN:
        _ensure_an_admin_remains(membership)
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role", "updated_at"])
    principal_forget(membership.user)
    audit_record(
        actor=actor, action="membership.change_role", obj=membership, department_id=membership.department_id,
        details={"user": membership.user.get_username(), "before": before, "after": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: Actor, membership: Membership) -> None:
    membership = Membership.objects.select_for_update().select_related("user", "department").get(pk=membership.pk)
    _ensure_an_admin_remains(membership)
    user, department = membership.user, membership.department
    audit_record(
        actor=actor, action="membership.remove", obj=membership, department_id=department.pk,
        details={"user": user.get_username(), "role": membership.role},
    )
    membership.delete()
    user.groups.remove(department.group)
    principal_forget(user)


@transaction.atomic
def city_role_grant(*, actor: Actor, user: User, role: str) -> CityRoleAssignment:
    _check_role(role, CityRole)
    assignment, created = CityRoleAssignment.objects.get_or_create(
        user=user, role=role, defaults={"granted_by": _as_user(actor)}
    )
    if not created:
        raise ConflictError(f"{user.get_username()} already holds the role {role}.", code="duplicate_role")
    principal_forget(user)
    audit_record(
        actor=actor, action="city_role.grant", obj=assignment,
        details={"user": user.get_username(), "role": role},
    )
    return assignment


@transaction.atomic
def city_role_revoke(*, actor: Actor, assignment: CityRoleAssignment) -> None:
    audit_record(
        actor=actor, action="city_role.revoke", obj=assignment,
        details={"user": assignment.user.get_username(), "role": assignment.role},
    )
    assignment.delete()
    principal_forget(assignment.user)


# --- API tokens -----------------------------------------------------------------------------

def login_failed(*, username: str, channel: str) -> None:
    audit_record(
        actor=None, actor_label="anonymous", action="auth.login_failed", outcome=AuditOutcome.DENIED,
        details={"username": username[:150], "channel": channel},
    )


def login_locked_out(*, username: str, client_ip: str | None) -> None:
    """Too many failed logins of this username from this address: further attempts are refused."""
    audit_record(
        actor=None, actor_label="anonymous", action="auth.locked_out", outcome=AuditOutcome.DENIED,
        details={"username": username[:150], "client_ip": client_ip},
    )


def login_succeeded(*, user: User, channel: str) -> None:
    audit_record(actor=user, action="auth.login", details={"channel": channel})


@transaction.atomic
def token_issue(*, user: User) -> tuple[AuthToken, str]:
    """Create an API token. The clear token is returned once and never stored."""
    instance, token = AuthToken.objects.create(user=user)
    audit_record(
        actor=user, action="auth.token_issued", object_type="knox.authtoken", object_id=instance.token_key,
        details={"expiry": instance.expiry},
    )
    return instance, token


@transaction.atomic
def token_revoke(*, user: User, token_key: str) -> None:
    deleted, _ = AuthToken.objects.filter(user=user, token_key=token_key).delete()
    if not deleted:
        raise NotFoundError("No such token.")
    audit_record(actor=user, action="auth.token_revoked", object_type="knox.authtoken", object_id=token_key)
