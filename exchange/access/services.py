"""Every change to access requests and grants goes through these functions.

The workflow::

    submitted ──decide──► approved / partially_approved            (grant active at once)
        │          └────► awaiting_dpo ──dpo approve──► approved / partially_approved
        │                      └──────── dpo reject ──► denied      (grant rejected)
        ├──decide (nothing approved)──► denied                      (no grant)
        └──withdraw (requester)──────► withdrawn

A DPO rejection rejects the whole grant and denies the request, including the fields the
steward approved: the steward decided the fields as one package, and handing out only part of
it would be a grant nobody approved. The requester can ask again without the sensitive fields.

Each function validates before writing, locks the row it changes before appending to the audit
chain (which takes the chain lock), writes the timeline and the audit event in the same
transaction, keeps guardian's ``catalog.view_dataset`` in step with active grants, and sends
notifications whose e-mails leave only after commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from guardian.shortcuts import assign_perm, remove_perm

from catalog.models import Dataset, DatasetStatus, Field, FieldType, Sensitivity
from config.api.errors import ApplicationError, ConflictError, PermissionDeniedError
from departments.models import Department, Role
from departments.notifications import notify
from departments.selectors import principal_of
from exchange.access import selectors as sel
from exchange.access.models import (
    AccessForm,
    AccessRequest,
    FieldDecision,
    Grant,
    GrantField,
    GrantStatus,
    PrincipalKind,
    RequestEvent,
    RequestStatus,
)
from exchange.access.signals import grant_changing, grant_narrowed, send_required
from exchange.audit.services import audit_record

VIEW_DATASET = "catalog.view_dataset"

# The form a steward is offered for a field of each class; anything more revealing than this
# on a personal field (i.e. clear) needs an explicit reason.
DEFAULT_FORM: dict[str, str] = {
    Sensitivity.PUBLIC: AccessForm.CLEAR,
    Sensitivity.INTERNAL: AccessForm.CLEAR,
    Sensitivity.CONFIDENTIAL: AccessForm.MASKED,
    Sensitivity.PERSONAL: AccessForm.PSEUDONYMISED,
}
# Approving any field of these classes needs the data protection officer's second approval.
DPO_SENSITIVITIES = frozenset({Sensitivity.CONFIDENTIAL, Sensitivity.PERSONAL})

UNDECIDED = (RequestStatus.SUBMITTED,)


def _link_request(access_request: AccessRequest) -> str:
    return f"/api/v1/access-requests/{access_request.pk}/"


def _lock_subscriptions(grant: Grant) -> None:
    """Before anything is audited (see the sync service)."""
    send_required(grant_changing, grant=grant)


def _end_subscriptions(grant: Grant, *, reason: str, at: dt.datetime | None) -> None:
    """Deliveries stop with the grant, in the same transaction (see the sync service)."""
    send_required(grant_narrowed, grant=grant, reason=reason, at=at)


def _link_grant(grant: Grant) -> str:
    return f"/api/v1/grants/{grant.pk}/"


def _event(*, access_request_id: int | None, actor: User | None, action: str, comment: str = "",
           details: dict[str, Any] | None = None) -> None:
    if access_request_id is not None:
        RequestEvent.objects.create(request_id=access_request_id, actor=actor, action=action, comment=comment,
                                    details=details or {})


def _audit_grant(*, actor: User | None, action: str, grant: Grant, fields: Iterable[str] | None = None,
                 details: dict[str, Any] | None = None) -> None:
    audit_record(
        actor=actor, action=action, obj=grant, department_id=grant.dataset.department_id,
        dataset_id=grant.dataset_id,
        fields=list(fields) if fields is not None else [f.field_name for f in grant.fields.all()],
        purpose=grant.purpose,
        details={"principal_kind": grant.principal_kind, "principal_user_id": grant.principal_user_id,
                 "principal_department_id": grant.principal_department_id, **(details or {})},
    )


# --- Row filters ----------------------------------------------------------------------------

ORDERED_OPS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "is_null")
OPS_BY_TYPE: dict[str, tuple[str, ...]] = {
    FieldType.TEXT: (*ORDERED_OPS, "contains"),
    FieldType.INTEGER: ORDERED_OPS,
    FieldType.DECIMAL: ORDERED_OPS,
    FieldType.DATE: ORDERED_OPS,
    FieldType.TIMESTAMP: ORDERED_OPS,
    FieldType.BOOLEAN: ("eq", "ne", "is_null"),
    FieldType.GEOPOINT: ("is_null",),
    FieldType.JSON: ("is_null",),
}
ROW_FILTER_MAX_CONDITIONS = 20
ROW_FILTER_MAX_IN = 100
ROW_FILTER_MAX_TEXT = 500


class _BadValue(ValueError):
    pass


def _scalar(field_type: str, value: Any) -> Any:
    """The value in its canonical JSON form for a field of this type, or _BadValue."""
    if field_type == FieldType.TEXT:
        if not isinstance(value, str) or len(value) > ROW_FILTER_MAX_TEXT:
            raise _BadValue(f"must be text of at most {ROW_FILTER_MAX_TEXT} characters")
        return value
    if field_type == FieldType.INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadValue("must be a whole number")
        return value
    if field_type == FieldType.DECIMAL:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _BadValue("must be a number")
        try:
            number = Decimal(str(value))
        except InvalidOperation as exc:
            raise _BadValue("must be a number") from exc
        if not number.is_finite():
            raise _BadValue("must be a finite number")
        return str(number)
    if field_type == FieldType.BOOLEAN:
        if not isinstance(value, bool):
            raise _BadValue("must be true or false")
        return value
    if field_type == FieldType.DATE:
        parsed_date = parse_date(value) if isinstance(value, str) else None
        if parsed_date is None:
            raise _BadValue("must be a date as YYYY-MM-DD")
        return parsed_date.isoformat()
    if field_type == FieldType.TIMESTAMP:
        try:
            parsed = parse_datetime(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise _BadValue("must be an ISO 8601 timestamp with a time zone")
        return parsed.isoformat()
    raise _BadValue("cannot be compared")


def row_filter_validate(*, fields: dict[str, Field], row_filter: Any) -> list[dict[str, Any]]:
    """Check a structured row filter against the schema and return it in canonical form.

    Each condition is ``{"field", "op", "value"}``; the operator must fit the field's type and
    the value must fit the field (a list for ``in``, a boolean for ``is_null``: true means
    "is null"). The filter is data, never SQL: the policy builds the query from it."""
    if row_filter in (None, ""):
        return []
    if not isinstance(row_filter, list):
        raise ApplicationError("The row filter is not valid.", fields={"row_filter": ["Must be a list of conditions."]})
    if len(row_filter) > ROW_FILTER_MAX_CONDITIONS:
        raise ApplicationError("The row filter is not valid.",
                               fields={"row_filter": [f"At most {ROW_FILTER_MAX_CONDITIONS} conditions."]})
    errors: dict[str, list[str]] = {}
    clean: list[dict[str, Any]] = []
    for i, condition in enumerate(row_filter):
        key = f"row_filter[{i}]"
        if not isinstance(condition, dict) or set(condition) != {"field", "op", "value"}:
            errors[key] = ['Each condition is an object with exactly "field", "op" and "value".']
            continue
        name, op, value = condition["field"], condition["op"], condition["value"]
        field = fields.get(name) if isinstance(name, str) else None
        if field is None:
            errors[f"{key}.field"] = [f"Unknown field {name!r}: not in the dataset's current schema."]
            continue
        allowed = OPS_BY_TYPE.get(field.type, ("is_null",))
        if op not in allowed:
            errors[f"{key}.op"] = [f"Operator {op!r} does not fit a {field.type} field; use one of: "
                                   f"{', '.join(allowed)}."]
            continue
        try:
            if op == "is_null":
                if not isinstance(value, bool):
                    raise _BadValue("must be true (is null) or false (is not null)")
                canonical: Any = value
            elif op == "in":
                if not isinstance(value, list) or not 1 <= len(value) <= ROW_FILTER_MAX_IN:
                    raise _BadValue(f"must be a list of 1 to {ROW_FILTER_MAX_IN} values")
                canonical = [_scalar(field.type, v) for v in value]
            else:
                canonical = _scalar(field.type, value)
        except _BadValue as exc:
            errors[f"{key}.value"] = [f"The value for {name} {exc}."]
            continue
        clean.append({"field": name, "op": op, "value": canonical})
    if errors:
        raise ApplicationError("The row filter is not valid.", fields=errors)
    return clean


# --- Requests -------------------------------------------------------------------------------

def form_defaults(*, dataset: Dataset, field_names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The form offered by default for each field, from its classification. Fields no longer
    in the current schema are left out."""
    fields = sel.current_fields(dataset)
    return {
        name: {"sensitivity": fields[name].sensitivity, "form": DEFAULT_FORM[fields[name].sensitivity]}
        for name in field_names if name in fields
    }


