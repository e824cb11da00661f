"""Every change to objections goes through these functions.

The workflow::

    open ──accept (owning stewards; reviewers once escalated)──► accepted   (with the fix)
     ├────reject (owning stewards; reviewers once escalated)──► rejected   (with the reason)
     └────withdraw (the objector)──────────────────────────────► withdrawn
    open, past its due date ──escalate (the beat job, once)──► still open, escalated

Who may object: a steward or analyst of a department other than the owner whose effective
view shows at least one field of the dataset, through a grant to them or to that department.
A subscription delivers exactly the subscribing department's view and ends with its grant, so
a department that receives the dataset reads it by the same rule. Fields and records are
named only within the objector's view: a field outside it is "unknown", as one that does not
exist.

Four eyes: nobody answers an objection they raised. Each function locks the objection's row
before appending to the audit chain (which takes the chain lock), writes the timeline and the
audit event in the same transaction and notifies those who must act or be told (their e-mails
leave only after commit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from catalog.models import Dataset
from config.api.errors import ApplicationError, ConflictError, PermissionDeniedError
from departments.models import Department, Role
from departments.notifications import notify
from departments.selectors import principal_of
from exchange.access.policy import EffectiveView, effective_view
from exchange.audit.services import audit_record
from exchange.objections import selectors as sel
from exchange.objections.models import Objection, ObjectionEvent, ObjectionKind, ObjectionStatus
from exchange.records.selectors import read_page

S = ObjectionStatus
MAX_TEXT = 5000
MAX_KEYS = 50
MAX_KEY_LENGTH = 200
MAX_FIELDS = 100

# The steps allowed from each state: a step from any other state is a 409 naming these.
STEPS: dict[str, tuple[str, ...]] = {
    S.OPEN: ("accept", "reject", "withdraw"),
    S.ACCEPTED: (),
    S.REJECTED: (),
    S.WITHDRAWN: (),
}
DOING = {"accept": "accepted", "reject": "rejected", "withdraw": "withdrawn"}


def _link(objection: Objection) -> str:
    return f"/objections/{objection.pk}/"


def _require_step(objection: Objection, step: str) -> None:
    if step not in STEPS[objection.status]:
        raise ConflictError(
            f"This objection is {objection.status}; it cannot be {DOING[step]}.",
            code="invalid_state",
            extra={"current_status": objection.status, "allowed": list(STEPS[objection.status])},
        )


def _lock(objection: Objection) -> Objection:
    return (
        Objection.objects.select_for_update(of=("self",))
        .select_related("dataset", "dataset__department", "department", "raised_by")
        .get(pk=objection.pk)
    )


def _record(*, actor: User | None, objection: Objection, action: str, comment: str = "") -> None:
    """The timeline and the audit trail, in the caller's transaction. The audit event names
    the fields and how many records, not the records' keys (values of the dataset)."""
    ObjectionEvent.objects.create(objection=objection, actor=actor, action=action, comment=comment)
    audit_record(
        actor=actor, action=f"objection.{action}", obj=objection, actor_label="" if actor else "exchange",
        department_id=objection.dataset.department_id, dataset_id=objection.dataset_id,
        fields=objection.fields, row_count=len(objection.record_keys) or None,
        details={"status": objection.status, "kind": objection.kind, "objecting_department": objection.department.slug,
                 "comment": comment, "escalated": objection.escalated_at is not None},
    )


def _text(value: str, name: str, errors: dict[str, list[str]], *, required: str) -> str:
    value = value.strip()
    if not value:
        errors[name] = [required]
    elif len(value) > MAX_TEXT:
        errors[name] = [f"At most {MAX_TEXT} characters."]
    return value


