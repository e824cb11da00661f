"""Every change to data requests goes through these functions.

The workflow::

    open ──route (reviewer)──► routed ──accept (routed stewards)──► accepted ──fulfil──► fulfilled
     │  ◄───── route again ────┤  │                                    │
     │                         │  └──decline──► declined ◄──decline────┘
     ├──duplicate (reviewer)───┴──► duplicate
     └──withdraw (requester, also from routed and accepted)──► withdrawn

Four eyes: nobody decides on a request they made (a reviewer does not route their own, a
steward does not accept, decline or fulfil their own). Others join an open, routed or
accepted request with their own purpose instead of filing a duplicate, and leave it again.

Each function locks the request's row before appending to the audit chain (which takes the
chain lock), writes the timeline and the audit event in the same transaction and notifies
those who must act or be told (their e-mails leave only after commit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from catalog.models import Dataset, DatasetStatus
from config.api.errors import ApplicationError, ConflictError, PermissionDeniedError
from departments.models import Department, Role
from departments.notifications import notify
from departments.selectors import principal_of
from exchange.access.selectors import current_fields
from exchange.audit.services import audit_record
from exchange.demand import selectors as sel
from exchange.demand.models import DataRequest, DataRequestEvent, DataRequestStatus, DataRequestSupporter

S = DataRequestStatus
MAX_FIELDS = 100
MAX_TITLE = 200
MAX_TEXT = 5000
MAX_PURPOSE = 2000  # it travels in the pre-filled access request's URL
MAX_FIELD_NAME = 63
MAX_FIELD_DESCRIPTION = 1000

# The steps allowed from each state: a step from any other state is a 409 naming these.
STEPS: dict[str, tuple[str, ...]] = {
    S.OPEN: ("route", "duplicate", "withdraw", "join", "leave"),
    S.ROUTED: ("route", "duplicate", "accept", "decline", "withdraw", "join", "leave"),
    S.ACCEPTED: ("decline", "fulfil", "withdraw", "join", "leave"),
    S.FULFILLED: ("leave",),
    S.DECLINED: (),
    S.WITHDRAWN: (),
    S.DUPLICATE: (),
}
DOING = {"route": "routed", "duplicate": "closed as a duplicate", "accept": "accepted", "decline": "declined",
         "fulfil": "fulfilled", "withdraw": "withdrawn", "join": "joined", "leave": "left"}


@dataclass(frozen=True)
class FieldWish:
    name: str
    description: str = ""


def _link(data_request: DataRequest) -> str:
    return f"/requested-data/{data_request.pk}/"


def access_request_link(data_request: DataRequest) -> str:
    """Where the requester and joiners are sent once the request is fulfilled: a page that
    takes them to the dataset's access-request form, pre-filled for them."""
    return f"/requested-data/{data_request.pk}/request-access/"


def prefilled_access_url(*, data_request: DataRequest, user: User) -> str:
    """The fulfilling dataset's access-request form with the requested fields the dataset has
    (by name) and the user's purpose: the request's for its requester, their own for a joiner,
    none for anyone else."""
    assert data_request.dataset_id is not None
    schema = current_fields(data_request.dataset)  # type: ignore[arg-type]
    names = [f["name"] for f in data_request.fields if f.get("name") in schema]
    purpose = data_request.purpose if data_request.requested_by_id == user.pk else ""
    for supporter in data_request.supporters.all():
        if supporter.user_id == user.pk:
            purpose = supporter.purpose
    query = urlencode([*(("fields", n) for n in names), ("purpose", purpose)])
    return f"/datasets/{data_request.dataset_id}/request-access/?{query}"


def _require_step(data_request: DataRequest, step: str) -> None:
    if step not in STEPS[data_request.status]:
        raise ConflictError(
            f"This request is {data_request.status}; it cannot be {DOING[step]}.",
            code="invalid_state",
            extra={"current_status": data_request.status, "allowed": list(STEPS[data_request.status])},
        )


def _lock(data_request: DataRequest) -> DataRequest:
    return (
        DataRequest.objects.select_for_update(of=("self",))
        .select_related("requested_by", "department", "routed_department", "dataset")
        .get(pk=data_request.pk)
    )


def _record(*, actor: User, data_request: DataRequest, action: str, comment: str = "",
            details: dict[str, Any] | None = None, purpose: str = "") -> None:
    """The timeline and the audit trail, in the caller's transaction."""
    DataRequestEvent.objects.create(request=data_request, actor=actor, action=action, comment=comment,
                                    details=details or {})
    audit_record(
        actor=actor, action=f"data_request.{action}", obj=data_request,
        department_id=data_request.routed_department_id or data_request.department_id,
        dataset_id=data_request.dataset_id, fields=[f["name"] for f in data_request.fields],
        purpose=purpose or data_request.purpose,
        details={"status": data_request.status, "comment": comment, **(details or {})},
    )


