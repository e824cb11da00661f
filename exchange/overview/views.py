"""Pages that read across the exchange's packages: the dataset page (the catalogue's view of a
dataset with the caller's effective view, a preview of their records, who receives it and how
its data flows) and the dashboard (charts over what the caller may see)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from catalog import selectors
from catalog.models import Dataset
from catalog.views import dataset_detail_context
from config.api.errors import NotFoundError, PermissionDeniedError
from departments.views import error_404
from exchange.access.policy import effective_view
from exchange.objections import selectors as objection_selectors
from exchange.objections import services as objection_services
from exchange.oversight import selectors as audit_selectors
from exchange.oversight.views import auditor_scope
from exchange.overview import dashboard as dashboard_selectors
from exchange.overview import dataset_page
from exchange.overview.city import city_map


def _flow_context(request: HttpRequest, dataset: Dataset) -> dict[str, Any]:
    """Lineage, sync status and my records preview, each scoped by ``exchange.overview.dataset_page``."""
    user = request.user
    view = effective_view(dataset=dataset, user=user)
    try:
        preview = dataset_page.dataset_preview(user=user, dataset=dataset, view=view)
    except PermissionDeniedError:  # a grant ended between the two reads
        preview = dataset_page.Preview(readable=False)
    return {
        "view": view,
        "preview": preview,
        "lineage": dataset_page.dataset_lineage(user=user, dataset=dataset),
        "lineage_complete": dataset_page.sees_all_receivers(user=user, dataset=dataset),
        "preview_rows": dataset_page.PREVIEW_ROWS,
        "sync": dataset_page.dataset_sync_status(user=user, dataset=dataset),
        "objections": objection_selectors.open_objections_of(user=user, dataset=dataset),
        "may_object": isinstance(user, User) and objection_services.may_object(user=user, dataset=dataset, view=view),
    }


@login_required
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    try:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    context = dataset_detail_context(request, dataset)
    context.update(_flow_context(request, dataset))
    return render(request, "catalog/dataset_detail.html", context)


# --- The city map ---------------------------------------------------------------------------

@login_required
@require_GET
def city(request: HttpRequest) -> HttpResponse:
    """Departments and the flows between them, drawn from ``/api/v1/city/``; the same data in
    tables on the page (islands, failing flows, requests waiting longest, every flow)."""
    return render(request, "exchange/city.html", {"map": city_map(user=request.user)})


# --- Dashboard ------------------------------------------------------------------------------

@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "exchange/dashboard.html", {
        "is_auditor": audit_selectors.audit_scope_of(request.user) is not None,
        "sees_runs": dashboard_selectors.runs_in_view(user=request.user).exists(),
    })


@login_required
def dashboard_requests(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dashboard_selectors.requests_per_week(user=request.user))


@login_required
def dashboard_grants(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dashboard_selectors.active_grants_breakdown(user=request.user))


@login_required
def dashboard_sync(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dashboard_selectors.sync_per_day(user=request.user))


@login_required
def dashboard_audit(request: HttpRequest) -> HttpResponse:
    scope = auditor_scope(request, attempted="dashboard.audit")
    if scope is None:
        return JsonResponse({"detail": "Only auditors may read the audit trail."}, status=403)
    return JsonResponse(dashboard_selectors.audit_events_per_day(scope=scope))