@transaction.atomic
def access_request_submit(
    *,
    actor: User,
    dataset: Dataset,
    fields: Sequence[str],
    purpose: str,
    legal_basis: str,
    requested_start: dt.datetime,
    requested_end: dt.datetime,
    row_filter: Any = None,
    principal_department: Department | None = None,
    renews: Grant | None = None,
    comment: str = "",
    now: dt.datetime | None = None,
) -> AccessRequest:
    """Ask for fields of a published dataset, for the actor themself or (as a steward) for
    their department. The caller has checked that the actor may see the dataset."""
    now = now or timezone.now()
    p = principal_of(actor)
    owner_id = dataset.department_id
    if principal_department is None:
        if not p.departments_where(Role.ANALYST, Role.STEWARD):
            raise PermissionDeniedError("Only analysts and stewards may request access.")
        if owner_id in p.department_ids:
            raise ApplicationError("Your department owns this dataset; its members see it without a request.",
                                   code="own_dataset")
    else:
        if not p.has_role(principal_department.pk, Role.STEWARD):
            raise PermissionDeniedError("Only a steward of a department may request access for it.")
        if principal_department.pk == owner_id:
            raise ApplicationError("A department does not request access to its own dataset.", code="own_dataset")

    errors: dict[str, list[str]] = {}
    if dataset.status != DatasetStatus.PUBLISHED:
        raise ApplicationError("Access can be requested only to a published dataset.",
                               fields={"dataset": [f"The dataset is {dataset.status}, not published."]},
                               code="dataset_not_published")
    schema = sel.current_fields(dataset)
    names = list(fields)
    if not names:
        errors["fields"] = ["Name at least one field."]
    elif len(set(names)) != len(names):
        errors["fields"] = ["Name each field once."]
    else:
        unknown = [n for n in names if n not in schema]
        if unknown:
            errors["fields"] = [f"Not in the dataset's current schema: {', '.join(map(str, unknown))}."]
    if not purpose.strip():
        errors["purpose"] = ["Say what the data is for."]
    if not legal_basis.strip():
        errors["legal_basis"] = ["Name the act or regulation the access rests on."]
    if requested_end <= now:
        errors["requested_end"] = ["The end must be in the future."]
    elif requested_end <= requested_start:
        errors["requested_end"] = ["The end must be after the start."]
    elif requested_end - max(requested_start, now) > dt.timedelta(days=settings.ACCESS_REQUEST_MAX_DAYS):
        errors["requested_end"] = [f"A request covers at most {settings.ACCESS_REQUEST_MAX_DAYS} days; "
                                   "renew it with a new request later."]
    if renews is not None and (
        renews.dataset_id != dataset.pk
        or renews.principal_user_id != (None if principal_department else actor.pk)
        or renews.principal_department_id != (principal_department.pk if principal_department else None)
    ):
        errors["renews"] = ["Only a grant of the same principal on the same dataset can be renewed."]
    elif renews is not None and renews.status not in (GrantStatus.ACTIVE, GrantStatus.EXPIRED):
        errors["renews"] = [f"A {renews.status} grant cannot be renewed; make a new request."]
    clean_filter: list[dict[str, Any]] = []
    try:
        clean_filter = row_filter_validate(fields=schema, row_filter=row_filter)
    except ApplicationError as exc:
        errors.update(exc.fields)
    if errors:
        raise ApplicationError("The access request is not valid.", fields=errors)

    access_request = AccessRequest(
        dataset=dataset, requested_by=actor,
        principal_kind=PrincipalKind.DEPARTMENT if principal_department else PrincipalKind.USER,
        principal_user=None if principal_department else actor,
        principal_department=principal_department,
        fields=names, purpose=purpose.strip(), legal_basis=legal_basis.strip(), row_filter=clean_filter,
        requested_start=requested_start, requested_end=requested_end, renews=renews,
    )
    access_request.full_clean()
    access_request.save()
    _event(access_request_id=access_request.pk, actor=actor, action="submitted", comment=comment,
           details={"fields": names})
    audit_record(
        actor=actor, action="access_request.submit", obj=access_request, department_id=owner_id,
        dataset_id=dataset.pk, fields=names, purpose=access_request.purpose, filters={"row_filter": clean_filter},
        details={"principal_kind": access_request.principal_kind, "legal_basis": access_request.legal_basis,
                 "principal_department_id": principal_department.pk if principal_department else None,
                 "requested_start": requested_start, "requested_end": requested_end,
                 "renews": renews.pk if renews else None},
    )
    who = principal_department.name if principal_department else actor.get_username()
    notify(
        recipients=[u for u in sel.stewards_of(owner_id) if u.pk != actor.pk],
        kind="access_request.submitted", subject=f"Access request to decide: {dataset.title}",
        body=f"{who} asks for {', '.join(names)} of {dataset.title}.\nPurpose: {access_request.purpose}",
        link=_link_request(access_request), action_required=True, obj=access_request,
    )
    return access_request


