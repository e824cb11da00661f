"""Moving data: connections to department systems, a dataset's source, subscriptions of
departments to granted fields, the runs of ingest and delivery jobs, and quarantined rows.

A connection's DSN or URL is kept only encrypted (Fernet, ``exchange.sync.secrets``); what
any API or page shows is ``redacted``, computed when the secret is set.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q

from catalog.models import Dataset
from departments.models import Department


class ConnectionKind(models.TextChoices):
    POSTGRESQL = "postgresql", "PostgreSQL database"
    SQLITE = "sqlite", "SQLite database file"
    URL = "url", "HTTP(S) URL serving CSV, JSON or NDJSON"


class Connection(models.Model):
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="connections")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=16, choices=ConnectionKind.choices)
    secret_encrypted = models.TextField(help_text="The DSN, path or URL, Fernet-encrypted. Never shown.")
    redacted = models.CharField(max_length=500, help_text="The DSN or URL with credentials replaced by ***.")
    # Pages say only that a secret is set and since when; the secret itself never comes back.
    secret_changed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["department", "name"]
        constraints = [
            models.UniqueConstraint(fields=["department", "name"], name="connection_name_unique_in_department"),
            models.CheckConstraint(condition=Q(kind__in=ConnectionKind.values), name="connection_kind_known"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.redacted})"


class FileFormat(models.TextChoices):
    CSV = "csv", "CSV (UTF-8, header row)"
    JSON = "json", "JSON array of objects"
    NDJSON = "ndjson", "Newline-delimited JSON"


class Source(models.Model):
    """Where a dataset's records come from: a table or a read-only query on a database
    connection, a URL on an HTTP connection, or an uploaded file."""

    dataset = models.OneToOneField(Dataset, on_delete=models.CASCADE, related_name="source")
    connection = models.ForeignKey(Connection, on_delete=models.PROTECT, null=True, blank=True,
                                   related_name="sources")
    table = models.CharField(max_length=200, blank=True, help_text="Table name, optionally schema.table.")
    query = models.TextField(blank=True, help_text="A single read-only SELECT / WITH statement.")
    upload = models.CharField(max_length=300, blank=True, help_text="Path of the uploaded file under MEDIA_ROOT.")
    file_format = models.CharField(max_length=8, choices=FileFormat.choices, default=FileFormat.CSV)
    encoding = models.CharField(max_length=32, default="utf-8")
    # source column -> field name
    mapping = models.JSONField(default=dict, blank=True)
    watermark_column = models.CharField(max_length=200, blank=True,
                                        help_text="Source column that grows on every change (e.g. updated_at).")
    watermark_value = models.TextField(blank=True, help_text="Highest watermark ingested so far.")
    schedule = models.CharField(max_length=120, blank=True, help_text="Cron expression (m h dom mon dow).")
    periodic_task = models.OneToOneField("django_celery_beat.PeriodicTask", on_delete=models.SET_NULL, null=True,
                                         blank=True, related_name="+")
    # Watching: every watch_seconds a cheap check (exchange.sync.readers.source_signature) and,
    # when its answer moved, a run (exchange.sync.services.source_watch_check).
    watch_seconds = models.PositiveIntegerField(null=True, blank=True,
                                                help_text="Check the source for changes this often; empty: not "
                                                          "watched.")
    watch_state = models.CharField(max_length=300, blank=True, help_text="What the last check found.")
    watch_checked_at = models.DateTimeField(null=True, blank=True)
    watch_error = models.TextField(blank=True, help_text="Why the last check could not tell.")
    # The owner's promise to the subscribers: no change waits longer than this to reach them
    # (exchange.sync.services.subscriptions_check_freshness tells both sides when it does).
    freshness_minutes = models.PositiveIntegerField(null=True, blank=True,
                                                    help_text="Freshness target: the longest a change may take to "
                                                              "reach every subscriber.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"source of dataset {self.dataset_id}"

    @property
    def kind(self) -> str:
        if self.connection_id is None:
            return "upload"
        return self.connection.kind if self.connection else ""


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    ENDED = "ended", "Ended"


def holds_target_table() -> Q:
    """The subscriptions that keep their target table to themselves: every one but those that
    have ended and whose delivered copy has been dropped. An ended one that kept its copy still
    holds the table, so that no new subscription finds a table it did not create, and no
    purge of an old one drops a newer one's copy."""
    return ~Q(status=SubscriptionStatus.ENDED, purged_at__isnull=False)


