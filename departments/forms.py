"""Forms of the department and account pages. They only shape input; the services decide,
and their errors are put back next to the field that caused them."""

from __future__ import annotations

from typing import Any

from django import forms

from departments.models import CityRole, Department, Role
from departments.selectors import user_by_username


class _UsernameField(forms.CharField):
    """A username that must belong to an active user; cleans to the user."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=150, label="Username", **kwargs)

    def clean(self, value: Any) -> Any:
        username = super().clean(value).strip()
        user = user_by_username(username=username)
        if user is None:
            raise forms.ValidationError("No active user with that username.")
        return user


class MemberAddForm(forms.Form):
    username = _UsernameField()
    role = forms.ChoiceField(choices=Role.choices, initial=Role.ANALYST)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class CityRoleGrantForm(forms.Form):
    username = _UsernameField()
    role = forms.ChoiceField(choices=CityRole.choices)


class DepartmentContactForm(forms.Form):
    """What a department's administrators keep up to date about it."""

    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    contact_email = forms.EmailField(required=False, label="Contact e-mail")
    contact_phone = forms.CharField(max_length=40, required=False, label="Contact phone")
    homepage = forms.URLField(required=False, assume_scheme="https")

    @classmethod
    def initial_of(cls, department: Department) -> dict[str, Any]:
        return {name: getattr(department, name) for name in cls.base_fields}
