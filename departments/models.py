from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db import models

department_code_validator = RegexValidator(
    regex=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$",
    message=(
        "A department code is 2-32 characters: lowercase letters, digits and hyphens, "
        "starting with a letter and not ending with a hyphen."
    ),
    code="unsafe_code",
)


class Department(models.Model):
    """A city department. Each one owns a Django group so that object permissions
    (django-guardian) can be given to the whole department at once."""

    code = models.CharField(max_length=32, unique=True, validators=[department_code_validator])
    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    contact_email = models.EmailField(blank=True)
    contact_phone = models.CharField(max_length=40, blank=True)
    homepage = models.URLField(blank=True)
    group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="department")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    """A person's role inside one department."""

    STEWARD = "steward", "Data steward"
    ANALYST = "analyst", "Analyst"
    AUDITOR = "auditor", "Auditor"
    ADMIN = "admin", "Department administrator"


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    department = models.ForeignKey(Department, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "department"], name="membership_one_per_department"),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="membership_role_known"
            ),
        ]
        ordering = ["department__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} · {self.department.code} · {self.role}"


class CityRole(models.TextChoices):
    """Roles that span the whole city rather than one department."""

    GOVERNANCE_REVIEWER = "governance_reviewer", "Governance reviewer"
    DATA_PROTECTION_OFFICER = "data_protection_officer", "Data protection officer"
    AUDITOR = "auditor", "City auditor"


class CityRoleAssignment(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="city_roles")
    role = models.CharField(max_length=32, choices=CityRole.choices)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "role"], name="city_role_once_per_user"),
            models.CheckConstraint(condition=models.Q(role__in=CityRole.values), name="city_role_known"),
        ]
        ordering = ["role", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} · {self.role}"


class Notification(models.Model):
    """An item in a person's in-app inbox; the same message also goes out by email."""

    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=64, help_text="What happened, e.g. dataset.submitted.")
    subject = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    link = models.CharField(max_length=300, blank=True, help_text="Path of the page where the recipient acts.")
    # Whether the recipient must do something (a decision waits on them), or is only told.
    action_required = models.BooleanField(default=False)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["recipient", "read_at"], name="notification_unread")]

    def __str__(self) -> str:
        return f"{self.recipient} · {self.subject}"
