"""Forms of the data-request pages. They only shape input; the services decide what is allowed
and their field messages are put next to the matching input."""

from __future__ import annotations

import re
from typing import Any

from django import forms

from config.api.errors import ApplicationError
from exchange.demand import services

_FIELD_KEY = re.compile(r"^fields\[(\d+)\]\.(name|description)$")


class DataRequestForm(forms.Form):
    title = forms.CharField(max_length=services.MAX_TITLE, required=False,
                            help_text="What the data is about, e.g. “Noise measurements near schools”.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), max_length=services.MAX_TEXT,
                                  required=False, help_text="What the data should cover: area, period, detail.")
    wished_fields = forms.CharField(
        label="Fields you need", widget=forms.Textarea(attrs={"rows": 5}), required=False,
        help_text=f"One per line: the field's name, a colon, what it holds (at most {services.MAX_FIELDS}). "
                  "E.g. “school_id: the school's register number”.")
    purpose = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=services.MAX_PURPOSE,
                              required=False, help_text="What you will use the data for.")
    department = forms.ChoiceField(label="Asking for", required=False)

    def __init__(self, *args: Any, departments: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["department"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = departments

    def clean_wished_fields(self) -> list[services.FieldWish]:
        lines = [line.strip() for line in self.cleaned_data["wished_fields"].splitlines() if line.strip()]
        if len(lines) > services.MAX_FIELDS:
            raise forms.ValidationError(f"At most {services.MAX_FIELDS} fields.")
        wishes = []
        for line in lines:
            name, _, description = line.partition(":")
            wishes.append(services.FieldWish(name=name.strip(), description=description.strip()))
        return wishes

    def add_service_errors(self, exc: ApplicationError) -> None:
        if not exc.fields:
            self.add_error(None, exc.message)
        for key, messages in exc.fields.items():
            match = _FIELD_KEY.match(key)
            if match:
                target = "wished_fields"
                messages = [f"Line {int(match[1]) + 1}: {m}" for m in messages]
            else:
                target = "wished_fields" if key == "fields" else key
            for message in messages:
                self.add_error(target if target in self.fields else None, message)
