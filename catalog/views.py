"""Server-rendered catalogue pages: browse and search, the dataset page, the steward's
metadata and schema editors, the workflow buttons and the review queue.

Every page fetches through ``selectors.dataset_get_for_user`` or a scoped list and writes
through one service; the services' errors are shown next to the field they name. Forms follow
POST/redirect/GET, so a reload never sends a form twice."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_http_methods, require_POST

from catalog import selectors, services
from catalog.forms import (
    SENSITIVITY_CHOICES,
    TYPE_CHOICES,
    DatasetCreateForm,
    DatasetMetadataForm,
    FieldRow,
    apply_row_operation,
    attach_row_errors,
    rows_from_post,
)
from catalog.models import (
    Dataset,
    DatasetStatus,
    Licence,
    SchemaStatus,
    SchemaVersion,
    Sensitivity,
    Theme,
)
from catalog.quality import rule_label
from config.api.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from config.web import add_service_errors
from departments.models import Department, Role
from departments.selectors import principal_of
from departments.views import error_403, error_404

PAGE_SIZE = 20
FACETS = ("department", "theme", "sensitivity", "status", "licence")
ACTION_LABELS = {
    "submit": "Submit for review", "approve": "Approve", "request_changes": "Request changes",
    "withdraw": "Withdraw from review", "revise": "Revise", "deprecate": "Deprecate", "retire": "Retire",
    "discard": "Discard the draft version",
}
TIMELINE_LABELS = {
    "submit": "Submitted for review", "approve": "Approved", "request_changes": "Changes requested",
    "withdraw": "Withdrawn from review", "revise": "Revised", "deprecate": "Deprecated", "retire": "Retired",
    "discard": "Draft version discarded",
}
# Steps that move the dataset (or its version) out of a reviewer's sight afterwards.
REVIEW_ACTIONS = ("approve", "request_changes")


# --- Catalogue ---------------------------------------------------------------------------------

def _catalogue_filters(request: HttpRequest) -> selectors.DatasetFilters:
    """Read the filters from the query string; values that are not choices are ignored."""
    get = request.GET
    choices = {"theme": Theme.values, "sensitivity": Sensitivity.values, "status": DatasetStatus.values,
               "licence": Licence.values}
    values: dict[str, str] = {"q": get.get("q", "").strip()[:200], "department": get.get("department", "")[:80]}
    for name, allowed in choices.items():
        value = get.get(name, "")
        values[name] = value if value in allowed else ""
    return selectors.DatasetFilters(**values)


@login_required
def catalogue(request: HttpRequest) -> HttpResponse:
    filters = _catalogue_filters(request)
    qs = selectors.dataset_list(user=request.user, filters=filters)
    page = Paginator(qs.select_related("quality"), PAGE_SIZE).get_page(request.GET.get("page"))
    facets = selectors.dataset_facets(qs)
    labels = {"theme": dict(Theme.choices), "status": dict(DatasetStatus.choices),
              "licence": dict(Licence.choices), "sensitivity": dict(Sensitivity.choices)}
    facet_groups = [
        {"name": name, "title": name.capitalize(), "selected": getattr(filters, name),
         "options": [{**o, "label": labels.get(name, {}).get(o["value"], o["label"])} for o in facets[name]]}
        for name in FACETS
    ]
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "filters": filters, "page": page, "datasets": page.object_list, "facet_groups": facet_groups,
        "query": query.urlencode(),
        "can_create": bool(principal_of(request.user).departments_where(Role.STEWARD)),
    }
    htmx = getattr(request, "htmx", None)
    # htmx asks for the results only, except when it restores a page missing from its history
    # cache; the two answers differ by that header, so caches must keep them apart.
    partial = bool(htmx) and not htmx.history_restore_request  # type: ignore[union-attr]
    context["partial"] = partial
    response = render(request, "catalog/_catalogue_results.html" if partial else "catalog/catalogue.html", context)
    patch_vary_headers(response, ("HX-Request",))
    return response


# --- The dataset page --------------------------------------------------------------------------

def dataset_detail_context(request: HttpRequest, dataset: Dataset) -> dict[str, Any]:
    user = request.user
    pending = services.pending_schema_version(dataset)
    schema = selectors.working_schema(user=user, dataset=dataset)
    actions = services.transitions_for_user(user=user, dataset=dataset, pending=pending)
    return {
        "dataset": dataset,
        "schema": schema,
        "fields": sorted(schema.fields.all(), key=lambda f: f.position) if schema else [],
        "pending": pending if selectors.can_see_work_in_progress(user=user, dataset=dataset) else None,
        "timeline": _timeline(dataset),
        "actions": [(a, ACTION_LABELS.get(a, a)) for a in actions],
        "is_steward": selectors.is_owner_steward(user=user, dataset=dataset),
        "theme_labels": [dict(Theme.choices).get(t, t) for t in dataset.themes],
        **_quality_context(dataset, schema),
    }


def _quality_context(dataset: Dataset, schema: Any) -> dict[str, Any]:
    quality = selectors.dataset_quality(dataset)
    return {"quality": quality, "quality_trend": quality.trend[-10:] if quality else [],
            "rule_labels": [rule_label(r) for r in schema.rules] if schema is not None else []}


def _timeline(dataset: Dataset) -> list[Any]:
    steps = list(selectors.dataset_timeline(dataset=dataset))
    for step in steps:
        step.label = TIMELINE_LABELS.get(step.action, step.action)  # type: ignore[attr-defined]
    return steps


@login_required
@require_POST
def dataset_transition(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """One workflow step, from the dataset page or the review page (``from=review``). A step the
    workflow or the four-eyes rule refuses re-renders the page with the service's message."""
    try:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    action = request.POST.get("action", "")
    comment = request.POST.get("comment", "")[:4000]
    from_review = request.POST.get("from") == "review"
    try:
        if action not in services.ALL_ACTIONS:
            raise ApplicationError("Unknown action.", fields={"action": ["Choose one of the buttons."]})
        services.dataset_transition(actor=request.user, dataset=dataset, action=action, comment=comment)
    except ApplicationError as exc:
        context = _review_context(request, dataset) if from_review else dataset_detail_context(request, dataset)
        context.update({"transition_error": exc, "comment": comment,
                        "allowed": [ACTION_LABELS.get(a, a) for a in exc.extra.get("allowed", [])]})
        template = "catalog/review_detail.html" if from_review else "catalog/dataset_detail.html"
        return render(request, template, context, status=exc.status_code)
    messages.success(request, _done_message(action, dataset))
    if action in REVIEW_ACTIONS:
        return redirect("ui-review-queue")
    return redirect("ui-dataset-detail", dataset_id=dataset.pk)