@transaction.atomic
def objection_create(*, actor: User, dataset: Dataset, kind: str, comment: str, fields: Sequence[str] = (),
                     record_keys: Sequence[str] = (), department: Department | None = None) -> Objection:
    """Object to records or fields of ``dataset`` (which the caller fetched as visible to the
    actor), on behalf of ``department`` (by default the first where the actor may object)."""
    allowed = sel.objecting_departments(user=actor, dataset=dataset)
    view = effective_view(dataset=dataset, user=actor)
    if view.is_owner:
        raise PermissionDeniedError("Your department holds this dataset: fix it rather than object to it.",
                                    code="own_dataset")
    if not allowed or not view.can_read:
        raise PermissionDeniedError("Only a department that reads or receives this dataset may object to it.",
                                    code="no_grant")
    errors: dict[str, list[str]] = {}
    if department is None:
        department = allowed[0]
    elif department.pk not in {d.pk for d in allowed}:
        errors["department"] = ["You are not a steward or analyst of this department."]
    if kind not in ObjectionKind.values:
        errors["kind"] = [f"Choose one of: {', '.join(ObjectionKind.values)}."]
    comment = _text(comment, "comment", errors, required="Say what is wrong.")

    names = [n.strip() for n in fields if n.strip()]
    if len(names) > MAX_FIELDS:
        errors["fields"] = [f"At most {MAX_FIELDS} fields."]
    # The same answer for a field that does not exist and one outside the view.
    unknown = [n for n in names if n not in view.fields]
    if unknown:
        errors["fields"] = [f"Unknown field: {n}." for n in dict.fromkeys(unknown)]
    names = list(dict.fromkeys(names))

    keys = list(dict.fromkeys(k.strip() for k in record_keys if k.strip()))
    if len(keys) > MAX_KEYS:
        errors["record_keys"] = [f"At most {MAX_KEYS} records."]
    elif any(len(k) > MAX_KEY_LENGTH or "," in k for k in keys):
        errors["record_keys"] = [f"A key has at most {MAX_KEY_LENGTH} characters and no comma."]
    elif keys:
        key = sel.key_field(view)
        if key is None:
            errors["record_keys"] = ["Records are named by a key field you see in clear, and you see none here: "
                                     "describe them in the comment."]
        elif kind != ObjectionKind.MISSING_RECORD and "kind" not in errors:
            missing = _keys_not_in_view(actor=actor, dataset=dataset, key=key, keys=keys)
            if missing:
                errors["record_keys"] = [f"No record with {key} {k} in your view." for k in missing]
    if errors:
        raise ApplicationError("The objection is not valid.", fields=errors)

    objection = Objection(dataset=dataset, department=department, raised_by=actor, kind=kind, comment=comment,
                          fields=names, record_keys=keys,
                          due_at=timezone.now() + dt.timedelta(days=settings.OBJECTION_ANSWER_DAYS))
    objection.full_clean()
    objection.save()
    _record(actor=actor, objection=objection, action="create", comment=comment)
    notify(recipients=[u for u in sel.stewards_of(dataset.department_id) if u.pk != actor.pk],
           kind="objection.created", subject=f"Objection to {dataset.title}: {objection.get_kind_display()}",
           body=f"{department.name} objects ({objection.get_kind_display().lower()}). Answer by "
                f"{objection.due_at:%Y-%m-%d}.\n{comment}",
           link=_link(objection), action_required=True, obj=objection)
    return objection


def _keys_not_in_view(*, actor: User, dataset: Dataset, key: str, keys: list[str]) -> list[str]:
    """The keys with no record among those the actor may see (read through their view, and
    audited as a read like any other)."""
    params = {"fields": key, f"{key}__in": ",".join(keys), "page_size": str(len(keys) * 2)}
    try:
        _view, _query, page = read_page(user=actor, dataset=dataset, params=params, action="objection.records_check")
    except ApplicationError as exc:
        raise ApplicationError("The records are not valid.",
                               fields={"record_keys": [f"Not a value of {key}."]}) from exc
    seen = {str(r.get(key)) for r in page.rows}
    return [k for k in keys if k not in seen]


def _answer_check(*, actor: User, objection: Objection) -> None:
    """Raise unless the actor may answer: a steward of the owning department, or a governance
    reviewer once the objection was escalated; never its author."""
    p = principal_of(actor)
    steward = p.has_role(objection.dataset.department_id, Role.STEWARD)
    if not steward and not (p.is_reviewer and objection.escalated_at is not None):
        raise PermissionDeniedError("Only a steward of the owning department answers an objection (and a "
                                    "governance reviewer once it is overdue).")
    if objection.raised_by_id == actor.pk:
        raise PermissionDeniedError("You raised this objection; someone else must answer it.", code="four_eyes")


def _answer(*, actor: User, objection: Objection, step: str, text: str, required: str) -> Objection:
    objection = _lock(objection)
    _answer_check(actor=actor, objection=objection)
    _require_step(objection, step)
    errors: dict[str, list[str]] = {}
    name = "note" if step == "accept" else "reason"
    text = _text(text, name, errors, required=required)
    if errors:
        raise ApplicationError(required, fields=errors)
    objection.status = S.ACCEPTED if step == "accept" else S.REJECTED
    objection.answered_by = actor
    objection.answered_at = objection.closed_at = timezone.now()
    objection.answer = text
    objection.save(update_fields=["status", "answered_by", "answered_at", "closed_at", "answer"])
    _record(actor=actor, objection=objection, action=step, comment=text)
    verb = "accepted" if step == "accept" else "rejected"
    told = [objection.raised_by, *sel.stewards_of(objection.dataset.department_id)]
    notify(recipients=[u for u in told if u.pk != actor.pk], kind=f"objection.{verb}",
           subject=f"Objection to {objection.dataset.title} {verb}",
           body=f"{actor.get_username()} {verb} it: {text}", link=_link(objection), obj=objection)
    return objection


