"""The demo's requested data: one request in each state, through the real workflow; a second
run changes nothing."""

from __future__ import annotations

import io

import pytest

from departments import services as department_services
from exchange import demo
from exchange.demand.models import DataRequest
from tests.access_factories import published_dataset
from tests.factories import DepartmentFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_the_demo_seeds_requests_in_every_state_once():
    departments = {code: DepartmentFactory(code=code, slug=code, name=code.title())
                   for code in ("transport", "health", "planning", "environment", "finance", "social")}
    for username, code, role in [("tina.steward", "transport", "steward"), ("emil.steward", "environment", "steward"),
                                 ("hugo.analyst", "health", "analyst"), ("tom.analyst", "transport", "analyst"),
                                 ("piet.analyst", "planning", "analyst"), ("eva.analyst", "environment", "analyst"),
                                 ("felix.analyst", "finance", "analyst"), ("sam.analyst", "social", "analyst")]:
        MembershipFactory(department=departments[code], role=role, user=UserFactory(username=username))
    for username in ("rita.reviewer", "raj.reviewer"):
        department_services.city_role_grant(actor=None, user=UserFactory(username=username),
                                            role="governance_reviewer")
    dataset = published_dataset(departments["environment"])
    dataset.slug = "air-quality"
    dataset.save(update_fields=["slug"])

    assert demo._seed_data_requests(io.StringIO()) == 5
    states = dict(DataRequest.objects.values_list("title", "status"))
    assert sorted(states.values()) == ["accepted", "declined", "fulfilled", "open", "routed"]
    assert DataRequest.objects.get(status="fulfilled").supporters.count() == 1
    assert demo._seed_data_requests(io.StringIO()) == 0
