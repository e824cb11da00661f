"""The auditor's questions about grants: who could see field F of dataset D at time T, and
through which grant; and the history of a dataset's access decisions.

Both answer from the grants themselves (their periods, revocations and field lapses are kept,
never deleted) with the same rule the policy applies at read time (``policy.active_grants_q``),
so the answer for a past moment is the one the policy gave then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet

from catalog.models import Dataset
from config.api.errors import ApplicationError, PermissionDeniedError
from exchange.access.models import Grant, GrantField
from exchange.access.policy import OWNER_ROLES, active_grants_q
from exchange.audit.models import AuditEvent, AuditOutcome
from exchange.audit.services import audit_record
from exchange.oversight.selectors import audit_scope_of

TIMELINE_ACTIONS = ("access_request.", "grant.", "subscription.", "delivery.")


def require_auditor(*, user: User | AnonymousUser, dataset: Dataset, action: str) -> None:
    """Auditors whose scope covers the owning department (the audit API's own rule), or an
    audited 403."""
    scope = audit_scope_of(user)
    if scope is None or not scope.covers(dataset.department_id):
        audit_record(actor=user, action="audit.denied", outcome=AuditOutcome.DENIED, obj=dataset,
                     dataset_id=dataset.pk, department_id=dataset.department_id, details={"asked": action})
        raise PermissionDeniedError("Only auditors may read the audit trail.")


@dataclass(frozen=True)
class Visibility:
    grant_id: int | None
    principal_kind: str
    principal: str
    form: str
    valid_from: datetime | None
    valid_until: datetime | None
    purpose: str
    legal_basis: str
    row_filter: list[dict[str, Any]]
    approved_by: str
    dpo_approved_by: str
    revoked_at: datetime | None


def who_could_see(*, dataset: Dataset, field: str, at: datetime) -> list[Visibility]:
    """Every principal that could see ``field`` of ``dataset`` at ``at``: the owning department
    (its stewards, analysts and admins see their own data in clear) and each grant in force
    then that covered the field (not lapsed by then). One query of plain values: a dataset
    may have had thousands of grants, and model instances for each grant and its users would
    cost more than the query."""
    if not field:
        raise ApplicationError("Name a field.", fields={"field": ["Required."]})
    out = [Visibility(
        grant_id=None, principal_kind="department", principal=f"{dataset.department.code} (owner: "
        f"{', '.join(OWNER_ROLES)})", form="clear", valid_from=None, valid_until=None, purpose="owner",
        legal_basis="", row_filter=[], approved_by="", dpo_approved_by="", revoked_at=None,
    )]
    in_force = Grant.objects.filter(active_grants_q(at), dataset=dataset).values("id")
    rows = (
        GrantField.objects.filter(Q(lapsed_at__isnull=True) | Q(lapsed_at__gt=at), field_name=field,
                                  grant__in=in_force)
        .order_by("grant__valid_from", "grant_id")
        .values_list(
            "grant_id", "grant__principal_kind", "grant__principal_user__username",
            "grant__principal_department__code", "form", "grant__valid_from", "grant__valid_until",
            "grant__purpose", "grant__legal_basis", "grant__row_filter", "grant__approved_by__username",
            "grant__dpo_approved_by__username", "grant__revoked_at",
        )
    )
    for (grant_id, kind, username, department_code, form, valid_from, valid_until, purpose, legal_basis,
         row_filter, approved_by, dpo_approved_by, revoked_at) in rows:
        out.append(Visibility(
            grant_id=grant_id, principal_kind=kind, principal=username or department_code or "", form=form,
            valid_from=valid_from, valid_until=valid_until, purpose=purpose, legal_basis=legal_basis,
            row_filter=list(row_filter or []), approved_by=approved_by, dpo_approved_by=dpo_approved_by or "",
            revoked_at=revoked_at,
        ))
    return out


def grant_timeline(*, dataset: Dataset) -> QuerySet[AuditEvent]:
    """The dataset's access history as the audit trail recorded it: requests, decisions,
    grants created, approved, revoked, expired and lapsed, subscriptions and deliveries."""
    actions = Q()
    for prefix in TIMELINE_ACTIONS:
        actions |= Q(action__startswith=prefix)
    return AuditEvent.objects.filter(actions, dataset_id=dataset.pk).order_by("occurred_at", "id")
