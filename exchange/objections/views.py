"""Objection pages: the list (raised by my departments, about our datasets, escalated), the
form on a dataset, an objection's page and its steps.

Each view fetches through the scoped selector (404 for what the user may not know exists),
calls one service (403 for what they know but may not do) and redirects after a POST.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from catalog.selectors import dataset_get_for_user
from config.api.errors import ApplicationError, NotFoundError, PermissionDeniedError
from departments.selectors import principal_of
from departments.views import error_403, error_404
from exchange.access.policy import effective_view
from exchange.objections import selectors as sel
from exchange.objections import services
from exchange.objections.forms import ObjectionForm
from exchange.objections.models import Objection, ObjectionStatus

PAGE_SIZE = 50
SUCCESS = {
    "accept": "You accepted the objection; the objector was told what was fixed.",
    "reject": "You rejected the objection; the objector was told why.",
    "withdraw": "The objection was withdrawn.",
}
SCOPES = {"raised": "Raised by my departments", "received": "About our datasets", "escalated": "Escalated",
          "all": "All I may see"}


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


@login_required
def objections(request: HttpRequest) -> HttpResponse:
    """Both inboxes: what my departments raised and what was raised about our datasets."""
    p = principal_of(request.user)
    default = "escalated" if p.is_reviewer and not p.department_ids else "received"
    scope = request.GET.get("scope", default)
    if scope not in SCOPES:
        scope = default
    status = request.GET.get("status", ObjectionStatus.OPEN if "status" not in request.GET else "")
    if status not in ObjectionStatus.values:
        status = ""
    qs = sel.objection_list(user=request.user, scope="all" if scope == "escalated" else scope, status=status,
                            escalated=True if scope == "escalated" else None)
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "exchange/objections/list.html", {
        "page": page, "scope": scope, "scopes": SCOPES.items(), "status": status,
        "statuses": ObjectionStatus.choices, "query": query.urlencode(),
    })


@login_required
def objection_create(request: HttpRequest, dataset_id: int) -> HttpResponse:
    user = _user(request)
    try:
        dataset = dataset_get_for_user(user=user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    if not services.may_object(user=user, dataset=dataset):
        return error_403(request, PermissionDeniedError(
            "Only a department that reads or receives this dataset, other than its owner, may object to it."))
    view = effective_view(dataset=dataset, user=user)
    departments = [(d.slug, d.name) for d in sel.objecting_departments(user=user, dataset=dataset)]
    form = ObjectionForm(request.POST or None, field_names=list(view.fields), departments=departments,
                         initial={"field_names": request.GET.getlist("fields")})
    if request.method == "POST" and form.is_valid():
        slug = form.cleaned_data["department"]
        department = next((d for d in sel.objecting_departments(user=user, dataset=dataset) if d.slug == slug), None)
        try:
            objection = services.objection_create(
                actor=user, dataset=dataset, kind=form.cleaned_data["kind"], comment=form.cleaned_data["comment"],
                fields=form.cleaned_data["field_names"], record_keys=form.cleaned_data["record_keys"],
                department=department)
        except PermissionDeniedError as exc:
            return error_403(request, exc)
        except ApplicationError as exc:
            form.add_service_errors(exc)
        else:
            messages.success(request, f"Your objection was sent to the stewards of {dataset.department.name}, who "
                                      f"answer by {objection.due_at:%Y-%m-%d}.")
            return redirect("ui-objection", objection_id=objection.pk)
    return render(request, "exchange/objections/form.html", {
        "form": form, "dataset": dataset, "key": sel.key_field(view),
    }, status=400 if form.errors else 200)


def _detail_context(request: HttpRequest, objection: Objection, *, step: str = "",
                    errors: list[str] | None = None, typed: dict[str, str] | None = None) -> dict[str, Any]:
    user = _user(request)
    return {
        "o": objection, "steps": services.steps_for(user=user, objection=objection),
        "records": sel.objection_records(user=user, objection=objection),
        "overdue": sel.is_overdue(objection),
        "error_step": step, "errors": errors or [], "typed": typed or {},
    }


@login_required
def objection_detail(request: HttpRequest, objection_id: int) -> HttpResponse:
    try:
        objection = sel.objection_get(user=request.user, objection_id=objection_id)
    except NotFoundError:
        return error_404(request)
    return render(request, "exchange/objections/detail.html", _detail_context(request, objection))


@login_required
@require_POST
def objection_step(request: HttpRequest, objection_id: int, step: str) -> HttpResponse:
    """One step of the workflow, from the form of the objection's page that names it."""
    if step not in SUCCESS:
        return error_404(request)
    try:
        objection = sel.objection_get(user=request.user, objection_id=objection_id)
    except NotFoundError:
        return error_404(request)
    user = _user(request)
    typed = {k: request.POST.get(k, "")[:services.MAX_TEXT] for k in ("note", "reason", "comment")}
    try:
        if step == "accept":
            services.objection_accept(actor=user, objection=objection, note=typed["note"])
        elif step == "reject":
            services.objection_reject(actor=user, objection=objection, reason=typed["reason"])
        else:
            services.objection_withdraw(actor=user, objection=objection, comment=typed["comment"])
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    except ApplicationError as exc:
        # Shown next to the step's form, with what was typed; the objection is re-read so the
        # page shows its state as it is now.
        objection = sel.objection_get(user=user, objection_id=objection_id)
        found = [m for msgs in exc.fields.values() for m in msgs] or [exc.message]
        context = _detail_context(request, objection, step=step, errors=found, typed=typed)
        return render(request, "exchange/objections/detail.html", context, status=exc.status_code)
    messages.success(request, SUCCESS[step])
    return redirect("ui-objection", objection_id=objection_id)
