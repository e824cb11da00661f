"""A CKAN-compatible read API (``/api/3/action/<name>`` and ``/api/action/<name>``, as CKAN
serves it) so that CKAN clients and harvesters (ckanapi, CKAN's own harvester, open-data
portals) read the catalogue unchanged.

Departments are organizations, datasets are packages (``name`` = slug), keywords are tags,
EU data themes are groups. Each package has two resources: the records API (with a
datastore-like ``fields`` list describing the current schema, each field with its
sensitivity class) and the CSV export. ``datastore_search`` is provided by the record store.

Visibility is the catalogue's: signed-in callers (session, or a token as CKAN clients send
it: ``Authorization: <token>``, ``X-CKAN-API-Key: <token>`` or ``Authorization: Token …``)
see the published and deprecated datasets they may see; anonymous callers see only the
city-visible ones under an open licence. Every answer, errors included, uses CKAN's envelope
with CKAN's status codes.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Count, Q, QuerySet
from django.http import Http404, QueryDict
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog import selectors
from catalog.dcat import LICENCE_URIS
from catalog.models import Dataset, Field, FieldType, Licence, Theme, Visibility
from config.api.errors import ApplicationError, NotFoundError, PermissionDeniedError, statement_timeout_error
from config.api.fields import parse_id
from config.api.timeouts import is_statement_timeout
from departments.authentication import CkanTokenAuthentication
from departments.models import Department

logger = logging.getLogger(__name__)

CKAN_VERSION = "2.10.4"
DATASTORE_TYPES = {
    FieldType.TEXT: "text", FieldType.INTEGER: "int", FieldType.DECIMAL: "numeric", FieldType.BOOLEAN: "bool",
    FieldType.DATE: "date", FieldType.TIMESTAMP: "timestamp", FieldType.GEOPOINT: "text", FieldType.JSON: "json",
}
SORTS = {
    "score": "rank", "name": "slug", "title_string": "title", "metadata_modified": "modified_at",
    "metadata_created": "created_at",
}
FQ_TERM = re.compile(r'([+-]?)(\w+):("[^"]*"|\S+)')
MAX_ROWS = 1000


class CkanError(Exception):
    def __init__(self, kind: str, message: str, status: int, **extra: Any) -> None:
        super().__init__(message)
        self.kind, self.message, self.status, self.extra = kind, message, status, extra


def _validation(field: str, message: str) -> CkanError:
    return CkanError("Validation Error", message, 409, **{field: [message]})


def _int(params: dict[str, Any], name: str, default: int, maximum: int) -> int:
    raw = params.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise _validation(name, "Invalid integer") from None
    if value < 0:
        raise _validation(name, "Must be a positive integer")
    return min(value, maximum)


def _iso(value: datetime | None) -> str | None:
    # CKAN writes naive UTC timestamps with microseconds.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat() if value else None


def organization_dict(department: Department, package_count: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(department.pk), "name": department.slug, "title": department.name,
        "display_name": department.name, "description": department.description, "type": "organization",
        "is_organization": True, "state": "active" if department.is_active else "deleted", "approval_status":
        "approved", "image_url": "", "created": _iso(department.created_at),
    }
    if package_count is not None:
        data["package_count"] = package_count
    return data


def _field_dict(field: Field) -> dict[str, Any]:
    return {
        "id": field.name, "type": DATASTORE_TYPES[FieldType(field.type)],
        "info": {"label": field.name, "notes": field.description, "type_override": "",
                 "unit": field.unit, "sensitivity": field.sensitivity, "nullable": field.nullable,
                 "is_key": field.is_key},
    }


def package_dict(dataset: Dataset) -> dict[str, Any]:
    site = settings.SITE_URL
    base = f"{site}/api/v1/datasets/{dataset.pk}"
    fields = list(dataset.current_schema.fields.all()) if dataset.current_schema is not None else []
    licence_url = LICENCE_URIS.get(dataset.licence, "")
    contact = dataset.contact
    resource_common = {"package_id": str(dataset.pk), "state": "active", "created": _iso(dataset.published_at),
                       "last_modified": _iso(dataset.modified_at), "mimetype": None}
    resources = [
        {**resource_common, "id": f"{dataset.pk}-records", "name": f"{dataset.title}: records",
         "description": "Records through the exchange's API; only the fields your grants allow.",
         "url": f"{base}/records/", "format": "JSON", "position": 0, "datastore_active": True,
         "fields": [_field_dict(f) for f in fields]},
        {**resource_common, "id": f"{dataset.pk}-csv", "name": f"{dataset.title}: CSV export",
         "description": "CSV export of the fields your grants allow.", "url": f"{base}/export/?format=csv",
         "format": "CSV", "position": 1, "datastore_active": False},
    ]
    tags = [{"name": k, "display_name": k, "state": "active", "vocabulary_id": None} for k in dataset.keywords]
    groups = [{"name": code.lower(), "title": Theme(code).label if code in Theme.values else code,
               "display_name": Theme(code).label if code in Theme.values else code,
               "id": code.lower(), "description": ""} for code in dataset.themes]
    extras = [
        {"key": "status", "value": dataset.status},
        {"key": "frequency", "value": dataset.update_frequency},
        {"key": "spatial_text", "value": dataset.spatial},
        {"key": "temporal_start", "value": dataset.temporal_start.isoformat() if dataset.temporal_start else ""},
        {"key": "temporal_end", "value": dataset.temporal_end.isoformat() if dataset.temporal_end else ""},
        {"key": "schema_version", "value": str(dataset.version)},
        {"key": "dcat_turtle", "value": f"{site}/datasets/{dataset.pk}.ttl"},
    ]
    quality = selectors.dataset_quality(dataset)
    if quality is not None and quality.score is not None:
        extras += [{"key": "quality_score", "value": f"{quality.score:g}"},
                   {"key": "quality_checked", "value": _iso(quality.checked_at) or ""}]
    return {
        "id": str(dataset.pk), "name": dataset.slug, "title": dataset.title, "notes": dataset.description,
        "type": "dataset", "state": "active", "private": dataset.visibility == Visibility.RESTRICTED,
        "url": f"{base}/", "version": str(dataset.version),
        "license_id": dataset.licence, "license_title": Licence(dataset.licence).label,
        "license_url": licence_url, "isopen": dataset.licence != Licence.CITY_INTERNAL,
        "author": dataset.department.name, "author_email": dataset.department.contact_email,
        "maintainer": (contact.get_full_name() or contact.get_username()) if contact else "",
        "maintainer_email": contact.email if contact else "",
        "metadata_created": _iso(dataset.created_at), "metadata_modified": _iso(dataset.modified_at),
        "owner_org": str(dataset.department_id), "organization": organization_dict(dataset.department),
        "tags": tags, "num_tags": len(tags), "groups": groups, "extras": extras,
        "resources": resources, "num_resources": len(resources),
    }


# --- Actions -----------------------------------------------------------------------------------

def _visible(request: Request) -> QuerySet[Dataset]:
    return selectors.dataset_published_list(user=request.user)


def package_list(request: Request, params: dict[str, Any]) -> Any:
    limit = _int(params, "limit", MAX_ROWS, MAX_ROWS)
    offset = _int(params, "offset", 0, 10**9)
    qs = selectors.dataset_visible(user=request.user).filter(status__in=selectors.LISTED).order_by("slug")
    return list(qs.values_list("slug", flat=True)[offset:offset + limit])


def _get_package(request: Request, ident: Any) -> Dataset:
    if not ident:
        raise _validation("id", "Missing value")
    ident = str(ident)
    pk = parse_id(ident)
    q = Q(slug=ident) | Q(pk=pk) if pk is not None else Q(slug=ident)
    dataset = _visible(request).filter(q).first()
    if dataset is None:
        raise CkanError("Not Found Error", "Not found", 404)
    return dataset


def package_show(request: Request, params: dict[str, Any]) -> Any:
    return package_dict(_get_package(request, params.get("id") or params.get("name_or_id")))


def _apply_fq(qs: QuerySet[Dataset], fq: str) -> QuerySet[Dataset]:
    for sign, key, raw in FQ_TERM.findall(fq or ""):
        value = raw.strip('"')
        if key in ("dataset_type", "state", "capacity"):
            continue  # every package here is an active, public-type dataset
        if key in ("organization", "owner_org"):
            pk = parse_id(value)
            term = Q(department__slug=value) | Q(department_id=pk) if pk is not None else Q(department__slug=value)
        elif key == "tags":
            term = Q(keywords__icontains=selectors.json_element(value))
        elif key == "groups":
            term = Q(themes__icontains=selectors.json_element(value.upper()))
        elif key == "license_id":
            term = Q(licence=value)
        elif key == "name":
            term = Q(slug=value)
        else:
            raise _validation("fq", f"Unsupported filter field: {key}")
        qs = qs.exclude(term) if sign == "-" else qs.filter(term)
    return qs


def _order(sort: str, searching: bool) -> list[str]:
    order: list[str] = []
    for part in (sort or ("score desc, metadata_modified desc" if searching else "name asc")).split(","):
        words = part.split()
        if not words:
            continue
        if words[0] not in SORTS or (len(words) > 1 and words[1] not in ("asc", "desc")):
            raise _validation("sort", f"Cannot sort by {part.strip()!r}")
        column = SORTS[words[0]]
        if column == "rank" and not searching:
            continue
        order.append(f"-{column}" if len(words) > 1 and words[1] == "desc" else column)
    return [*order, "id"]


def package_search(request: Request, params: dict[str, Any]) -> Any:
    rows = _int(params, "rows", 10, MAX_ROWS)
    start = _int(params, "start", 0, 10**9)
    q = str(params.get("q") or "").strip()
    if q in ("*:*", "*"):
        q = ""
    qs = selectors.dataset_published_list(user=request.user, filters=selectors.DatasetFilters(q=q))
    qs = _apply_fq(qs, str(params.get("fq") or ""))
    ordered = qs.order_by(*_order(str(params.get("sort") or ""), bool(q)))
    results = [package_dict(d) for d in ordered[start:start + rows]]
    wanted = params.get("facet.field") or "[]"
    if isinstance(wanted, str):
        try:
            wanted = json.loads(wanted)
        except ValueError:
            raise _validation("facet.field", "Must be a JSON list") from None
    if not isinstance(wanted, list):
        raise _validation("facet.field", "Must be a JSON list")
    return {"count": qs.count(), "sort": params.get("sort") or "", "results": results,
            **_facets(qs, [str(w) for w in wanted])}


def _facets(qs: QuerySet[Dataset], wanted: list[str]) -> dict[str, Any]:
    if not wanted:
        return {"facets": {}, "search_facets": {}}
    counters: dict[str, Counter[str]] = {name: Counter() for name in wanted}
    for slug, licence, keywords, themes in qs.order_by().values_list("department__slug", "licence", "keywords",
                                                                      "themes"):
        values = {"organization": [slug], "license_id": [licence], "tags": keywords or [],
                  "groups": [t.lower() for t in themes or []]}
        for name in wanted:
            counters[name].update(values.get(name, []))
    return {
        "facets": {name: dict(c) for name, c in counters.items()},
        "search_facets": {name: {"title": name, "items": [
            {"name": v, "display_name": v, "count": n} for v, n in c.most_common()]} for name, c in counters.items()},
    }


def _organizations(request: Request) -> QuerySet[Department]:
    counted = selectors.dataset_visible(user=request.user).filter(status__in=selectors.LISTED)
    return Department.objects.filter(is_active=True).annotate(
        package_count=Count("datasets", filter=Q(datasets__in=counted), distinct=True)).order_by("slug")


def organization_list(request: Request, params: dict[str, Any]) -> Any:
    orgs = _organizations(request)
    if str(params.get("all_fields", "")).lower() in ("true", "1", "yes"):
        return [organization_dict(o, o.package_count) for o in orgs]  # type: ignore[attr-defined]
    return [o.slug for o in orgs]


def organization_show(request: Request, params: dict[str, Any]) -> Any:
    ident = str(params.get("id") or "")
    if not ident:
        raise _validation("id", "Missing value")
    pk = parse_id(ident)
    q = Q(slug=ident) | Q(pk=pk) if pk is not None else Q(slug=ident) | Q(code=ident)
    org = _organizations(request).filter(q).first()
    if org is None:
        raise CkanError("Not Found Error", "Not found", 404)
    data = organization_dict(org, org.package_count)  # type: ignore[attr-defined]
    if str(params.get("include_datasets", "")).lower() in ("true", "1", "yes"):
        data["packages"] = [package_dict(d) for d in _visible(request).filter(department=org)[:MAX_ROWS]]
    return data


def tag_list(request: Request, params: dict[str, Any]) -> Any:
    query = str(params.get("query") or "").lower()
    tags: set[str] = set()
    for keywords in _visible(request).order_by().values_list("keywords", flat=True):
        tags.update(k for k in keywords or [] if query in k.lower())
    if str(params.get("all_fields", "")).lower() in ("true", "1", "yes"):
        return [{"name": t, "display_name": t, "id": t, "vocabulary_id": None} for t in sorted(tags)]
    return sorted(tags)


def status_show(request: Request, params: dict[str, Any]) -> Any:
    return {
        "ckan_version": CKAN_VERSION, "site_url": settings.SITE_URL, "site_title": "City data exchange",
        "site_description": "The catalogue of the city's departments (CKAN-compatible read API).",
        "locale_default": "en", "extensions": ["datastore"],
    }


ACTIONS: dict[str, Callable[[Request, dict[str, Any]], Any]] = {
    f.__name__: f for f in (package_list, package_show, package_search, organization_list, organization_show,
                            tag_list, status_show)
}


def envelope(action: str, *, result: Any = None, error: CkanError | None = None) -> Response:
    body: dict[str, Any] = {"help": f"{settings.SITE_URL}/api/3/action/help_show?name={quote(action, safe='')}"}
    if error is None:
        body.update(success=True, result=result)
        return Response(body)
    body.update(success=False, error={"__type": error.kind, "message": error.message, **error.extra})
    return Response(body, status=error.status)


def _bad_request(message: str) -> CkanError:
    return CkanError("Bad request", f"Bad request - {message}", 400)


def _mixed(data: QueryDict) -> dict[str, Any]:
    """CKAN's reading of query and form parameters: a repeated key gives a list."""
    return {key: values[0] if len(values) == 1 else values for key, values in data.lists()}


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _as_ckan_error(exc: Exception) -> CkanError | None:
    """The exceptions of actions, services and DRF as CKAN's action API reports them: 404 Not
    Found Error, 403 Authorization Error (also for a bad token: CKAN has no 401), 409
    Validation Error, 400 for a request it cannot read."""
    if isinstance(exc, CkanError):
        return exc
    if is_statement_timeout(exc):
        return CkanError("Service Unavailable", statement_timeout_error().message, 503)
    if isinstance(exc, NotFoundError | Http404 | exceptions.NotFound):
        return CkanError("Not Found Error", "Not found", 404)
    if isinstance(exc, PermissionDeniedError):
        return CkanError("Authorization Error", f"Access denied: {exc.message}", 403)
    if isinstance(exc, exceptions.AuthenticationFailed | exceptions.NotAuthenticated | exceptions.PermissionDenied):
        return CkanError("Authorization Error", f"Access denied: {exc.detail}", 403)
    if isinstance(exc, DjangoPermissionDenied):
        return CkanError("Authorization Error", "Access denied", 403)
    if isinstance(exc, ApplicationError):
        return CkanError("Validation Error", exc.message, 409, **exc.fields)
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        return CkanError("Validation Error", "The input is not valid.", 409, **fields)
    if isinstance(exc, exceptions.ParseError):
        return _bad_request(f"JSON Error: {exc.detail}")
    if isinstance(exc, exceptions.APIException):
        return CkanError("Bad request", str(exc.detail), exc.status_code)
    return None


