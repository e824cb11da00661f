"""One error shape for the whole API.

Every error leaves the API as::

    {"error": {"status": 400, "code": "invalid", "message": "…", "fields": {"role": ["…"]}}}

``fields`` is present only for input errors; ``extra`` carries machine-readable context
(e.g. the allowed transitions of a 409). Services raise :class:`ApplicationError` or
Django's ``ValidationError``; views never build error responses by hand.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from config.api.timeouts import is_statement_timeout


class ApplicationError(Exception):
    """A business rule said no. Subclasses pick the HTTP status."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    code: str = "invalid"

    def __init__(
        self,
        message: str,
        *,
        fields: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.extra = extra or {}
        if code:
            self.code = code


class PermissionDeniedError(ApplicationError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "permission_denied"


class NotFoundError(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class ConflictError(ApplicationError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class PayloadTooLargeError(ApplicationError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


class QueryTimeoutError(ApplicationError):
    """A statement ran into the request's statement timeout (config.middleware)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "query_timeout"


def statement_timeout_error() -> QueryTimeoutError:
    return QueryTimeoutError(
        "The query took longer than the exchange allows (REQUEST_STATEMENT_TIMEOUT_SECONDS) and was stopped. "
        "Narrow it (more specific filters, a shorter search) or try again later."
    )


class LockedOutError(ApplicationError):
    """Too many failed logins of one username from one address (django-axes)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "locked_out"


def _field_errors(detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict):
        return {str(k): _field_errors(v) if isinstance(v, dict) else _messages(v) for k, v in detail.items()}
    return {"non_field_errors": _messages(detail)}


def _messages(detail: Any) -> list[Any]:
    if isinstance(detail, list | tuple):
        out: list[Any] = []
        for item in detail:
            out.extend(_messages(item) if isinstance(item, list | tuple) else [
                _field_errors(item) if isinstance(item, dict) else str(item)
            ])
        return out
    return [str(detail)]


def error_body(
    *, status_code: int, code: str, message: str, fields: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status_code, "code": code, "message": message}
    if fields:
        body["fields"] = fields
    if extra:
        body.update(extra)
    return {"error": body}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(
            error_body(status_code=exc.status_code, code=exc.code, message=exc.message,
                       fields=exc.fields, extra=exc.extra),
            status=exc.status_code,
        )
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(
            error_body(status_code=400, code="invalid", message="The input is not valid.", fields=fields),
            status=400,
        )
    if is_statement_timeout(exc):
        timeout = statement_timeout_error()
        return Response(error_body(status_code=timeout.status_code, code=timeout.code, message=timeout.message),
                        status=timeout.status_code, headers={"Retry-After": "30"})
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: let Django log it and answer 500
    assert isinstance(exc, exceptions.APIException)
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body(
            status_code=response.status_code, code="invalid",
            message="The input is not valid.", fields=_field_errors(exc.detail),
        )
    else:
        detail = exc.detail
        message = str(detail) if not isinstance(detail, dict | list) else "Request failed."
        codes = exc.get_codes()
        response.data = error_body(
            status_code=response.status_code,
            code=codes if isinstance(codes, str) else exc.default_code,
            message=message,
        )
    return response
