"""The city map: who shares what with whom, how fresh each copy is, and where the islands are.

Departments are the nodes; a flow is a department-level grant in force (the owning department
gives fields of a dataset to another), with the subscription that delivers it, if any: its
rows per day over the last week, its last delivery and that delivery's time from the change
at the source to the target, whether it is up to date with the store, whether its last run
failed. Islands are departments that neither give nor receive. The access requests that have
waited longest are listed too.

Operators and city auditors see the whole city. Everyone else sees the flows their own
departments give or receive and the requests their departments made or must decide, and
learns of no other department's flows. Five queries whatever the size of the city.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import F, IntegerField, OuterRef, Prefetch, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from departments.models import Department
from departments.selectors import principal_of
from exchange.access.models import (
    FORM_ORDER,
    AccessForm,
    AccessRequest,
    Grant,
    GrantField,
    GrantStatus,
    PrincipalKind,
    RequestStatus,
)
from exchange.access.policy import active_grants_q
from exchange.sync.models import Run, RunKind, RunStatus, Subscription, SubscriptionStatus

WEEK = dt.timedelta(days=7)
WAITING_SHOWN = 10
PENDING = (RequestStatus.SUBMITTED, RequestStatus.AWAITING_DPO)


@dataclass
class Flow:
    giver: str  # department codes
    receiver: str
    dataset_id: int
    dataset: str
    fields: list[tuple[str, str]]  # (name, form)
    grant_ids: list[int]
    subscriptions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> str:
        """failing, late (misses the dataset's freshness target), behind, fresh, or granted (no
        subscription delivers it)."""
        if not self.subscriptions:
            return "granted"
        if any(s["failing"] for s in self.subscriptions):
            return "failing"
        if any(s["late"] for s in self.subscriptions):
            return "late"
        return "fresh" if all(s["up_to_date"] for s in self.subscriptions) else "behind"


def sees_whole_city(user: User | AnonymousUser) -> bool:
    p = principal_of(user)
    return p.is_staff or p.is_city_auditor


def city_map(*, user: User | AnonymousUser, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    p = principal_of(user)
    whole = p.is_staff or p.is_city_auditor
    mine = set(p.department_ids)
    departments = list(Department.objects.order_by("name").values("id", "code", "name", "slug"))
    code_of = {d["id"]: d["code"] for d in departments}

    grants = (Grant.objects.filter(active_grants_q(now), status=GrantStatus.ACTIVE,
                                   principal_kind=PrincipalKind.DEPARTMENT)
              .select_related("dataset")
              .prefetch_related(Prefetch("fields", queryset=GrantField.objects.filter(
                  Q(lapsed_at__isnull=True) | Q(lapsed_at__gt=now)).order_by("field_name")))
              .order_by("dataset__title", "id"))
    if not whole:
        grants = grants.filter(Q(dataset__department_id__in=mine) | Q(principal_department_id__in=mine))
    flows: dict[tuple[int, int], Flow] = {}
    for grant in grants:
        assert grant.principal_department_id is not None
        key = (grant.dataset_id, grant.principal_department_id)
        flow = flows.get(key)
        if flow is None:
            flow = flows[key] = Flow(giver=code_of[grant.dataset.department_id],
                                     receiver=code_of[grant.principal_department_id], dataset_id=grant.dataset_id,
                                     dataset=grant.dataset.title, fields=[], grant_ids=[])
        flow.grant_ids.append(grant.pk)
        # The most revealing form among the grants, as the policy unions them.
        forms = dict(flow.fields)
        for f in grant.fields.all():
            if f.lapsed_at is None or f.lapsed_at > now:
                forms[f.field_name] = _more_revealing(forms.get(f.field_name), f.form)
        flow.fields = sorted(forms.items())

    deliveries = Run.objects.filter(subscription=OuterRef("pk"), kind=RunKind.DELIVERY)
    done = deliveries.filter(status=RunStatus.SUCCEEDED)
    store_top = (Run.objects.filter(dataset=OuterRef("dataset_id"), kind=RunKind.INGEST, status=RunStatus.SUCCEEDED,
                                    seq_to__isnull=False).order_by("-finished_at", "-id").values("seq_to")[:1])
    week = (done.filter(finished_at__gte=now - WEEK).order_by().values("subscription")
            .annotate(n=Sum(F("rows_inserted") + F("rows_updated") + F("rows_deleted"))).values("n"))
    latest = deliveries.exclude(status__in=[RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SKIPPED]).order_by(
        "-finished_at", "-id")
    last_done = done.order_by("-finished_at", "-id")
    subscriptions = (Subscription.objects.filter(status__in=[SubscriptionStatus.ACTIVE, SubscriptionStatus.PAUSED],
                                                 dataset_id__in={k[0] for k in flows})
                     .annotate(rows_week=Coalesce(Subquery(week, output_field=IntegerField()), Value(0)),
                               last_status=Subquery(latest.values("status")[:1]),
                               last_error=Subquery(latest.values("error")[:1]),
                               last_delivered_at=Subquery(last_done.values("finished_at")[:1]),
                               last_seen_at=Subquery(last_done.values("changes_seen_at")[:1]),
                               store_top=Subquery(store_top))
                     .order_by("id")) if flows else []
    for s in subscriptions:
        flow = flows.get((s.dataset_id, s.department_id))
        if flow is None:
            continue
        latency = ((s.last_delivered_at - s.last_seen_at).total_seconds()  # type: ignore[attr-defined]
                   if s.last_delivered_at and s.last_seen_at else None)  # type: ignore[attr-defined]
        flow.subscriptions.append({
            "id": s.pk, "status": s.status, "target_table": s.target_table, "deliver_on_change": s.deliver_on_change,
            "rows_per_day": round(s.rows_week / 7, 1),  # type: ignore[attr-defined]
            "last_delivered_at": s.last_delivered_at,  # type: ignore[attr-defined]
            "last_latency_seconds": round(latency, 3) if latency is not None else None,
            "up_to_date": s.last_seq >= (s.store_top or 0),  # type: ignore[attr-defined]
            "failing": s.last_status == RunStatus.FAILED,  # type: ignore[attr-defined]
            "late": s.freshness_missed_at is not None,
            "last_error": s.last_error if s.last_status == RunStatus.FAILED else "",  # type: ignore[attr-defined]
        })

    giving = {f.giver for f in flows.values()}
    receiving = {f.receiver for f in flows.values()}
    shown = departments if whole else [d for d in departments if d["id"] in mine or d["code"] in giving | receiving]
    nodes = [{**d, "gives": d["code"] in giving, "receives": d["code"] in receiving,
              "island": d["code"] not in giving | receiving} for d in shown]
    # An island is known for sure only where all of a department's flows are in view.
    islands = [n["code"] for n in nodes if n["island"] and (whole or n["id"] in mine)]

    waiting = AccessRequest.objects.filter(status__in=PENDING).select_related(
        "dataset__department", "principal_department", "requested_by").order_by("created_at", "id")
    if not whole:
        waiting = waiting.filter(Q(dataset__department_id__in=mine) | Q(principal_department_id__in=mine)
                                 | Q(requested_by=user.pk))
    requests = [{
        "id": r.pk, "dataset": r.dataset.title, "dataset_id": r.dataset_id, "owner": r.dataset.department.code,
        "requester": r.principal_department.code if r.principal_department else r.requested_by.get_username(),
        "status": r.status, "submitted_at": r.created_at,
        "waiting_days": round((now - r.created_at).total_seconds() / 86400, 1),
    } for r in waiting[:WAITING_SHOWN]]

    flow_list = [{
        "giver": f.giver, "receiver": f.receiver, "dataset_id": f.dataset_id, "dataset": f.dataset,
        "granted_fields": [{"name": n, "form": form} for n, form in f.fields], "state": f.state,
        "subscriptions": f.subscriptions,
    } for f in flows.values()]
    return {
        "whole_city": whole,
        "departments": nodes,
        "flows": flow_list,
        "islands": islands,
        "waiting_requests": requests,
        "failing": [f for f in flow_list if f["state"] == "failing"],
        "generated_at": now,
    }


def _more_revealing(a: str | None, b: str) -> str:
    """Of two forms, the one that shows more (FORM_ORDER: most revealing first)."""
    if a is None:
        return b
    return min(a, b, key=lambda form: FORM_ORDER.index(AccessForm(form)))