def _interested(data_request: DataRequest, *, besides: User | None = None) -> list[User]:
    """The requester and everyone who joined."""
    people = [data_request.requested_by, *(s.user for s in
                                           DataRequestSupporter.objects.filter(request=data_request)
                                           .select_related("user"))]
    return [u for u in people if besides is None or u.pk != besides.pk]


def _clean_fields(fields: Sequence[FieldWish], errors: dict[str, list[str]]) -> list[dict[str, str]]:
    if not fields:
        errors["fields"] = ["Name at least one field you need."]
        return []
    if len(fields) > MAX_FIELDS:
        errors["fields"] = [f"At most {MAX_FIELDS} fields."]
        return []
    clean: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, wish in enumerate(fields):
        name, description = wish.name.strip(), wish.description.strip()
        if not name:
            errors[f"fields[{i}].name"] = ["Name the field."]
        elif len(name) > MAX_FIELD_NAME:
            errors[f"fields[{i}].name"] = [f"At most {MAX_FIELD_NAME} characters."]
        elif name in seen:
            errors[f"fields[{i}].name"] = ["Name each field once."]
        if len(description) > MAX_FIELD_DESCRIPTION:
            errors[f"fields[{i}].description"] = [f"At most {MAX_FIELD_DESCRIPTION} characters."]
        seen.add(name)
        clean.append({"name": name, "description": description})
    return clean


@transaction.atomic
def data_request_submit(*, actor: User, title: str, description: str, purpose: str, fields: Sequence[FieldWish],
                        department: Department | None = None) -> DataRequest:
    """Describe data that is not in the catalogue, as an analyst or steward of ``department``
    (by default the first department where the actor is one)."""
    p = principal_of(actor)
    allowed = p.departments_where(Role.ANALYST, Role.STEWARD)
    if not allowed:
        raise PermissionDeniedError("Only analysts and stewards may request data.")
    errors: dict[str, list[str]] = {}
    if department is None:
        department = Department.objects.filter(pk__in=allowed, is_active=True).order_by("pk").first()
    elif department.pk not in allowed:
        errors["department"] = ["You are not an analyst or steward of this department."]
    title, description, purpose = title.strip(), description.strip(), purpose.strip()
    if not title:
        errors["title"] = ["Give the request a title."]
    elif len(title) > MAX_TITLE:
        errors["title"] = [f"At most {MAX_TITLE} characters."]
    if not description:
        errors["description"] = ["Describe the data you need."]
    elif len(description) > MAX_TEXT:
        errors["description"] = [f"At most {MAX_TEXT} characters."]
    if not purpose:
        errors["purpose"] = ["Say what the data is for."]
    elif len(purpose) > MAX_PURPOSE:
        errors["purpose"] = [f"At most {MAX_PURPOSE} characters."]
    clean_fields = _clean_fields(fields, errors)
    if errors or department is None:
        raise ApplicationError("The data request is not valid.", fields=errors or {"department": ["Required."]})
    data_request = DataRequest(title=title, description=description, purpose=purpose, fields=clean_fields,
                               requested_by=actor, department=department)
    data_request.full_clean()
    data_request.save()
    _record(actor=actor, data_request=data_request, action="submit")
    notify(recipients=[u for u in sel.reviewers() if u.pk != actor.pk], kind="data_request.submitted",
           subject=f"Data requested, to route: {title}",
           body=f"{actor.get_username()} ({department.name}) asks for data that is not in the catalogue.\n"
                f"{description}",
           link=_link(data_request), action_required=True, obj=data_request)
    return data_request


def _reviewer_check(*, actor: User, data_request: DataRequest) -> None:
    if not principal_of(actor).is_reviewer:
        raise PermissionDeniedError("Only governance reviewers route data requests.")
    if data_request.requested_by_id == actor.pk:
        raise PermissionDeniedError("You made this request; another reviewer must route it.", code="four_eyes")


def routed_steward_check(*, actor: User, data_request: DataRequest) -> None:
    """Raise unless the actor may decide as a steward of the department it was routed to."""
    if data_request.routed_department_id is None or not principal_of(actor).has_role(
            data_request.routed_department_id, Role.STEWARD):
        raise PermissionDeniedError("Only a steward of the department the request was routed to may decide.")
    if data_request.requested_by_id == actor.pk:
        raise PermissionDeniedError("You made this request; another steward must decide it.", code="four_eyes")


