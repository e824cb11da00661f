"""Quality rules (``catalog.quality``) evaluated on every ingest, in SQL, one set-based
statement per rule.

Field rules run on the staging table once it is checked and free of repeated keys, over the
rows still good (``NOT _bad``): a *blocking* rule quarantines the rows that break it, each
with the rule named in its reason (and like any quarantined row, a row that carries a known
key is not taken for a deletion); a *warning* rule only counts them. Dataset rules (row count,
freshness) run on the store after the merge, inside the merge's transaction: a blocking one
that fails raises :class:`QualityRefused`, so the run fails with nothing changed. A full run
whose every row a blocking rule refused meets the empty-source guard of the merge like any
other. Each result says how many records were checked and how many failed; the run keeps them
with its score (``catalog.quality.score``) and the dataset its latest score and trend
(``catalog.DatasetQuality``).

A reference rule reads the key column of another dataset's store, which the owning
department must see in clear on every row (the owner's own datasets, or a grant without a row
filter); otherwise it is skipped with the reason, and nothing about the other dataset's
records is told.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from catalog.models import Dataset, DatasetQuality, DatasetStatus, Field, FieldType
from catalog.quality import rule_label, score
from exchange.access.models import AccessForm
from exchange.access.policy import effective_view
from exchange.audit.services import audit_record
from exchange.records.store import ident, is_postgres, store_exists, store_table
from exchange.sync.errors import SourceError
from exchange.sync.models import QuarantinedRow, Run

TREND_KEEP = 20


class QualityRefused(SourceError):
    """A blocking dataset rule failed: the run changes nothing."""


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def sqlite_regexp(pattern: str, value: Any) -> int | None:
    """SQLite's ``exchange_regexp(pattern, value)``: whether ``value`` has a match of
    ``pattern`` (NULL for a NULL value), as PostgreSQL's ``~`` answers."""
    if value is None or pattern is None:
        return None
    return 1 if _compiled(pattern).search(str(value)) else 0


def register_sqlite_functions(sender: Any, connection: Any, **kwargs: Any) -> None:
    if connection.vendor == "sqlite":
        connection.connection.create_function("exchange_regexp", 2, sqlite_regexp, deterministic=True)


def rules_of(dataset: Dataset) -> list[dict[str, Any]]:
    if dataset.current_schema_id is None:
        return []
    from catalog.models import SchemaVersion

    rules = SchemaVersion.objects.filter(pk=dataset.current_schema_id).values_list("rules", flat=True).first()
    return list(rules or [])


def _cast(field_type: str) -> str:
    if not is_postgres():
        return "%s"
    casts: dict[str, str] = {FieldType.INTEGER: "%s::bigint", FieldType.DECIMAL: "%s::numeric",
                             FieldType.DATE: "%s::date", FieldType.TIMESTAMP: "%s::timestamptz"}
    return casts.get(field_type, "%s")


def _comparable(col: str, field_type: str) -> str:
    """The column as SQLite compares it with a bound (PostgreSQL compares typed columns)."""
    if is_postgres():
        return col
    if field_type == FieldType.TIMESTAMP:
        return f"julianday({col})"
    if field_type == FieldType.DECIMAL:
        return f"CAST({col} AS REAL)"
    return col


def _bound_sql(field_type: str) -> str:
    if not is_postgres() and field_type == FieldType.TIMESTAMP:
        return "julianday(%s)"
    if not is_postgres() and field_type == FieldType.DECIMAL:
        return "CAST(%s AS REAL)"
    return _cast(field_type)


def _reference_table(run: Run, dataset: Dataset, rule: dict[str, Any]) -> tuple[str, str] | str:
    """(the referenced store table, its key column), or why the rule cannot be evaluated. The
    check reads the other dataset's keys, so it is audited as a read of that dataset's key field
    on the owning department's behalf (in the other department's trail)."""
    other = Dataset.objects.filter(slug=rule["dataset"]).select_related("department").first()
    if other is None or other.status not in (DatasetStatus.PUBLISHED, DatasetStatus.DEPRECATED) \
            or other.current_schema_id is None:
        return f"the dataset {rule['dataset']} is not published"
    keys = list(Field.objects.filter(schema_id=other.current_schema_id, is_key=True).order_by("position"))
    if len(keys) != 1:
        return f"the dataset {rule['dataset']} has no single key field"
    key = keys[0].name
    if other.department_id != dataset.department_id:
        view = effective_view(dataset=other, department=dataset.department)
        access = view.fields.get(key)
        if access is None or not view.all_rows or access.effective_forms != (AccessForm.CLEAR,) or not any(
                not r.row_filter for r in access.rules):
            return f"{dataset.department.name} may not read every key of {rule['dataset']} in clear"
    if not store_exists(other):
        return f"nothing has been ingested into {rule['dataset']} yet"
    audit_record(actor=None, actor_label="job:ingest", action="quality.reference_read", obj=other,
                 dataset_id=other.pk, department_id=other.department_id, fields=[key],
                 purpose=f"quality rule of {dataset.slug}" if other.department_id != dataset.department_id else "owner",
                 details={"run": run.pk, "for_dataset": dataset.pk, "for_department": dataset.department_id,
                          "rule": rule_label(rule)})
    return store_table(other).qualified, key


