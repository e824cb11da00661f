"""Pages for stewards moving their data: connections, a dataset's source and its schedule,
runs with live progress, a run's counts, error and quarantine, and subscriptions.

Every change goes through the sync services the API calls (exchange/sync/services.py), which
validate, audit and write in one transaction; every object is fetched through the scoped
selectors, so an object of another department is a 404 like one that does not exist."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from catalog.models import Dataset, Field
from catalog.selectors import dataset_get_for_user
from config.api.errors import ApplicationError, ConflictError, NotFoundError
from config.web import add_service_errors
from departments.models import Department
from departments.views import error_404
from exchange.sync import selectors
from exchange.sync import services as sync_services
from exchange.sync.forms import (
    ConnectionEditForm,
    ConnectionForm,
    ScheduleForm,
    SourceForm,
    SourceKind,
    SourceScheduleForm,
    SubscriptionEndForm,
    SubscriptionForm,
    SubscriptionScheduleForm,
    source_initial,
)
from exchange.sync.models import ConnectionKind, Run, RunStatus, Source, Subscription, SubscriptionStatus

RUNS_SHOWN = 15
LIVE = (RunStatus.QUEUED, RunStatus.RUNNING)


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


def _runs(dataset_id: int, user: User) -> list[Run]:
    return list(selectors.run_list(user=user).filter(dataset_id=dataset_id)[:RUNS_SHOWN])


# --- Overview -------------------------------------------------------------------------------

@login_required
def sync_home(request: HttpRequest) -> HttpResponse:
    """The steward's data flow: their department's connections, datasets and subscriptions."""
    user = _user(request)
    if not selectors.steward_departments(user=user):
        return error_404(request)
    context = {
        "connections": list(selectors.connection_list(user=user)),
        "datasets": list(selectors.source_dataset_list(user=user)),
        "subscriptions": list(selectors.subscription_list(user=user)),
        "can_subscribe": selectors.subscribable_dataset_list(user=user).exists(),
    }
    return render(request, "exchange/sync/home.html", context)


# --- Connections ----------------------------------------------------------------------------

def _steward_department_choices(user: User) -> list[tuple[int, str]]:
    ids = selectors.steward_departments(user=user)
    return [(d.pk, d.name) for d in Department.objects.filter(pk__in=ids, is_active=True).order_by("name")]


@login_required
def connection_create(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    departments = _steward_department_choices(user)
    if not departments:
        return error_404(request)
    form = ConnectionForm(request.POST or None, departments=departments)
    if request.method == "POST" and form.is_valid():
        department = Department.objects.get(pk=form.cleaned_data["department"])
        try:
            connection = sync_services.connection_create(
                actor=user, department=department, name=form.cleaned_data["name"], kind=form.cleaned_data["kind"],
                secret=form.cleaned_data["secret"])
        except ConflictError as exc:
            form.add_error("name", exc.message)
        except ApplicationError as exc:
            add_service_errors(form, exc, default="secret")
        else:
            messages.success(request, f"Connection {connection.name} registered. Test it below.")
            return redirect("ui-connection", connection_id=connection.pk)
    return render(request, "exchange/sync/connection_form.html", {"form": form},
                  status=400 if form.errors else 200)


def _connection_context(user: User, connection: Any) -> dict[str, Any]:
    return {
        "connection": connection,
        "sources": list(Source.objects.filter(connection=connection).select_related("dataset")),
        "subscriptions": list(selectors.subscription_list(user=user).filter(connection=connection)),
    }


@login_required
def connection_detail(request: HttpRequest, connection_id: int) -> HttpResponse:
    user = _user(request)
    try:
        connection = selectors.connection_get(user=user, connection_id=connection_id)
    except NotFoundError:
        return error_404(request)
    form = ConnectionEditForm(request.POST or None, initial={"name": connection.name})
    if request.method == "POST" and form.is_valid():
        try:
            # The service writes and audits both changes or neither.
            sync_services.connection_update(actor=user, connection=connection, name=form.cleaned_data["name"],
                                            secret=form.cleaned_data["secret"] or None)
        except ApplicationError as exc:
            connection.refresh_from_db()
            add_service_errors(form, exc, default="secret")
        else:
            messages.success(request, f"Connection {connection.name} saved.")
            return redirect("ui-connection", connection_id=connection.pk)
    return render(request, "exchange/sync/connection.html", {**_connection_context(user, connection), "form": form},
                  status=400 if form.errors else 200)


@login_required
@require_POST
def connection_test(request: HttpRequest, connection_id: int) -> HttpResponse:
    user = _user(request)
    try:
        connection = selectors.connection_get(user=user, connection_id=connection_id)
    except NotFoundError:
        return error_404(request)
    ok, message = sync_services.connection_test(connection=connection)
    if getattr(request, "htmx", False):
        return render(request, "exchange/sync/_connection_test.html", {"ok": ok, "message": message})
    (messages.success if ok else messages.error)(request, message)
    return redirect("ui-connection", connection_id=connection.pk)


@login_required
@require_POST
def connection_delete(request: HttpRequest, connection_id: int) -> HttpResponse:
    user = _user(request)
    try:
        connection = selectors.connection_get(user=user, connection_id=connection_id)
    except NotFoundError:
        return error_404(request)
    try:
        sync_services.connection_delete(actor=user, connection=connection)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("ui-connection", connection_id=connection.pk)
    messages.success(request, f"Connection {connection.name} deleted.")
    return redirect("ui-sync")


# --- A dataset's source, runs and schedule ---------------------------------------------------

def _dataset_sync_context(user: User, dataset: Dataset, source: Source | None,
                          schedule_form: ScheduleForm | None = None) -> dict[str, Any]:
    runs = _runs(dataset.pk, user)
    return {
        "dataset": dataset, "source": source, "runs": runs, "live": any(r.status in LIVE for r in runs),
        "schedule": selectors.schedule_describe(source.schedule) if source else None,
        "schedule_form": schedule_form or SourceScheduleForm(initial={
            "schedule": source.schedule if source else "", "watch_seconds": source.watch_seconds if source else None,
            "freshness_minutes": source.freshness_minutes if source else None}),
        "subscriptions": list(Subscription.objects.filter(dataset=dataset).select_related("department", "connection")
                              .order_by("department__name")),
    }


@login_required
def dataset_sync(request: HttpRequest, dataset_id: int) -> HttpResponse:
    user = _user(request)
    try:
        dataset = selectors.source_dataset_get(user=user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    source = selectors.source_get(user=user, dataset_id=dataset_id) if hasattr(dataset, "source") else None
    context = _dataset_sync_context(user, dataset, source)
    if getattr(request, "htmx", False):
        return render(request, "exchange/sync/_runs.html", context)
    return render(request, "exchange/sync/dataset.html", context)


def _source_setup(user: User, dataset: Dataset) -> tuple[Source | None, list[Any], list[Field]]:
    source = Source.objects.filter(dataset=dataset).select_related("connection", "periodic_task").first()
    connections = list(selectors.connection_list(user=user).filter(department_id=dataset.department_id))
    schema = list(Field.objects.filter(schema_id=dataset.current_schema_id).order_by("position", "id")) \
        if dataset.current_schema_id else []
    return source, connections, schema


def _probe(source: Source | None, dataset: Dataset, form: SourceForm) -> Source:
    """An unsaved source built from what the form has so far, to read its columns."""
    data = form.cleaned_data
    kind = data.get("kind")
    return Source(dataset=dataset, connection=data.get("connection_obj"),
                  table=(data.get("table") or "").strip() if kind == SourceKind.TABLE else "",
                  query=(data.get("query") or "").strip() if kind == SourceKind.QUERY else "",
                  upload=source.upload if source else "", file_format=data.get("file_format") or "csv",
                  encoding=data.get("encoding") or "utf-8", mapping={})


@login_required
def source_edit(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """Create or change the dataset's source. "Load columns" reads the source's columns (nothing
    is written) and offers them in the mapping; "Save" hands the whole source to the service."""
    user = _user(request)
    try:
        dataset = selectors.source_dataset_get(user=user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    source, connections, schema = _source_setup(user, dataset)
    columns_error = ""
    if request.method != "POST":
        columns = None
        if source is not None and (source.connection is None or source.connection.kind != ConnectionKind.URL):
            # Offer the saved source's columns; a URL is only fetched when asked to.
            try:
                columns = sync_services.source_columns(source=source)
            except ApplicationError:
                columns = None
        form = SourceForm(initial=source_initial(source) if source else None, connections=connections,
                          schema=schema, columns=columns)
    elif request.POST.get("action") == "columns":
        probe = SourceForm(request.POST, connections=connections, schema=schema, columns=[])
        probe.is_valid()  # only the source's whereabouts matter here, not the mapping
        initial = {k: v for k, v in request.POST.items() if k not in ("csrfmiddlewaretoken", "columns")}
        columns = None
        if any(k in probe.errors for k in ("kind", "connection", "table", "query")):
            columns_error = " ".join(str(e) for k in ("kind", "connection", "table", "query")
                                     for e in probe.errors.get(k, []))
        else:
            try:
                columns = sync_services.source_columns(source=_probe(source, dataset, probe))
            except ApplicationError as exc:
                columns_error = exc.message
        if columns is not None:
            # A column of the same name as a field is the likely mapping where none was typed.
            for name in (f.name for f in schema):
                if not initial.get(f"map__{name}") and name in columns:
                    initial[f"map__{name}"] = name
        form = SourceForm(initial=initial, connections=connections, schema=schema, columns=columns)
    else:
        form = SourceForm(request.POST, connections=connections, schema=schema)
        if form.is_valid():
            mapping = form.mapping()
            if form.is_valid():
                try:
                    sync_services.source_set(actor=user, dataset=dataset, mapping=mapping,
                                             schedule=source.schedule if source else "",
                                             watch_seconds=source.watch_seconds if source else None,
                                             freshness_minutes=source.freshness_minutes if source else None,
                                             **form.service_arguments())
                except ApplicationError as exc:
                    add_service_errors(form, exc)
                else:
                    messages.success(request, "Source saved.")
                    return redirect("ui-dataset-sync", dataset_id=dataset.pk)
    return render(request, "exchange/sync/source_form.html", {
        "dataset": dataset, "source": source, "form": form, "columns_error": columns_error,
        "has_connections": bool(connections)}, status=400 if form.is_bound and form.errors or columns_error else 200)


@login_required
@require_POST
def dataset_sync_schedule(request: HttpRequest, dataset_id: int) -> HttpResponse:
    found = _managed_source(request, dataset_id)
    if isinstance(found, HttpResponse):
        return found
    user, source = found
    form = SourceScheduleForm(request.POST)
    if form.is_valid():
        try:
            # The schedule is part of the source: the service keeps its beat row in step.
            sync_services.source_set(
                actor=user, dataset=source.dataset, connection=source.connection, table=source.table,
                query=source.query, mapping=source.mapping, file_format=source.file_format, encoding=source.encoding,
                watermark_column=source.watermark_column, schedule=form.cleaned_data["schedule"],
                watch_seconds=form.cleaned_data["watch_seconds"],
                freshness_minutes=form.cleaned_data["freshness_minutes"])
        except ApplicationError as exc:
            add_service_errors(form, exc, default="schedule")
        else:
            messages.success(request, "Schedule saved." if form.cleaned_data["schedule"].strip() else
                             "Schedule cleared: the source runs when a check finds a change."
                             if form.cleaned_data["watch_seconds"] else "Schedule cleared: the source runs on demand.")
            return redirect("ui-dataset-sync", dataset_id=dataset_id)
    source.refresh_from_db()
    context = _dataset_sync_context(user, source.dataset, source, schedule_form=form)
    return render(request, "exchange/sync/dataset.html", context, status=400)


@login_required
@require_POST
def source_remove(request: HttpRequest, dataset_id: int) -> HttpResponse:
    found = _managed_source(request, dataset_id)
    if isinstance(found, HttpResponse):
        return found
    user, source = found
    try:
        sync_services.source_delete(actor=user, source=source)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Source removed. The records already ingested stay in the dataset.")
    return redirect("ui-dataset-sync", dataset_id=dataset_id)


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
        run = sync_services.run_now(actor=user, source=source, mode=mode,
                                    allow_empty=request.POST.get("allow_empty") == "on")
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
        run = sync_services.source_upload(actor=user, source=source, upload=upload,
                                          allow_empty=request.POST.get("allow_empty") == "on")
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


# --- Subscriptions --------------------------------------------------------------------------

@login_required
def subscription_create(request: HttpRequest) -> HttpResponse:
    """Subscribe a department's database connection to a dataset the department holds a
    department-level grant on. The department is the connection's."""
    user = _user(request)
    if not selectors.steward_departments(user=user):
        return error_404(request)
    datasets = [(d.pk, f"{d.title} ({d.department.name})") for d in selectors.subscribable_dataset_list(user=user)]
    connections = [(c.pk, f"{c.name} · {c.department.name} ({c.get_kind_display()})")
                   for c in selectors.database_connection_list(user=user)]
    initial = {"dataset": request.GET.get("dataset", "")}
    form = SubscriptionForm(request.POST or None, initial=initial, datasets=datasets, connections=connections)
    if request.method == "POST" and form.is_valid():
        try:
            connection = selectors.connection_get(user=user, connection_id=form.cleaned_data["connection"])
            dataset = dataset_get_for_user(user=user, dataset_id=form.cleaned_data["dataset"])
            subscription = sync_services.subscription_create(
                actor=user, dataset=dataset, department=connection.department, connection=connection,
                target_table=form.cleaned_data["target_table"], purge_on_end=form.cleaned_data["purge_on_end"],
                schedule=form.cleaned_data["schedule"], deliver_on_change=form.cleaned_data["deliver_on_change"])
        except NotFoundError as exc:
            form.add_error(None, exc.message)
        except ConflictError as exc:
            form.add_error("target_table", exc.message)
        except ApplicationError as exc:
            add_service_errors(form, exc, default="dataset")
        else:
            messages.success(request, f"Subscribed: {subscription.dataset.title} into {subscription.target_table}.")
            return redirect("ui-subscription", subscription_id=subscription.pk)
    return render(request, "exchange/sync/subscription_form.html", {"form": form, "has_datasets": bool(datasets),
                                                                      "has_connections": bool(connections)},
                  status=400 if form.errors else 200)


