"""Rate limits of the API, per user and per token (DRF throttles; counted in the default
cache: Redis when REDIS_URL is set, so every web process counts together, else the one
process's memory).

Every request counts against its user (all their tokens and their browser session together;
an anonymous caller by address) and, when it comes with an API token, against that token as
well, so one runaway script cannot use up its owner's whole allowance. Exports count again,
against their own, lower rates. Rates come from ``settings.API_THROTTLE_RATES`` when the
request is made (``None``: no limit). A refused request is a 429 in the API's error shape,
with ``Retry-After``.
"""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle


class UserRateThrottle(SimpleRateThrottle):
    scope = "user"

    def get_rate(self) -> str | None:
        return settings.API_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        user = request.user
        ident = f"u{user.pk}" if user is not None and user.is_authenticated else f"ip{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class TokenRateThrottle(UserRateThrottle):
    """Only requests made with an API token; keyed by the token's digest (never the token)."""

    scope = "token"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        digest = getattr(request.auth, "digest", None)
        if not digest:
            return None
        return self.cache_format % {"scope": self.scope, "ident": digest[:64]}


class ExportUserThrottle(UserRateThrottle):
    scope = "export"


class ExportTokenThrottle(TokenRateThrottle):
    scope = "export_token"


def export_throttles() -> list[type[BaseThrottle]]:
    """The throttles of an export endpoint: the API's own, then the export rates."""
    defaults = cast(list[type[BaseThrottle]], list(api_settings.DEFAULT_THROTTLE_CLASSES))
    return [*defaults, ExportUserThrottle, ExportTokenThrottle]