def _condition(run: Run, rule: dict[str, Any], plan: Any, stage: str, fields: dict[str, Field], *,
               incremental: bool, dataset: Dataset, made: list[str]) -> tuple[str, list[Any]] | str:
    """SQL true for a staged row (alias ``s``) that breaks the field rule, with its parameters;
    or why the rule cannot be evaluated."""
    field = fields[rule["field"]]
    col = f"s.{ident(field.name)}"
    check = rule["check"]
    if check == "not_null":
        return f"{col} IS NULL", []
    if check == "range":
        parts, params = [], []
        if rule.get("min") is not None:
            parts.append(f"{_comparable(col, field.type)} < {_bound_sql(field.type)}")
            params.append(rule["min"])
        if rule.get("max") is not None:
            parts.append(f"{_comparable(col, field.type)} > {_bound_sql(field.type)}")
            params.append(rule["max"])
        return "(" + " OR ".join(parts) + ")", params
    if check == "allowed":
        marks = ", ".join(_bound_sql(field.type) for _ in rule["values"])
        return f"({col} IS NOT NULL AND {_comparable(col, field.type)} NOT IN ({marks}))", list(rule["values"])
    if check == "pattern":
        if is_postgres():
            return f"({col} IS NOT NULL AND NOT ({col} ~ %s))", [rule["pattern"]]
        return f"({col} IS NOT NULL AND NOT exchange_regexp(%s, {col}))", [rule["pattern"]]
    if check == "max_length":
        return f"length({col}) > %s", [rule["max_length"]]
    if check == "unique":
        return _repeated_values(plan, stage, field, incremental=incremental, made=made)
    if check == "reference":
        found = _reference_table(run, dataset, rule)
        if isinstance(found, str):
            return found
        table, key = found
        return (f"({col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {table} AS r "  # noqa: S608
                f"WHERE r.{ident(key)} = {col} AND NOT r.{ident('_deleted')}))"), []
    raise ValueError(check)


def _repeated_values(plan: Any, stage: str, field: Field, *, incremental: bool,
                     made: list[str]) -> tuple[str, list[Any]]:
    """The condition of a unique rule: the value is one of those that repeat. They are found
    first, into a temporary table of their own (an aggregate, and on an incremental run a join
    with the records the run leaves alone, which keep their values), both of which the database
    may run on disk whatever their size; the per-row test is then a lookup in that table's index,
    and nothing at all when no value repeats (the usual case)."""
    name, bad = ident(field.name), ident("_bad")
    dups, index = ident(f"_quality_dups_{len(made)}"), ident(f"_quality_dups_{len(made)}_v")
    store, deleted = plan.table.qualified, ident("_deleted")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {dups}")
        cursor.execute(f"CREATE TEMPORARY TABLE {dups} AS SELECT {name} AS v FROM {stage} "  # noqa: S608
                       f"WHERE NOT {bad} AND {name} IS NOT NULL GROUP BY {name} HAVING count(*) > 1")
        if incremental:
            match = " AND ".join(f"k.{ident(k)} = t.{ident(k)}" for k in plan.key_fields)
            cursor.execute(
                f"INSERT INTO {dups} (v) SELECT DISTINCT st.{name} FROM {stage} AS st "  # noqa: S608
                f"JOIN {store} AS t ON t.{name} = st.{name} AND NOT t.{deleted} "
                f"WHERE NOT st.{bad} AND NOT EXISTS (SELECT 1 FROM {stage} AS k WHERE {match})")
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {dups})")  # noqa: S608
        if not cursor.fetchone()[0]:
            cursor.execute(f"DROP TABLE {dups}")
            return "(1 = 0)", []
        cursor.execute(f"CREATE INDEX {index} ON {dups} (v)")
        if is_postgres():
            cursor.execute(f"ANALYZE {dups}")
    made.append(dups)
    return f"EXISTS (SELECT 1 FROM {dups} AS d WHERE d.v = s.{name})", []  # noqa: S608