def _lock_request(access_request: AccessRequest) -> AccessRequest:
    return (
        AccessRequest.objects.select_for_update(of=("self",))
        .select_related("dataset", "dataset__department", "dataset__current_schema", "requested_by",
                        "principal_user", "principal_department")
        .get(pk=access_request.pk)
    )


def _require_undecided(access_request: AccessRequest, doing: str) -> None:
    if access_request.status not in UNDECIDED:
        raise ConflictError(
            f"This request is {access_request.status}; it can no longer be {doing}.",
            code="invalid_state", extra={"current_status": access_request.status},
        )


@transaction.atomic
def access_request_withdraw(*, actor: User, access_request: AccessRequest, comment: str = "") -> AccessRequest:
    access_request = _lock_request(access_request)
    if access_request.requested_by_id != actor.pk:
        raise PermissionDeniedError("Only the person who made a request may withdraw it.")
    _require_undecided(access_request, "withdrawn")
    access_request.status = RequestStatus.WITHDRAWN
    access_request.decided_at = timezone.now()
    access_request.save(update_fields=["status", "decided_at"])
    _event(access_request_id=access_request.pk, actor=actor, action="withdrawn", comment=comment)
    audit_record(
        actor=actor, action="access_request.withdraw", obj=access_request,
        department_id=access_request.dataset.department_id, dataset_id=access_request.dataset_id,
        fields=access_request.fields, purpose=access_request.purpose, details={"comment": comment},
    )
    notify(recipients=sel.stewards_of(access_request.dataset.department_id), kind="access_request.withdrawn",
           subject=f"Access request withdrawn: {access_request.dataset.title}", body=comment,
           link=_link_request(access_request), obj=access_request)
    return access_request


