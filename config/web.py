"""Small helpers shared by the server-rendered pages of every app."""

from __future__ import annotations

from django import forms

from config.api.errors import ApplicationError


def add_service_errors(form: forms.Form, exc: ApplicationError, *, targets: dict[str, str] | None = None,
                       default: str | None = None) -> None:
    """Put each of a service's field messages next to its input (``targets`` renames the
    service's keys to the form's); a message about no field of the form goes to ``default``,
    or to the form's top."""
    targets = targets or {}
    if not exc.fields:
        form.add_error(default if default in form.fields else None, exc.message)
        return
    for key, messages in exc.fields.items():
        name = targets.get(key, key)
        for message in messages:
            form.add_error(name if name in form.fields else None, message)