@extend_schema(exclude=True)
class CkanActionView(APIView):
    """CKAN's action API, served at ``/api/3/action/<name>`` and ``/api/action/<name>`` as
    CKAN serves it: GET with query parameters, POST with a JSON (or form) body, every answer
    and every error in CKAN's envelope."""

    authentication_classes = [CkanTokenAuthentication, SessionAuthentication]
    permission_classes = [AllowAny]

    def get(self, request: Request, action: str) -> Response:
        return self._run(request, action, _mixed(request.query_params))

    def post(self, request: Request, action: str) -> Response:
        data: Any = request.data
        if isinstance(data, QueryDict):
            values = list(data.values())
            if len(values) == 1 and values[0] in ("1", ""):
                # As CKAN: a JSON document posted as a form (``curl -d '{…}'``) is its only key.
                try:
                    data = json.loads(next(iter(data)))
                except ValueError as exc:
                    raise _bad_request(f"JSON Error: {exc}") from None
            else:
                data = _mixed(data)
        if not isinstance(data, dict):
            raise _bad_request(f"JSON Error: Request data JSON decoded to {data!r} but it needs to be a dictionary.")
        return self._run(request, action, {**_mixed(request.query_params), **data})

    def _run(self, request: Request, action: str, params: dict[str, Any]) -> Response:
        handler = ACTIONS.get(action)
        if handler is None:
            raise _bad_request(f"Action name not known: {action}")
        for key, value in params.items():
            if _has_nul(key) or _has_nul(value):
                raise _validation(key, "Null characters are not allowed.")
        return envelope(action, result=handler(request, params))

    def handle_exception(self, exc: Exception) -> Response:
        action = str(self.kwargs.get("action", ""))
        error = _as_ckan_error(exc)
        if error is None:
            # As CKAN: an unexpected failure is a 500 in the envelope too, and is logged.
            logger.exception("CKAN action %r failed", action, exc_info=exc)
            error = CkanError("Internal Server Error", "Internal Server Error", 500)
        response = envelope(action, error=error)
        wait = getattr(exc, "wait", None) if isinstance(exc, exceptions.Throttled) else None
        if wait:
            response["Retry-After"] = str(math.ceil(wait))
        return response
