from exchange.access.models import (
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
from exchange.audit.models import AuditCheckpoint, AuditEvent
from exchange.ops.models import WorkerHeartbeat
from exchange.sync.models import (
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