def _subscription_context(user: User, subscription: Subscription, schedule_form: ScheduleForm | None = None,
                          end_form: SubscriptionEndForm | None = None) -> dict[str, Any]:
    runs = list(selectors.run_list(user=user).filter(subscription=subscription)[:RUNS_SHOWN])
    return {
        "subscription": subscription, "runs": runs, "live": any(r.status in LIVE for r in runs),
        "manage": subscription.department_id in selectors.steward_departments(user=user),
        "schedule": selectors.schedule_describe(subscription.schedule),
        "schedule_form": schedule_form or SubscriptionScheduleForm(initial={
            "schedule": subscription.schedule, "deliver_on_change": subscription.deliver_on_change}),
        "waiting_since": selectors.subscription_waiting_since(subscription=subscription)
        if subscription.status == SubscriptionStatus.ACTIVE else None,
        "end_form": end_form or SubscriptionEndForm(),
    }


@login_required
def subscription_detail(request: HttpRequest, subscription_id: int) -> HttpResponse:
    user = _user(request)
    try:
        subscription = selectors.subscription_get(user=user, subscription_id=subscription_id)
    except NotFoundError:
        return error_404(request)
    context = _subscription_context(user, subscription)
    if getattr(request, "htmx", False):
        return render(request, "exchange/sync/_subscription_runs.html", context)
    return render(request, "exchange/sync/subscription.html", context)


