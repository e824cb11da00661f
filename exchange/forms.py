"""Forms of the access pages. They only shape input; the services decide what is allowed and
their ApplicationError field messages are put next to the matching input."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.utils import timezone

from catalog.models import Field, FieldType
from config.api.errors import ApplicationError

ROW_FILTER_OPS = [("", "—"), ("eq", "equals"), ("ne", "differs from"), ("lt", "less than"),
                  ("lte", "at most"), ("gt", "greater than"), ("gte", "at least"),
                  ("in", "one of (a, b, c)"), ("contains", "contains"), ("is_null", "is empty")]


def _date_input() -> forms.DateInput:
    # ISO whatever the locale: a browser's date input accepts no other format.
    return forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


def day_start(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


class AccessRequestForm(forms.Form):
    fields_ = forms.MultipleChoiceField(label="Fields", widget=forms.CheckboxSelectMultiple, required=False)
    on_behalf = forms.ChoiceField(label="For", required=False)
    purpose = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000, required=False)
    legal_basis = forms.CharField(label="Legal basis", max_length=300, required=False)
    requested_start = forms.DateField(label="Start", widget=_date_input())
    requested_end = forms.DateField(label="End (inclusive)", widget=_date_input())
    rf_field = forms.ChoiceField(label="Row filter: field", required=False)
    rf_op = forms.ChoiceField(label="Operator", choices=ROW_FILTER_OPS, required=False)
    rf_value = forms.CharField(label="Value", max_length=500, required=False)
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=5000, required=False)

    def __init__(self, *args: Any, schema: dict[str, Field], departments: list[tuple[str, str]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schema = schema
        self._choices("fields_", [(n, n) for n in schema])
        self._choices("on_behalf", [("", "Myself"), *departments])
        self._choices("rf_field", [("", "— no row filter —"), *[(n, n) for n in schema]])

    def _choices(self, name: str, choices: list[tuple[str, str]]) -> None:
        field = self.fields[name]
        assert isinstance(field, forms.ChoiceField)
        field.choices = choices

    def row_filter(self) -> list[dict[str, Any]] | None:
        """The single row condition in the service's shape, typed after the field."""
        name, op = self.cleaned_data.get("rf_field"), self.cleaned_data.get("rf_op") or "eq"
        if not name:
            return None
        raw = self.cleaned_data.get("rf_value", "")
        field = self.schema[name]
        value: Any
        if op == "is_null":
            value = raw.strip().lower() not in ("false", "no", "0")
        elif op == "in":
            value = [_typed(field.type, v.strip()) for v in raw.split(",") if v.strip()]
        else:
            value = _typed(field.type, raw)
        return [{"field": name, "op": op, "value": value}]

    def period(self) -> tuple[dt.datetime, dt.datetime]:
        start: dt.date = self.cleaned_data["requested_start"]
        end: dt.date = self.cleaned_data["requested_end"]
        return day_start(start), day_start(end + dt.timedelta(days=1))

    def add_service_errors(self, exc: ApplicationError) -> None:
        """Put each of the service's field messages next to its input."""
        targets = {"fields": "fields_", "purpose": "purpose", "legal_basis": "legal_basis",
                   "requested_end": "requested_end", "requested_start": "requested_start"}
        if not exc.fields:
            self.add_error(None, exc.message)
        for key, messages in exc.fields.items():
            target = targets.get(key, "rf_value" if key.startswith("row_filter") else None)
            for message in messages:
                self.add_error(target, message)


def _typed(field_type: str, raw: str) -> Any:
    """Best effort: the service rejects what does not fit, with its own message."""
    try:
        if field_type == FieldType.INTEGER:
            return int(raw)
        if field_type == FieldType.DECIMAL:
            return str(Decimal(raw))
    except (ValueError, InvalidOperation):
        return raw
    if field_type == FieldType.BOOLEAN and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=5000, required=False)


class CommentForm(forms.Form):
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=5000, required=False)


class WhoCouldSeeForm(forms.Form):
    dataset = forms.TypedChoiceField(coerce=int, label="Dataset")
    field = forms.CharField(label="Field", max_length=63)
    at = forms.DateField(label="Date", widget=_date_input())

    def __init__(self, *args: Any, datasets: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["dataset"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "Choose a dataset"), *datasets]
