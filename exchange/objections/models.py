"""Objections to a dataset's records or fields, and their timeline."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from catalog.models import Dataset
from departments.models import Department


class ObjectionKind(models.TextChoices):
    WRONG_VALUE = "wrong_value", "A value looks wrong"
    MISSING_RECORD = "missing_record", "A record is missing"
    DUPLICATE = "duplicate", "A record is duplicated"
    OTHER = "other", "Something else"


class ObjectionStatus(models.TextChoices):
    OPEN = "open", "Open, waiting for the owning stewards"
    ACCEPTED = "accepted", "Accepted and fixed"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"


class Objection(models.Model):
    """Names records by the values of the dataset's key and fields by name; never stores other
    values of records: whoever reads an objection reads the named records through their own
    view (exchange.objections.selectors.objection_records)."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="objections")
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="objections_raised",
                                   help_text="The department that reads or receives the dataset and objects.")
    raised_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=ObjectionKind.choices)
    record_keys = models.JSONField(default=list, blank=True, help_text="Values of the dataset's key field.")
    fields = models.JSONField(default=list, blank=True, help_text="Names of the fields objected to.")
    comment = models.TextField()
    status = models.CharField(max_length=16, choices=ObjectionStatus.choices, default=ObjectionStatus.OPEN,
                              db_index=True)
    due_at = models.DateTimeField(help_text="When the owning stewards must have answered.")
    escalated_at = models.DateTimeField(null=True, blank=True,
                                        help_text="When it was overdue and went to the governance reviewers.")
    answered_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                    related_name="+")
    answered_at = models.DateTimeField(null=True, blank=True)
    answer = models.TextField(blank=True, help_text="The fix (accepted) or the reason (rejected).")
    closed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The escalation job's question: open, not escalated, due.
            models.Index(fields=["status", "due_at"], name="objection_due",
                         condition=models.Q(status="open", escalated_at__isnull=True)),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(kind__in=ObjectionKind.values), name="objection_kind_known"),
            models.CheckConstraint(condition=models.Q(status__in=ObjectionStatus.values),
                                   name="objection_status_known"),
            models.CheckConstraint(
                condition=~models.Q(status__in=["accepted", "rejected"])
                | (models.Q(answered_by__isnull=False) & ~models.Q(answer="")),
                name="objection_answer_has_author_and_text"),
        ]

    def __str__(self) -> str:
        return f"Objection #{self.pk} to {self.dataset_id}"

    @property
    def escalated(self) -> bool:
        return self.escalated_at is not None


class ObjectionEvent(models.Model):
    """The objection's timeline: every step with who, when and their comment."""

    objection = models.ForeignKey(Objection, on_delete=models.CASCADE, related_name="events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    action = models.CharField(max_length=32)
    comment = models.TextField(blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["objection", "at", "id"]

    def __str__(self) -> str:
        return f"{self.action} on objection #{self.objection_id}"
