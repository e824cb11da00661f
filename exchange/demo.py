"""Demo data flowing: generated source data for some of the demo catalogue's datasets, their
sources with schedules, and subscriptions of other departments. Idempotent.

Data are generated from each dataset's *published schema* (by field type, with realistic
values picked by field name), so the demo follows whatever fields the catalogue demo gives
those datasets. Datasets that do not exist (yet) are skipped. Files land in
``var/demo-sources/`` (CSV copied into MEDIA_ROOT as uploads; SQLite source and target
databases), generated on first seed and never committed.
"""

from __future__ import annotations

import csv
import random
import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from catalog.models import Dataset, DatasetStatus, Field
from departments.models import Department, Role
from exchange.access import services as access_services
from exchange.access.policy import effective_view
from exchange.demand import services as demand_services
from exchange.demand.models import DataRequest
from exchange.objections import services as objection_services
from exchange.objections.models import Objection
from exchange.sync import runs, services
from exchange.sync.models import Connection, ConnectionKind, FileFormat, Source, Subscription

# (dataset slug, kind of source, rows, schedule)
SOURCES: list[tuple[str, str, int, str]] = [
    ("building-permits", "csv", 4000, "15 2 * * *"),
    ("food-inspections", "csv", 3000, "30 2 * * *"),
    ("air-quality", "sqlite", 6000, "*/10 * * * *"),
    ("traffic-counts", "sqlite", 5000, "*/15 * * * *"),
]
# (dataset slug, subscribing department code, target table, schedule, deliver on change)
SUBSCRIPTIONS: list[tuple[str, str, str, str, bool]] = [
    ("air-quality", "health", "air_quality", "*/10 * * * *", True),
    ("building-permits", "transport", "building_permits", "0 3 * * *", False),
    ("traffic-counts", "environment", "traffic_counts", "*/15 * * * *", True),
]

