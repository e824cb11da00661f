"""The records page: a dataset's records as the policy lets the caller see them."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from catalog.selectors import dataset_get_for_user
from config.api.errors import ApplicationError, NotFoundError, PermissionDeniedError
from departments.views import error_403, error_404
from exchange.records import selectors as records

RECORD_FILTER_OPS = [("eq", "equals"), ("ne", "differs from"), ("contains", "contains"), ("gt", "greater than"),
                     ("lt", "less than"), ("in", "one of (a,b,c)")]


@login_required
def dataset_records(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """Browse the records of a dataset exactly as the signed-in user's effective view shows
    them; filters and ordering only on visible fields; "more" loads the next page by cursor."""
    try:
        dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    except NotFoundError:
        return error_404(request)
    params: dict[str, str] = {k: str(v) for k, v in request.GET.items() if v != ""}
    # The filter form sends field/op/value; turn them into the records query syntax.
    field, op, value = params.pop("f_field", ""), params.pop("f_op", "eq"), params.pop("f_value", "")
    if field and value:
        params[field if op == "eq" else f"{field}__{op}"] = value
    context: dict[str, Any] = {"dataset": dataset, "params": request.GET, "error": None,
                               "filter_ops": RECORD_FILTER_OPS}
    try:
        view, query, page = records.read_page(user=request.user, dataset=dataset, params=params)
    except PermissionDeniedError as exc:
        return error_403(request, exc)
    except ApplicationError as exc:
        context["error"] = exc
        view, query, page = None, None, None
    if view is not None and query is not None and page is not None:
        columns = [view.fields[name] for name in query.fields]
        context.update({
            "view": view, "columns": columns,
            "rows": [[row.get(c.name) for c in columns] for row in page.rows],
            "next_cursor": page.next_cursor,
            "visible_fields": list(view.fields),
            "hidden_fields": view.hidden,
            "next_query": _with(request, cursor=page.next_cursor) if page.next_cursor else "",
        })
    partial = bool(getattr(request, "htmx", False)) and bool(request.GET.get("cursor"))
    template = "exchange/_record_rows.html" if partial else "exchange/records.html"
    return render(request, template, context, status=400 if context["error"] else 200)


def _with(request: HttpRequest, **changes: Any) -> str:
    query = request.GET.copy()
    for key, value in changes.items():
        query[key] = value
    return query.urlencode()
