from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from exchange.access.models import GrantField, GrantStatus
from exchange.audit.models import AuditEvent
from exchange.audit.services import audit_record
from tests.departments.test_api import assert_error
from tests.factories import MembershipFactory
from tests.records_support import grant, published_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def permits(department):
    return published_dataset(department)


def ask(client, dataset, field, at=""):
    return client.get(f"/api/v1/audit/datasets/{dataset.pk}/who-could-see/?field={field}&at={at}")


def test_who_could_see_a_field_at_a_moment(as_user, people, permits, other_department):
    now = timezone.now()
    g_user = grant(permits, user=people["outsider"], approved_by=people["steward"],
                   fields={"phone": "masked", "district": "clear"})
    g_dept = grant(permits, department=other_department, approved_by=people["steward"], fields={"district": "clear"})
    # Revoked an hour ago: it counted before, not now.
    type(g_dept).objects.filter(pk=g_dept.pk).update(status=GrantStatus.REVOKED,
                                                    revoked_at=now - dt.timedelta(hours=1))
    client = as_user(people["city_auditor"])
    now_answer = ask(client, permits, "district").json()
    assert [(p["grant_id"], p["principal"]) for p in now_answer["principals"][1:]] == [(g_user.pk,
                                                                                       people["outsider"].username)]
    assert now_answer["principals"][0]["principal_kind"] == "department"  # the owner
    before = ask(client, permits, "district", (now - dt.timedelta(hours=2)).isoformat().replace("+", "%2B"))
    assert {p["grant_id"] for p in before.json()["principals"][1:]} == {g_user.pk, g_dept.pk}
    phone = ask(client, permits, "phone").json()["principals"][1]
    assert phone["form"] == "masked" and phone["purpose"] == "Road works planning"
    GrantField.objects.filter(grant=g_user, field_name="phone").update(lapsed_at=now - dt.timedelta(minutes=1))
    assert len(ask(client, permits, "phone").json()["principals"]) == 1
    # Before the grant existed, nobody but the owner.
    assert len(ask(client, permits, "district", "2000-01-01").json()["principals"]) == 1
    assert AuditEvent.objects.filter(action="audit.read").count() == 5


def test_department_auditor_of_owner_may_ask_others_may_not(as_user, people, permits):
    assert ask(as_user(people["auditor"]), permits, "district").status_code == 200
    other_auditor = MembershipFactory(role="auditor").user
    for user in (people["analyst"], people["steward"], other_auditor):
        assert_error(ask(as_user(user), permits, "district"), 403)
    assert AuditEvent.objects.filter(action="audit.denied").count() == 3


def test_bad_input(as_user, people, permits):
    client = as_user(people["city_auditor"])
    assert_error(ask(client, permits, "district", "yesterday"), 400)
    assert_error(ask(client, permits, ""), 400)


def test_grant_timeline_lists_access_events_in_order(as_user, people, permits):
    audit_record(actor=people["steward"], action="access_request.decide", dataset_id=permits.pk)
    audit_record(actor=people["steward"], action="grant.create", dataset_id=permits.pk)
    audit_record(actor=people["steward"], action="records.read", dataset_id=permits.pk)
    body = as_user(people["city_auditor"]).get(f"/api/v1/audit/datasets/{permits.pk}/grant-timeline/").json()
    assert [e["action"] for e in body] == ["access_request.decide", "grant.create"]
