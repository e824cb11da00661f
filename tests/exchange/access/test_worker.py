"""The grant housekeeping through a real Celery worker process (Redis when REDIS_URL is set,
else the embedded file broker): expiry is consumed by a separate process and its effects, the
status, the audit event and the dropped object permission, are read back from the database."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from guardian.shortcuts import get_perms

from exchange.access.models import Grant
from exchange.access.tasks import housekeeping_expire_grants
from exchange.audit.models import AuditEvent
from exchange.audit.services import audit_verify
from tests.access_factories import active_grant, make_cast, published_dataset

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def cast(people, department, other_department) -> dict[str, Any]:
    return make_cast(people, department, other_department)


def test_real_worker_expires_a_grant(celery_worker, cast, department):
    dataset = published_dataset(department)
    grant = active_grant(cast=cast, dataset=dataset)
    Grant.objects.filter(pk=grant.pk).update(valid_from=timezone.now() - timedelta(days=2),
                                             valid_until=timezone.now() - timedelta(seconds=1))
    housekeeping_expire_grants.apply_async(queue=celery_worker.queue)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and Grant.objects.get(pk=grant.pk).status != "expired":
        assert celery_worker.process.poll() is None, celery_worker.log()
        time.sleep(0.2)
    assert Grant.objects.get(pk=grant.pk).status == "expired", celery_worker.log()
    assert AuditEvent.objects.filter(action="grant.expire", object_id=str(grant.pk)).count() == 1
    assert get_perms(cast["analyst_h"], dataset) == []
    assert audit_verify().intact