@transaction.atomic
def objection_accept(*, actor: User, objection: Objection, note: str) -> Objection:
    """The objection is right: say what was (or will be) fixed."""
    return _answer(actor=actor, objection=objection, step="accept", text=note, required="Say what was fixed.")


@transaction.atomic
def objection_reject(*, actor: User, objection: Objection, reason: str) -> Objection:
    """The data is right: say why."""
    return _answer(actor=actor, objection=objection, step="reject", text=reason,
                   required="Say why the objection is rejected.")


@transaction.atomic
def objection_withdraw(*, actor: User, objection: Objection, comment: str = "") -> Objection:
    objection = _lock(objection)
    if objection.raised_by_id != actor.pk:
        raise PermissionDeniedError("Only the person who raised an objection may withdraw it.")
    _require_step(objection, "withdraw")
    comment = comment.strip()[:MAX_TEXT]
    objection.status = S.WITHDRAWN
    objection.closed_at = timezone.now()
    objection.save(update_fields=["status", "closed_at"])
    _record(actor=actor, objection=objection, action="withdraw", comment=comment)
    told = [*sel.stewards_of(objection.dataset.department_id),
            *(sel.reviewers() if objection.escalated_at is not None else [])]
    notify(recipients=[u for u in told if u.pk != actor.pk], kind="objection.withdrawn",
           subject=f"Objection to {objection.dataset.title} withdrawn", body=comment, link=_link(objection),
           obj=objection)
    return objection


def objection_escalate_overdue(*, now: dt.datetime | None = None, batch: int = 500) -> int:
    """Escalate open objections past their due date to the governance reviewers, once each:
    the row is claimed with a conditional update, so overlapping runs (or a run redelivered
    after a worker died) never escalate one twice. Returns how many this call escalated; what
    a batch leaves over, the next run takes."""
    now = now or timezone.now()
    due = Objection.objects.filter(status=S.OPEN, escalated_at__isnull=True, due_at__lte=now)
    ids = list(due.order_by("due_at", "pk").values_list("pk", flat=True)[:batch])
    escalated = 0
    for objection_id in ids:
        with transaction.atomic():
            # The UPDATE takes the row lock before the audit append takes the chain lock.
            if due.filter(pk=objection_id).update(escalated_at=now) != 1:
                continue
            objection = (Objection.objects.select_related("dataset", "department", "raised_by")
                         .get(pk=objection_id))
            _record(actor=None, objection=objection, action="escalate",
                    comment=f"Not answered by {objection.due_at:%Y-%m-%d %H:%M}.")
            subject = f"Overdue objection to {objection.dataset.title}"
            body = (f"{objection.department.name} objected on {objection.created_at:%Y-%m-%d}; the owning stewards "
                    f"did not answer by {objection.due_at:%Y-%m-%d}.\n{objection.comment}")
            notify(recipients=[u for u in sel.reviewers() if u.pk != objection.raised_by_id],
                   kind="objection.escalated", subject=subject, body=body,
                   link=_link(objection), action_required=True, obj=objection)
            notify(recipients=[objection.raised_by, *sel.stewards_of(objection.dataset.department_id)],
                   kind="objection.escalated", subject=subject,
                   body="It went to the governance reviewers, who may answer it now.", link=_link(objection),
                   obj=objection)
            escalated += 1
    return escalated


def steps_for(*, user: User, objection: Objection) -> set[str]:
    """The steps the service would allow this user now (for the pages' buttons)."""
    p = principal_of(user)
    allowed = set(STEPS[objection.status])
    mine = objection.raised_by_id == p.user_id
    steps: set[str] = set()
    if not mine and (p.has_role(objection.dataset.department_id, Role.STEWARD)
                     or (p.is_reviewer and objection.escalated_at is not None)):
        steps |= allowed & {"accept", "reject"}
    if mine:
        steps |= allowed & {"withdraw"}
    return steps


def may_object(*, user: User, dataset: Dataset, view: EffectiveView | None = None) -> bool:
    """Whether the dataset page offers the objection form (the service checks again). ``view``:
    the user's effective view on the dataset, when the caller has it already."""
    if not sel.objecting_departments(user=user, dataset=dataset):
        return False
    view = view if view is not None else effective_view(dataset=dataset, user=user)
    return view.can_read and not view.is_owner