def _done_message(action: str, dataset: Dataset) -> str:
    return {
        "submit": f"“{dataset.title}” was submitted for review.",
        "approve": f"“{dataset.title}” was approved.",
        "request_changes": f"Changes to “{dataset.title}” were requested.",
        "withdraw": f"“{dataset.title}” was withdrawn from review.",
        "revise": f"“{dataset.title}” is a draft again; edit it and submit it anew.",
        "deprecate": f"“{dataset.title}” is now deprecated.",
        "retire": f"“{dataset.title}” is retired.",
        "discard": f"The draft schema version of “{dataset.title}” was discarded.",
    }.get(action, "Done.")


# --- Stewards: metadata ------------------------------------------------------------------------

@login_required
@require_http_methods(["GET", "POST"])
def dataset_create(request: HttpRequest) -> HttpResponse:
    steward_of = principal_of(request.user).departments_where(Role.STEWARD)
    departments = list(Department.objects.filter(pk__in=steward_of, is_active=True).order_by("name"))
    if not departments:
        return error_403(request)
    choices = [(d.slug, d.name) for d in departments]
    form = DatasetCreateForm(request.POST or None, departments=choices)
    if request.method == "POST" and form.is_valid():
        values = form.service_values()
        department = next(d for d in departments if d.slug == values.pop("department"))
        try:
            dataset = services.dataset_create(actor=request.user, department=department, **values)
        except ApplicationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"“{dataset.title}” was created as a draft. Now define its fields.")
            return redirect("ui-dataset-schema", dataset_id=dataset.pk)
    return render(request, "catalog/dataset_form.html", {"form": form, "dataset": None},
                  status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def dataset_edit(request: HttpRequest, dataset_id: int) -> HttpResponse:
    try:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id, write=True)
    except NotFoundError:
        return error_404(request)
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    form = DatasetMetadataForm(request.POST or None, initial=DatasetMetadataForm.initial_of(dataset))
    if request.method == "POST" and form.is_valid():
        values = form.service_values()
        changes = {name: values[name] for name in form.changed_data if name in values}
        try:
            if changes:
                services.dataset_update(actor=request.user, dataset=dataset, **changes)
        except ApplicationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, "The metadata was saved." if changes else "Nothing changed.")
            return redirect("ui-dataset-detail", dataset_id=dataset.pk)
    return render(request, "catalog/dataset_form.html", {"form": form, "dataset": dataset},
                  status=400 if form.errors else 200)


@login_required
@require_POST
def dataset_delete(request: HttpRequest, dataset_id: int) -> HttpResponse:
    try:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id, write=True)
    except NotFoundError:
        return error_404(request)
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    try:
        services.dataset_delete(actor=request.user, dataset=dataset)
    except ApplicationError as exc:
        context = dataset_detail_context(request, dataset)
        context.update({"transition_error": exc,
                        "allowed": [ACTION_LABELS.get(a, a) for a in exc.extra.get("allowed", [])]})
        return render(request, "catalog/dataset_detail.html", context, status=exc.status_code)
    messages.success(request, f"The draft “{dataset.title}” was deleted.")
    return redirect("ui-catalogue")


