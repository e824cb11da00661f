"""The principal (a user's departments and city roles) of a token request, kept per process
under the access version that token authentication reads with the token: a repeated request
costs no role queries, and no role change is ever answered from before it was committed."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from knox.models import AuthToken
from rest_framework.test import APIClient

from catalog.models import Visibility
from departments import services
from departments.access_version import VERSION_ATTR, VERSION_SQL
from departments.models import Membership
from departments.selectors import principal_of
from tests.records_support import published_dataset

pytestmark = pytest.mark.django_db


def _client(user: Any) -> APIClient:
    _, token = AuthToken.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def _list(client: APIClient) -> tuple[int, list[str]]:
    """The catalogue as the client's user sees it, and how many role queries it took."""
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/api/v1/datasets/")
        assert response.status_code == 200, response.content
    sql = [q["sql"] for q in ctx.captured_queries]
    roles = sum(1 for s in sql if s.lstrip().startswith("SELECT") and (
        'FROM "departments_membership"' in s or 'FROM "departments_cityroleassignment"' in s))
    return roles, [d["slug"] for d in response.json()["results"]]


def test_a_repeated_token_request_reads_no_roles(people, department):
    published_dataset(department, visibility=Visibility.RESTRICTED)
    client = _client(people["steward"])
    first, seen = _list(client)
    again, seen_again = _list(client)
    assert first == 2 and again == 0
    assert seen == seen_again == ["permits"]


def test_a_role_change_is_seen_by_the_next_request(people, department):
    published_dataset(department, visibility=Visibility.RESTRICTED)
    user = people["nobody"]
    client = _client(user)
    assert _list(client)[1] == []
    assert _list(client) == (0, [])
    services.membership_add(actor=None, department=department, user=user, role="analyst")
    assert _list(client)[1] == ["permits"]
    Membership.objects.filter(user=user, department=department).delete()  # behind the services' back
    assert _list(client)[1] == []
    assignment = services.city_role_grant(actor=None, user=user, role="data_protection_officer")
    assert _list(client)[1] == ["permits"]
    services.city_role_revoke(actor=None, assignment=assignment)
    assert _list(client)[1] == []


def _page(client: Client) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/catalogue/")
        assert response.status_code == 200
    sql = [q["sql"] for q in ctx.captured_queries]
    roles = sum(1 for s in sql if s.lstrip().startswith("SELECT") and (
        'FROM "departments_membership"' in s or 'FROM "departments_cityroleassignment"' in s))
    return roles, response.content.decode()


def test_signed_in_pages_reuse_the_principal_and_see_role_changes(people, department):
    published_dataset(department, visibility=Visibility.RESTRICTED)
    user = people["nobody"]
    client = Client()
    client.force_login(user)
    _page(client)
    roles, page = _page(client)
    assert roles == 0 and "Permits" not in page
    services.membership_add(actor=None, department=department, user=user, role="analyst")
    roles, page = _page(client)
    assert roles >= 1 and "Permits" in page
    Membership.objects.filter(user=user, department=department).delete()
    assert "Permits" not in _page(client)[1]


def test_a_role_change_within_a_request_is_seen_by_the_rest_of_it(people, department):
    """A service that changes a user's roles forgets what the request knew of them, the
    access version included: the same user object is then answered afresh, not from the
    process cache under the version read before the change."""
    user = people["nobody"]
    with connection.cursor() as cursor:
        cursor.execute(VERSION_SQL)
        setattr(user, VERSION_ATTR, cursor.fetchone()[0])
    assert principal_of(user).department_ids == frozenset()
    services.membership_add(actor=None, department=department, user=user, role="analyst")
    assert principal_of(user).department_ids == {department.pk}
