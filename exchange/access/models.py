"""Access requests and the grants they produce.

A grant gives one principal (a user, or a whole department) a set of fields of one dataset,
each in a form (clear, masked, pseudonymised), optionally limited to rows that match a
structured filter, for a period. The policy (exchange/access/policy.py) turns the active grants that
apply to a principal into their effective view; nothing reads record values another way.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from catalog.models import Dataset
from departments.models import Department


class AccessForm(models.TextChoices):
    CLEAR = "clear", "Clear"
    PSEUDONYMISED = "pseudonymised", "Pseudonymised (keyed hash, stable for joins)"
    MASKED = "masked", "Masked (all but the last 4 characters hidden)"


# From most to least revealing: when several grants give the same field, the most revealing
# form among them wins (the union of grants).
FORM_ORDER = [AccessForm.CLEAR, AccessForm.PSEUDONYMISED, AccessForm.MASKED]


class PrincipalKind(models.TextChoices):
    USER = "user", "A person"
    DEPARTMENT = "department", "A whole department"


class RequestStatus(models.TextChoices):
    SUBMITTED = "submitted", "Submitted, waiting for the data steward"
    AWAITING_DPO = "awaiting_dpo", "Waiting for the data protection officer"
    APPROVED = "approved", "Approved"
    PARTIALLY_APPROVED = "partially_approved", "Partially approved"
    DENIED = "denied", "Denied"
    WITHDRAWN = "withdrawn", "Withdrawn"


class AccessRequest(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="access_requests")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    principal_kind = models.CharField(max_length=16, choices=PrincipalKind.choices)
    principal_user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                       related_name="access_requests")
    principal_department = models.ForeignKey(Department, on_delete=models.PROTECT, null=True, blank=True,
                                             related_name="access_requests")
    fields = models.JSONField(help_text="Names of the requested fields.")
    purpose = models.TextField()
    legal_basis = models.CharField(max_length=300, help_text="The act or regulation the access rests on.")
    row_filter = models.JSONField(default=list, blank=True,
                                  help_text='[{"field": "district", "op": "eq", "value": "North"}]')
    requested_start = models.DateTimeField()
    requested_end = models.DateTimeField()
    status = models.CharField(max_length=20, choices=RequestStatus.choices, default=RequestStatus.SUBMITTED,
                              db_index=True)
    # A request that renews an existing grant.
    renews = models.ForeignKey("Grant", on_delete=models.SET_NULL, null=True, blank=True, related_name="renewals")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(principal_kind="user", principal_user__isnull=False,
                                    principal_department__isnull=True)
                           | models.Q(principal_kind="department", principal_user__isnull=True,
                                      principal_department__isnull=False)),
                name="access_request_one_principal",
            ),
            models.CheckConstraint(condition=models.Q(requested_start__lt=models.F("requested_end")),
                                   name="access_request_period_ordered"),
        ]

    def __str__(self) -> str:
        return f"Request #{self.pk} for {self.dataset}"


class FieldDecision(models.Model):
    """The steward's decision on one requested field."""

    request = models.ForeignKey(AccessRequest, on_delete=models.CASCADE, related_name="decisions")
    field_name = models.CharField(max_length=63)
    approved = models.BooleanField()
    form = models.CharField(max_length=16, choices=AccessForm.choices, blank=True)
    reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decided_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["request", "id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "field_name"], name="field_decision_once"),
            models.CheckConstraint(condition=models.Q(approved=False) | ~models.Q(form=""),
                                   name="field_decision_approved_has_form"),
        ]

    def __str__(self) -> str:
        return f"{self.field_name}: {'approved (' + self.form + ')' if self.approved else 'denied'}"


class RequestEvent(models.Model):
    """The request's timeline: every step with who, when and their comment."""

    request = models.ForeignKey(AccessRequest, on_delete=models.CASCADE, related_name="events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    action = models.CharField(max_length=32)
    comment = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["request", "at", "id"]

    def __str__(self) -> str:
        return f"{self.action} on request #{self.request_id}"


class GrantStatus(models.TextChoices):
    PENDING_DPO = "pending_dpo", "Waiting for the data protection officer"
    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"
    EXPIRED = "expired", "Expired"
    REJECTED = "rejected", "Rejected by the data protection officer"


class Grant(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="grants")
    request = models.OneToOneField(AccessRequest, on_delete=models.PROTECT, null=True, blank=True,
                                   related_name="grant")
    principal_kind = models.CharField(max_length=16, choices=PrincipalKind.choices)
    principal_user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                       related_name="grants")
    principal_department = models.ForeignKey(Department, on_delete=models.PROTECT, null=True, blank=True,
                                             related_name="grants")
    purpose = models.TextField()
    legal_basis = models.CharField(max_length=300)
    row_filter = models.JSONField(default=list, blank=True)
    valid_from = models.DateTimeField()
    valid_until = models.DateTimeField()
    status = models.CharField(max_length=16, choices=GrantStatus.choices, db_index=True)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    dpo_approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                        related_name="+")
    dpo_approved_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                   related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.TextField(blank=True)
    last_certified_at = models.DateTimeField(null=True, blank=True)
    reminder_sent_at = models.DateTimeField(null=True, blank=True)
    # When the owning stewards were last asked to recertify; a new reminder goes out only once
    # the grant is due again after its last certification, so stewards are not nagged daily.
    recertification_requested_at = models.DateTimeField(null=True, blank=True)
    dpo_rejected_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                        related_name="+")
    dpo_rejected_at = models.DateTimeField(null=True, blank=True)
    dpo_comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["dataset", "status", "valid_until"], name="grant_dataset_active"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(principal_kind="user", principal_user__isnull=False,
                                    principal_department__isnull=True)
                           | models.Q(principal_kind="department", principal_user__isnull=True,
                                      principal_department__isnull=False)),
                name="grant_one_principal",
            ),
            models.CheckConstraint(condition=models.Q(valid_from__lt=models.F("valid_until")),
                                   name="grant_period_ordered"),
        ]

    def __str__(self) -> str:
        who = self.principal_user or self.principal_department
        return f"Grant #{self.pk} on {self.dataset} to {who}"


class GrantField(models.Model):
    grant = models.ForeignKey(Grant, on_delete=models.CASCADE, related_name="fields")
    field_name = models.CharField(max_length=63)
    form = models.CharField(max_length=16, choices=AccessForm.choices)
    # Set when a published schema change removed, renamed or retyped the field: the grant no
    # longer covers it (new fields are never granted by default either).
    lapsed_at = models.DateTimeField(null=True, blank=True)
    lapse_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["grant", "id"]
        constraints = [
            models.UniqueConstraint(fields=["grant", "field_name"], name="grant_field_once"),
            models.CheckConstraint(condition=models.Q(form__in=AccessForm.values), name="grant_field_form_known"),
        ]

    def __str__(self) -> str:
        return f"{self.field_name} ({self.form})"
