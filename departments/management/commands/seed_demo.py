"""Build the demo city: departments, people in every role, and (from the other apps) a
catalogue with data. Idempotent: a second run finds everything in place and changes nothing."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.test.utils import override_settings

from departments import services
from departments.models import CityRoleAssignment, Department, Membership

User = get_user_model()

DEMO_PASSWORD = "exchange-demo-2026"  # noqa: S105 - the demo is public by design

DEPARTMENTS: list[dict[str, str]] = [
    {"code": "transport", "name": "Transport and Mobility", "contact_email": "data@transport.city.example",
     "description": "Public transit, road network, parking and cycling infrastructure."},
    {"code": "health", "name": "Public Health", "contact_email": "data@health.city.example",
     "description": "Disease surveillance, inspections of food premises, vaccination programmes."},
    {"code": "planning", "name": "Urban Planning", "contact_email": "data@planning.city.example",
     "description": "Building permits, zoning, land use and the city's development plans."},
    {"code": "environment", "name": "Environment and Climate", "contact_email": "data@environment.city.example",
     "description": "Air quality, noise, green spaces, waste collection and climate programmes."},
    {"code": "finance", "name": "Finance", "contact_email": "data@finance.city.example",
     "description": "Budget, procurement, grants, local taxes and fees."},
    {"code": "social", "name": "Social Services", "contact_email": "data@social.city.example",
     "description": "Housing support, elderly care and family services."},
]

# (username, full name, department code, role)
PEOPLE: list[tuple[str, str, str, str]] = [
    ("tina.steward", "Tina Okafor", "transport", "steward"),
    ("tom.analyst", "Tom Berger", "transport", "analyst"),
    ("tara.admin", "Tara Lindqvist", "transport", "admin"),
    ("hana.steward", "Hana Novak", "health", "steward"),
    ("hugo.analyst", "Hugo Marchetti", "health", "analyst"),
    ("hilde.admin", "Hilde Sørensen", "health", "admin"),
    ("hari.auditor", "Hari Menon", "health", "auditor"),
    ("paula.steward", "Paula Jiménez", "planning", "steward"),
    ("piet.analyst", "Piet de Vries", "planning", "analyst"),
    ("pam.admin", "Pam Osei", "planning", "admin"),
    ("emil.steward", "Emil Kowalski", "environment", "steward"),
    ("eva.analyst", "Eva Nyström", "environment", "analyst"),
    ("ezra.admin", "Ezra Haddad", "environment", "admin"),
    ("fiona.steward", "Fiona Gallagher", "finance", "steward"),
    ("felix.analyst", "Felix Wagner", "finance", "analyst"),
    ("farah.admin", "Farah Aziz", "finance", "admin"),
    ("fred.auditor", "Fred Mensah", "finance", "auditor"),
    ("sofia.steward", "Sofia Rossi", "social", "steward"),
    ("sam.analyst", "Sam Kariuki", "social", "analyst"),
    ("sven.admin", "Sven Larsen", "social", "admin"),
]

# (username, full name, city role)
CITY_PEOPLE: list[tuple[str, str, str]] = [
    ("rita.reviewer", "Rita Castellano", "governance_reviewer"),
    ("raj.reviewer", "Raj Patel", "governance_reviewer"),
    ("dora.dpo", "Dora Fischer", "data_protection_officer"),
    ("alex.auditor", "Alex Moreau", "auditor"),
]


class Command(BaseCommand):
    help = "Seed a realistic demo city (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--send-mail", action="store_true",
                            help="Send the notification emails the demo's workflow steps cause (default: inbox only).")

    def handle(self, *args: Any, **options: Any) -> None:
        # The demo walks the real workflows, which notify people; their inbox rows are kept,
        # the dozens of emails are not sent unless asked for.
        backend = settings.EMAIL_BACKEND if options["send_mail"] else "django.core.mail.backends.dummy.EmailBackend"
        with override_settings(EMAIL_BACKEND=backend):
            created = self._seed_people()
            # Later parts of the demo (catalogue, data, grants) hook in here, each idempotent.
            for hook in self._app_seeders():
                created += hook(stdout=self.stdout)
        self.stdout.write(self.style.SUCCESS(f"Demo city ready ({created} objects created)."))
        self._print_logins()

    def _app_seeders(self) -> list[Any]:
        from django.utils.module_loading import import_string

        seeders = []
        for dotted in ("catalog.demo.seed", "exchange.demo.seed"):
            try:
                seeders.append(import_string(dotted))
            except ImportError:
                continue
        return seeders

    @transaction.atomic
    def _seed_people(self) -> int:
        created = 0
        operator = User.objects.filter(username="operator").first()
        if operator is None:
            operator = User.objects.create_superuser(
                "operator", "operator@city.example", DEMO_PASSWORD, first_name="Olivia", last_name="Operator"
            )
            created += 1
        departments: dict[str, Department] = {}
        for spec in DEPARTMENTS:
            department = Department.objects.filter(code=spec["code"]).first()
            if department is None:
                department = services.department_create(actor=operator, **spec)
                created += 1
            departments[spec["code"]] = department
        for username, full_name, code, role in PEOPLE:
            user, made = self._user(username, full_name)
            created += made
            if not Membership.objects.filter(user=user, department=departments[code]).exists():
                services.membership_add(actor=operator, department=departments[code], user=user, role=role)
                created += 1
        for username, full_name, role in CITY_PEOPLE:
            user, made = self._user(username, full_name)
            created += made
            if not CityRoleAssignment.objects.filter(user=user, role=role).exists():
                services.city_role_grant(actor=operator, user=user, role=role)
                created += 1
        return created

    def _user(self, username: str, full_name: str) -> tuple[Any, int]:
        user = User.objects.filter(username=username).first()
        if user is not None:
            return user, 0
        first, _, last = full_name.partition(" ")
        user = User.objects.create_user(
            username, f"{username}@city.example", DEMO_PASSWORD, first_name=first, last_name=last
        )
        return user, 1

    def _print_logins(self) -> None:
        self.stdout.write("")
        self.stdout.write(f"Demo password for every demo user: {DEMO_PASSWORD}")
        self.stdout.write("  operator             operator (admin site, departments, city roles)")
        for username, _, role in CITY_PEOPLE:
            self.stdout.write(f"  {username:<20} {role.replace('_', ' ')} (city-wide)")
        for username, _, code, role in PEOPLE:
            self.stdout.write(f"  {username:<20} {role} of {code}")
