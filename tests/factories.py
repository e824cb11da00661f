from __future__ import annotations

from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from departments import services
from departments.models import Department, Membership

User = get_user_model()


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@city.example")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    password = factory.django.Password("pw-for-tests")


class DepartmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Department

    code = factory.Sequence(lambda n: f"dept{n}")
    name = factory.LazyAttribute(lambda d: f"Department {d.code}")
    slug = factory.LazyAttribute(lambda d: d.code)
    contact_email = factory.LazyAttribute(lambda d: f"data@{d.code}.city.example")
    group = factory.LazyAttribute(lambda d: Group.objects.create(name=f"department:{d.code}"))


class MembershipFactory(factory.django.DjangoModelFactory):
    """Memberships go through the service, so groups stay in step as in production."""

    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    department = factory.SubFactory(DepartmentFactory)
    role = "analyst"

    @classmethod
    def _create(cls, model_class: type[Membership], *args: Any, **kwargs: Any) -> Membership:
        return services.membership_add(actor=None, **kwargs)


# --- Catalogue ------------------------------------------------------------------------------

from django.utils.text import slugify  # noqa: E402

from catalog import services as catalog_services  # noqa: E402
from catalog.models import Dataset  # noqa: E402

PERMIT_FIELDS: list[dict[str, Any]] = [
    {"name": "permit_id", "type": "text", "sensitivity": "public", "is_key": True, "description": "Permit number."},
    {"name": "applicant_name", "type": "text", "sensitivity": "personal", "description": "Who applied."},
    {"name": "parcel_id", "type": "text", "sensitivity": "public", "description": "Cadastral parcel."},
    {"name": "fee_eur", "type": "decimal", "sensitivity": "internal", "unit": "EUR", "description": "Fee paid."},
    {"name": "submitted_on", "type": "date", "sensitivity": "public", "description": "Date of application."},
]

# The steps that lead from a draft to each status; "reviewer" steps are taken by a reviewer.
WALK: dict[str, list[str]] = {
    "draft": [],
    "in_review": ["submit"],
    "changes_requested": ["submit", "request_changes"],
    "published": ["submit", "approve"],
    "deprecated": ["submit", "approve", "deprecate"],
    "retired": ["submit", "approve", "deprecate", "retire"],
}


def reviewer_user(**kwargs: Any) -> Any:
    user = UserFactory(**kwargs)
    services.city_role_grant(actor=None, user=user, role="governance_reviewer")
    return user


class DatasetFactory(factory.django.DjangoModelFactory):
    """A dataset made through the catalogue services, walked to ``status`` by a steward of its
    department (``steward``, made if absent) and a governance reviewer (``reviewer``)."""

    class Meta:
        model = Dataset

    department = factory.SubFactory(DepartmentFactory)
    title = factory.Sequence(lambda n: f"Building permits {n}")
    slug = factory.LazyAttribute(lambda d: slugify(d.title)[:100])
    description = "Building permits applied for and decided, one row per permit."
    themes = factory.LazyFunction(lambda: ["REGI"])
    keywords = factory.LazyFunction(lambda: ["permits", "construction"])
    licence = "CC-BY-4.0"
    visibility = "city"

    @classmethod
    def _create(cls, model_class: type[Dataset], *args: Any, **kwargs: Any) -> Dataset:
        steward = kwargs.pop("steward", None)
        reviewer = kwargs.pop("reviewer", None)
        fields = kwargs.pop("fields", PERMIT_FIELDS)
        status = kwargs.pop("status", "draft")
        if steward is None:
            steward = MembershipFactory(department=kwargs["department"], role="steward").user
        dataset = catalog_services.dataset_create(actor=steward, **kwargs)
        if fields:
            catalog_services.dataset_schema_set(actor=steward, dataset=dataset, fields=fields)
        for action in WALK[status]:
            by_reviewer = action in ("approve", "request_changes")
            if by_reviewer and reviewer is None:
                reviewer = reviewer_user()
            dataset = catalog_services.dataset_transition(
                actor=reviewer if by_reviewer else steward, dataset=dataset, action=action,
                comment="Please add units." if action == "request_changes" else "",
            )
        dataset.refresh_from_db()
        return dataset
