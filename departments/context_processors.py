from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from departments.selectors import principal_of


def roles(request: HttpRequest) -> dict[str, Any]:
    """The signed-in user's roles, for role-aware navigation."""
    if not request.user.is_authenticated:
        return {}
    return {"principal": principal_of(request.user)}