# --- Stewards: the schema editor ---------------------------------------------------------------

def _rows_of(schema: SchemaVersion | None) -> list[FieldRow]:
    if schema is None:
        return [FieldRow()]
    return [FieldRow(name=f.name, type=f.type, sensitivity=f.sensitivity, description=f.description, unit=f.unit,
                     nullable=f.nullable, is_key=f.is_key, renamed_from=f.renamed_from)
            for f in sorted(schema.fields.all(), key=lambda f: f.position)]


@login_required
@require_http_methods(["GET", "POST"])
def dataset_schema(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """Edit the working schema as rows. The add / remove / move buttons re-render the rows
    without saving (by htmx, or as a plain submit without JS); "Save" writes through
    ``dataset_schema_set`` and redirects."""
    try:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id, write=True)
    except NotFoundError:
        return error_404(request)
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    schema = selectors.working_schema(user=request.user, dataset=dataset)
    general: list[str] = []
    note = ""
    status = 200
    shown = schema if schema is not None else dataset.current_schema
    rules_text = json.dumps(shown.rules if shown is not None else [], indent=1, ensure_ascii=False)
    if request.method == "POST":
        rows = rows_from_post(request.POST)
        note = request.POST.get("note", "")[:2000]
        rules_text = request.POST.get("rules", "")[:100_000]
        op = request.POST.get("op", "")
        if op:
            rows = apply_row_operation(rows, op)
        else:
            try:
                rules = json.loads(rules_text) if rules_text.strip() else []
                services.dataset_schema_set(actor=request.user, dataset=dataset,
                                            fields=[r.spec() for r in rows], note=note, rules=rules)
            except json.JSONDecodeError as exc:  # before anything was saved
                general, status = [f"The quality rules are not valid JSON: {exc}."], 400
            except ApplicationError as exc:
                general = attach_row_errors(rows, exc)
                if isinstance(exc, ConflictError):
                    general = [exc.message]
                status = exc.status_code
            else:
                messages.success(request, "The schema was saved.")
                return redirect("ui-dataset-detail", dataset_id=dataset.pk)
    else:
        rows = _rows_of(schema)
    return render(request, "catalog/schema_form.html", {
        "dataset": dataset, "schema": schema, "rows": rows, "general_errors": general, "note": note,
        "rules_text": rules_text, "rules_open": bool(general),
        "type_choices": TYPE_CHOICES, "sensitivity_choices": SENSITIVITY_CHOICES,
        "renames": dataset.current_schema_id is not None,
        "previous_names": [f.name for f in dataset.current_schema.fields.all()] if dataset.current_schema else [],
    }, status=status)


# --- Reviewers ---------------------------------------------------------------------------------

@login_required
def review_queue(request: HttpRequest) -> HttpResponse:
    try:
        queue = list(selectors.review_queue(user=request.user))
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    return render(request, "catalog/review_queue.html", {"queue": queue})


def _review_context(request: HttpRequest, dataset: Dataset) -> dict[str, Any]:
    """The dataset as the reviewer must judge it: a first publication shows its whole schema;
    a new version of a published dataset shows its diff against the current version."""
    context = dataset_detail_context(request, dataset)
    pending = services.pending_schema_version(dataset)
    p = principal_of(request.user)
    in_review_version = pending if pending is not None and pending.status == SchemaStatus.IN_REVIEW else None
    context.update({
        "kind": "dataset" if dataset.status == DatasetStatus.IN_REVIEW else (
            "schema_version" if in_review_version else None),
        "review_version": in_review_version,
        "can_decide": p.is_reviewer,
        "review_actions": [(a, ACTION_LABELS[a]) for a in REVIEW_ACTIONS
                           if a in services.allowed_transitions(dataset=dataset, pending=pending)],
    })
    if in_review_version is not None and dataset.current_schema is not None:
        current = sorted(dataset.current_schema.fields.all(), key=lambda f: f.position)
        proposed = sorted(in_review_version.fields.all(), key=lambda f: f.position)
        by_field: dict[str, list[dict[str, Any]]] = {}
        for change in in_review_version.changes:
            by_field.setdefault(str(change.get("field", "")), []).append(change)
        context.update({
            "current_fields": current,
            "diff_rows": [{"field": f, "changes": by_field.get(f.name, []),
                           "kinds": " ".join(c["change"] for c in by_field.get(f.name, []))} for f in proposed],
            "removed": [c["field"] for c in in_review_version.changes if c["change"] == "removed"],
            "changes": in_review_version.changes,
        })
    return context


@login_required
def review_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    p = principal_of(request.user)
    if not (p.is_reviewer or p.is_dpo):
        return error_403(request)
    try:
        dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    return render(request, "catalog/review_detail.html", _review_context(request, dataset))