@transaction.atomic
def access_request_comment(*, actor: User, access_request: AccessRequest, comment: str) -> RequestEvent:
    """Add a comment to the timeline (a question from the steward, an answer from the
    requester). Open to the requesting side, the owning stewards and DPOs; the other side is told."""
    p = principal_of(actor)
    requester_side = (actor.pk in (access_request.requested_by_id, access_request.principal_user_id)
                      or (access_request.principal_department_id is not None
                          and p.has_role(access_request.principal_department_id, Role.STEWARD, Role.ADMIN)))
    owner_side = p.has_role(access_request.dataset.department_id, Role.STEWARD) or p.is_dpo
    if not (requester_side or owner_side):
        raise PermissionDeniedError("Only the requesting side, the owning stewards and DPOs may comment.")
    if not comment.strip():
        raise ApplicationError("Write a comment.", fields={"comment": ["This field is required."]})
    event = RequestEvent.objects.create(request=access_request, actor=actor, action="commented",
                                        comment=comment.strip())
    audit_record(
        actor=actor, action="access_request.comment", obj=access_request,
        department_id=access_request.dataset.department_id, dataset_id=access_request.dataset_id,
        details={"event": event.pk},
    )
    recipients = sel.stewards_of(access_request.dataset.department_id) if requester_side \
        else _requester_side(access_request)
    notify(recipients=[u for u in recipients if u.pk != actor.pk], kind="access_request.commented",
           subject=f"New comment on an access request: {access_request.dataset.title}", body=comment.strip(),
           link=_link_request(access_request), obj=access_request)
    return event


def four_eyes_check(*, actor: User, access_request: AccessRequest) -> None:
    """Raise unless the actor may decide this request as a steward of the owning department."""
    p = principal_of(actor)
    if not p.has_role(access_request.dataset.department_id, Role.STEWARD):
        raise PermissionDeniedError("Only a steward of the department that owns the dataset may decide.")
    if access_request.requested_by_id == actor.pk or access_request.principal_user_id == actor.pk:
        raise PermissionDeniedError("You made this request (or it is for you); another steward must decide it.",
                                    code="four_eyes")
    if access_request.principal_department_id in p.department_ids:
        raise PermissionDeniedError("This request is for your own department; a steward outside it must decide.",
                                    code="four_eyes")


@dataclass(frozen=True)
class FieldDecisionInput:
    name: str
    approved: bool
    form: str = ""
    reason: str = ""