@transaction.atomic
def data_request_route(*, actor: User, data_request: DataRequest, department: Department,
                       comment: str = "") -> DataRequest:
    data_request = _lock(data_request)
    _reviewer_check(actor=actor, data_request=data_request)
    _require_step(data_request, "route")
    if not department.is_active:
        raise ApplicationError("The department is not active.", fields={"department": ["Not an active department."]})
    data_request.status = S.ROUTED
    data_request.routed_department = department
    data_request.routed_by = actor
    data_request.routed_at = timezone.now()
    data_request.save(update_fields=["status", "routed_department", "routed_by", "routed_at"])
    _record(actor=actor, data_request=data_request, action="route", comment=comment,
            details={"department": department.slug})
    notify(recipients=[u for u in sel.stewards_of(department.pk) if u.pk != data_request.requested_by_id],
           kind="data_request.routed", subject=f"Data requested from your department: {data_request.title}",
           body=f"{data_request.description}\n\nPurpose: {data_request.purpose}\n{comment}".strip(),
           link=_link(data_request), action_required=True, obj=data_request)
    return data_request


@transaction.atomic
def data_request_close_duplicate(*, actor: User, data_request: DataRequest, original: DataRequest,
                                 comment: str = "") -> DataRequest:
    """Close as a duplicate of ``original`` (which the caller fetched as visible to the actor)."""
    data_request = _lock(data_request)
    _reviewer_check(actor=actor, data_request=data_request)
    _require_step(data_request, "duplicate")
    if original.pk == data_request.pk:
        raise ApplicationError("A request is not a duplicate of itself.",
                               fields={"duplicate_of": ["Name another request."]})
    if original.status not in (S.OPEN, S.ROUTED, S.ACCEPTED, S.FULFILLED):
        raise ApplicationError("The original must be open, routed, accepted or fulfilled.",
                               fields={"duplicate_of": [f"That request is {original.status}."]})
    data_request.status = S.DUPLICATE
    data_request.duplicate_of = original
    data_request.closed_at = timezone.now()
    data_request.save(update_fields=["status", "duplicate_of", "closed_at"])
    _record(actor=actor, data_request=data_request, action="duplicate", comment=comment,
            details={"duplicate_of": original.pk})
    notify(recipients=_interested(data_request, besides=actor), kind="data_request.duplicate",
           subject=f"Data request closed as a duplicate: {data_request.title}",
           body=f"It duplicates request #{original.pk}, {original.title}: join that one.\n{comment}".strip(),
           link=_link(original), obj=data_request)
    return data_request


@transaction.atomic
def data_request_accept(*, actor: User, data_request: DataRequest, comment: str = "") -> DataRequest:
    data_request = _lock(data_request)
    routed_steward_check(actor=actor, data_request=data_request)
    _require_step(data_request, "accept")
    data_request.status = S.ACCEPTED
    data_request.decided_by = actor
    data_request.decided_at = timezone.now()
    data_request.save(update_fields=["status", "decided_by", "decided_at"])
    _record(actor=actor, data_request=data_request, action="accept", comment=comment)
    assert data_request.routed_department is not None
    notify(recipients=_interested(data_request, besides=actor), kind="data_request.accepted",
           subject=f"Data request accepted: {data_request.title}",
           body=f"{data_request.routed_department.name} will publish the data.\n{comment}".strip(),
           link=_link(data_request), obj=data_request)
    return data_request


@transaction.atomic
def data_request_decline(*, actor: User, data_request: DataRequest, reason: str) -> DataRequest:
    data_request = _lock(data_request)
    routed_steward_check(actor=actor, data_request=data_request)
    _require_step(data_request, "decline")
    reason = reason.strip()
    if not reason:
        raise ApplicationError("Say why the request is declined.", fields={"reason": ["This field is required."]})
    data_request.status = S.DECLINED
    data_request.decided_by = actor
    data_request.decided_at = data_request.closed_at = timezone.now()
    data_request.decline_reason = reason
    data_request.save(update_fields=["status", "decided_by", "decided_at", "closed_at", "decline_reason"])
    _record(actor=actor, data_request=data_request, action="decline", comment=reason)
    assert data_request.routed_department is not None
    notify(recipients=_interested(data_request, besides=actor), kind="data_request.declined",
           subject=f"Data request declined: {data_request.title}",
           body=f"{data_request.routed_department.name} declined it: {reason}",
           link=_link(data_request), obj=data_request)
    return data_request


