from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from departments import services
from departments.models import Department
from tests.factories import DepartmentFactory, MembershipFactory, UserFactory


@pytest.fixture(scope="session", autouse=True)
def _audit_writer_stopped_before_the_database_goes(django_db_setup: None, django_db_blocker: Any) -> Any:
    """Requests in transactional tests (live server, API) append their reads' audit events on
    the audit writer's link connections, which would keep the test database from being dropped
    at the end of the session."""
    yield
    from exchange.audit import writer as audit_writer

    with django_db_blocker.unblock():
        audit_writer.shutdown()


@pytest.fixture(autouse=True)
def _request_limit_not_kept_after_the_test() -> Any:
    """A request leaves its statement timeout on the connection for the next request (see
    config/api/timeouts.py); in tests the same connection serves fixtures and teardown too."""
    yield
    from config.api.timeouts import forget_kept_limit

    forget_kept_limit()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def as_user(api: APIClient) -> Callable[[Any], APIClient]:
    def login(user: Any) -> APIClient:
        api.force_authenticate(user=user)
        return api

    return login


@pytest.fixture
def department() -> Department:
    return DepartmentFactory(code="transport", name="Transport", slug="transport")


@pytest.fixture
def other_department() -> Department:
    return DepartmentFactory(code="health", name="Health", slug="health")


@pytest.fixture
def people(department: Department, other_department: Department) -> dict[str, Any]:
    """The named cast of most tests: roles in one department, and an outsider next door."""
    cast = {
        "admin": MembershipFactory(department=department, role="admin").user,
        "steward": MembershipFactory(department=department, role="steward").user,
        "analyst": MembershipFactory(department=department, role="analyst").user,
        "auditor": MembershipFactory(department=department, role="auditor").user,
        "outsider": MembershipFactory(department=other_department, role="admin").user,
        "nobody": UserFactory(),
        "operator": UserFactory(is_staff=True),
        "city_auditor": UserFactory(),
        "reviewer": UserFactory(),
    }
    services.city_role_grant(actor=None, user=cast["city_auditor"], role="auditor")
    services.city_role_grant(actor=None, user=cast["reviewer"], role="governance_reviewer")
    return cast


# --- A real Celery worker process ---------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import quote  # noqa: E402

from django.db import connection  # noqa: E402

from config.celery import app as celery_app  # noqa: E402


def database_url_of_test_db() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    auth = quote(s.get("USER") or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{s['NAME']}"


@dataclass
class WorkerHandle:
    process: subprocess.Popen[bytes]
    queue: str
    hostname: str
    logfile: Path

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")


@pytest.fixture
def celery_worker(transactional_db: None):
    """Start `celery worker` as a separate process on a queue of its own, against the test
    database, and stop it afterwards. Tasks must be sent with ``queue=handle.queue``."""
    was_eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    queue = f"test-{uuid.uuid4().hex[:12]}"
    hostname = f"{queue}@localhost"
    logfile = Path(tempfile.mkstemp(prefix="celery-worker-", suffix=".log")[1])
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_test_db(),
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    with logfile.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queue,
                "-n",
                hostname,
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )
    handle = WorkerHandle(process=process, queue=queue, hostname=hostname, logfile=logfile)
    deadline = time.monotonic() + 60
    while "ready." not in handle.log():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Celery worker did not start:\n{handle.log()}")
        time.sleep(0.2)
    try:
        yield handle
    finally:
        celery_app.conf.task_always_eager = was_eager
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        connection.close()