@transaction.atomic
def access_request_decide(
    *,
    actor: User,
    access_request: AccessRequest,
    decisions: Sequence[FieldDecisionInput],
    comment: str = "",
    clear_reason: str = "",
    now: dt.datetime | None = None,
) -> AccessRequest:
    """Decide every requested field: approve it in a form (the classification's default when
    none is named) or deny it with a reason. Creates the grant: active at once, or pending the
    DPO's second approval when an approved field is confidential or personal."""
    access_request = _lock_request(access_request)
    four_eyes_check(actor=actor, access_request=access_request)
    _require_undecided(access_request, "decided")
    now = now or timezone.now()
    schema = sel.current_fields(access_request.dataset)
    requested = list(access_request.fields)

    errors: dict[str, list[str]] = {}
    by_name: dict[str, FieldDecisionInput] = {}
    for d in decisions:
        if d.name in by_name:
            errors.setdefault("fields", []).append(f"{d.name}: decided twice.")
        by_name[d.name] = d
    not_requested = [n for n in by_name if n not in requested]
    if not_requested:
        errors.setdefault("fields", []).append(f"Not requested, so not yours to grant: {', '.join(not_requested)}.")
    undecided = [n for n in requested if n not in by_name]
    if undecided:
        errors.setdefault("fields", []).append(f"Decide every requested field; missing: {', '.join(undecided)}.")
    forms: dict[str, str] = {}
    for name, d in by_name.items():
        if name not in requested:
            continue
        if not d.approved:
            if not d.reason.strip():
                errors[f"fields.{name}.reason"] = ["Say why the field is denied."]
            continue
        field = schema.get(name)
        if field is None:
            errors[f"fields.{name}"] = ["No longer in the dataset's current schema; it can only be denied."]
            continue
        form = d.form or DEFAULT_FORM[field.sensitivity]
        if form not in AccessForm.values:
            errors[f"fields.{name}.form"] = [f"Choose one of: {', '.join(AccessForm.values)}."]
            continue
        if form == AccessForm.CLEAR and field.sensitivity == Sensitivity.PERSONAL and not clear_reason.strip():
            errors["clear_reason"] = errors.get("clear_reason", []) + [
                f"{name} is personal data: granting it in clear needs a reason."]
        forms[name] = form
    if errors:
        raise ApplicationError("The decision is not valid.", fields=errors)

    if forms:
        # The filter was checked at submission; a schema change since may have removed its field.
        try:
            row_filter_validate(fields=schema, row_filter=access_request.row_filter)
        except ApplicationError as exc:
            raise ConflictError(
                "The request's row filter no longer fits the dataset's schema; deny it, and the requester "
                "can ask again.", code="row_filter_stale", extra={"row_filter_errors": exc.fields},
            ) from exc

    def _reason(name: str) -> str:
        d = by_name[name]
        if d.approved and forms[name] == AccessForm.CLEAR and schema[name].sensitivity == Sensitivity.PERSONAL:
            return f"{d.reason.strip()}\nClear on personal data: {clear_reason.strip()}".strip()
        return d.reason.strip()

    FieldDecision.objects.bulk_create(
        FieldDecision(request=access_request, field_name=name, approved=by_name[name].approved,
                      form=forms.get(name, ""), reason=_reason(name), decided_by=actor)
        for name in requested
    )
    approved = [n for n in requested if n in forms]
    denied = [n for n in requested if n not in forms]
    needs_dpo = any(schema[n].sensitivity in DPO_SENSITIVITIES for n in approved)
    if not approved:
        status = RequestStatus.DENIED
    elif needs_dpo:
        status = RequestStatus.AWAITING_DPO
    else:
        status = RequestStatus.APPROVED if not denied else RequestStatus.PARTIALLY_APPROVED
    access_request.status = status
    access_request.decided_at = now
    access_request.save(update_fields=["status", "decided_at"])
    decision_details = {"approved": {n: forms[n] for n in approved},
                        "denied": {n: by_name[n].reason for n in denied},
                        "clear_reason": clear_reason.strip()}
    _event(access_request_id=access_request.pk, actor=actor, action="decided", comment=comment,
           details={**decision_details, "status": status})
    audit_record(
        actor=actor, action="access_request.decide", obj=access_request,
        department_id=access_request.dataset.department_id, dataset_id=access_request.dataset_id,
        fields=requested, purpose=access_request.purpose, details={**decision_details, "status": status},
    )

    if not approved:
        notify(recipients=_requester_side(access_request), kind="access_request.denied",
               subject=f"Access request denied: {access_request.dataset.title}",
               body=comment, link=_link_request(access_request), obj=access_request)
        return access_request

    grant = Grant(
        dataset=access_request.dataset, request=access_request, principal_kind=access_request.principal_kind,
        principal_user=access_request.principal_user, principal_department=access_request.principal_department,
        purpose=access_request.purpose, legal_basis=access_request.legal_basis,
        row_filter=access_request.row_filter,
        valid_from=max(access_request.requested_start, now), valid_until=access_request.requested_end,
        status=GrantStatus.PENDING_DPO if needs_dpo else GrantStatus.ACTIVE, approved_by=actor,
        last_certified_at=now,
    )
    grant.full_clean()
    grant.save()
    GrantField.objects.bulk_create(GrantField(grant=grant, field_name=n, form=forms[n]) for n in approved)
    _audit_grant(actor=actor, action="grant.create", grant=grant, fields=approved,
                 details={"forms": {n: forms[n] for n in approved}, "status": grant.status,
                          "valid_from": grant.valid_from, "valid_until": grant.valid_until,
                          "row_filter": grant.row_filter, "legal_basis": grant.legal_basis})
    if needs_dpo:
        dpos = [u for u in sel.data_protection_officers()
                if u.pk not in (actor.pk, access_request.requested_by_id, access_request.principal_user_id)]
        notify(recipients=dpos, kind="grant.pending_dpo",
               subject=f"Second approval needed: {access_request.dataset.title}",
               body=f"A steward approved sensitive fields ({', '.join(approved)}) for "
                    f"{_principal_label(grant)}. Purpose: {grant.purpose}",
               link=_link_grant(grant), action_required=True, obj=grant)
        notify(recipients=_requester_side(access_request), kind="access_request.awaiting_dpo",
               subject=f"Access request approved by the steward, waiting for the DPO: "
                       f"{access_request.dataset.title}",
               body=comment, link=_link_request(access_request), obj=access_request)
    else:
        _sync_view_permission(grant)
        notify(recipients=_requester_side(access_request), kind=f"access_request.{status}",
               subject=f"Access request {status.replace('_', ' ')}: {access_request.dataset.title}",
               body=comment, link=_link_grant(grant), obj=access_request)
    return access_request


def _principal_label(grant: Grant | AccessRequest) -> str:
    if grant.principal_department is not None:
        return grant.principal_department.name
    return grant.principal_user.get_username() if grant.principal_user else "?"


def _requester_side(access_request: AccessRequest) -> list[User]:
    people = {access_request.requested_by.pk: access_request.requested_by}
    for u in sel.grantee_recipients(access_request):
        people[u.pk] = u
    return list(people.values())


# --- Grants ---------------------------------------------------------------------------------

def _lock_grant(grant: Grant) -> Grant:
    return (
        Grant.objects.select_for_update(of=("self",))
        .select_related("dataset", "dataset__department", "request", "request__requested_by",
                        "principal_user", "principal_department", "principal_department__group")
        .get(pk=grant.pk)
    )


