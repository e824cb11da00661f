"""Forms of the access pages. They only shape input; the services decide what is allowed and
their ApplicationError field messages are put next to the matching input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.utils import timezone

from catalog.models import Field, FieldType
from config.api.errors import ApplicationError

ROW_FILTER_OPS = [("eq", "equals"), ("ne", "differs from"), ("lt", "less than"),
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
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=5000, required=False)

    def __init__(self, *args: Any, schema: dict[str, Field], departments: list[tuple[str, str]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schema = schema
        self._choices("fields_", [(n, n) for n in schema])
        self._choices("on_behalf", [("", "Myself"), *departments])

    def _choices(self, name: str, choices: list[tuple[str, str]]) -> None:
        field = self.fields[name]
        assert isinstance(field, forms.ChoiceField)
        field.choices = choices

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
            if key.startswith("row_filter"):
                continue  # shown next to its condition: see ``attach_condition_errors``
            for message in messages:
                self.add_error(targets.get(key), message)


# --- The row conditions of an access request -------------------------------------------------
# Rows named ``rf-<n>-field`` / ``-op`` / ``-value``; the "add" and "remove" buttons re-render
# them without saving (by htmx, or as a plain submit without JS), as the schema editor does.

CONDITION_KEY = re.compile(r"^rf-(\d{1,3})-(field|op|value)$")


@dataclass
class ConditionRow:
    field: str = ""
    op: str = "eq"
    value: str = ""
    errors: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # "field" / "op" / "value" / "" (the row)

    @property
    def blank(self) -> bool:
        return not self.field and not self.value.strip()

    def error_list(self) -> list[str]:
        return [m for messages in self.errors.values() for m in messages]


def conditions_from_post(data: Mapping[str, Any]) -> list[ConditionRow]:
    """The submitted condition rows in the order of their numbers."""
    numbers = sorted({int(m.group(1)) for key in data if (m := CONDITION_KEY.match(key))})
    return [ConditionRow(field=str(data.get(f"rf-{n}-field", "")).strip()[:63],
                         op=str(data.get(f"rf-{n}-op", "eq")).strip()[:16] or "eq",
                         value=str(data.get(f"rf-{n}-value", ""))[:500])
            for n in numbers]


def apply_condition_operation(rows: list[ConditionRow], op: str, *, limit: int) -> tuple[list[ConditionRow], str]:
    """Add or remove a condition (nothing is saved); returns the rows and what to announce."""
    verb, _, arg = op.partition(":")
    if verb == "rf-add" and len(rows) < limit:
        return [*rows, ConditionRow()], f"Condition {len(rows) + 1} added."
    if verb == "rf-remove" and arg.isascii() and arg.isdigit() and int(arg) < len(rows):
        rows = list(rows)
        del rows[int(arg)]
        return rows, f"Condition {int(arg) + 1} removed."
    return rows, ""


def row_filter_of(rows: list[ConditionRow], schema: dict[str, Field]) -> tuple[list[dict[str, Any]], list[int]]:
    """The conditions in the service's shape, typed after their fields, and for each the index
    of the row it came from (blank rows are left out). The service validates them."""
    conditions: list[dict[str, Any]] = []
    origin: list[int] = []
    for i, row in enumerate(rows):
        if row.blank:
            continue
        known = schema.get(row.field)
        raw = row.value.strip()
        value: Any
        if row.op == "is_null":
            value = raw.lower() not in ("false", "no", "0")
        elif row.op == "in":
            value = [_typed(known.type, v.strip()) if known else v.strip() for v in raw.split(",") if v.strip()]
        else:
            value = _typed(known.type, raw) if known else raw
        conditions.append({"field": row.field, "op": row.op, "value": value})
        origin.append(i)
    return conditions, origin


def check_condition_rows(rows: list[ConditionRow]) -> bool:
    """What the form itself can say before the service is asked: a condition needs a field."""
    ok = True
    for row in rows:
        if not row.field and not row.blank:
            row.errors.setdefault("field", []).append("Choose a field for this condition, or remove it.")
            ok = False
    return ok


ROW_FILTER_KEY = re.compile(r"^row_filter\[(\d+)\](?:\.(field|op|value))?$")


def attach_condition_errors(rows: list[ConditionRow], origin: list[int], exc: ApplicationError) -> list[str]:
    """Put the service's ``row_filter[i].part`` messages next to the row they came from; return
    the messages about the filter as a whole."""
    general: list[str] = []
    for key, messages in exc.fields.items():
        if not key.startswith("row_filter"):
            continue
        match = ROW_FILTER_KEY.match(key)
        if match and int(match.group(1)) < len(origin):
            row = rows[origin[int(match.group(1))]]
            row.errors.setdefault(match.group(2) or "", []).extend(messages)
        else:
            general.extend(messages)
    return general


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
