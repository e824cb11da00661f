"""Quality rules: what a dataset's records must satisfy, kept with its schema version and
reviewed with it (``SchemaVersion.rules``).

A rule is a small dict. Per field (``field`` names one of the version's fields)::

    {"check": "not_null", "field": "fee"}
    {"check": "unique", "field": "permit_no"}
    {"check": "range", "field": "fee", "min": 0, "max": 10000}       (either bound may be left out)
    {"check": "allowed", "field": "district", "values": ["North", "South"]}
    {"check": "pattern", "field": "postcode", "pattern": "^[0-9]{5}$"}
    {"check": "max_length", "field": "note", "max_length": 500}
    {"check": "reference", "field": "stop_id", "dataset": "bus-stops"}  (a key of another dataset)

Per dataset::

    {"check": "row_count", "min": 100, "max": 1000000}
    {"check": "freshness", "field": "updated_at", "max_age_hours": 24}   (the newest value)

Each has a ``severity``: ``blocking`` (a record that breaks it is quarantined, with the rule
named; a dataset rule broken fails the run with nothing changed) or ``warning`` (the default:
failures are counted and shown). ``exchange.sync.quality`` evaluates them in SQL on every
ingest, one set-based statement per rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import DatabaseError, connection, transaction

from catalog.models import Field, FieldType

FIELD_CHECKS = ("not_null", "unique", "range", "allowed", "pattern", "max_length", "reference")
DATASET_CHECKS = ("row_count", "freshness")
SEVERITIES = ("blocking", "warning")
MAX_RULES = 50
MAX_VALUES = 200
MAX_PATTERN = 500

RANGE_TYPES = (FieldType.INTEGER, FieldType.DECIMAL, FieldType.DATE, FieldType.TIMESTAMP)
TEXT_LIKE = (FieldType.TEXT,)
ALLOWED_TYPES = (FieldType.TEXT, FieldType.INTEGER, FieldType.DECIMAL)
REFERENCE_TYPES = (FieldType.TEXT, FieldType.INTEGER)


def rule_label(rule: dict[str, Any]) -> str:
    """A short name of the rule, as quarantine reasons and run reports give it."""
    check = rule["check"]
    where = f"{rule['field']} " if rule.get("field") and check != "freshness" else ""
    detail = {
        "range": lambda: " ".join(p for p in (f">= {rule['min']}" if rule.get("min") is not None else "",
                                              f"<= {rule['max']}" if rule.get("max") is not None else "") if p),
        "allowed": lambda: "in " + ", ".join(str(v) for v in rule["values"][:5]) + (
            " …" if len(rule["values"]) > 5 else ""),
        "pattern": lambda: f"matches {rule['pattern']}",
        "max_length": lambda: f"at most {rule['max_length']} characters",
        "reference": lambda: f"a key of {rule['dataset']}",
        "row_count": lambda: " ".join(p for p in (f">= {rule['min']}" if rule.get("min") is not None else "",
                                                  f"<= {rule['max']}" if rule.get("max") is not None else "") if p),
        "freshness": lambda: f"newest {rule['field']} at most {rule['max_age_hours']} h old",
    }.get(check, lambda: "")()
    return f"{where}{check.replace('_', ' ')}{' ' + detail if detail else ''}"


def _number(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError from exc
    if not number.is_finite():
        raise ValueError
    return number


def _bound(value: Any, field_type: str) -> Any:
    """A range bound as the field's type holds it (JSON keeps it as written)."""
    if field_type == FieldType.INTEGER:
        number = _number(value)
        if number != number.to_integral_value():
            raise ValueError
        return int(number)
    if field_type == FieldType.DECIMAL:
        return str(_number(value))
    if field_type == FieldType.DATE:
        return date.fromisoformat(str(value)).isoformat()
    stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        raise ValueError
    return stamp.isoformat()


