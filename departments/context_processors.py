from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from departments.models import Notification
from departments.selectors import principal_of


def roles(request: HttpRequest) -> dict[str, Any]:
    """The signed-in user's roles, for role-aware navigation."""
    if not request.user.is_authenticated:
        return {}
    return {
        "principal": principal_of(request.user),
        # Lazy: counted only if a template shows it.
        "unread_count": lambda: Notification.objects.filter(recipient_id=request.user.pk, read_at__isnull=True).count(),
    }
