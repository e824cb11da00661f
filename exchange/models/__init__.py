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
from exchange.models.sync import (
    Connection,
    ConnectionKind,
    FileFormat,
    QuarantinedRow,
    Run,
    RunKind,
    RunMode,
    RunStatus,
    RunTrigger,
    Source,
    Subscription,
    SubscriptionStatus,
)

__all__ = [
    "AccessForm", "AccessRequest", "AuditCheckpoint", "AuditEvent", "FieldDecision", "Grant", "GrantField",
    "GrantStatus", "PrincipalKind", "RequestEvent", "RequestStatus", "WorkerHeartbeat",
    "Connection", "ConnectionKind", "FileFormat", "QuarantinedRow", "Run", "RunKind", "RunMode", "RunStatus",
    "RunTrigger", "Source", "Subscription", "SubscriptionStatus",
]
