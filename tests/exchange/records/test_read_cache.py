"""The records request's cached context (exchange/records/read_cache.py): few statements per request,
and never a context older than the last committed change it depends on."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.db import connection, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm
from knox.models import AuthToken
from rest_framework.test import APIClient

from catalog import services as catalog_services
from catalog.models import Field
from departments import services as department_services
from departments.models import Membership
from exchange.access.models import GrantField
from exchange.access.services import grant_revoke
from exchange.audit.models import AuditEvent
from exchange.records import read_cache
from tests.departments.test_api import assert_error
from tests.exchange.records.test_records import CANARY_NOTE, rows
from tests.factories import MembershipFactory
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def permits(department: Any, people: Any) -> Any:
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    return dataset


def token_client(user: Any) -> APIClient:
    """A client that authenticates with an API token, as programs do (a new user object per
    request, as in production)."""
    _, token = AuthToken.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def url(dataset: Any) -> str:
    return f"/api/v1/datasets/{dataset.pk}/records/"


def fields_seen(client: APIClient, dataset: Any) -> list[str]:
    response = client.get(url(dataset))
    assert response.status_code == 200, response.content
    return [f["name"] for f in response.json()["fields"]]


@pytest.fixture
def clock() -> Iterator[list[dt.datetime]]:
    """A clock the test moves: ``clock[0] += …``."""
    now = [timezone.now()]
    with mock.patch("django.utils.timezone.now", lambda: now[0]):
        yield now


# On PostgreSQL the audit append is one statement; on SQLite it is a transaction of its own
# (a savepoint here, the chain's head, the insert, the release).
AUDIT_STATEMENTS = 1 if connection.vendor == "postgresql" else 4


class TestStatements:
    def test_a_records_request_costs_at_most_four_statements(self, people, permits,
                                                             django_assert_max_num_queries):
        user = people["outsider"]
        grant(permits, user=user, approved_by=people["steward"], fields={"permit_id": "clear", "phone": "masked"})
        client = token_client(user)
        read_cache.clear()
        client.get(url(permits))  # builds the context
        before = AuditEvent.objects.filter(action="records.read").count()
        # On PostgreSQL one statement: the page's, which checks the token remembered from the
        # request before (departments.authentication.Unconfirmed) and appends the read's record.
        # Elsewhere the token with the access version, the page, and the append's statements.
        expected = 1 if connection.vendor == "postgresql" else 2 + AUDIT_STATEMENTS
        with django_assert_max_num_queries(expected) as captured:
            body = client.get(url(permits) + "?page_size=5").json()
        if connection.vendor == "postgresql":
            [statement] = captured.captured_queries
            assert "exchange_audit_append" in statement["sql"] and "knox_authtoken" in statement["sql"]
        assert [f["name"] for f in body["fields"]] == ["permit_id", "phone"] and len(body["results"]) == 5
        assert AuditEvent.objects.filter(action="records.read").count() == before + 1

    def test_export_and_preview_use_the_same_context(self, people, permits, django_assert_max_num_queries):
        user = people["outsider"]
        grant(permits, user=user, approved_by=people["steward"], fields={"permit_id": "clear"})
        client = token_client(user)
        client.get(url(permits))
        with django_assert_max_num_queries(2 + AUDIT_STATEMENTS):
            assert client.get(f"/api/v1/datasets/{permits.pk}/preview/").status_code == 200


class TestNeverStale:
    """Each change is made after the context was cached; the next request must see it."""

    def test_revoked_grant(self, people, permits):
        user = people["outsider"]
        g = grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"})
        client = token_client(user)
        assert fields_seen(client, permits) == ["district"]
        grant_revoke(actor=people["steward"], grant=g, reason="No longer needed")
        assert_error(client.get(url(permits)), 403, "no_grant")

    def test_grant_changed_by_a_bare_update(self, people, permits):
        """Not only the services: the triggers see any write (the admin site, a script)."""
        user = people["outsider"]
        g = grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"})
        client = token_client(user)
        assert fields_seen(client, permits) == ["district"]
        GrantField.objects.filter(grant=g).update(form="masked")
        body = client.get(url(permits)).json()
        assert body["fields"][0]["form"] == "masked" and body["results"][0]["district"].startswith("*")

    def test_grant_expires_with_time_without_any_write(self, people, permits, clock):
        user = people["outsider"]
        g = grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"})
        type(g).objects.filter(pk=g.pk).update(valid_until=clock[0] + dt.timedelta(minutes=5))
        client = token_client(user)
        assert fields_seen(client, permits) == ["district"]
        assert fields_seen(client, permits) == ["district"]
        clock[0] += dt.timedelta(minutes=5, seconds=1)
        assert_error(client.get(url(permits)), 403, "no_grant")

    def test_grant_that_starts_later_and_field_that_lapses_later(self, people, permits, clock):
        user = people["outsider"]
        now = clock[0]
        grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear", "phone": "masked"})
        later = grant(permits, user=user, approved_by=people["steward"], fields={"permit_id": "clear"})
        type(later).objects.filter(pk=later.pk).update(valid_from=now + dt.timedelta(hours=1))
        GrantField.objects.filter(field_name="phone").update(lapsed_at=now + dt.timedelta(hours=2))
        client = token_client(user)
        assert fields_seen(client, permits) == ["phone", "district"]
        clock[0] = now + dt.timedelta(hours=1, seconds=1)
        assert fields_seen(client, permits) == ["permit_id", "phone", "district"]
        clock[0] = now + dt.timedelta(hours=2, seconds=1)
        assert fields_seen(client, permits) == ["permit_id", "district"]

    def test_membership_removed(self, people, permits, other_department):
        member = MembershipFactory(department=other_department, role="analyst").user
        grant(permits, department=other_department, approved_by=people["steward"], fields={"district": "clear"})
        client = token_client(member)
        assert fields_seen(client, permits) == ["district"]
        department_services.membership_remove(actor=people["outsider"],
                                              membership=Membership.objects.get(user=member))
        assert_error(client.get(url(permits)), 403, "no_grant")

    def test_role_changed_to_one_department_grants_do_not_reach(self, people, permits, other_department):
        member = MembershipFactory(department=other_department, role="analyst").user
        grant(permits, department=other_department, approved_by=people["steward"], fields={"district": "clear"})
        client = token_client(member)
        assert fields_seen(client, permits) == ["district"]
        department_services.membership_change_role(actor=people["outsider"],
                                                   membership=Membership.objects.get(user=member), role="auditor")
        assert_error(client.get(url(permits)), 403, "no_grant")

    def test_schema_change(self, people, permits):
        user = people["outsider"]
        grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear", "phone": "masked"})
        client = token_client(user)
        assert fields_seen(client, permits) == ["phone", "district"]
        Field.objects.filter(schema_id=permits.current_schema_id, name="phone").delete()
        assert fields_seen(client, permits) == ["district"]

    def test_dataset_withdrawn(self, people, permits):
        user = people["outsider"]
        grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"})
        # What dataset_create gives the owner's group (the test helper builds the dataset directly).
        assign_perm("catalog.change_dataset", permits.department.group, permits)
        client = token_client(user)
        assert fields_seen(client, permits) == ["district"]
        catalog_services.dataset_transition(actor=people["steward"], dataset=permits, action="deprecate")
        assert fields_seen(client, permits) == ["district"]  # deprecated datasets are still read
        catalog_services.dataset_transition(actor=people["steward"], dataset=permits, action="retire")
        assert_error(client.get(url(permits)), 404)

    def test_token_revoked(self, people, permits):
        user = people["outsider"]
        grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"})
        client = token_client(user)
        assert fields_seen(client, permits) == ["district"]
        AuthToken.objects.filter(user=user).delete()
        assert client.get(url(permits)).status_code == 401

    def test_a_rolled_back_change_does_not_bring_back_its_context(self, people, permits, department):
        """A context built inside a transaction that rolls back is filed under a version that
        the next committed change must not produce again."""
        user = people["outsider"]
        g = grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"})
        client = token_client(user)
        assert fields_seen(client, permits) == ["district"]
        with transaction.atomic():
            type(g).objects.filter(pk=g.pk).update(revoked_at=timezone.now(), status="revoked")
            assert_error(client.get(url(permits)), 403, "no_grant")
            transaction.set_rollback(True)
        # One unrelated change: with a counter moving by one, its version would be the one the
        # rolled-back context was filed under.
        published_dataset(department, slug="unrelated")
        assert fields_seen(client, permits) == ["district"]
        assert CANARY_NOTE not in client.get(url(permits)).content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the version's slots are PostgreSQL's")
def test_a_governance_write_never_waits_for_another_transactions_slot(department, other_department):
    """Another transaction holds 63 of the 64 slots (as many concurrent governance writes
    would): a write to a watched table takes the free one instead of waiting, so it can never
    be one half of a deadlock with a transaction that holds the audit chain's lock."""
    import psycopg

    from tests.conftest import database_url_of_test_db

    url = database_url_of_test_db()
    with psycopg.connect(url) as holder, psycopg.connect(url) as writer:
        def one(conn: psycopg.Connection, sql: str, params: list[Any] | None = None) -> Any:
            row = conn.execute(sql, params).fetchone()
            assert row is not None
            return row[0]

        free = one(holder, "SELECT min(slot) FROM exchange_access_version")
        holder.execute("SELECT slot FROM exchange_access_version WHERE slot <> %s FOR UPDATE", [free])
        writer.execute("SET lock_timeout = '3s'")
        before = one(writer, "SELECT value FROM exchange_access_version WHERE slot = %s", [free])
        writer.execute("UPDATE departments_department SET name = name || '.' WHERE id = %s", [other_department.pk])
        after = one(writer, "SELECT value FROM exchange_access_version WHERE slot = %s", [free])
        writer.commit()
        holder.rollback()
    assert after > before
