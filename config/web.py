"""Small helpers shared by the server-rendered pages of every app."""

from __future__ import annotations

from django import forms

from config.api.errors import ApplicationError


def add_service_errors(form: forms.Form, exc: ApplicationError) -> None:
    """Put a service's ``fields`` errors next to the form fields they name; errors about no
    field in particular (or about a field the form does not have) go to the form's top."""
    for key, messages in (exc.fields or {}).items():
        target = key if key in form.fields else None
        for message in messages:
            form.add_error(target, message)
    if not exc.fields:
        form.add_error(None, exc.message)
