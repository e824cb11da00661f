from __future__ import annotations

from django.utils import timezone
from knox.models import AuthToken

from exchange.ops.models import WorkerHeartbeat


def worker_heartbeat(*, hostname: str, task_id: str) -> WorkerHeartbeat:
    heartbeat, _ = WorkerHeartbeat.objects.update_or_create(
        hostname=hostname[:255], defaults={"seen_at": timezone.now(), "task_id": task_id[:64]}
    )
    return heartbeat


def purge_expired_tokens() -> int:
    """Expired API tokens can no longer authenticate; drop their digests."""
    deleted, _ = AuthToken.objects.filter(expiry__lt=timezone.now()).delete()
    return deleted
