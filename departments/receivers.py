"""Django's authentication signals, turned into audit events (failed logins are evidence)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest

from departments import services


def on_login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any) -> None:
    # The API's login view records its own failures with more context; skip them here.
    if request is not None and request.path.startswith("/api/"):
        return
    services.login_failed(username=str(credentials.get("username", "")), channel="web")


def on_logged_in(sender: Any, request: HttpRequest, user: User, **_: Any) -> None:
    services.login_succeeded(user=user, channel="web")


def on_locked_out(sender: Any, request: HttpRequest | None = None, username: str | None = None,
                  ip_address: str | None = None, **_: Any) -> None:
    services.login_locked_out(username=username or "", client_ip=ip_address)