DISTRICTS = ["Altstadt", "Nordend", "Südufer", "Westpark", "Ostheim", "Hafen", "Bergviertel", "Lindenau"]
STREETS = ["Main Street", "Station Road", "Lindenallee", "Harbour Lane", "Park Avenue", "Mill Street", "Ring Road"]
FIRST = ["Anna", "Ben", "Chiara", "Deniz", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemal", "Lena"]
LAST = ["Schmidt", "Okafor", "Rossi", "Novak", "Yilmaz", "Dubois", "Berg", "Haddad", "Larsen", "Costa"]
STATUSES = ["open", "approved", "rejected", "pending", "closed"]
CATEGORIES = ["residential", "commercial", "industrial", "public", "mixed use"]


def demo_dir() -> Path:
    path = Path(settings.VAR_DIR) / "demo-sources"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _value(field: Field, i: int, rng: random.Random, slug: str) -> Any:  # noqa: C901 - a table of cases
    name, kind = field.name.lower(), field.type
    if field.is_key:
        if kind == "integer":
            return i
        if kind == "date":
            return (date(2020, 1, 1) + timedelta(days=i)).isoformat()
        if kind == "timestamp":
            return (datetime(2024, 1, 1) + timedelta(minutes=10 * i)).isoformat() + "+00:00"
        return f"{slug[:3].upper()}-{i:06d}"
    if field.nullable and rng.random() < 0.03:
        return ""
    if kind == "integer":
        return rng.randint(2015, 2026) if "year" in name else rng.randint(0, 900 if "count" in name else 120)
    if kind == "decimal":
        if any(p in name for p in ("pm", "no2", "o3", "so2")):
            return f"{rng.uniform(2, 85):.1f}"
        if "lat" in name:
            return f"{48.10 + rng.random() * 0.1:.5f}"
        if "lon" in name or "lng" in name:
            return f"{11.50 + rng.random() * 0.1:.5f}"
        return f"{rng.uniform(10, 25000):.2f}"
    if kind == "boolean":
        return rng.choice(["true", "false"])
    if kind == "date":
        return (date(2022, 1, 1) + timedelta(days=rng.randint(0, 1400))).isoformat()
    if kind == "timestamp":
        stamp = datetime(2025, 1, 1) + timedelta(minutes=i * 7 + rng.randint(0, 6))
        return stamp.isoformat() + "+00:00"
    if kind == "geopoint":
        return f"{48.10 + rng.random() * 0.1:.5f},{11.50 + rng.random() * 0.1:.5f}"
    if kind == "json":
        return f'{{"source": "demo", "batch": {i // 100}}}'
    if "district" in name or "area" in name or "zone" in name:
        return rng.choice(DISTRICTS)
    if "address" in name or "street" in name or "location" in name:
        return f"{rng.choice(STREETS)} {rng.randint(1, 180)}"
    if "email" in name:
        return f"{rng.choice(FIRST).lower()}.{rng.choice(LAST).lower()}@mail.example"
    if "phone" in name:
        return f"+49 89 {rng.randint(1000000, 9999999)}"
    if "name" in name or "applicant" in name or "owner" in name or "inspector" in name:
        return f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    if "status" in name or "result" in name or "outcome" in name:
        return rng.choice(STATUSES)
    if any(p in name for p in ("type", "category", "kind", "class", "use")):
        return rng.choice(CATEGORIES)
    if "station" in name or "site" in name or "counter" in name:
        return f"{rng.choice(DISTRICTS)} {rng.randint(1, 12)}"
    return f"{rng.choice(CATEGORIES)} {rng.randint(1, 999)}"


def _rows(dataset: Dataset, fields: list[Field], n: int) -> list[list[Any]]:
    rng = random.Random(f"exchange-demo:{dataset.slug}")  # the same data on every machine
    return [[_value(f, i, rng, dataset.slug) for f in fields] for i in range(1, n + 1)]


def _write_csv(path: Path, fields: list[Field], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow([f.name for f in fields])
        writer.writerows(rows)


def _write_sqlite(path: Path, table: str, fields: list[Field], rows: list[list[Any]]) -> None:
    db = sqlite3.connect(path)
    try:
        types = {"integer": "INTEGER", "decimal": "NUMERIC", "boolean": "TEXT"}
        db.execute(f'DROP TABLE IF EXISTS "{table}"')
        columns = ", ".join(f'"{f.name}" {types.get(f.type, "TEXT")}' for f in fields)
        db.execute(f'CREATE TABLE "{table}" ({columns})')
        marks = ", ".join("?" * len(fields))
        db.executemany(f'INSERT INTO "{table}" VALUES ({marks})',  # noqa: S608 - names from the schema, quoted
                       [[v if v != "" else None for v in r] for r in rows])
        db.commit()
    finally:
        db.close()


def _steward(department: Department) -> User | None:
    return (User.objects.filter(memberships__department=department, memberships__role=Role.STEWARD)
            .order_by("pk").first())


def _seed_source(dataset: Dataset, kind: str, n: int, schedule: str, stdout: TextIO) -> int:
    if Source.objects.filter(dataset=dataset).exists():
        return 0
    steward = _steward(dataset.department)
    if steward is None:
        return 0
    fields = list(Field.objects.filter(schema_id=dataset.current_schema_id).order_by("position"))
    if not any(f.is_key for f in fields):
        stdout.write(f"  demo data: {dataset.slug} has no key field, skipped\n")
        return 0
    rows = _rows(dataset, fields, n)
    mapping = {f.name: f.name for f in fields}
    stamps = [f.name for f in fields if f.type == "timestamp" and not f.is_key]
    with transaction.atomic():
        if kind == "csv":
            path = demo_dir() / f"{dataset.slug}.csv"
            if not path.exists():
                _write_csv(path, fields, rows)
            source = services.source_set(actor=steward, dataset=dataset, connection=None, mapping=mapping,
                                         file_format=FileFormat.CSV, schedule=schedule)
            relative = Path("sources") / "demo" / path.name
            (Path(settings.MEDIA_ROOT) / relative).parent.mkdir(parents=True, exist_ok=True)
            (Path(settings.MEDIA_ROOT) / relative).write_bytes(path.read_bytes())
            source.upload = str(relative)
            source.save(update_fields=["upload"])
        else:
            path = demo_dir() / f"{dataset.department.code}-systems.sqlite3"
            table = dataset.slug.replace("-", "_")
            _write_sqlite(path, table, fields, rows)
            connection = services.connection_create(
                actor=steward, department=dataset.department, name=f"{dataset.department.code} operational database"
                f" ({table})", kind=ConnectionKind.SQLITE, secret=str(path))
            # Watched as well: a change in the department's database starts a run within half a
            # minute, besides the schedule.
            source = services.source_set(actor=steward, dataset=dataset, connection=connection, table=table,
                                         mapping=mapping, watermark_column=stamps[0] if stamps else "",
                                         schedule=schedule, watch_seconds=30, freshness_minutes=60)
        runs.run_enqueue(source=source, user=steward)
    stdout.write(f"  demo data: {n} rows for {dataset.slug} ({kind}), ingest queued, schedule {schedule}\n")
    return 1


def _seed_subscription(dataset: Dataset, department: Department, table: str, schedule: str, on_change: bool,
                       stdout: TextIO) -> int:
    if Subscription.objects.filter(dataset=dataset, department=department).exists():
        return 0
    steward = _steward(department)
    owner_steward = _steward(dataset.department)
    if steward is None or owner_steward is None:
        return 0
    created = 0
    with transaction.atomic():
        if not effective_view(dataset=dataset, department=department).can_read:
            # The demo needs a grant to subscribe with: request it and decide it through the
            # access workflow, as the two stewards would (no personal or confidential field, so
            # no DPO step).
            fields = [f.name for f in Field.objects.filter(schema_id=dataset.current_schema_id).order_by("position")
                      if f.is_key or f.sensitivity in ("public", "internal")][:6]
            now = timezone.now()
            request = access_services.access_request_submit(
                actor=steward, dataset=dataset, fields=fields, principal_department=department,
                purpose=f"Demo: {department.name} works with {dataset.title}.", legal_basis="Demo data (fictional)",
                requested_start=now, requested_end=now + timedelta(days=300),
            )
            access_services.access_request_decide(
                actor=owner_steward, access_request=request, comment="Demo approval.",
                decisions=[access_services.FieldDecisionInput(name=name, approved=True) for name in fields],
            )
            created += 1
        target = demo_dir() / f"{department.code}-warehouse.sqlite3"
        sqlite3.connect(target).close()
        connection = (Connection.objects.filter(department=department, kind=ConnectionKind.SQLITE,
                                                name=f"{department.code} warehouse")
                      .first() or services.connection_create(actor=steward, department=department,
                                                             name=f"{department.code} warehouse",
                                                             kind=ConnectionKind.SQLITE, secret=str(target)))
        subscription = services.subscription_create(actor=steward, dataset=dataset, department=department,
                                                    connection=connection, target_table=table, schedule=schedule,
                                                    deliver_on_change=on_change)
        runs.run_enqueue(subscription=subscription, user=steward)
    stdout.write(f"  demo subscription: {department.code} ← {dataset.slug} into {target.name}:{table}"
                 f"{' (on change)' if on_change else ''}\n")
    return created + 1


def seed(*, stdout: TextIO) -> int:
    created = 0
    datasets = {d.slug: d for d in Dataset.objects.filter(
        slug__in=[s[0] for s in SOURCES], status=DatasetStatus.PUBLISHED, current_schema__isnull=False,
    ).select_related("department")}
    for slug, kind, n, schedule in SOURCES:
        if slug not in datasets:
            stdout.write(f"  demo data: no published dataset {slug!r}, skipped\n")
            continue
        created += _seed_source(datasets[slug], kind, n, schedule, stdout)
    for slug, code, table, schedule, on_change in SUBSCRIPTIONS:
        department = Department.objects.filter(code=code).first()
        if slug in datasets and department is not None and Source.objects.filter(dataset=datasets[slug]).exists():
            created += _seed_subscription(datasets[slug], department, table, schedule, on_change, stdout)
    created += _seed_data_requests(stdout)
    created += _seed_objections(stdout)
    return created


# Requested data, each taken through the real workflow to the state shown: (requester, title,
# description, purpose, fields, reviewer and department it is routed to, the steps after that,
# who joins with which purpose).
DATA_REQUESTS: list[dict[str, Any]] = [
    {"by": "hugo.analyst", "title": "Noise levels near schools",
     "description": "Day and night noise levels measured at or near every school, monthly.",
     "purpose": "Study of noise exposure and pupils' sleep.",
     "fields": [("school_id", "School register number."), ("noise_db_day", "Mean daytime level, dB(A)."),
                ("noise_db_night", "Mean night level, dB(A).")], "steps": []},
    {"by": "tom.analyst", "title": "Bicycle parking occupancy",
     "description": "How full each public bicycle rack is, by hour of the day.",
     "purpose": "Plan new racks near busy stops.",
     "fields": [("rack_id", "Rack identifier."), ("capacity", "Number of places."),
                ("occupied", "Places in use at the hour.")],
     "route": ("rita.reviewer", "environment"), "steps": [], "join": [("piet.analyst", "Zoning of new squares.")]},
    {"by": "eva.analyst", "title": "Bus stop accessibility",
     "description": "For each bus stop: step-free access, ramp, tactile paving.",
     "purpose": "Map barriers for people with reduced mobility.",
     "fields": [("stop_id", "Stop code."), ("step_free", "Step-free access."), ("ramp", "Ramp present.")],
     "route": ("raj.reviewer", "transport"), "steps": [("accept", "tina.steward")]},
    {"by": "sam.analyst", "title": "Hourly air pollution by station",
     "description": "NO2 and particulate matter per monitoring station, hourly.",
     "purpose": "Relate asthma admissions to pollution peaks.",
     "fields": [("station_id", "Station code."), ("measured_at", "Hour."), ("no2_ugm3", "Nitrogen dioxide."),
                ("pm10_ugm3", "PM10."), ("asthma_cases", "Admissions (not held by environment).")],
     "route": ("rita.reviewer", "environment"),
     "steps": [("accept", "emil.steward"), ("fulfil", "emil.steward")],
     "join": [("hugo.analyst", "Heat and pollution warning service.")]},
    {"by": "felix.analyst", "title": "Parking fines per street",
     "description": "Every parking fine with street, time and amount.",
     "purpose": "Forecast fine revenue.",
     "fields": [("street", "Street name."), ("issued_at", "When."), ("amount_eur", "Amount.")],
     "route": ("raj.reviewer", "transport"),
     "steps": [("decline", "tina.steward")]},
]


@transaction.atomic
def _seed_data_requests(stdout: TextIO) -> int:
    """Idempotent: a request whose title exists is left alone."""
    users = {u.username: u for u in User.objects.filter(is_active=True)}
    created = 0
    for spec in DATA_REQUESTS:
        named = {spec["by"], *(u for u, _ in spec.get("join", [])), *(u for _, u in spec["steps"])}
        if "route" in spec:
            named.add(spec["route"][0])
        fulfilled_by = Dataset.objects.filter(slug="air-quality", status=DatasetStatus.PUBLISHED,
                                              department__code="environment").first()
        if (DataRequest.objects.filter(title=spec["title"]).exists() or not named <= set(users)
                or (("fulfil", "emil.steward") in spec["steps"] and fulfilled_by is None)):
            continue
        data_request = demand_services.data_request_submit(
            actor=users[spec["by"]], title=spec["title"], description=spec["description"], purpose=spec["purpose"],
            fields=[demand_services.FieldWish(name=n, description=d) for n, d in spec["fields"]])
        for username, purpose in spec.get("join", []):
            demand_services.data_request_join(actor=users[username], data_request=data_request, purpose=purpose)
        if "route" in spec:
            reviewer, code = spec["route"]
            department = Department.objects.get(code=code)
            data_request = demand_services.data_request_route(actor=users[reviewer], data_request=data_request,
                                                              department=department)
        for step, username in spec["steps"]:
            actor = users[username]
            if step == "accept":
                data_request = demand_services.data_request_accept(actor=actor, data_request=data_request)
            elif step == "decline":
                data_request = demand_services.data_request_decline(
                    actor=actor, data_request=data_request, reason="Fines are kept by the court's system, not ours.")
            else:
                assert fulfilled_by is not None
                data_request = demand_services.data_request_fulfil(actor=actor, data_request=data_request,
                                                                   dataset=fulfilled_by)
        created += 1
        stdout.write(f"  requested data: {data_request.title} ({data_request.status})\n")
    return created


# Objections, each by an analyst of a department that receives the dataset through its
# subscription (above): (objector, dataset, kind, fields, comment, the answer if any).
OBJECTIONS: list[dict[str, Any]] = [
    {"by": "hugo.analyst", "dataset": "air-quality", "kind": "missing_record", "fields": ["no2_ugm3"],
     "comment": "No NO2 values for station AQ-03 on the night of 2 March between 01:00 and 04:00.",
     "answer": ("accept", "emil.steward", "The analyser was in maintenance; the hours are now filled from the "
                                          "mobile unit and marked as not validated.")},
    {"by": "tom.analyst", "dataset": "building-permits", "kind": "other", "fields": ["status", "decided_on"],
     "comment": "Several permits are approved but have no decision date."},
]


@transaction.atomic
def _seed_objections(stdout: TextIO) -> int:
    """Idempotent: an objection whose comment exists is left alone; one whose objector does not
    read the dataset (its subscription was not seeded) is skipped."""
    users = {u.username: u for u in User.objects.filter(is_active=True)}
    created = 0
    for spec in OBJECTIONS:
        dataset = Dataset.objects.filter(slug=spec["dataset"], status=DatasetStatus.PUBLISHED).first()
        objector = users.get(spec["by"])
        answer = spec.get("answer")
        if (dataset is None or objector is None or Objection.objects.filter(comment=spec["comment"]).exists()
                or (answer and answer[1] not in users)
                or not objection_services.may_object(user=objector, dataset=dataset)):
            continue
        objection = objection_services.objection_create(actor=objector, dataset=dataset, kind=spec["kind"],
                                                        comment=spec["comment"], fields=spec["fields"])
        if answer:
            step, username, text = answer
            if step == "accept":
                objection = objection_services.objection_accept(actor=users[username], objection=objection, note=text)
            else:
                objection = objection_services.objection_reject(actor=users[username], objection=objection,
                                                                reason=text)
        created += 1
        stdout.write(f"  objection: {spec['by']} on {dataset.slug} ({objection.status})\n")
    return created