class Subscription(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="subscriptions")
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="subscriptions")
    connection = models.ForeignKey(Connection, on_delete=models.PROTECT, related_name="subscriptions")
    target_table = models.CharField(max_length=63)
    status = models.CharField(max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE)
    last_seq = models.BigIntegerField(default=0, help_text="The highest store change number delivered.")
    # The columns (name, form) of the last delivery; a change of the view means a rebuild.
    delivered_columns = models.JSONField(default=list, blank=True)
    purge_on_end = models.BooleanField(default=False)
    schedule = models.CharField(max_length=120, blank=True)
    # Besides (or instead of) the schedule: a delivery is queued as soon as an ingest commits
    # changes to the dataset (exchange.sync.runs.deliveries_for_change).
    deliver_on_change = models.BooleanField(default=False)
    periodic_task = models.OneToOneField("django_celery_beat.PeriodicTask", on_delete=models.SET_NULL, null=True,
                                         blank=True, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_reason = models.TextField(blank=True, help_text="Why it ended: a steward ended it, or its grant ended.")
    purged_at = models.DateTimeField(null=True, blank=True)
    # Set while a purge drops the copy, so that only one purge at a time touches the table
    # (see exchange.sync.delivery.subscription_purge_target).
    purge_claimed_at = models.DateTimeField(null=True, blank=True)
    # When the purge job (purge_on_end) was last sent; the reaper sends it again while the copy
    # is still there (exchange.sync.services.purges_resend). Blank for purges done in a request.
    purge_sent_at = models.DateTimeField(null=True, blank=True)
    # Set when the dataset's freshness target was missed and both sides were told; cleared once
    # the copy is within the target again.
    freshness_missed_at = models.DateTimeField(null=True, blank=True)
    purge_error = models.TextField(blank=True, help_text="Why the purge job could not drop the delivered copy "
                                                         "(it is not tried again on its own).")

    class Meta:
        ordering = ["dataset", "department"]
        constraints = [
            # One subscription at a time holds a table; an ended one stays as the record of
            # what was delivered, and leaves the table to a new one once its copy is dropped.
            models.UniqueConstraint(fields=["connection", "target_table"], condition=holds_target_table(),
                                    name="subscription_target_held_once"),
            models.CheckConstraint(condition=Q(status__in=SubscriptionStatus.values),
                                   name="subscription_status_known"),
        ]

    def __str__(self) -> str:
        return f"{self.department_id} ← dataset {self.dataset_id} into {self.target_table}"


class RunKind(models.TextChoices):
    INGEST = "ingest", "Ingest"
    DELIVERY = "delivery", "Delivery"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    SKIPPED = "skipped", "Skipped (another run of the same job was running)"


FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED)


class RunMode(models.TextChoices):
    FULL = "full", "Full"
    INCREMENTAL = "incremental", "Incremental"


class RunTrigger(models.TextChoices):
    MANUAL = "manual", "Run now"
    SCHEDULE = "schedule", "Schedule"
    UPLOAD = "upload", "New file uploaded"
    REAPER = "reaper", "Re-run of an orphaned run"
    RETRY = "retry", "Retry"
    CHANGE = "change", "Changes ingested"
    WATCH = "watch", "Change found at the source"


class Run(models.Model):
    kind = models.CharField(max_length=16, choices=RunKind.choices)
    source = models.ForeignKey(Source, on_delete=models.CASCADE, null=True, blank=True, related_name="runs")
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, null=True, blank=True,
                                     related_name="runs")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    mode = models.CharField(max_length=16, choices=RunMode.choices, default=RunMode.FULL)
    trigger = models.CharField(max_length=16, choices=RunTrigger.choices, default=RunTrigger.MANUAL)
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+")
    rerun_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="reruns")
    # A full run whose source gives no valid row would delete every record; it does so only when
    # the steward said the source may be empty (exchange.sync.ingest.merge).
    allow_empty = models.BooleanField(default=False, help_text="A full run may delete every record when the "
                                                              "source gives no valid row.")
    rows_read = models.BigIntegerField(default=0)
    rows_inserted = models.BigIntegerField(default=0)
    rows_updated = models.BigIntegerField(default=0)
    rows_deleted = models.BigIntegerField(default=0)
    rows_unchanged = models.BigIntegerField(default=0)
    rows_quarantined = models.BigIntegerField(default=0)
    rows_done = models.BigIntegerField(default=0)
    rows_total_estimate = models.BigIntegerField(null=True, blank=True)
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # When the queued run's message should reach a worker (sent, plus its retry countdown); the
    # reaper sends it again if it is still queued well after that (exchange.sync.runs.runs_reap).
    due_at = models.DateTimeField(null=True, blank=True)
    resends = models.PositiveIntegerField(default=0, help_text="Times the reaper sent the queued run's task again.")
    error = models.TextField(blank=True, help_text="What went wrong, written for a steward.")
    cancel_requested = models.BooleanField(default=False)
    celery_task_id = models.CharField(max_length=64, blank=True)
    queue = models.CharField(max_length=100, blank=True, help_text="Queue the task was sent to (blank: routed).")
    # Lineage: the store change numbers (_seq) this run wrote (ingest) or delivered (delivery),
    # and where to.
    seq_from = models.BigIntegerField(null=True, blank=True)
    seq_to = models.BigIntegerField(null=True, blank=True)
    target = models.CharField(max_length=300, blank=True)
    schema_version = models.PositiveIntegerField(null=True, blank=True)
    # Delivery: when the oldest change it carried was read from the source (the start of the
    # ingest run that brought it); finished_at minus this is the change's time to the target.
    changes_seen_at = models.DateTimeField(null=True, blank=True)
    # Ingest: each quality rule's result (see exchange/sync/quality.py) and the score, 0-100.
    quality = models.JSONField(default=list, blank=True)
    quality_score = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-queued_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="run_status_known"),
            models.CheckConstraint(
                condition=(Q(kind=RunKind.INGEST, source__isnull=False, subscription__isnull=True)
                           | Q(kind=RunKind.DELIVERY, subscription__isnull=False, source__isnull=True)),
                name="run_has_its_job",
            ),
            # The lock against overlap: at most one running run per job, enforced by the
            # database whatever the number of workers.
            models.UniqueConstraint(fields=["source"], condition=Q(status="running"),
                                    name="one_running_run_per_source"),
            models.UniqueConstraint(fields=["subscription"], condition=Q(status="running"),
                                    name="one_running_run_per_subscription"),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.kind} run #{self.pk} ({self.status})"

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or self.heartbeat_at or self.started_at) - self.started_at


class QuarantinedRow(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="quarantined")
    row_number = models.BigIntegerField(help_text="1-based number of the record in the source (header excluded).")
    raw = models.JSONField()
    reason = models.TextField()

    class Meta:
        ordering = ["run", "row_number"]
        indexes = [models.Index(fields=["run", "row_number"], name="quarantine_run_row")]

    def __str__(self) -> str:
        return f"run {self.run_id} row {self.row_number}: {self.reason}"