def _require_status(grant: Grant, *allowed: str, doing: str) -> None:
    if grant.status not in allowed:
        raise ConflictError(f"This grant is {grant.status}; it cannot be {doing}.", code="invalid_state",
                            extra={"current_status": grant.status})


def _sync_view_permission(grant: Grant) -> None:
    """Give the grantee ``catalog.view_dataset`` on the dataset while they hold an active grant
    on it, and take it away when their last active grant there ends."""
    holder: User | Group
    if grant.principal_user is not None:
        holder = grant.principal_user
    else:
        assert grant.principal_department is not None
        holder = grant.principal_department.group
    still_active = Grant.objects.filter(
        dataset_id=grant.dataset_id, status=GrantStatus.ACTIVE,
        principal_user_id=grant.principal_user_id, principal_department_id=grant.principal_department_id,
    ).exists()
    if still_active:
        assign_perm(VIEW_DATASET, holder, grant.dataset)
    else:
        remove_perm(VIEW_DATASET, holder, grant.dataset)


def _dpo_check(*, actor: User, grant: Grant) -> None:
    p = principal_of(actor)
    if not p.is_dpo:
        raise PermissionDeniedError("Only a data protection officer may give or refuse the second approval.")
    request = grant.request
    if actor.pk in (grant.approved_by_id, grant.principal_user_id) or (
        request is not None and request.requested_by_id == actor.pk
    ):
        raise PermissionDeniedError("You requested or decided this access; another DPO must approve it.",
                                    code="four_eyes")
    if grant.principal_department_id in p.department_ids:
        raise PermissionDeniedError("This grant is for your own department; another DPO must approve it.",
                                    code="four_eyes")


@transaction.atomic
def grant_dpo_approve(*, actor: User, grant: Grant, comment: str = "", now: dt.datetime | None = None) -> Grant:
    grant = _lock_grant(grant)
    _dpo_check(actor=actor, grant=grant)
    _require_status(grant, GrantStatus.PENDING_DPO, doing="approved by the DPO")
    now = now or timezone.now()
    if grant.valid_until <= now:
        raise ConflictError("The requested period has already ended; the grant cannot start.", code="period_ended")
    grant.status = GrantStatus.ACTIVE
    grant.dpo_approved_by = actor
    grant.dpo_approved_at = now
    grant.dpo_comment = comment
    grant.valid_from = max(grant.request.requested_start if grant.request else grant.valid_from, now)
    grant.last_certified_at = now
    grant.save(update_fields=["status", "dpo_approved_by", "dpo_approved_at", "dpo_comment", "valid_from",
                              "last_certified_at"])
    access_request = grant.request
    if access_request is not None:
        denied = access_request.decisions.filter(approved=False).exists()
        access_request.status = RequestStatus.PARTIALLY_APPROVED if denied else RequestStatus.APPROVED
        access_request.save(update_fields=["status"])
        _event(access_request_id=access_request.pk, actor=actor, action="dpo_approved", comment=comment,
               details={"grant": grant.pk, "status": access_request.status})
    _audit_grant(actor=actor, action="grant.dpo_approve", grant=grant, details={"comment": comment})
    _sync_view_permission(grant)
    if access_request is not None:
        notify(recipients=_requester_side(access_request), kind=f"access_request.{access_request.status}",
               subject=f"Access granted: {grant.dataset.title}", body=comment, link=_link_grant(grant), obj=grant)
    return grant


@transaction.atomic
def grant_dpo_reject(*, actor: User, grant: Grant, reason: str, now: dt.datetime | None = None) -> Grant:
    """Refuse the second approval: the grant is rejected and the request denied as a whole
    (see the module docstring for why not a partial grant)."""
    grant = _lock_grant(grant)
    _dpo_check(actor=actor, grant=grant)
    _require_status(grant, GrantStatus.PENDING_DPO, doing="rejected by the DPO")
    if not reason.strip():
        raise ApplicationError("Say why the access is refused.", fields={"reason": ["This field is required."]})
    now = now or timezone.now()
    grant.status = GrantStatus.REJECTED
    grant.dpo_rejected_by = actor
    grant.dpo_rejected_at = now
    grant.dpo_comment = reason.strip()
    grant.save(update_fields=["status", "dpo_rejected_by", "dpo_rejected_at", "dpo_comment"])
    access_request = grant.request
    if access_request is not None:
        access_request.status = RequestStatus.DENIED
        access_request.save(update_fields=["status"])
        _event(access_request_id=access_request.pk, actor=actor, action="dpo_rejected", comment=reason.strip(),
               details={"grant": grant.pk})
    _audit_grant(actor=actor, action="grant.dpo_reject", grant=grant, details={"reason": reason.strip()})
    recipients = list(sel.stewards_of(grant.dataset.department_id))
    if access_request is not None:
        recipients += _requester_side(access_request)
    notify(recipients=recipients, kind="grant.dpo_rejected",
           subject=f"Access refused by the data protection officer: {grant.dataset.title}",
           body=reason.strip(), link=_link_grant(grant), obj=grant)
    return grant


def _may_revoke(actor: User, grant: Grant) -> bool:
    p = principal_of(actor)
    return p.is_dpo or p.has_role(grant.dataset.department_id, Role.STEWARD)


