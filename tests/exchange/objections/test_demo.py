"""The demo's objections: one answered, one open, through the real workflow; a second run
changes nothing."""

from __future__ import annotations

import io

import pytest

from exchange import demo
from exchange.objections.models import Objection
from tests.factories import DepartmentFactory, MembershipFactory, UserFactory
from tests.records_support import grant, published_dataset

pytestmark = pytest.mark.django_db


def _fields(*names: str) -> list[dict[str, object]]:
    key: dict[str, object] = {"name": names[0], "type": "text", "is_key": True, "nullable": False,
                              "sensitivity": "public"}
    rest: list[dict[str, object]] = [{"name": n, "type": "text", "sensitivity": "public"} for n in names[1:]]
    return [key, *rest]


def test_the_demo_seeds_an_answered_and_an_open_objection_once():
    departments = {code: DepartmentFactory(code=code, slug=code, name=code.title())
                   for code in ("transport", "health", "planning", "environment")}
    users = {}
    for username, code, role in [("emil.steward", "environment", "steward"), ("paula.steward", "planning", "steward"),
                                 ("hugo.analyst", "health", "analyst"), ("tom.analyst", "transport", "analyst")]:
        users[username] = MembershipFactory(department=departments[code], role=role,
                                            user=UserFactory(username=username)).user
    air = published_dataset(departments["environment"], slug="air-quality", fields=_fields("station_id", "no2_ugm3"))
    permits = published_dataset(departments["planning"], slug="building-permits",
                                fields=_fields("permit_id", "status", "decided_on"))
    grant(air, department=departments["health"], approved_by=users["emil.steward"],
          fields={"station_id": "clear", "no2_ugm3": "clear"})
    grant(permits, department=departments["transport"], approved_by=users["paula.steward"],
          fields={"permit_id": "clear", "status": "clear", "decided_on": "clear"})

    assert demo._seed_objections(io.StringIO()) == 2
    assert sorted(Objection.objects.values_list("status", flat=True)) == ["accepted", "open"]
    assert Objection.objects.get(status="accepted").answered_by == users["emil.steward"]
    assert demo._seed_objections(io.StringIO()) == 0
