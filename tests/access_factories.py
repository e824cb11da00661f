"""Factories for access tests: a published dataset with a current schema of mixed sensitivity,
made directly as rows (the catalogue's services are built elsewhere)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import factory
from django.utils import timezone

from catalog.models import Dataset, Field, SchemaVersion
from departments.models import Department
from tests.factories import DepartmentFactory

# name, type, sensitivity
MIXED_FIELDS: list[tuple[str, str, str]] = [
    ("stop_id", "integer", "public"),
    ("district", "text", "public"),
    ("boardings", "integer", "internal"),
    ("revenue", "decimal", "confidential"),
    ("passenger_name", "text", "personal"),
    ("card_number", "text", "personal"),
    ("measured_on", "date", "internal"),
    ("recorded_at", "timestamp", "internal"),
    ("accessible", "boolean", "public"),
    ("location", "geopoint", "public"),
]


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Dataset

    department = factory.SubFactory(DepartmentFactory)
    title = factory.Sequence(lambda n: f"Dataset {n}")
    slug = factory.Sequence(lambda n: f"dataset-{n}")
    description = "Test data."
    status = "published"
    published_at = factory.LazyFunction(timezone.now)


def schema_with_fields(dataset: Dataset, fields: list[tuple[str, str, str]], number: int = 1,
                       make_current: bool = True, changes: list[dict[str, Any]] | None = None,
                       renamed: dict[str, str] | None = None) -> SchemaVersion:
    schema = SchemaVersion.objects.create(dataset=dataset, number=number, status="published",
                                          published_at=timezone.now(), changes=changes or [])
    Field.objects.bulk_create(
        Field(schema=schema, position=i, name=name, type=type_, sensitivity=sensitivity,
              is_key=(i == 0), nullable=(i != 0), renamed_from=(renamed or {}).get(name, ""))
        for i, (name, type_, sensitivity) in enumerate(fields)
    )
    if make_current:
        Dataset.objects.filter(pk=dataset.pk).update(current_schema=schema)
        dataset.current_schema = schema
    return schema


def published_dataset(department: Department, *, status: str = "published", visibility: str = "city",
                      fields: list[tuple[str, str, str]] | None = None) -> Dataset:
    dataset = DatasetFactory(department=department, status=status, visibility=visibility)
    schema_with_fields(dataset, fields or MIXED_FIELDS)
    return dataset


def period(days_from_now: int = 0, days: int = 90) -> dict[str, str]:
    start = timezone.now() + timedelta(days=days_from_now)
    return {"requested_start": start.isoformat(), "requested_end": (start + timedelta(days=days)).isoformat()}


# --- The cast and shortcuts through the services ------------------------------------------------

def make_cast(people: dict[str, Any], department: Department, other_department: Department) -> dict[str, Any]:
    """``people`` (transport owns the datasets) plus a second transport steward, an analyst and a
    steward of health (the requesting side) and two data protection officers."""
    from departments import services as department_services
    from tests.factories import MembershipFactory, UserFactory

    cast = dict(people)
    cast["steward2"] = MembershipFactory(department=department, role="steward").user
    cast["analyst_h"] = MembershipFactory(department=other_department, role="analyst").user
    cast["steward_h"] = MembershipFactory(department=other_department, role="steward").user
    for name in ("dpo", "dpo2"):
        cast[name] = UserFactory()
        department_services.city_role_grant(actor=None, user=cast[name], role="data_protection_officer")
    return cast


def submit(*, actor: Any, dataset: Dataset, fields: list[str], department: Department | None = None,
           row_filter: list[dict[str, Any]] | None = None, days: int = 90) -> Any:
    from exchange.access.services import access_request_submit

    now = timezone.now()
    return access_request_submit(
        actor=actor, dataset=dataset, fields=fields, purpose="Plan bus routes", legal_basis="Transport Act §12",
        requested_start=now, requested_end=now + timedelta(days=days), row_filter=row_filter,
        principal_department=department,
    )


def decide(*, actor: Any, access_request: Any, approve: dict[str, str | None], deny: list[str] | None = None,
           clear_reason: str = "") -> Any:
    """Approve the fields of ``approve`` (form or None for the default) and deny ``deny``."""
    from exchange.access.services import FieldDecisionInput, access_request_decide

    decisions = [FieldDecisionInput(name=n, approved=True, form=f or "") for n, f in approve.items()]
    decisions += [FieldDecisionInput(name=n, approved=False, reason="Not needed for the purpose")
                  for n in deny or []]
    return access_request_decide(actor=actor, access_request=access_request, decisions=decisions,
                                 clear_reason=clear_reason)


def active_grant(*, cast: dict[str, Any], dataset: Dataset, fields: list[str] | None = None,
                 grantee: str = "analyst_h", department: Department | None = None) -> Any:
    """A grant made through the whole workflow, including the DPO when the fields need one."""
    from exchange.access.models import GrantStatus
    from exchange.access.services import grant_dpo_approve

    fields = fields or ["stop_id", "district"]
    access_request = submit(actor=cast[grantee], dataset=dataset, fields=fields, department=department)
    decide(actor=cast["steward"], access_request=access_request, approve={n: None for n in fields})
    grant = access_request.grant
    if grant.status == GrantStatus.PENDING_DPO:
        grant = grant_dpo_approve(actor=cast["dpo"], grant=grant)
    return grant