@transaction.atomic
def grant_revoke(*, actor: User, grant: Grant, reason: str, now: dt.datetime | None = None) -> Grant:
    grant = _lock_grant(grant)
    if not _may_revoke(actor, grant):
        raise PermissionDeniedError("Only a steward of the owning department or a DPO may revoke a grant.")
    _require_status(grant, GrantStatus.ACTIVE, doing="revoked")
    if not reason.strip():
        raise ApplicationError("Say why the grant is revoked.", fields={"reason": ["This field is required."]})
    _lock_subscriptions(grant)
    grant.status = GrantStatus.REVOKED
    grant.revoked_by = actor
    grant.revoked_at = now or timezone.now()
    grant.revoke_reason = reason.strip()
    grant.save(update_fields=["status", "revoked_by", "revoked_at", "revoke_reason"])
    _event(access_request_id=grant.request_id, actor=actor, action="grant_revoked", comment=grant.revoke_reason,
           details={"grant": grant.pk})
    _audit_grant(actor=actor, action="grant.revoke", grant=grant, details={"reason": grant.revoke_reason})
    _sync_view_permission(grant)
    _end_subscriptions(grant, reason=f"the grant was revoked ({grant.revoke_reason})", at=grant.revoked_at)
    notify(recipients=sel.grantee_recipients(grant), kind="grant.revoked",
           subject=f"Access revoked: {grant.dataset.title}", body=grant.revoke_reason, link=_link_grant(grant),
           obj=grant)
    return grant


@transaction.atomic
def grant_certify(*, actor: User, grant: Grant, comment: str = "", now: dt.datetime | None = None) -> Grant:
    """A steward of the owning department confirms that an active grant is still needed."""
    grant = _lock_grant(grant)
    p = principal_of(actor)
    if not p.has_role(grant.dataset.department_id, Role.STEWARD):
        raise PermissionDeniedError("Only a steward of the owning department may recertify a grant.")
    _require_status(grant, GrantStatus.ACTIVE, doing="recertified")
    grant.last_certified_at = now or timezone.now()
    grant.save(update_fields=["last_certified_at"])
    _event(access_request_id=grant.request_id, actor=actor, action="grant_certified", comment=comment,
           details={"grant": grant.pk})
    _audit_grant(actor=actor, action="grant.certify", grant=grant, details={"comment": comment})
    return grant


# --- Background work (each grant in its own transaction, claimed by a conditional update) -----

def _claim(grant_id: int, condition: Q, **changes: Any) -> bool:
    """Apply ``changes`` only if the grant still matches ``condition``: with several workers,
    exactly one of them wins each grant."""
    return Grant.objects.filter(condition, pk=grant_id).update(**changes) == 1


def grant_expire_due(*, now: dt.datetime | None = None, batch: int = 500) -> int:
    """Mark grants past their end as expired: active ones (audit, notify, drop the view
    permission) and those still waiting for the DPO, whose request is then denied (the period
    asked for is over; nothing was ever visible). Returns how many this call expired."""
    now = now or timezone.now()
    ending = (GrantStatus.ACTIVE, GrantStatus.PENDING_DPO)
    rows = list(Grant.objects.filter(status__in=ending, valid_until__lte=now)
                .order_by("valid_until").values_list("pk", "status")[:batch])
    expired = 0
    for grant_id, was in rows:
        with transaction.atomic():
            if not _claim(grant_id, Q(status=was, valid_until__lte=now), status=GrantStatus.EXPIRED):
                continue
            grant = _lock_grant(Grant(pk=grant_id))
            _lock_subscriptions(grant)
            _event(access_request_id=grant.request_id, actor=None, action="grant_expired",
                   details={"grant": grant.pk, "was": was})
            _audit_grant(actor=None, action="grant.expire", grant=grant,
                         details={"valid_until": grant.valid_until, "was": was})
            if was == GrantStatus.PENDING_DPO:
                if grant.request_id is not None:
                    AccessRequest.objects.filter(pk=grant.request_id, status=RequestStatus.AWAITING_DPO).update(
                        status=RequestStatus.DENIED)
                body = "The requested period ended before the data protection officer decided."
            else:
                _sync_view_permission(grant)
                _end_subscriptions(grant, reason="the grant reached its end date", at=now)
                body = "The grant reached its end date. Request access again if you still need it."
            notify(recipients=sel.grantee_recipients(grant), kind="grant.expired",
                   subject=f"Access ended: {grant.dataset.title}", body=body, link=_link_grant(grant), obj=grant)
            expired += 1
    return expired


