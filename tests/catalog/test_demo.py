"""The demo catalogue: realistic, through the real workflow, idempotent."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from catalog.models import Dataset, DatasetTransition, SchemaStatus
from exchange.audit.models import AuditEvent
from exchange.audit.services import audit_verify

pytestmark = pytest.mark.django_db


def test_demo_catalogue_is_realistic_and_idempotent():
    call_command("seed_demo", stdout=io.StringIO())
    datasets = Dataset.objects.all()
    assert datasets.count() >= 20
    assert datasets.values("department").distinct().count() == 6
    statuses = set(datasets.values_list("status", flat=True))
    assert {"published", "in_review", "changes_requested", "deprecated", "draft"} <= statuses
    assert datasets.filter(visibility="restricted", status="published").exists()
    pending = Dataset.objects.get(slug="zoning-plan-areas")
    assert pending.status == "published" and pending.current_schema.number == 1
    assert pending.schema_versions.get(number=2).status == SchemaStatus.IN_REVIEW
    permits = Dataset.objects.get(slug="building-permits")
    sensitivities = set(permits.current_schema.fields.values_list("sensitivity", flat=True))
    assert {"public", "internal", "personal"} <= sensitivities
    approvals = DatasetTransition.objects.filter(action="approve")
    assert approvals.count() >= 15
    # Four eyes held in the demo too: nobody approved what they submitted.
    for approval in approvals.select_related("dataset"):
        submit = DatasetTransition.objects.filter(dataset=approval.dataset, action="submit",
                                                  schema_version=approval.schema_version).latest()
        assert submit.actor_id != approval.actor_id
    counts = (Dataset.objects.count(), DatasetTransition.objects.count(), AuditEvent.objects.count())
    call_command("seed_demo", stdout=io.StringIO())
    assert (Dataset.objects.count(), DatasetTransition.objects.count(), AuditEvent.objects.count()) == counts
    assert audit_verify().intact
