from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from exchange.audit.models import AuditEvent
from tests.departments.test_api import assert_error
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    return UserFactory(username="tina")


def login(client: APIClient, username: str = "tina", password: str = "pw-for-tests"):
    return client.post("/api/v1/auth/login/", {"username": username, "password": password}, format="json")


def test_login_issues_a_token_that_is_stored_hashed(api, user):
    response = login(api)
    assert response.status_code == 201, response.content
    token = response.json()["token"]
    stored = AuthToken.objects.get(user=user)
    assert token not in (stored.digest, stored.token_key)
    assert len(stored.digest) == 128  # SHA-512 hex
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get("/api/v1/me/").json()["username"] == "tina"


def test_wrong_password_is_refused_and_audited(api, user):
    assert_error(login(api, password="nope"), 400, "authentication_failed")
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.outcome == "denied" and event.details["username"] == "tina"
    assert not AuthToken.objects.exists()


def test_expired_token_is_refused_with_a_clear_message(api, user):
    token = login(api).json()["token"]
    AuthToken.objects.filter(user=user).update(expiry=timezone.now() - timedelta(seconds=1))
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    error = assert_error(api.get("/api/v1/me/"), 401, "token_expired")
    assert "expired" in error["message"]


def test_a_token_brings_its_user_whole_in_one_statement(api, user):
    """Token authentication reads the token, its user and the access version in one statement
    (departments/authentication.py), and the user it gives is the stored one, field by field."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from departments.authentication import ExpiringTokenAuthentication

    token = login(api).json()["token"]
    stored = AuthToken.objects.select_related("user").get(user=user)
    with CaptureQueriesContext(connection) as statements:
        found, auth_token = ExpiringTokenAuthentication().authenticate_credentials(token.encode())
    assert len(statements) == 1
    assert auth_token.pk == stored.pk and auth_token.digest == stored.digest and auth_token.expiry == stored.expiry
    assert auth_token.expiry.tzinfo is not None  # as the ORM gives it, on SQLite too
    for field in user._meta.concrete_fields:
        assert getattr(found, field.attname) == getattr(stored.user, field.attname), field.name


def test_a_deactivated_users_token_is_refused(api, user):
    token = login(api).json()["token"]
    user.is_active = False
    user.save()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert_error(api.get("/api/v1/me/"), 401)


@pytest.mark.parametrize(
    "header",
    ["Token", "Token a b", "Token ünïcode-token", "Token ;DROP TABLE", "Token " + "a" * 300, "Token short"],
)
def test_malformed_tokens_get_401(api, user, header):
    api.credentials(HTTP_AUTHORIZATION=header.encode("utf-8").decode("latin-1"))
    response = api.get("/api/v1/me/")
    assert_error(response, 401)
    assert response["WWW-Authenticate"] == "Token"


def test_unknown_well_formed_token_gets_401(api, user):
    api.credentials(HTTP_AUTHORIZATION="Token " + "a" * 64)
    assert_error(api.get("/api/v1/me/"), 401, "invalid_token")


def test_tokens_are_listed_and_revocable(api, user):
    first = login(api).json()
    second = login(api).json()
    api.credentials(HTTP_AUTHORIZATION=f"Token {second['token']}")
    keys = {t["token_key"] for t in api.get("/api/v1/auth/tokens/").json()}
    assert keys == {first["token_key"], second["token_key"]}
    assert api.delete(f"/api/v1/auth/tokens/{first['token_key']}/").status_code == 204
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Token {first['token']}")
    assert_error(other.get("/api/v1/me/"), 401)
    assert api.post("/api/v1/auth/logout/").status_code == 204
    assert_error(api.get("/api/v1/me/"), 401)
    assert AuditEvent.objects.filter(action="auth.token_revoked").count() == 2


def test_a_user_cannot_revoke_someone_elses_token(api, user):
    theirs = login(api).json()
    intruder = UserFactory()
    api.credentials()
    api.force_authenticate(intruder)
    assert_error(api.delete(f"/api/v1/auth/tokens/{theirs['token_key']}/"), 404)
    assert AuthToken.objects.filter(token_key=theirs["token_key"]).exists()


def test_purge_expired_tokens(user):
    from exchange.ops.services import purge_expired_tokens

    AuthToken.objects.create(user=user, expiry=timedelta(seconds=-5))
    AuthToken.objects.create(user=user)
    assert purge_expired_tokens() == 1
    assert AuthToken.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_prepared_token_lookup_outlives_a_migration_that_widens_a_column():
    """On PostgreSQL the lookup is prepared per connection; the server would refuse a prepared
    statement whose result's types changed, so the statement fixes them, and a migration (in
    another process) that widens a column of the user leaves tokens working."""
    from django.db import connection, connections

    from config.postgresql.base import PREPARE_THRESHOLD
    from departments.authentication import ExpiringTokenAuthentication

    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    user = UserFactory(first_name="Tina")
    _, token = AuthToken.objects.create(user=user)
    check = ExpiringTokenAuthentication()
    for _ in range(PREPARE_THRESHOLD + 1):
        assert check.authenticate_credentials(token.encode())[0] == user
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%knox_authtoken%'")
        assert cursor.fetchone()[0] == 1
    migration = connections.create_connection("default")
    try:
        with migration.cursor() as cursor:
            cursor.execute("ALTER TABLE auth_user ALTER COLUMN first_name TYPE varchar(200), "
                           "ALTER COLUMN is_staff TYPE boolean")
        found, _ = check.authenticate_credentials(token.encode())
        assert found == user and found.first_name == "Tina"
    finally:
        with migration.cursor() as cursor:
            cursor.execute("ALTER TABLE auth_user ALTER COLUMN first_name TYPE varchar(150)")
        migration.close()
