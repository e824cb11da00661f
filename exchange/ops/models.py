from django.db import models


class WorkerHeartbeat(models.Model):
    """The last time each Celery worker proved it can take a task from the broker and write
    to the database. Written by the ``housekeeping_heartbeat`` task that beat schedules."""

    hostname = models.CharField(max_length=255, unique=True)
    seen_at = models.DateTimeField()
    task_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-seen_at"]

    def __str__(self) -> str:
        return f"{self.hostname} @ {self.seen_at:%Y-%m-%d %H:%M:%S}"