@transaction.atomic
def data_request_fulfil(*, actor: User, data_request: DataRequest, dataset: Dataset,
                        comment: str = "") -> DataRequest:
    """Link the published dataset of the routed department that fulfils the request; the
    requester and joiners are offered an access request pre-filled for them."""
    data_request = _lock(data_request)
    routed_steward_check(actor=actor, data_request=data_request)
    _require_step(data_request, "fulfil")
    if dataset.department_id != data_request.routed_department_id:
        raise ApplicationError("The dataset must belong to the department the request was routed to.",
                               fields={"dataset": ["Not a dataset of the routed department."]})
    if dataset.status != DatasetStatus.PUBLISHED:
        raise ApplicationError("Only a published dataset fulfils a request.",
                               fields={"dataset": [f"The dataset is {dataset.status}, not published."]})
    data_request.status = S.FULFILLED
    data_request.dataset = dataset
    data_request.fulfilled_at = timezone.now()
    data_request.save(update_fields=["status", "dataset", "fulfilled_at"])
    _record(actor=actor, data_request=data_request, action="fulfil", comment=comment,
            details={"dataset": dataset.pk})
    notify(recipients=_interested(data_request, besides=actor), kind="data_request.fulfilled",
           subject=f"The data you requested is published: {dataset.title}",
           body=f"{data_request.title}: {dataset.title} is in the catalogue. Request access to it; the form "
                f"is filled in with the fields you asked for and your purpose.\n{comment}".strip(),
           link=access_request_link(data_request), obj=data_request)
    return data_request


@transaction.atomic
def data_request_withdraw(*, actor: User, data_request: DataRequest, comment: str = "") -> DataRequest:
    data_request = _lock(data_request)
    if data_request.requested_by_id != actor.pk:
        raise PermissionDeniedError("Only the person who made a request may withdraw it.")
    _require_step(data_request, "withdraw")
    data_request.status = S.WITHDRAWN
    data_request.closed_at = timezone.now()
    data_request.save(update_fields=["status", "closed_at"])
    _record(actor=actor, data_request=data_request, action="withdraw", comment=comment)
    told: Iterable[User] = (sel.stewards_of(data_request.routed_department_id)
                            if data_request.routed_department_id else sel.reviewers())
    notify(recipients=[u for u in [*told, *_interested(data_request)] if u.pk != actor.pk],
           kind="data_request.withdrawn", subject=f"Data request withdrawn: {data_request.title}",
           body=comment, link=_link(data_request), obj=data_request)
    return data_request


@transaction.atomic
def data_request_join(*, actor: User, data_request: DataRequest, purpose: str) -> DataRequestSupporter:
    """Say "I need this too", with one's own purpose (which pre-fills one's access request)."""
    data_request = _lock(data_request)
    if data_request.requested_by_id == actor.pk:
        raise ConflictError("You made this request; there is nothing to join.", code="own_request")
    _require_step(data_request, "join")
    purpose = purpose.strip()
    if not purpose:
        raise ApplicationError("Say what the data is for.", fields={"purpose": ["This field is required."]})
    if len(purpose) > MAX_PURPOSE:
        raise ApplicationError("The purpose is too long.", fields={"purpose": [f"At most {MAX_PURPOSE} characters."]})
    if DataRequestSupporter.objects.filter(request=data_request, user=actor).exists():
        raise ConflictError("You have already joined this request.", code="already_joined")
    supporter = DataRequestSupporter.objects.create(request=data_request, user=actor, purpose=purpose)
    _record(actor=actor, data_request=data_request, action="join", purpose=purpose)
    return supporter


@transaction.atomic
def data_request_leave(*, actor: User, data_request: DataRequest) -> DataRequest:
    data_request = _lock(data_request)
    _require_step(data_request, "leave")
    deleted, _ = DataRequestSupporter.objects.filter(request=data_request, user=actor).delete()
    if not deleted:
        raise ConflictError("You have not joined this request.", code="not_joined")
    _record(actor=actor, data_request=data_request, action="leave")
    return data_request


def steps_for(*, user: User, data_request: DataRequest) -> set[str]:
    """The steps the service would allow this user now (for the pages' buttons)."""
    p = principal_of(user)
    allowed = set(STEPS[data_request.status])
    mine = data_request.requested_by_id == p.user_id
    steps: set[str] = set()
    if p.is_reviewer and not mine:
        steps |= allowed & {"route", "duplicate"}
    if (data_request.routed_department_id is not None and not mine
            and p.has_role(data_request.routed_department_id, Role.STEWARD)):
        steps |= allowed & {"accept", "decline", "fulfil"}
    if mine:
        steps |= allowed & {"withdraw"}
    elif sel.has_joined(data_request=data_request, user_id=p.user_id):
        steps |= allowed & {"leave"}
    else:
        steps |= allowed & {"join"}
    return steps
