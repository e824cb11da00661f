from exchange.models.audit import AuditEvent
from exchange.models.ops import WorkerHeartbeat

__all__ = ["AuditEvent", "WorkerHeartbeat"]
