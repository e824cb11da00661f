from __future__ import annotations

from typing import Any

import pytest

from departments import services
from departments.models import Department
from tests.factories import DatasetFactory, MembershipFactory, UserFactory


@pytest.fixture
def cast(people: dict[str, Any], other_department: Department, department: Department) -> dict[str, Any]:
    """The catalogue's cast on top of ``people``: a steward next door, a steward of the owner
    who is also a governance reviewer, a data protection officer."""
    extra = {
        "other_steward": MembershipFactory(department=other_department, role="steward").user,
        "steward_reviewer": MembershipFactory(department=department, role="steward").user,
        "dpo": UserFactory(),
    }
    services.city_role_grant(actor=None, user=extra["steward_reviewer"], role="governance_reviewer")
    services.city_role_grant(actor=None, user=extra["dpo"], role="data_protection_officer")
    return {**people, **extra}


@pytest.fixture
def make_dataset(cast: dict[str, Any], department: Department):  # type: ignore[no-untyped-def]
    def make(status: str = "draft", **kwargs: Any) -> Any:
        kwargs.setdefault("department", department)
        kwargs.setdefault("steward", cast["steward"])
        kwargs.setdefault("reviewer", cast["reviewer"])
        return DatasetFactory(status=status, **kwargs)

    return make
