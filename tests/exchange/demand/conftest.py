from __future__ import annotations

from typing import Any

import pytest

from departments import services as department_services
from exchange.demand import services
from tests.access_factories import make_cast, published_dataset
from tests.factories import MembershipFactory, UserFactory


@pytest.fixture
def cast(people, department, other_department) -> dict[str, Any]:
    """The access cast (transport holds the data, health asks), a second reviewer and a
    reviewer who is also an analyst of health (to test that nobody routes their own request)."""
    cast = make_cast(people, department, other_department)
    cast["reviewer2"] = UserFactory()
    department_services.city_role_grant(actor=None, user=cast["reviewer2"], role="governance_reviewer")
    cast["reviewer_analyst"] = MembershipFactory(department=other_department, role="analyst").user
    department_services.city_role_grant(actor=None, user=cast["reviewer_analyst"], role="governance_reviewer")
    return cast


@pytest.fixture
def dataset(department):
    return published_dataset(department)


def wishes(*names: str) -> list[services.FieldWish]:
    return [services.FieldWish(name=n, description=f"What {n} holds.") for n in names]


def new_request(actor: Any, *, title: str = "Bus stop accessibility", names: tuple[str, ...] = ("stop_id",
                "accessible", "ramp_width")) -> Any:
    return services.data_request_submit(actor=actor, title=title, description="Every stop, with its ramp.",
                                        purpose="Plan accessible routes", fields=wishes(*names))


@pytest.fixture
def make_request(cast) -> Any:
    """A request of health's analyst, taken to ``state`` by the right people."""

    def make(state: str = "open", *, actor: Any = None, department: Any = None) -> Any:
        from departments.models import Department

        data_request = new_request(actor or cast["analyst_h"])
        if state == "open":
            return data_request
        if state == "withdrawn":
            return services.data_request_withdraw(actor=data_request.requested_by, data_request=data_request)
        target = department or Department.objects.get(slug="transport")
        data_request = services.data_request_route(actor=cast["reviewer"], data_request=data_request,
                                                   department=target)
        if state == "routed":
            return data_request
        if state == "declined":
            return services.data_request_decline(actor=cast["steward2"], data_request=data_request, reason="No.")
        data_request = services.data_request_accept(actor=cast["steward2"], data_request=data_request)
        if state == "accepted":
            return data_request
        assert state == "fulfilled"
        dataset = published_dataset(target)
        return services.data_request_fulfil(actor=cast["steward2"], data_request=data_request, dataset=dataset)

    return make