def _managed_subscription(request: HttpRequest, subscription_id: int) -> tuple[User, Subscription] | HttpResponse:
    """The signed-in steward and the subscription of their department, or the 404 page."""
    user = _user(request)
    try:
        return user, selectors.subscription_get(user=user, subscription_id=subscription_id, manage=True)
    except NotFoundError:
        return error_404(request)


@login_required
@require_POST
def subscription_schedule(request: HttpRequest, subscription_id: int) -> HttpResponse:
    found = _managed_subscription(request, subscription_id)
    if isinstance(found, HttpResponse):
        return found
    user, subscription = found
    form = SubscriptionScheduleForm(request.POST)
    if form.is_valid():
        try:
            sync_services.subscription_update(actor=user, subscription=subscription,
                                              schedule=form.cleaned_data["schedule"],
                                              deliver_on_change=form.cleaned_data["deliver_on_change"])
        except ApplicationError as exc:
            add_service_errors(form, exc, default="schedule")
        else:
            on_change = form.cleaned_data["deliver_on_change"]
            messages.success(request, "Schedule saved." if form.cleaned_data["schedule"].strip() else
                             "Schedule cleared: deliveries run on change." if on_change else
                             "Schedule cleared: deliveries run on demand.")
            return redirect("ui-subscription", subscription_id=subscription_id)
    subscription.refresh_from_db()
    return render(request, "exchange/sync/subscription.html",
                  _subscription_context(user, subscription, schedule_form=form), status=400)


