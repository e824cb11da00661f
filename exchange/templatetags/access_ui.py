from __future__ import annotations

from datetime import datetime

from django import template
from django.forms import BoundField
from django.utils import timezone

register = template.Library()


@register.filter
def countdown(until: datetime | None, now: datetime | None = None) -> str:
    """"expires in 12 days" (or hours, or minutes when close), "ended" once past."""
    if until is None:
        return ""
    left = until - (now or timezone.now())
    seconds = int(left.total_seconds())
    if seconds <= 0:
        return "ended"
    if left.days >= 2:
        return f"expires in {left.days} days"
    if seconds >= 7200:
        return f"expires in {seconds // 3600} hours"
    minutes = max(1, seconds // 60)
    return f"expires in {minutes} minute{'s' if minutes != 1 else ''}"


@register.filter
def described(bound: BoundField) -> str:
    """The field's widget, pointing at its error message when it has one (screen readers read
    the message with the input) and marked invalid."""
    if not bound.errors:
        return bound.as_widget()
    return bound.as_widget(attrs={"aria-describedby": f"{bound.id_for_label}-error", "aria-invalid": "true"})