def validate_rules(rules: Any, fields: Sequence[Field], *,
                   find_dataset: Callable[[str], tuple[Any, list[Field]] | None]) -> tuple[list[dict[str, Any]],
                                                                                          dict[str, list[str]]]:
    """Check a rule list against the version's fields; returns the rules as stored (unknown
    keys dropped, bounds in the field's form) and the errors, keyed ``rules[i]`` (``rules``
    for the list). ``find_dataset(slug)`` gives a dataset the owner may know and its key
    fields, or None (which reads as "does not exist", whether it is missing or hidden)."""
    errors: dict[str, list[str]] = {}
    if rules in (None, ""):
        return [], errors
    if not isinstance(rules, list):
        return [], {"rules": ["A list of rules."]}
    if len(rules) > MAX_RULES:
        return [], {"rules": [f"At most {MAX_RULES} rules."]}
    by_name = {f.name: f for f in fields}
    cleaned: list[dict[str, Any]] = []
    for i, rule in enumerate(rules):
        key = f"rules[{i}]"

        def err(message: str, key: str = key) -> None:
            errors.setdefault(key, []).append(message)

        if not isinstance(rule, dict):
            err("A rule is an object with a check.")
            continue
        if "\\u0000" in json.dumps(rule, default=str):  # JSON writes NUL so; PostgreSQL's jsonb refuses it
            err("A rule may not contain the NUL character.")
            continue
        check = rule.get("check")
        if check not in FIELD_CHECKS + DATASET_CHECKS:
            err(f"Unknown check {check!r}; one of {', '.join(FIELD_CHECKS + DATASET_CHECKS)}.")
            continue
        severity = rule.get("severity", "warning")
        if severity not in SEVERITIES:
            err("The severity is blocking or warning.")
            continue
        out: dict[str, Any] = {"check": check, "severity": severity}
        field = None
        if check in FIELD_CHECKS or check == "freshness":
            name = rule.get("field")
            field = by_name.get(name) if isinstance(name, str) else None
            if field is None:
                err(f"Unknown field {name!r}.")
                continue
            out["field"] = field.name
        try:
            if check in ("range", "row_count"):
                if rule.get("min") is None and rule.get("max") is None:
                    err("Give min, max or both.")
                    continue
                kind = field.type if field is not None else FieldType.INTEGER
                if field is not None and kind not in RANGE_TYPES:
                    err(f"A range needs a number, date or timestamp field; {field.name} is {kind}.")
                    continue
                for end in ("min", "max"):
                    if rule.get(end) is not None:
                        out[end] = _bound(rule[end], kind)
                        if check == "row_count" and out[end] < 0:
                            raise ValueError
                low, high = out.get("min"), out.get("max")
                if low is not None and high is not None and (
                        _number(low) > _number(high) if kind in (FieldType.INTEGER, FieldType.DECIMAL) else low > high):
                    err("min is above max.")
                    continue
            elif check == "allowed":
                assert field is not None
                values = rule.get("values")
                if field.type not in ALLOWED_TYPES:
                    err(f"Allowed values need a text or number field; {field.name} is {field.type}.")
                    continue
                if not isinstance(values, list) or not values or len(values) > MAX_VALUES:
                    err(f"values: a list of 1 to {MAX_VALUES} values.")
                    continue
                if field.type == FieldType.TEXT:
                    if not all(isinstance(v, str) for v in values):
                        raise ValueError
                    out["values"] = list(dict.fromkeys(values))
                else:
                    out["values"] = list(dict.fromkeys(_bound(v, field.type) for v in values))
            elif check == "pattern":
                assert field is not None
                pattern = rule.get("pattern")
                if field.type not in TEXT_LIKE:
                    err(f"A pattern needs a text field; {field.name} is {field.type}.")
                    continue
                if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
                    err(f"pattern: a regular expression of 1 to {MAX_PATTERN} characters.")
                    continue
                re.compile(pattern)
                if not _database_reads(pattern):
                    err("PostgreSQL cannot read this regular expression; use classes, alternatives, "
                        "quantifiers and anchors.")
                    continue
                if re.search(r"\\[pPXRK]|\(\?[<P=!#]|\\[0-9]", pattern):
                    err("Use the regular expressions that PostgreSQL and SQLite read alike: classes, "
                        "alternatives, quantifiers, anchors; no back-references, look-behind or named groups.")
                    continue
                out["pattern"] = pattern
            elif check == "max_length":
                assert field is not None
                if field.type not in TEXT_LIKE:
                    err(f"A maximum length needs a text field; {field.name} is {field.type}.")
                    continue
                length = rule.get("max_length")
                if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 1_000_000:
                    err("max_length: a whole number from 1.")
                    continue
                out["max_length"] = length
            elif check == "reference":
                assert field is not None
                if field.type not in REFERENCE_TYPES:
                    err(f"A reference needs a text or integer field; {field.name} is {field.type}.")
                    continue
                slug = rule.get("dataset")
                found = find_dataset(slug) if isinstance(slug, str) and slug else None
                if found is None:
                    err(f"Unknown dataset {slug!r}.")
                    continue
                _, keys = found
                if len(keys) != 1:
                    err(f"The dataset {slug} has no single key field to refer to.")
                    continue
                if keys[0].type != field.type:
                    err(f"The key of {slug} ({keys[0].name}) is {keys[0].type}; {field.name} is {field.type}.")
                    continue
                out["dataset"] = slug
            elif check == "freshness":
                assert field is not None
                if field.type not in (FieldType.DATE, FieldType.TIMESTAMP):
                    err(f"Freshness needs a date or timestamp field; {field.name} is {field.type}.")
                    continue
                hours = rule.get("max_age_hours")
                if not isinstance(hours, (int, float)) or isinstance(hours, bool) or not 0 < hours <= 24 * 3660:
                    err("max_age_hours: a positive number of hours.")
                    continue
                out["max_age_hours"] = hours
        except (ValueError, TypeError, re.error):
            err("A value of this rule does not fit the field's type (or is not a valid pattern).")
            continue
        cleaned.append(out)
    if not errors:
        seen: set[str] = set()
        for i, rule in enumerate(cleaned):
            label = rule_label(rule)
            if label in seen:
                errors.setdefault(f"rules[{i}]", []).append("The same rule is given twice.")
            seen.add(label)
    return cleaned, errors


def _database_reads(pattern: str) -> bool:
    """Whether the database's own regular expressions take ``pattern`` (PostgreSQL's differ
    from Python's in places; SQLite's are Python's, registered by ``exchange.sync.quality``)."""
    if connection.vendor != "postgresql":
        return True
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT '' ~ %s", [pattern])
    except DatabaseError:
        return False
    return True


def score(results: Sequence[dict[str, Any]]) -> float | None:
    """The run's quality score, 0-100: the share of checks passed, each rule weighing the same
    (a field rule by the share of checked records that pass it, a dataset rule by pass or
    fail). None when no rule was evaluated."""
    parts = []
    for r in results:
        if r.get("skipped"):
            continue
        checked = r.get("checked") or 0
        if r["scope"] == "dataset":
            parts.append(0.0 if r["failed"] else 1.0)
        elif checked:
            parts.append(1 - r["failed"] / checked)
        else:
            parts.append(1.0)
    return round(100 * sum(parts) / len(parts), 1) if parts else None