@login_required
@require_POST
def subscription_pause(request: HttpRequest, subscription_id: int) -> HttpResponse:
    found = _managed_subscription(request, subscription_id)
    if isinstance(found, HttpResponse):
        return found
    user, subscription = found
    if subscription.status == SubscriptionStatus.ENDED:
        messages.error(request, "The subscription has ended; it can no longer be paused or resumed.")
    else:
        paused = request.POST.get("paused") == "1"
        sync_services.subscription_update(actor=user, subscription=subscription, paused=paused)
        messages.success(request, "Subscription paused." if paused else "Subscription resumed.")
    return redirect("ui-subscription", subscription_id=subscription_id)


@login_required
@require_POST
def subscription_run(request: HttpRequest, subscription_id: int) -> HttpResponse:
    found = _managed_subscription(request, subscription_id)
    if isinstance(found, HttpResponse):
        return found
    user, subscription = found
    try:
        run = sync_services.run_now(actor=user, subscription=subscription)
        messages.success(request, f"Delivery run #{run.pk} queued.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("ui-subscription", subscription_id=subscription_id)


@login_required
@require_POST
def subscription_end(request: HttpRequest, subscription_id: int) -> HttpResponse:
    found = _managed_subscription(request, subscription_id)
    if isinstance(found, HttpResponse):
        return found
    user, subscription = found
    form = SubscriptionEndForm(request.POST)
    form.is_valid()
    purge = bool(form.cleaned_data.get("purge"))
    try:
        sync_services.subscription_end(actor=user, subscription=subscription, purge=purge)
    except ApplicationError as exc:
        if exc.code == "ended_copy_kept":  # it ended; only the drop failed, retried from the page
            messages.error(request, exc.message)
            return redirect("ui-subscription", subscription_id=subscription.pk)
        form.add_error("purge", exc.message)
        return render(request, "exchange/sync/subscription.html",
                      _subscription_context(user, subscription, end_form=form), status=400)
    messages.success(request, f"Subscription to {subscription.dataset.title} ended"
                              f"{' and the delivered table dropped' if purge else ''}. Its deliveries stay listed.")
    return redirect("ui-subscription", subscription_id=subscription.pk)


@login_required
@require_POST
def subscription_purge(request: HttpRequest, subscription_id: int) -> HttpResponse:
    """Drop the delivered copy of an ended subscription that kept it."""
    found = _managed_subscription(request, subscription_id)
    if isinstance(found, HttpResponse):
        return found
    user, subscription = found
    try:
        sync_services.subscription_purge(actor=user, subscription=subscription)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The delivered table {subscription.target_table} was dropped.")
    return redirect("ui-subscription", subscription_id=subscription.pk)


@login_required
@require_POST
def subscription_remove(request: HttpRequest, subscription_id: int) -> HttpResponse:
    """Remove an ended subscription and its delivery history from the lists (the audit trail
    keeps every delivery's event)."""
    found = _managed_subscription(request, subscription_id)
    if isinstance(found, HttpResponse):
        return found
    user, subscription = found
    try:
        sync_services.subscription_delete(actor=user, subscription=subscription)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("ui-subscription", subscription_id=subscription.pk)
    messages.success(request, f"The ended subscription to {subscription.dataset.title} was removed.")
    return redirect("ui-sync")
