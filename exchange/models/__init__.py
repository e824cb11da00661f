from exchange.models.audit import AuditCheckpoint, AuditEvent
from exchange.models.ops import WorkerHeartbeat

__all__ = ["AuditCheckpoint", "AuditEvent", "WorkerHeartbeat"]
