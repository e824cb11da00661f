"""The service as a whole: settings, health, schema, the web pages and the demo seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from departments.models import CityRoleAssignment, Department, Membership
from exchange.audit.models import AuditEvent
from exchange.audit.services import audit_verify
from exchange.ops.models import WorkerHeartbeat

ROOT = Path(__file__).resolve().parent.parent


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Start from the caller's environment without what the test settings put into it.
    own = {"DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "ALLOWED_HOSTS", "SECURE_SSL_REDIRECT", "BROKER_DIR"}
    clean = {k: v for k, v in os.environ.items() if k not in own}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_settings_pass_the_deploy_check():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "DEBUG": "0",
            "SECRET_KEY": "x" * 40 + "-production-like-secret-key-9f8e7d6c5b4a",
            "ALLOWED_HOSTS": "exchange.city.example",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_static_files_collect_under_production_settings(tmp_path):
    """What the image does at build: the manifest that DEBUG=0 pages need must come out of
    collectstatic whole (a vendored file naming a missing source map used to fail it, and pages
    then failed for want of a manifest entry)."""
    result = run_manage(
        "collectstatic", "--noinput",
        env={"DEBUG": "0", "SECRET_KEY": "x" * 40 + "-production-like-secret-key-9f8e7d6c5b4a",
             "ALLOWED_HOSTS": "exchange.city.example", "EXCHANGE_VAR_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())["paths"]
    for name in ("vendor/pico-2.1.1.min.css", "vendor/htmx-2.0.11.min.js", "vendor/chart-4.6.1.umd.min.js"):
        assert name in manifest


def test_production_without_secret_key_refuses_to_start():
    result = run_manage("check", env={"DEBUG": "0"})
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_malformed_setting_fails_loudly():
    result = run_manage("check", env={"DEBUG": "1", "API_TOKEN_TTL_HOURS": "a week"})
    assert result.returncode != 0
    assert "a week" in result.stderr


@pytest.mark.django_db
def test_openapi_schema_generates_cleanly(api):
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for expected in (
        "/api/v1/departments/",
        "/api/v1/departments/{slug}/members/",
        "/api/v1/me/",
        "/api/v1/auth/login/",
    ):
        assert expected in paths


def test_schema_has_no_warnings():
    result = run_manage(
        "spectacular", "--fail-on-warn", "--file", os.devnull, env={"DJANGO_SETTINGS_MODULE": "config.test_settings"}
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.django_db
def test_health_reports_database_and_worker_staleness(api):
    body = api.get("/healthz").json()
    assert body == {"status": "ok", "database": "ok", "workers": "stale", "worker_last_seen": None}
    from exchange.ops.services import worker_heartbeat

    worker_heartbeat(hostname="w1@host", task_id="abc")
    assert api.get("/api/v1/health/").json()["workers"] == "ok"
    assert WorkerHeartbeat.objects.count() == 1


@pytest.mark.django_db
class TestWebPages:
    def test_pages_need_a_login(self, client):
        response = client.get("/")
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")

    def test_login_home_and_department_pages(self, client, people):
        user = people["steward"]
        response = client.post("/accounts/login/", {"username": user.username, "password": "pw-for-tests"})
        assert response.status_code == 302
        home = client.get("/")
        assert b"Transport" in home.content and b"Data steward" in home.content
        detail = client.get("/departments/transport/")
        assert detail.status_code == 200 and user.username.encode() in detail.content
        assert AuditEvent.objects.filter(action="auth.login", actor_id=user.pk).exists()

    def test_failed_web_login_is_audited(self, client, people):
        client.post("/accounts/login/", {"username": "ghost", "password": "nope"})
        assert AuditEvent.objects.get(action="auth.login_failed").details == {"username": "ghost", "channel": "web"}

    def test_outsider_sees_no_member_list_and_unknown_is_404(self, client, people):
        client.force_login(people["outsider"])
        detail = client.get("/departments/transport/")
        assert detail.status_code == 200 and people["steward"].username.encode() not in detail.content
        missing = client.get("/departments/nope/")
        assert missing.status_code == 404 and b"Not found" in missing.content


@pytest.mark.django_db
def test_seed_demo_is_idempotent(capsys):
    call_command("seed_demo")
    counts = (
        Department.objects.count(),
        Membership.objects.count(),
        CityRoleAssignment.objects.count(),
        AuditEvent.objects.count(),
    )
    assert counts[0] >= 5
    roles = set(Membership.objects.values_list("role", flat=True))
    assert roles == {"steward", "analyst", "auditor", "admin"}
    assert set(CityRoleAssignment.objects.values_list("role", flat=True)) == {
        "governance_reviewer",
        "data_protection_officer",
        "auditor",
    }
    call_command("seed_demo")
    assert (
        Department.objects.count(),
        Membership.objects.count(),
        CityRoleAssignment.objects.count(),
        AuditEvent.objects.count(),
    ) == counts
    assert "Demo password" in capsys.readouterr().out
    assert audit_verify().intact


@pytest.mark.django_db
def test_inbox_page_lists_and_marks_read(client, people):
    from departments.models import Notification
    from departments.notifications import notify

    steward, other = people["steward"], people["analyst"]
    notify(recipients=[steward], kind="test.decide", subject="Decide request #1", link="/inbox/",
           action_required=True)
    notify(recipients=[steward, other], kind="test.info", subject="Dataset published")
    client.force_login(steward)
    page = client.get("/inbox/").content.decode()
    assert "Decide request #1" in page and "Dataset published" in page
    assert 'aria-label="2 unread"' in page
    mine = Notification.objects.get(recipient=steward, kind="test.decide")
    client.post("/inbox/", {"notification": [str(mine.pk)]})
    assert Notification.objects.get(pk=mine.pk).read_at is not None
    client.post("/inbox/", {})
    assert not Notification.objects.filter(recipient=steward, read_at__isnull=True).exists()
    assert Notification.objects.filter(recipient=other, read_at__isnull=True).count() == 1
