from django.db import models


class AuditOutcome(models.TextChoices):
    ALLOWED = "allowed", "Allowed"
    DENIED = "denied", "Denied"
    FAILED = "failed", "Failed"


class ActorKind(models.TextChoices):
    USER = "user", "User"
    DEPARTMENT = "department", "Department"
    SYSTEM = "system", "System or job"
    ANONYMOUS = "anonymous", "Anonymous"


class AuditEvent(models.Model):
    """One append-only, hash-chained record of a governance decision or a data movement.

    References to users, departments and datasets are plain ids plus a readable label, not
    foreign keys: an audit row must never change (or vanish) because the thing it speaks
    of was edited or deleted later.
    """

    occurred_at = models.DateTimeField(db_index=True)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    actor_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    actor_label = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_label = models.CharField(max_length=300, blank=True)
    department_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    dataset_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    fields = models.JSONField(default=list, blank=True)
    row_count = models.BigIntegerField(null=True, blank=True)
    filters = models.JSONField(default=dict, blank=True)
    purpose = models.TextField(blank=True)
    outcome = models.CharField(max_length=8, choices=AuditOutcome.choices, default=AuditOutcome.ALLOWED)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["dataset_id", "occurred_at"], name="audit_dataset_time")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} by {self.actor_label or self.actor_kind}"


class CheckpointReason(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    VERIFY = "verify", "After a verification"
    ARCHIVE = "archive", "After an archive export"
    MANUAL = "manual", "Manual"


class AuditCheckpoint(models.Model):
    """A signed statement "the chain had ``event_count`` events, ending in event
    ``last_event_id`` with hash ``last_hash``". The HMAC key is not in the database, so
    someone who can delete the tail of the chain cannot write a checkpoint that hides it.
    Append-only, like the events."""

    created_at = models.DateTimeField()
    last_event_id = models.BigIntegerField()
    last_hash = models.CharField(max_length=64)
    event_count = models.BigIntegerField()
    reason = models.CharField(max_length=16, choices=CheckpointReason.choices)
    signature = models.CharField(max_length=64)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"checkpoint #{self.pk} at event #{self.last_event_id} ({self.event_count} events)"
