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
from exchange.demand.models import DataRequest, DataRequestEvent, DataRequestStatus, DataRequestSupporter
from exchange.objections.models import Objection, ObjectionEvent, ObjectionKind, ObjectionStatus
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
    "AccessForm", "AccessRequest", "AuditCheckpoint", "AuditEvent", "DataRequest", "DataRequestEvent",
    "DataRequestStatus", "DataRequestSupporter", "FieldDecision", "Grant", "GrantField",
    "GrantStatus", "Objection", "ObjectionEvent", "ObjectionKind", "ObjectionStatus", "PrincipalKind",
    "RequestEvent", "RequestStatus", "WorkerHeartbeat",
    "Connection", "ConnectionKind", "FileFormat", "QuarantinedRow", "Run", "RunKind", "RunMode", "RunStatus",
    "RunTrigger", "Source", "Subscription", "SubscriptionStatus",
]
