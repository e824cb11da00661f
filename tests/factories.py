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
