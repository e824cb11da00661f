"""The principal (a user's departments and city roles) of a token request, kept per process
under the access version that token authentication reads with the token: a repeated request
costs no role queries, and no role change is ever answered from before it was committed."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from knox.models import AuthToken
from rest_framework.test import APIClient

from catalog.models import Visibility
from departments import services
from departments.models import Membership
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
