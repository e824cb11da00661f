"""Pages for stewards watching their data move: a dataset's source and runs with live progress,
a run's counts, error and quarantine, and the subscriptions that receive the dataset."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from config.api.errors import ApplicationError, NotFoundError
from departments.views import error_404
from exchange.models import Run, RunStatus, Source, Subscription
from exchange.sync import selectors
from exchange.sync import services as sync_services

RUNS_SHOWN = 15
LIVE = (RunStatus.QUEUED, RunStatus.RUNNING)


def _runs(dataset_id: int, user: User) -> list[Run]:
    return list(selectors.run_list(user=user).filter(dataset_id=dataset_id)[:RUNS_SHOWN])


@login_required
def dataset_sync(request: HttpRequest, dataset_id: int) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    try:
        dataset = selectors.source_dataset_get(user=user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    source = selectors.source_get(user=user, dataset_id=dataset_id) if hasattr(dataset, "source") else None
    runs = _runs(dataset_id, user)
    context = {
        "dataset": dataset, "source": source, "runs": runs, "live": any(r.status in LIVE for r in runs),
        "subscriptions": list(Subscription.objects.filter(dataset=dataset).select_related("department", "connection")
                              .order_by("department__name")),
    }
    if getattr(request, "htmx", False):
        return render(request, "exchange/sync/_runs.html", context)
    return render(request, "exchange/sync/dataset.html", context)


def _managed_source(request: HttpRequest, dataset_id: int) -> tuple[User, Source] | HttpResponse:
    """The signed-in steward and the source they manage, or the 404 page."""
    user = request.user
    assert isinstance(user, User)
    try:
        return user, selectors.source_get(user=user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)


@login_required
@require_POST
def dataset_sync_run(request: HttpRequest, dataset_id: int) -> HttpResponse:
    found = _managed_source(request, dataset_id)
    if isinstance(found, HttpResponse):
        return found
    user, source = found
    mode = "incremental" if request.POST.get("mode") == "incremental" else "full"
    try:
        run = sync_services.run_now(actor=user, source=source, mode=mode)
        messages.success(request, f"Run #{run.pk} queued ({mode}).")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("ui-dataset-sync", dataset_id=dataset_id)


@login_required
@require_POST
def dataset_sync_upload(request: HttpRequest, dataset_id: int) -> HttpResponse:
    found = _managed_source(request, dataset_id)
    if isinstance(found, HttpResponse):
        return found
    user, source = found
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a file to upload.")
        return redirect("ui-dataset-sync", dataset_id=dataset_id)
    try:
        run = sync_services.source_upload(actor=user, source=source, upload=upload)
        messages.success(request, f"File received; run #{run.pk if run else '?'} queued.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("ui-dataset-sync", dataset_id=dataset_id)


@login_required
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    try:
        run = selectors.run_get(user=user, run_id=run_id)
    except NotFoundError:
        return error_404(request)
    context = {"run": run, "live": run.status in LIVE,
               "quarantine": list(selectors.quarantine_list(run=run)[:200])}
    if getattr(request, "htmx", False):
        return render(request, "exchange/sync/_run_progress.html", context)
    return render(request, "exchange/sync/run.html", context)


@login_required
@require_POST
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    try:
        run = selectors.run_get(user=user, run_id=run_id)
        sync_services.run_cancel(actor=user, run=run)
        messages.success(request, f"Run #{run.pk}: cancellation requested.")
    except NotFoundError:
        return error_404(request)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("ui-run-detail", run_id=run_id)
