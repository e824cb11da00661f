"""Data-request pages: the "Requested data" list, the form, a request's page and its steps.

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

from catalog.models import Dataset, DatasetStatus
from catalog.selectors import dataset_get_for_user
from config.api.errors import ApplicationError, NotFoundError, PermissionDeniedError
from config.api.fields import parse_id
from departments.models import Department, Role
from departments.selectors import principal_of
from departments.views import error_403, error_404
from exchange.demand import selectors as sel
from exchange.demand import services
from exchange.demand.forms import DataRequestForm
from exchange.demand.models import DataRequest, DataRequestStatus

PAGE_SIZE = 50
SUCCESS = {
    "route": "The request was routed to {department}.",
    "duplicate": "The request was closed as a duplicate.",
    "accept": "You accepted the request; link the dataset once it is published.",
    "decline": "You declined the request.",
    "fulfil": "The dataset is linked; the requester and everyone who joined were told.",
    "withdraw": "The request was withdrawn.",
    "join": "You joined the request; you will be told when the data is published.",
    "leave": "You left the request.",
}


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


@login_required
def data_requests(request: HttpRequest) -> HttpResponse:
    """Requested data: search and filter by status and the department it was routed to."""
    status = request.GET.get("status", "")
    if status not in DataRequestStatus.values:
        status = ""
    department = request.GET.get("department", "")[:80]
    q = request.GET.get("q", "").strip()[:200]
    scope = "mine" if request.GET.get("scope") == "mine" else "all"
    qs = sel.data_request_list(user=request.user, status=status, department=department, search=q,
                               mine=scope == "mine")
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "exchange/demand/list.html", {
        "page": page, "status": status, "department": department, "q": q, "scope": scope,
        "statuses": DataRequestStatus.choices, "departments": sel.routing_departments(),
        "query": query.urlencode(),
        "may_request": bool(principal_of(request.user).departments_where(Role.ANALYST, Role.STEWARD)),
    })


def _asking_departments(user: User) -> list[tuple[str, str]]:
    ids = principal_of(user).departments_where(Role.ANALYST, Role.STEWARD)
    return [(d.slug, d.name) for d in Department.objects.filter(pk__in=ids, is_active=True).order_by("pk")]


@login_required
def data_request_create(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    departments = _asking_departments(user)
    initial = {"title": request.GET.get("q", "")[:services.MAX_TITLE]}
    form = DataRequestForm(request.POST or None, departments=departments, initial=initial)
    if request.method == "POST" and form.is_valid():
        department = (sel.department_by_slug(slug=form.cleaned_data["department"])
                      if form.cleaned_data["department"] else None)
        try:
            data_request = services.data_request_submit(
                actor=user, title=form.cleaned_data["title"], description=form.cleaned_data["description"],
                purpose=form.cleaned_data["purpose"], fields=form.cleaned_data["wished_fields"],
                department=department,
            )
        except PermissionDeniedError as exc:
            return error_403(request, exc)
        except ApplicationError as exc:
            form.add_service_errors(exc)
        else:
            messages.success(request, "Your request was sent to the governance reviewers, who route it to the "
                                      "department that should hold the data.")
            return redirect("ui-data-request", data_request_id=data_request.pk)
    return render(request, "exchange/demand/form.html", {"form": form, "may_request": bool(departments)},
                  status=400 if form.errors else 200)


def _detail_context(request: HttpRequest, data_request: DataRequest, *, step: str = "",
                    errors: list[str] | None = None, typed: dict[str, str] | None = None) -> dict[str, Any]:
    user = _user(request)
    steps = services.steps_for(user=user, data_request=data_request)
    datasets: list[Dataset] = []
    if "fulfil" in steps and data_request.routed_department_id is not None:
        datasets = list(Dataset.objects.filter(department_id=data_request.routed_department_id,
                                               status=DatasetStatus.PUBLISHED).order_by("title"))
    involved = (data_request.requested_by_id == user.pk
                or sel.has_joined(data_request=data_request, user_id=user.pk))
    return {
        "r": data_request, "steps": steps, "datasets": datasets,
        "departments": sel.routing_departments() if "route" in steps else [],
        "joined": sel.has_joined(data_request=data_request, user_id=user.pk),
        "offer_access": data_request.status == DataRequestStatus.FULFILLED and involved,
        "error_step": step, "errors": errors or [], "typed": typed or {},
    }


@login_required
def data_request_detail(request: HttpRequest, data_request_id: int) -> HttpResponse:
    try:
        data_request = sel.data_request_get(user=request.user, data_request_id=data_request_id)
    except NotFoundError:
        return error_404(request)
    return render(request, "exchange/demand/detail.html", _detail_context(request, data_request))


def _messages_of(exc: ApplicationError) -> list[str]:
    found = [m for msgs in exc.fields.values() for m in msgs]
    return found or [exc.message]


@login_required
@require_POST
def data_request_step(request: HttpRequest, data_request_id: int, step: str) -> HttpResponse:
    """One step of the workflow, from the form of the request's page that names it."""
    if step not in SUCCESS:
        return error_404(request)
    try:
        data_request = sel.data_request_get(user=request.user, data_request_id=data_request_id)
    except NotFoundError:
        return error_404(request)
    user = _user(request)
    post = request.POST
    typed = {k: post.get(k, "")[:services.MAX_TEXT] for k in ("comment", "reason", "purpose", "department",
                                                                "duplicate_of", "dataset")}
    success = SUCCESS[step]
    try:
        if step == "route":
            department = sel.department_by_slug(slug=typed["department"][:80])
            if department is None:
                raise ApplicationError("Choose a department.", fields={"department": ["Choose a department."]})
            services.data_request_route(actor=user, data_request=data_request, department=department,
                                        comment=typed["comment"])
            success = success.format(department=department.name)
        elif step == "duplicate":
            original_id = parse_id(typed["duplicate_of"].strip().lstrip("#"))
            try:
                original = sel.data_request_get(user=user, data_request_id=original_id or 0)
            except NotFoundError as exc:
                raise ApplicationError("No such data request.",
                                       fields={"duplicate_of": ["No such data request."]}) from exc
            services.data_request_close_duplicate(actor=user, data_request=data_request, original=original,
                                                  comment=typed["comment"])
        elif step == "accept":
            services.data_request_accept(actor=user, data_request=data_request, comment=typed["comment"])
        elif step == "decline":
            services.data_request_decline(actor=user, data_request=data_request, reason=typed["reason"])
        elif step == "fulfil":
            try:
                dataset = dataset_get_for_user(user=user, dataset_id=parse_id(typed["dataset"]) or 0)
            except NotFoundError as exc:
                raise ApplicationError("Choose a dataset.", fields={"dataset": ["Choose a dataset."]}) from exc
            services.data_request_fulfil(actor=user, data_request=data_request, dataset=dataset,
                                         comment=typed["comment"])
        elif step == "withdraw":
            services.data_request_withdraw(actor=user, data_request=data_request, comment=typed["comment"])
        elif step == "join":
            services.data_request_join(actor=user, data_request=data_request, purpose=typed["purpose"])
        else:
            services.data_request_leave(actor=user, data_request=data_request)
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    except ApplicationError as exc:
        # Shown next to the step's form, with what was typed; the request is re-read so the
        # page shows its state as it is now.
        data_request = sel.data_request_get(user=user, data_request_id=data_request_id)
        context = _detail_context(request, data_request, step=step, errors=_messages_of(exc), typed=typed)
        return render(request, "exchange/demand/detail.html", context, status=exc.status_code)
    messages.success(request, success)
    return redirect("ui-data-request", data_request_id=data_request_id)


@login_required
def data_request_access(request: HttpRequest, data_request_id: int) -> HttpResponse:
    """From a fulfilled request to its dataset's access-request form, pre-filled for the user."""
    try:
        data_request = sel.data_request_get(user=request.user, data_request_id=data_request_id)
    except NotFoundError:
        return error_404(request)
    if data_request.status != DataRequestStatus.FULFILLED:
        messages.info(request, "No dataset fulfils this request yet.")
        return redirect("ui-data-request", data_request_id=data_request_id)
    return redirect(services.prefilled_access_url(data_request=data_request, user=_user(request)))
