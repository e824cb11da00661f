"""Requests for data that does not exist yet, the people who joined them and their timeline."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from catalog.models import Dataset
from departments.models import Department


class DataRequestStatus(models.TextChoices):
    OPEN = "open", "Open, waiting for a governance reviewer"
    ROUTED = "routed", "Routed to a department"
    ACCEPTED = "accepted", "Accepted by the department"
    FULFILLED = "fulfilled", "Fulfilled by a published dataset"
    DECLINED = "declined", "Declined by the department"
    WITHDRAWN = "withdrawn", "Withdrawn"
    DUPLICATE = "duplicate", "Closed as a duplicate"


# Seen by every signed-in user (so that others join instead of filing a duplicate); a request
# in any other state is seen only by those it concerns (see selectors.data_request_list).
PUBLIC_STATUSES = (DataRequestStatus.OPEN, DataRequestStatus.ROUTED, DataRequestStatus.ACCEPTED,
                   DataRequestStatus.FULFILLED)


class DataRequest(models.Model):
    title = models.CharField(max_length=200)
    description = models.TextField()
    purpose = models.TextField()
    fields = models.JSONField(default=list, help_text='[{"name": "stop_id", "description": "…"}]')
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="data_requests_made",
                                   help_text="The department the requester asks from.")
    status = models.CharField(max_length=16, choices=DataRequestStatus.choices, default=DataRequestStatus.OPEN,
                              db_index=True)
    routed_department = models.ForeignKey(Department, on_delete=models.PROTECT, null=True, blank=True,
                                          related_name="data_requests_routed")
    routed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                  related_name="+")
    routed_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                   related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    decline_reason = models.TextField(blank=True)
    duplicate_of = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True,
                                     related_name="duplicates")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, null=True, blank=True,
                                related_name="data_requests", help_text="The dataset that fulfils it.")
    fulfilled_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(status="fulfilled") | models.Q(dataset__isnull=False),
                                   name="data_request_fulfilled_has_dataset"),
            models.CheckConstraint(condition=~models.Q(status="duplicate") | models.Q(duplicate_of__isnull=False),
                                   name="data_request_duplicate_has_original"),
            models.CheckConstraint(condition=~models.Q(duplicate_of=models.F("pk")),
                                   name="data_request_not_duplicate_of_itself"),
        ]

    def __str__(self) -> str:
        return f"Data request #{self.pk}: {self.title}"


class DataRequestSupporter(models.Model):
    """Someone who joined a request, with their own purpose, instead of filing a duplicate."""

    request = models.ForeignKey(DataRequest, on_delete=models.CASCADE, related_name="supporters")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    purpose = models.TextField()
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["request", "joined_at", "id"]
        constraints = [models.UniqueConstraint(fields=["request", "user"], name="data_request_joined_once")]

    def __str__(self) -> str:
        return f"{self.user} joined data request #{self.request_id}"


class DataRequestEvent(models.Model):
    """The request's timeline: every step with who, when and their comment."""

    request = models.ForeignKey(DataRequest, on_delete=models.CASCADE, related_name="events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    action = models.CharField(max_length=32)
    comment = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["request", "at", "id"]

    def __str__(self) -> str:
        return f"{self.action} on data request #{self.request_id}"
