"""Forms of the catalogue pages. They only shape input: the services check the values and
their errors are put back next to the field that caused them (:func:`config.web.add_service_errors`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django import forms

from catalog.models import (
    Dataset,
    FieldType,
    Licence,
    Sensitivity,
    Theme,
    UpdateFrequency,
    Visibility,
)
from config.api.errors import ApplicationError
from departments.selectors import user_by_username


class DatasetMetadataForm(forms.Form):
    title = forms.CharField(max_length=200)
    slug = forms.CharField(max_length=100, help_text="Part of the dataset's stable URLs: lowercase, digits, hyphens.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}))
    themes = forms.MultipleChoiceField(choices=Theme.choices, required=False, widget=forms.CheckboxSelectMultiple)
    keywords = forms.CharField(required=False, help_text="Separated by commas.")
    licence = forms.ChoiceField(choices=Licence.choices, initial=Licence.CITY_INTERNAL)
    update_frequency = forms.ChoiceField(choices=UpdateFrequency.choices, initial=UpdateFrequency.UNKNOWN,
                                         label="Update frequency")
    temporal_start = forms.DateField(required=False, label="Covers from",
                                     widget=forms.DateInput(attrs={"type": "date"}))
    temporal_end = forms.DateField(required=False, label="Covers until",
                                   widget=forms.DateInput(attrs={"type": "date"}))
    spatial = forms.CharField(max_length=200, required=False, label="Area covered")
    contact = forms.CharField(max_length=150, required=False, label="Contact (username)",
                              help_text="A member of the owning department; you, if left empty.")
    visibility = forms.ChoiceField(choices=Visibility.choices, initial=Visibility.CITY)

    def clean_keywords(self) -> list[str]:
        return [k.strip() for k in self.cleaned_data["keywords"].split(",") if k.strip()]

    def clean_contact(self) -> Any:
        username = self.cleaned_data["contact"].strip()
        if not username:
            return None
        user = user_by_username(username=username)
        if user is None:
            raise forms.ValidationError("No active user with that username.")
        return user

    @classmethod
    def initial_of(cls, dataset: Dataset) -> dict[str, Any]:
        return {
            "title": dataset.title, "slug": dataset.slug, "description": dataset.description,
            "themes": dataset.themes, "keywords": ", ".join(dataset.keywords), "licence": dataset.licence,
            "update_frequency": dataset.update_frequency, "temporal_start": dataset.temporal_start,
            "temporal_end": dataset.temporal_end, "spatial": dataset.spatial,
            "contact": dataset.contact.get_username() if dataset.contact else "", "visibility": dataset.visibility,
        }

    def service_values(self) -> dict[str, Any]:
        values = dict(self.cleaned_data)
        if values.get("contact") is None:
            values.pop("contact", None)
        return values


class DatasetCreateForm(DatasetMetadataForm):
    department = forms.ChoiceField(label="Owning department")
    field_order = ["department"]

    def __init__(self, *args: Any, departments: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        department = self.fields["department"]
        assert isinstance(department, forms.ChoiceField)
        department.choices = departments


# --- The schema editor -------------------------------------------------------------------------

ROW_KEY = re.compile(r"^f-(\d+)-name$")
ERROR_KEY = re.compile(r"^fields\[(\d+)\]\.(\w+)$")


@dataclass
class FieldRow:
    """One row of the schema editor, as typed (not yet validated)."""

    name: str = ""
    type: str = FieldType.TEXT
    sensitivity: str = ""
    description: str = ""
    unit: str = ""
    nullable: bool = True
    is_key: bool = False
    renamed_from: str = ""
    errors: dict[str, list[str]] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "sensitivity": self.sensitivity,
                "description": self.description, "unit": self.unit, "nullable": self.nullable,
                "is_key": self.is_key, "renamed_from": self.renamed_from}


def rows_from_post(data: Mapping[str, Any]) -> list[FieldRow]:
    """The rows of a submitted editor, in the order of their position inputs (ties keep the
    order on the page). Rows are numbered ``f-<n>-<attribute>``."""
    found: list[tuple[float, int, FieldRow]] = []
    for key in data:
        match = ROW_KEY.match(key)
        if not match:
            continue
        n = int(match.group(1))

        def get(attr: str, n: int = n) -> str:
            return str(data.get(f"f-{n}-{attr}", "")).strip()

        try:
            position = float(get("position") or n)
        except ValueError:
            position = float(n)
        found.append((position, n, FieldRow(
            name=get("name"), type=get("type"), sensitivity=get("sensitivity"),
            description=get("description")[:2000], unit=get("unit")[:100],
            nullable=bool(get("nullable")), is_key=bool(get("is_key")), renamed_from=get("renamed_from"),
        )))
    return [row for _, _, row in sorted(found, key=lambda t: (t[0], t[1]))]


def attach_row_errors(rows: list[FieldRow], exc: ApplicationError) -> list[str]:
    """Give each row the errors the service reported for it (``fields[i].name``); return the
    errors about the list as a whole."""
    general: list[str] = []
    for key, messages in (exc.fields or {}).items():
        match = ERROR_KEY.match(key)
        if match and int(match.group(1)) < len(rows):
            rows[int(match.group(1))].errors.setdefault(match.group(2), []).extend(messages)
        elif key.startswith("fields[") and "]" in key:
            index = int(key[len("fields["):key.index("]")])
            if index < len(rows):
                rows[index].errors.setdefault("name", []).extend(messages)
        elif key.startswith("rules[") and key[len("rules["):-1].isdigit():
            general.extend(f"Quality rule {int(key[len('rules['):-1]) + 1}: {m}" for m in messages)
        else:
            general.extend(messages)
    if not general and not exc.fields:
        general.append(exc.message)
    return general


def apply_row_operation(rows: list[FieldRow], op: str) -> list[FieldRow]:
    """Add, remove or move a row (the editor's buttons); nothing is saved."""
    verb, _, arg = op.partition(":")
    if verb == "add":
        return [*rows, FieldRow()]
    if not (arg.isascii() and arg.isdigit()) or int(arg) >= len(rows):
        return rows
    i = int(arg)
    rows = list(rows)
    if verb == "remove":
        del rows[i]
    elif verb == "up" and i > 0:
        rows[i - 1], rows[i] = rows[i], rows[i - 1]
    elif verb == "down" and i + 1 < len(rows):
        rows[i + 1], rows[i] = rows[i], rows[i + 1]
    return rows


TYPE_CHOICES = FieldType.choices
SENSITIVITY_CHOICES = Sensitivity.choices