def grant_send_reminders(*, now: dt.datetime | None = None, batch: int = 500) -> int:
    """Remind grantees and owning stewards of grants ending within GRANT_REMINDER_DAYS, once
    per grant (``reminder_sent_at``). Returns how many grants were reminded."""
    now = now or timezone.now()
    due = Q(status=GrantStatus.ACTIVE, reminder_sent_at__isnull=True, valid_until__gt=now,
            valid_until__lte=now + dt.timedelta(days=settings.GRANT_REMINDER_DAYS))
    ids = list(Grant.objects.filter(due).order_by("valid_until").values_list("pk", flat=True)[:batch])
    sent = 0
    for grant_id in ids:
        with transaction.atomic():
            if not _claim(grant_id, due, reminder_sent_at=now):
                continue
            grant = _lock_grant(Grant(pk=grant_id))
            until = timezone.localtime(grant.valid_until).strftime("%Y-%m-%d %H:%M")
            notify(recipients=sel.grantee_recipients(grant), kind="grant.expiring",
                   subject=f"Access ends on {until}: {grant.dataset.title}",
                   body="Ask for a renewal (a new request that renews this grant) if you still need the data.",
                   link=_link_grant(grant), action_required=True, obj=grant)
            notify(recipients=sel.stewards_of(grant.dataset.department_id), kind="grant.expiring",
                   subject=f"A grant on {grant.dataset.title} ends on {until}",
                   body=f"Granted to {_principal_label(grant)} for: {grant.purpose}", link=_link_grant(grant),
                   obj=grant)
            sent += 1
    return sent


def grant_recertification_notify(*, now: dt.datetime | None = None, batch: int = 500) -> int:
    """Ask the owning stewards to confirm or revoke each grant due for recertification, once
    per due period. Returns how many grants were put to their stewards."""
    now = now or timezone.now()
    due = sel.needs_recertification_q(now) & (
        Q(recertification_requested_at__isnull=True)
        | Q(recertification_requested_at__lt=F("last_certified_at"))
        | Q(last_certified_at__isnull=True, recertification_requested_at__lt=F("created_at"))
    )
    ids = list(Grant.objects.filter(due).order_by("pk").values_list("pk", flat=True)[:batch])
    asked = 0
    for grant_id in ids:
        with transaction.atomic():
            if not _claim(grant_id, due, recertification_requested_at=now):
                continue
            grant = _lock_grant(Grant(pk=grant_id))
            notify(recipients=sel.stewards_of(grant.dataset.department_id), kind="grant.recertify",
                   subject=f"Confirm or revoke: {_principal_label(grant)} on {grant.dataset.title}",
                   body=f"This grant was last confirmed more than {settings.GRANT_RECERTIFY_DAYS} days ago. "
                        f"Purpose: {grant.purpose}",
                   link=_link_grant(grant), action_required=True, obj=grant)
            asked += 1
    return asked


@transaction.atomic
def grant_fields_lapse(*, dataset: Dataset, removed_or_changed: list[str], reason: str,
                       actor: User | None = None) -> list[Grant]:
    """Fields removed, renamed or retyped by a published schema change are no longer covered by
    any grant on the dataset (active or awaiting the DPO): set ``lapsed_at``, audit per grant
    and tell the grantees. Returns the grants that lost fields.

    A grant whose row filter names such a field loses all its fields: its row scope can no
    longer be enforced, and showing every row instead would give more than was granted."""
    if not removed_or_changed:
        return []
    names = set(removed_or_changed)
    now = timezone.now()
    live = Q(grant__dataset_id=dataset.pk, lapsed_at__isnull=True,
             grant__status__in=(GrantStatus.ACTIVE, GrantStatus.PENDING_DPO))
    unscoped = [
        grant_id for grant_id, row_filter in Grant.objects.filter(
            dataset_id=dataset.pk, status__in=(GrantStatus.ACTIVE, GrantStatus.PENDING_DPO),
        ).exclude(row_filter=[]).values_list("pk", "row_filter")
        if any(isinstance(c, dict) and c.get("field") in names for c in row_filter or [])
    ]
    affected = list(
        GrantField.objects.select_for_update(of=("self",))
        .filter(live & (Q(field_name__in=names) | Q(grant_id__in=unscoped)))
        .select_related("grant", "grant__dataset", "grant__principal_user", "grant__principal_department")
        .order_by("grant_id", "id")
    )
    GrantField.objects.filter(pk__in=[f.pk for f in affected]).update(lapsed_at=now, lapse_reason=reason[:200])
    by_grant: dict[int, tuple[Grant, list[str]]] = {}
    for grant_field in affected:
        by_grant.setdefault(grant_field.grant_id, (grant_field.grant, []))[1].append(grant_field.field_name)
    for grant, _ in by_grant.values():
        _lock_subscriptions(grant)
    for grant, lapsed in by_grant.values():
        why = reason if grant.pk not in unscoped else f"{reason} The grant's row filter used the field."
        _event(access_request_id=grant.request_id, actor=actor, action="fields_lapsed", comment=why,
               details={"grant": grant.pk, "fields": lapsed})
        _audit_grant(actor=actor, action="grant.lapse", grant=grant, fields=lapsed,
                     details={"reason": why, "row_filter_lapsed": grant.pk in unscoped})
        _end_subscriptions(grant, reason=f"the granted fields lapsed ({why})", at=now)
        notify(recipients=sel.grantee_recipients(grant), kind="grant.fields_lapsed",
               subject=f"Fields no longer granted on {grant.dataset.title}: {', '.join(lapsed)}",
               body=f"{why}\nRequest the fields of the new schema if you still need them.",
               link=_link_grant(grant), obj=grant)
    return [g for g, _ in by_grant.values()]
