"""The records list takes a token this process authenticated before on trust, and the page's
own statement checks it (``takes_remembered_tokens``, departments/authentication.py): whatever
changed since (the token revoked or expired, its user deactivated, renamed or demoted, any
access change), nothing is read or appended on the remembered word, and the request is
answered as if the token had been looked up first: a 401 for a token that is no longer good,
never a page, a 404 or a 400 before it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from departments import authentication
from exchange.access.policy import effective_view
from exchange.audit.models import AuditEvent
from exchange.audit.services import audit_verify
from exchange.records import read_cache
from exchange.records import selectors as records
from tests.departments.test_api import assert_error
from tests.exchange.records.test_records import rows
from tests.records_support import grant, load_rows, published_dataset

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql",
                       reason="tokens are remembered on PostgreSQL only, where the page's statement checks them"),
]


@pytest.fixture
def permits(department: Any, people: Any) -> Any:
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    grant(dataset, user=people["outsider"], approved_by=people["steward"],
          fields={"permit_id": "clear", "district": "clear"})
    return dataset


def url(dataset: Any) -> str:
    return f"/api/v1/datasets/{dataset.pk}/records/"


@pytest.fixture
def remembered(people: Any, permits: Any) -> tuple[APIClient, AuthToken]:
    """A client whose token has authenticated once (so is remembered) and the token's row."""
    instance, token = AuthToken.objects.create(user=people["outsider"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}", HTTP_ACCEPT="application/json")
    read_cache.clear()
    assert client.get(url(permits)).status_code == 200
    return client, instance


def reads() -> int:
    return AuditEvent.objects.filter(action="records.read").count()


def test_a_remembered_token_costs_no_statement_of_its_own(remembered, permits, people, django_assert_num_queries):
    client, _ = remembered
    before = reads()
    with django_assert_num_queries(1):
        response = client.get(url(permits), {"page_size": "4"})
    assert response.status_code == 200 and len(response.json()["results"]) == 4
    assert reads() == before + 1
    event = AuditEvent.objects.filter(action="records.read").latest("id")
    assert event.actor_label == people["outsider"].username and event.row_count == 4


def test_a_revoked_token_reads_nothing(remembered, permits, people):
    client, token = remembered
    AuthToken.objects.create(user=people["outsider"])  # another of the user's tokens stays
    before = reads()
    AuthToken.objects.filter(pk=token.pk).delete()  # a bare delete: this process is not told
    assert_error(client.get(url(permits)), 401, "invalid_token")
    assert_error(client.get(url(permits)), 401, "invalid_token")
    assert reads() == before


def test_an_expired_token_reads_nothing(remembered, permits):
    client, token = remembered
    before = reads()
    AuthToken.objects.filter(pk=token.pk).update(expiry=timezone.now() - dt.timedelta(seconds=1))
    assert_error(client.get(url(permits)), 401, "token_expired")
    assert reads() == before


def test_a_token_past_its_remembered_expiry_is_looked_up(remembered, permits, monkeypatch):
    client, token = remembered
    later = timezone.now() + (token.expiry - timezone.now()) + dt.timedelta(seconds=1)
    monkeypatch.setattr(authentication.timezone, "now", lambda: later)
    assert_error(client.get(url(permits)), 401, "token_expired")


def test_a_deactivated_user_reads_nothing(remembered, permits, people):
    client, _ = remembered
    before = reads()
    User.objects.filter(pk=people["outsider"].pk).update(is_active=False)
    response = client.get(url(permits))
    assert response.status_code == 401
    assert reads() == before


def test_a_renamed_user_is_recorded_under_the_new_name(remembered, permits, people):
    client, _ = remembered
    User.objects.filter(pk=people["outsider"].pk).update(username="renamed-outsider")
    assert client.get(url(permits)).status_code == 200
    assert AuditEvent.objects.filter(action="records.read").latest("id").actor_label == "renamed-outsider"


@pytest.mark.parametrize("change", [{"is_superuser": True}, {"is_staff": True}])
def test_a_user_whose_flags_changed_is_looked_up_again(remembered, permits, people, change,
                                                       django_assert_max_num_queries):
    """The staff and superuser flags are part of the request's cached context: a change to
    either fails the guard, the token is looked up (with its user) and remembered anew."""
    client, _ = remembered
    User.objects.filter(pk=people["outsider"].pk).update(**change)
    before = reads()
    with django_assert_max_num_queries(30) as captured:
        assert client.get(url(permits)).status_code == 200
    assert len(captured.captured_queries) > 1
    assert any("knox_authtoken" in q["sql"] and "exchange_audit_append" not in q["sql"]
               for q in captured.captured_queries)
    assert reads() == before + 1  # the page the guard withheld was not recorded; the one served was
    with django_assert_max_num_queries(1):
        assert client.get(url(permits)).status_code == 200


def test_a_refused_query_on_a_revoked_token_is_a_401_and_not_audited(remembered, permits):
    client, token = remembered
    AuthToken.objects.filter(pk=token.pk).delete()
    denied = AuditEvent.objects.filter(outcome="denied").count()
    assert_error(client.get(url(permits), {"secret_note": "x"}), 401, "invalid_token")
    assert_error(client.get(url(permits), {"page_size": "0"}), 401, "invalid_token")
    assert AuditEvent.objects.filter(outcome="denied").count() == denied


def test_an_unknown_dataset_on_a_revoked_token_is_a_401(remembered, permits):
    client, token = remembered
    AuthToken.objects.filter(pk=token.pk).delete()
    assert_error(client.get(f"/api/v1/datasets/{permits.pk + 1000}/records/"), 401, "invalid_token")


def test_an_unknown_dataset_on_a_good_token_is_a_404(remembered, permits):
    client, _ = remembered
    response = client.get(f"/api/v1/datasets/{permits.pk + 1000}/records/")
    assert response.status_code == 404
    assert client.get(url(permits)).status_code == 200


def test_a_bad_cursor_on_a_revoked_token_is_a_401(remembered, permits):
    client, token = remembered
    AuthToken.objects.filter(pk=token.pk).delete()
    assert_error(client.get(url(permits), {"cursor": "not-a-cursor"}), 401, "invalid_token")


def test_a_refused_query_on_a_good_token_is_refused_and_audited_once(remembered, permits):
    client, _ = remembered
    denied = AuditEvent.objects.filter(outcome="denied").count()
    assert_error(client.get(url(permits), {"secret_note": "x"}), 400, "field_not_visible")
    assert AuditEvent.objects.filter(outcome="denied").count() == denied + 1


def test_a_revoked_grant_on_a_remembered_token_is_a_403(remembered, permits):
    client, _ = remembered
    permits.grants.update(revoked_at=timezone.now() - dt.timedelta(seconds=1), status="revoked")
    assert_error(client.get(url(permits)), 403, "no_grant")


def test_the_browsable_api_confirms_the_token_first(remembered, permits, django_assert_max_num_queries):
    client, _ = remembered
    response = client.get(url(permits), HTTP_ACCEPT="text/html")
    assert response.status_code == 200


def test_other_endpoints_look_the_token_up(remembered, people, django_assert_num_queries):
    client, token = remembered
    AuthToken.objects.filter(pk=token.pk).delete()
    assert_error(client.get("/api/v1/me/"), 401, "invalid_token")


def test_a_guard_without_a_row_reads_and_appends_nothing(people, permits):
    """The statement's shape: with the guard's row set empty, PostgreSQL runs neither the page
    nor the append laterally after it."""
    user = people["outsider"]
    view = effective_view(dataset=permits, user=user)
    before = AuditEvent.objects.count()
    with pytest.raises(records.GuardFailed):
        records.read_page(user=user, dataset=permits, params={}, view=view, exists=True, as_json=True,
                          guard=("SELECT 1 WHERE CAST(%s AS boolean)", [False]))
    assert AuditEvent.objects.count() == before
    _, _, page = records.read_page(user=user, dataset=permits, params={}, view=view, exists=True, as_json=True,
                                   guard=("SELECT 1 WHERE CAST(%s AS boolean)", [True]))
    assert page.json_rows == len(rows()) and AuditEvent.objects.count() == before + 1
    assert audit_verify().intact
