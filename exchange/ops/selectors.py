from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.utils import timezone

from exchange.ops.models import WorkerHeartbeat


def worker_last_seen() -> datetime | None:
    return WorkerHeartbeat.objects.order_by("-seen_at").values_list("seen_at", flat=True).first()


def workers_alive(*, now: datetime | None = None) -> bool:
    last = worker_last_seen()
    return last is not None and (now or timezone.now()) - last <= settings.WORKER_HEARTBEAT_STALE_AFTER
