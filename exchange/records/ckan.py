"""CKAN's ``datastore_search`` over the record store, through the same policy as every other
read: a caller receives only their effective view (hidden fields absent, masked and
pseudonymised values as granted) and may filter and sort only on visible fields.

Registered into the catalogue's CKAN action table when the exchange app is ready, so the
catalogue does not depend on the store.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from rest_framework.request import Request

from catalog import ckan, selectors
from catalog.ckan import CkanError
from catalog.models import FieldType
from config.api.errors import ApplicationError, PermissionDeniedError
from config.api.fields import parse_id
from exchange.records import selectors as records

DEFAULT_LIMIT = 100


def _resource_dataset_id(resource_id: Any) -> int:
    if resource_id in (None, ""):
        raise CkanError("Validation Error", "resource_id: Missing value", 409, resource_id=["Missing value"])
    text = str(resource_id)
    dataset_id = parse_id(text.removesuffix("-records"))
    if dataset_id is None:
        raise CkanError("Not Found Error", "Resource was not found.", 404)
    return dataset_id


def _json_param(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            raise CkanError("Validation Error", f"{name}: not valid JSON", 409, **{name: ["Not valid JSON"]}) from None
    return value


def _text(name: str, value: Any) -> str:
    """A value as the records query reads it (the text of a query string): JSON numbers and
    booleans as text, anything nested refused."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise CkanError("Validation Error", f"{name}: use text, numbers or booleans", 409,
                    **{name: ["Use text, numbers or booleans"]})


def _query_params(params: dict[str, Any]) -> dict[str, Any]:
    """CKAN's parameters in the records query syntax."""
    out: dict[str, Any] = {}
    fields = _json_param(params, "fields")
    if fields:
        out["fields"] = ",".join(_text("fields", f) for f in fields) if isinstance(fields, list) else _text(
            "fields", fields)
    filters = _json_param(params, "filters") or {}
    if not isinstance(filters, dict):
        raise CkanError("Validation Error", "filters: must be a JSON object", 409, filters=["Must be an object"])
    for name, value in filters.items():
        if isinstance(value, list):
            out[f"{name}__in"] = ",".join(_text("filters", v) for v in value)
        else:
            out[str(name)] = _text("filters", value)
    q = params.get("q")
    if q:
        if not isinstance(q, str):
            raise CkanError("Validation Error", "q: only a plain text query is supported", 409, q=["Use text"])
        out["q"] = q
    sort = params.get("sort")
    if sort:
        order = []
        for part in str(sort).split(","):
            words = part.strip().split()
            if not words:
                continue
            name = words[0].strip('"')
            descending = len(words) > 1 and words[1].lower() == "desc"
            order.append(("-" if descending else "") + name)
        out["order"] = ",".join(order)
    return out


def datastore_search(request: Request, params: dict[str, Any]) -> Any:
    if not request.user.is_authenticated:
        raise CkanError("Authorization Error", "Access denied: sign in to read records.", 403)
    dataset_id = _resource_dataset_id(params.get("resource_id") or params.get("id"))
    dataset = selectors.dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    limit = ckan._int(params, "limit", DEFAULT_LIMIT, settings.RECORDS_MAX_PAGE_SIZE)
    offset = ckan._int(params, "offset", 0, 10**9)
    try:
        view, query, rows, total = records.read_offset(
            user=request.user, dataset=dataset, params=_query_params(params), limit=limit, offset=offset,
            action="records.datastore_search",
        )
    except PermissionDeniedError as exc:
        raise CkanError("Authorization Error", exc.message, 403) from None
    except ApplicationError as exc:
        raise CkanError("Validation Error", exc.message, 409, **exc.fields) from None
    fields = [{"id": name, "type": ckan.DATASTORE_TYPES[FieldType(view.fields[name].output_type)]}
              for name in query.fields]
    base = f"{request.path}?resource_id={dataset.pk}-records"  # the path the client called, as CKAN
    return {
        "resource_id": f"{dataset.pk}-records",
        "fields": fields,
        "records": rows,
        "total": total,
        "limit": limit,
        "offset": offset,
        "_links": {"start": base, "next": f"{base}&offset={offset + limit}"},
    }


def register() -> None:
    ckan.ACTIONS["datastore_search"] = datastore_search
