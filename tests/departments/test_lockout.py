"""Guessing passwords: after LOGIN_FAILURE_LIMIT wrong passwords for one username from one
address, that pair is refused (even with the right password) on the web and the API, the
lockout is audited, other addresses and other users are unaffected, and it ends after the
cool-off time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from exchange.audit.models import AuditEvent
from tests.departments.test_api import assert_error
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
LIMIT = settings.AXES_FAILURE_LIMIT


def web_login(username: str, password: str, ip: str = "198.51.100.7") -> Any:
    return Client(REMOTE_ADDR=ip).post("/accounts/login/", {"username": username, "password": password})


def api_login(username: str, password: str, ip: str = "198.51.100.7") -> Any:
    return APIClient(REMOTE_ADDR=ip).post("/api/v1/auth/login/", {"username": username, "password": password},
                                          format="json")


def test_the_web_login_locks_the_username_and_address_pair_out(settings):
    UserFactory(username="tina")
    UserFactory(username="omar")
    for _ in range(LIMIT - 1):
        response = web_login("tina", "guess")
        assert response.status_code == 200 and b"Please enter a correct username and password" in response.content
    response = web_login("tina", "guess")
    assert response.status_code == 429 and b"Sign-in paused" in response.content

    # Now even the right password is refused from there; the lockout is in the audit trail.
    assert web_login("tina", "pw-for-tests").status_code == 429
    # One event when the lockout started and one for each attempt refused while it lasts.
    locked = list(AuditEvent.objects.filter(action="auth.locked_out"))
    assert len(locked) == 2
    assert {(e.outcome, e.details["username"], e.details["client_ip"]) for e in locked} == {
        ("denied", "tina", "198.51.100.7")}
    assert AuditEvent.objects.filter(action="auth.login_failed").count() >= LIMIT

    # Tina from another address, and Omar from the same one, sign in as usual.
    assert web_login("tina", "pw-for-tests", ip="203.0.113.9").status_code == 302
    assert web_login("omar", "pw-for-tests").status_code == 302


def test_the_api_login_is_locked_out_too_with_a_clear_error():
    UserFactory(username="tina")
    for _ in range(LIMIT - 1):
        assert api_login("tina", "guess").status_code == 400
    assert api_login("tina", "guess").status_code == 429  # the attempt that reaches the limit
    error = assert_error(api_login("tina", "pw-for-tests"), 429, "locked_out")
    assert "Too many failed logins" in error["message"]
    # A lockout on the API holds on the web as well: it is the same pair.
    assert web_login("tina", "pw-for-tests").status_code == 429


def test_the_lockout_ends_after_the_cool_off_and_a_success_resets_the_count():
    from axes.models import AccessAttempt

    UserFactory(username="tina")
    for _ in range(LIMIT):
        web_login("tina", "guess")
    assert web_login("tina", "pw-for-tests").status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert web_login("tina", "pw-for-tests").status_code == 302
    # The success reset the count: a single new mistake does not lock again.
    web_login("tina", "guess")
    assert web_login("tina", "pw-for-tests").status_code == 302
