from exchange.models.access import (
    AccessForm,
    AccessRequest,
    FieldDecision,
    Grant,
    GrantField,
    GrantStatus,
    PrincipalKind,
    RequestEvent,
    RequestStatus,
)
from exchange.models.audit import AuditCheckpoint, AuditEvent
from exchange.models.ops import WorkerHeartbeat

__all__ = [
    "AccessForm", "AccessRequest", "AuditCheckpoint", "AuditEvent", "FieldDecision", "Grant", "GrantField",
    "GrantStatus", "PrincipalKind", "RequestEvent", "RequestStatus", "WorkerHeartbeat",
]