def _result(rule: dict[str, Any], *, scope: str, checked: int, failed: int, skipped: str = "",
            **extra: Any) -> dict[str, Any]:
    out = {"rule": rule_label(rule), "check": rule["check"], "field": rule.get("field", ""),
           "severity": rule["severity"], "scope": scope, "checked": checked, "failed": failed, **extra}
    if skipped:
        out["skipped"] = skipped
    return out


def check_staged(run: Run, plan: Any, stage: str, counts: Any, *, incremental: bool,
                 keep: int) -> list[dict[str, Any]]:
    """Evaluate the field rules on the staged rows still good; a blocking rule quarantines the
    rows that break it (``counts`` follows; the first ``keep`` quarantined rows of the run are
    kept to be seen). Returns each rule's result, in the rules' order.

    One scan counts the good rows and what each blocking rule refuses; only a rule that refuses
    some reads and marks them (in the rules' order, so a row two rules refuse counts for the
    first). One more scan counts what each warning rule finds among the rows left."""
    rules = [r for r in plan.rules if r["check"] not in ("row_count", "freshness")]
    if not rules:
        return []
    dataset = run.source.dataset if run.source is not None else Dataset.objects.get(pk=run.dataset_id)
    fields = {f.name: f for f in plan.fields}
    made: list[str] = []  # the temporary tables of unique rules, dropped at the end
    try:
        results = _check(run, plan, stage, counts, rules, fields, dataset, incremental=incremental, keep=keep,
                         made=made)
    finally:
        with connection.cursor() as cursor:
            for table in made:
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
    if any(r["severity"] == "blocking" and r["failed"] for r in results.values()):
        Run.objects.filter(pk=run.pk).update(rows_quarantined=counts.quarantined)
    return [results[i] for i in sorted(results)]


