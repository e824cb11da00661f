from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render

from config.api.errors import statement_timeout_error
from config.api.timeouts import is_statement_timeout, statement_timeout
from exchange.audit.services import RequestContext, reset_request_context, set_request_context

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def client_ip(request: HttpRequest) -> str | None:
    if getattr(settings, "TRUST_X_FORWARDED_FOR", False):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[0].strip() or None
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """Gives every request an id (the caller's X-Request-ID when it is well-formed) and makes
    it and the client address available to the audit trail, and echoes the id back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = set_request_context(RequestContext(client_ip=client_ip(request), request_id=request_id))
        try:
            response = self.get_response(request)
        finally:
            reset_request_context(token)
        response["X-Request-ID"] = request_id
        return response


class StatementTimeoutMiddleware:
    """Every statement a request makes runs under REQUEST_STATEMENT_TIMEOUT_SECONDS; an export
    (an API view with ``streams_export = True``) runs under EXPORT_STATEMENT_TIMEOUT_SECONDS,
    from its view until its stream ends. A statement stopped while the stream is already
    under way ends the download early (the status has left). Filters, search and ordering are the
    user's, and one slow query must not hold a web process and a database backend for ever.
    The API answers a stopped statement with a 503 in its error shape (config.api.errors); a
    page gets the 503 page here."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limits = ExitStack()
        request._statement_limits = limits  # type: ignore[attr-defined]
        try:
            response = self.get_response(request)
        except BaseException:
            limits.close()
            raise
        if isinstance(response, StreamingHttpResponse):
            response.streaming_content = _limited(response.streaming_content, limits)
        else:
            limits.close()
        return response

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any,
                     view_kwargs: Any) -> None:
        export = getattr(getattr(view_func, "cls", None), "streams_export", False)
        seconds = settings.EXPORT_STATEMENT_TIMEOUT_SECONDS if export else settings.REQUEST_STATEMENT_TIMEOUT_SECONDS
        request._statement_limits.enter_context(statement_timeout(seconds))  # type: ignore[attr-defined]

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_statement_timeout(exception):
            return None
        return render(request, "errors/503.html", {"message": statement_timeout_error().message}, status=503)


def _limited(stream: Iterable[bytes], limits: ExitStack) -> Iterator[bytes]:
    with limits:  # the limit goes once the stream (and its statements) have ended
        yield from stream
