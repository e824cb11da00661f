"""Audit pages: the explorer, a dataset's grant timeline, who could see a field, verification."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.utils import timezone

from catalog.selectors import dataset_get_for_user, dataset_visible
from config.api.errors import NotFoundError, PermissionDeniedError
from config.api.fields import parse_id
from departments.views import error_403, error_404
from exchange.access.forms import (
    WhoCouldSeeForm,
)
from exchange.audit.models import AuditEvent, AuditOutcome
from exchange.audit.services import audit_record, audit_verify
from exchange.oversight import history as grant_history
from exchange.oversight import selectors as audit_selectors
from exchange.oversight.selectors import AuditEventFilter, AuditScope


def auditor_scope(request: HttpRequest, *, attempted: str) -> AuditScope | None:
    """The caller's audit scope, or None after auditing the refused attempt (as the API does)."""
    scope = audit_selectors.audit_scope_of(request.user)
    if scope is None:
        audit_record(actor=request.user, action="audit.denied", outcome=AuditOutcome.DENIED,
                     details={"attempted": attempted, "path": request.path})
    return scope


AUDIT_PAGE = 50


@login_required
def audit_explorer(request: HttpRequest) -> HttpResponse:
    scope = auditor_scope(request, attempted="audit.read")
    if scope is None:
        return error_403(request)
    data: dict[str, str] = {k: str(v) for k, v in request.GET.items() if k in AuditEventFilter.base_filters and v}
    filterset = AuditEventFilter(data=data, queryset=audit_selectors.audit_event_list(scope=scope))
    events: list[AuditEvent] = []
    next_before = ""
    if filterset.is_valid():
        qs = filterset.qs.order_by("-id")
        before = parse_id(request.GET.get("before", ""))
        if before is not None:
            qs = qs.filter(id__lt=before)
        events = list(qs[: AUDIT_PAGE + 1])
        if len(events) > AUDIT_PAGE:
            events = events[:AUDIT_PAGE]
            next_before = str(events[-1].pk)
        audit_record(actor=request.user, action="audit.read", filters=data, row_count=len(events),
                     details={"endpoint": "ui.explorer"})
    query = QueryDict(mutable=True)
    query.update(data)
    next_query = query.copy()
    if next_before:
        next_query["before"] = next_before
    return render(request, "exchange/audit_explorer.html", {
        "events": events, "filters": data, "errors": filterset.errors,
        "outcomes": AuditOutcome.choices, "export_query": query.urlencode(),
        "next_query": next_query.urlencode() if next_before else "",
        "first_page": "before" in request.GET,
    }, status=400 if filterset.errors else 200)


@login_required
def audit_timeline(request: HttpRequest, dataset_id: int) -> HttpResponse:
    try:
        dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
        grant_history.require_auditor(user=request.user, dataset=dataset, action="grant_timeline")
    except NotFoundError:
        return error_404(request)
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    events = list(grant_history.grant_timeline(dataset=dataset)[:1000])
    audit_record(actor=request.user, action="audit.read", obj=dataset, dataset_id=dataset.pk,
                 department_id=dataset.department_id, row_count=len(events),
                 filters={"question": "grant_timeline"})
    return render(request, "exchange/audit_timeline.html", {"dataset": dataset, "events": events})


@login_required
def audit_who_could_see(request: HttpRequest) -> HttpResponse:
    scope = auditor_scope(request, attempted="who_could_see")
    if scope is None:
        return error_403(request)
    datasets = dataset_visible(user=request.user).order_by("title")
    if not scope.everything:
        datasets = datasets.filter(department_id__in=scope.department_ids)
    form = WhoCouldSeeForm(request.GET or None, datasets=list(datasets.values_list("pk", "title")[:1000]))
    answer = None
    dataset = None
    if request.GET and form.is_valid():
        try:
            dataset = dataset_get_for_user(user=request.user, dataset_id=form.cleaned_data["dataset"])
            grant_history.require_auditor(user=request.user, dataset=dataset, action="who_could_see")
        except NotFoundError:
            return error_404(request)
        except PermissionDeniedError as exc:
            return error_403(request, exc)
        field = form.cleaned_data["field"]
        at = timezone.make_aware(dt.datetime.combine(form.cleaned_data["at"], dt.time.max))
        answer = grant_history.who_could_see(dataset=dataset, field=field, at=at)
        audit_record(actor=request.user, action="audit.read", obj=dataset, dataset_id=dataset.pk,
                     department_id=dataset.department_id, fields=[field], row_count=len(answer),
                     filters={"question": "who_could_see", "at": at.isoformat()})
    return render(request, "exchange/audit_who_could_see.html",
                  {"form": form, "answer": answer, "dataset": dataset},
                  status=400 if form.errors else 200)


@login_required
def audit_verify_page(request: HttpRequest) -> HttpResponse:
    scope = auditor_scope(request, attempted="audit.verify")
    if scope is None:
        return error_403(request)
    # Read-only, so a GET: reloading the page verifies again.
    result = audit_verify()
    audit_record(actor=request.user, action="audit.verify",
                 outcome=AuditOutcome.ALLOWED if result.intact else AuditOutcome.FAILED,
                 details={"intact": result.intact, "checked": result.checked, "broken_at": result.broken_at,
                          "via": "ui"})
    return render(request, "exchange/audit_verify.html", {"result": result})
