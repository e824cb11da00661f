"""The objection form. It only shapes input; the service decides what is allowed and its field
messages are put next to the matching input."""

from __future__ import annotations

from typing import Any

from django import forms

from config.api.errors import ApplicationError
from exchange.objections import services
from exchange.objections.models import ObjectionKind


class ObjectionForm(forms.Form):
    kind = forms.ChoiceField(label="What is wrong", choices=ObjectionKind.choices)
    record_keys = forms.CharField(
        label="Records", widget=forms.Textarea(attrs={"rows": 3}), required=False,
        help_text=f"One key per line, as you see it (at most {services.MAX_KEYS}). For a missing record: the key "
                  "it should have.")
    field_names = forms.MultipleChoiceField(label="Fields", required=False, widget=forms.CheckboxSelectMultiple)
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), max_length=services.MAX_TEXT,
                              required=False, help_text="What is wrong, and what you expected.")
    department = forms.ChoiceField(label="Objecting for", required=False)

    def __init__(self, *args: Any, field_names: list[str], departments: list[tuple[str, str]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = self.fields["field_names"]
        assert isinstance(names, forms.MultipleChoiceField)
        names.choices = [(n, n) for n in field_names]
        department = self.fields["department"]
        assert isinstance(department, forms.ChoiceField)
        department.choices = departments

    def clean_record_keys(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["record_keys"].splitlines() if line.strip()]

    def add_service_errors(self, exc: ApplicationError) -> None:
        if not exc.fields:
            self.add_error(None, exc.message)
        for key, messages in exc.fields.items():
            target = "field_names" if key == "fields" else key
            for message in messages:
                self.add_error(target if target in self.fields else None, message)