def _check(run: Run, plan: Any, stage: str, counts: Any, rules: list[dict[str, Any]], fields: dict[str, Field],
           dataset: Dataset, *, incremental: bool, keep: int, made: list[str]) -> dict[int, dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    blocking: list[tuple[int, dict[str, Any], str, list[Any]]] = []
    warning: list[tuple[int, dict[str, Any], str, list[Any]]] = []
    for i, rule in enumerate(rules):
        if rule["field"] not in fields:  # the rule outlived its field (a later schema): nothing to check
            results[i] = _result(rule, scope="field", checked=0, failed=0, skipped="no such field")
            continue
        condition = _condition(run, rule, plan, stage, fields, incremental=incremental, dataset=dataset,
                               made=made)
        if isinstance(condition, str):
            results[i] = _result(rule, scope="field", checked=0, failed=0, skipped=condition)
            continue
        (blocking if rule["severity"] == "blocking" else warning).append((i, rule, *condition))
    with connection.cursor() as cursor:
        # One scan for every rule; the warnings' counts stand unless a blocking rule refused rows.
        good, hits = _scan(cursor, stage, blocking + warning)
        for (i, rule, sql, params), hit in zip(blocking, hits[:len(blocking)], strict=True):
            room = keep - counts.quarantined
            failed = _quarantine(cursor, run, plan, stage, rule, sql, params, room=room) if hit else 0
            counts.quarantined += failed
            counts.staged -= failed
            results[i] = _result(rule, scope="field", checked=good, failed=failed)
        refused = sum(r["failed"] for r in results.values() if r["severity"] == "blocking")
        left, warned = good, hits[len(blocking):]
        if warning and refused:
            left, warned = _scan(cursor, stage, warning)
        left = good - refused if not warning else left
        for (i, rule, _, _), hit in zip(warning, warned, strict=True):
            results[i] = _result(rule, scope="field", checked=left, failed=hit)
    for r in results.values():
        if r.get("skipped"):
            r["checked"] = left
    return results


def _scan(cursor: Any, stage: str, conditions: list[tuple[int, dict[str, Any], str, list[Any]]]) -> tuple[int,
                                                                                                          list[int]]:
    """One scan of the rows still good: how many there are, and for how many each condition holds."""
    parts, params = ["count(*)"], []
    for _, _, sql, condition_params in conditions:
        parts.append(f"coalesce(sum(CASE WHEN {sql} THEN 1 ELSE 0 END), 0)")
        params.extend(condition_params)
    cursor.execute(f"SELECT {', '.join(parts)} FROM {stage} AS s WHERE NOT s.{ident('_bad')}",  # noqa: S608
                   params)
    row = cursor.fetchone()
    return int(row[0]), [int(v) for v in row[1:]]


def _quarantine(cursor: Any, run: Run, plan: Any, stage: str, rule: dict[str, Any], sql: str, params: list[Any], *,
                room: int) -> int:
    """Mark the good rows that break ``rule`` bad, keep the first ``room`` of them with the
    rule named as their reason; how many were marked."""
    bad, rn = ident("_bad"), ident("_rn")
    names = [f.name for f in plan.fields]
    where = f"NOT s.{bad} AND {sql}"
    cols = ", ".join(f"s.{ident(n)}" for n in names)
    cursor.execute(f"SELECT s.{rn}, {cols} FROM {stage} AS s WHERE {where} "  # noqa: S608
                   f"ORDER BY s.{rn} LIMIT %s", [*params, max(0, room)])
    reason = f"quality rule: {rule_label(rule)}"
    kept = [QuarantinedRow(run=run, row_number=row[0], raw=_as_json(names, row[1:]), reason=reason[:2000])
            for row in cursor.fetchall()]
    cursor.execute(f"UPDATE {stage} SET {bad} = {'true' if is_postgres() else '1'} "  # noqa: S608
                   f"WHERE {rn} IN (SELECT s.{rn} FROM {stage} AS s WHERE {where})", params)
    marked = int(cursor.rowcount)
    QuarantinedRow.objects.bulk_create(kept)
    return marked


def _as_json(names: list[str], values: Any) -> dict[str, Any]:
    return {n: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
            for n, v in zip(names, values, strict=True)}


def check_store(run: Run, plan: Any) -> list[dict[str, Any]]:
    """Evaluate the dataset rules on the store as the merge left it, in one scan. Precondition:
    inside the merge's transaction, so that :class:`QualityRefused` takes the merge back."""
    rules = [r for r in plan.rules if r["check"] in ("row_count", "freshness")]
    if not rules:
        return []
    fields = {f.name: f for f in plan.fields}
    newest = sorted({r["field"] for r in rules if r["check"] == "freshness" and r["field"] in fields})
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*){''.join(f', max({ident(n)})' for n in newest)} "  # noqa: S608
                       f"FROM {plan.table.qualified} WHERE NOT {ident('_deleted')}")
        row = cursor.fetchone()
    count, maxima = int(row[0]), dict(zip(newest, row[1:], strict=True))
    results = []
    for rule in rules:
        if rule["check"] == "row_count":
            failed = (rule.get("min") is not None and count < rule["min"]) or (
                rule.get("max") is not None and count > rule["max"])
            results.append(_result(rule, scope="dataset", checked=1, failed=int(failed), value=count))
            if failed and rule["severity"] == "blocking":
                raise QualityRefused(f"Quality rule {rule_label(rule)} failed: the dataset would hold {count} "
                                     f"records; nothing was changed.")
            continue
        field = fields.get(rule["field"])
        if field is None:
            results.append(_result(rule, scope="dataset", checked=0, failed=0, skipped="no such field"))
            continue
        latest = _as_time(maxima[field.name], field.type)
        failed = latest is None or latest < timezone.now() - timedelta(hours=float(rule["max_age_hours"]))
        results.append(_result(rule, scope="dataset", checked=1, failed=int(failed),
                               value=latest.isoformat() if latest else None))
        if failed and rule["severity"] == "blocking":
            raise QualityRefused(f"Quality rule {rule_label(rule)} failed: the newest {field.name} is "
                                 f"{latest.isoformat() if latest else 'missing'}; nothing was changed.")
    return results


def _as_time(value: Any, field_type: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value, UTC)
    if field_type == FieldType.DATE:
        day = value if not isinstance(value, str) else parse_date(value)
        return datetime.combine(day, datetime.max.time(), tzinfo=UTC) if day else None
    stamp = parse_datetime(str(value))
    if stamp is None:
        return None
    return stamp if timezone.is_aware(stamp) else timezone.make_aware(stamp, UTC)


def record(run: Run, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's quality fields, and the dataset's score and trend brought up to date.
    Precondition: inside the transaction that records the run's success."""
    if not results:
        return {}
    value = score(results)
    now = timezone.now()
    quality, _ = DatasetQuality.objects.select_for_update().get_or_create(dataset_id=run.dataset_id)
    trend = [*quality.trend, {"at": now.isoformat(), "score": value, "run": run.pk}][-TREND_KEEP:]
    DatasetQuality.objects.filter(pk=quality.pk).update(score=value, checked_at=now, run_id=run.pk,
                                                         results=results, trend=trend)
    return {"quality": results, "quality_score": value}
