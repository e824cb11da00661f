"""Validating and converting source values to the field types of a dataset's schema.

Values arrive as text (files, URLs) or already typed (database sources); both end up as the
canonical Python value of the field type, or a :class:`BadValue` saying why not. Empty text
counts as a missing value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings

from catalog.models import FieldType


class BadValue(ValueError):
    pass


TRUE_TEXT = {"true", "t", "yes", "y", "1"}
FALSE_TEXT = {"false", "f", "no", "n", "0"}


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _integer(v: Any) -> int:
    if isinstance(v, bool):
        raise BadValue("a boolean is not an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, (float, Decimal)):
        if v != int(v):
            raise BadValue(f"{v!r} is not a whole number")
        return int(v)
    s = str(v).strip()
    try:
        return int(s)
    except ValueError:
        raise BadValue(f"{s!r} is not an integer") from None


def _decimal(v: Any) -> Decimal:
    if isinstance(v, bool):
        raise BadValue("a boolean is not a number")
    try:
        d = Decimal(str(v).strip()) if not isinstance(v, Decimal) else v
    except InvalidOperation:
        raise BadValue(f"{v!r} is not a number") from None
    if not d.is_finite():
        raise BadValue(f"{v!r} is not a finite number")
    return d


def _boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in TRUE_TEXT:
        return True
    if s in FALSE_TEXT:
        return False
    raise BadValue(f"{v!r} is not a boolean (true/false, yes/no, 1/0)")


def _date(v: Any) -> date:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    try:
        return date.fromisoformat(str(v).strip())
    except ValueError:
        raise BadValue(f"{v!r} is not a date (YYYY-MM-DD)") from None


def _timestamp(v: Any) -> datetime:
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, date):
        dt = datetime(v.year, v.month, v.day)
    else:
        try:
            dt = datetime.fromisoformat(str(v).strip())
        except ValueError:
            raise BadValue(f"{v!r} is not a timestamp (ISO 8601)") from None
    if dt.tzinfo is None:
        # A source without zone information speaks the city's local time.
        dt = dt.replace(tzinfo=ZoneInfo(settings.TIME_ZONE))
    return dt.astimezone(UTC)


def _geopoint(v: Any) -> str:
    s = str(v).strip().strip("()")
    try:
        lat_s, lon_s = s.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        raise BadValue(f"{v!r} is not a point (\"lat,lon\")") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadValue(f"{v!r} is outside WGS 84 latitude/longitude ranges")
    return f"{lat:g},{lon:g}"


def _json(v: Any) -> str:
    if isinstance(v, str):
        try:
            json.loads(v)
        except ValueError:
            raise BadValue("not valid JSON") from None
        return v
    return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    FieldType.TEXT: _text, FieldType.INTEGER: _integer, FieldType.DECIMAL: _decimal,
    FieldType.BOOLEAN: _boolean, FieldType.DATE: _date, FieldType.TIMESTAMP: _timestamp,
    FieldType.GEOPOINT: _geopoint, FieldType.JSON: _json,
}


def canonical(value: Any) -> str:
    """The text that enters the content hash; equal values give equal text."""
    if value is None:
        return "\x00"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


def content_hash(values: Sequence[Any]) -> str:
    return hashlib.blake2b("\x1f".join(canonical(v) for v in values).encode(), digest_size=16).hexdigest()


def for_sqlite(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


# Source column types (normalised) each field type accepts; anything else is a schema
# mismatch that fails the run before a row is written. ``None`` = type unknown, accepted.
SOURCE_KINDS: dict[str, set[str]] = {
    FieldType.TEXT: {"text", "integer", "decimal", "boolean", "date", "timestamp", "json", "other"},
    FieldType.INTEGER: {"integer"},
    FieldType.DECIMAL: {"integer", "decimal"},
    FieldType.BOOLEAN: {"boolean", "integer"},
    FieldType.DATE: {"date", "timestamp"},
    FieldType.TIMESTAMP: {"timestamp", "date"},
    FieldType.GEOPOINT: {"text", "other"},
    FieldType.JSON: {"json", "text"},
}

PG_KINDS = {
    "int2": "integer", "int4": "integer", "int8": "integer", "numeric": "decimal", "float4": "decimal",
    "float8": "decimal", "bool": "boolean", "date": "date", "timestamp": "timestamp", "timestamptz": "timestamp",
    "json": "json", "jsonb": "json", "text": "text", "varchar": "text", "bpchar": "text", "name": "text",
    "uuid": "text",
}


def local_timestamp_sql(value: Any, zone: str | None = None) -> Any:
    """SQL (a ``psycopg.sql`` composable) turning ``value``, a timestamp without time zone,
    into the instant :func:`_timestamp` makes of it: read in the city's zone, and an
    ambiguous wall time (the hour a clock goes back) read as its first occurrence, like
    Python's ``fold=0``. ``AT TIME ZONE`` alone takes the second one: ``e`` below is the
    instant with the offset in force a day earlier, taken when it reads back as ``value``."""
    from psycopg import sql

    z = sql.Literal(zone or settings.TIME_ZONE)
    a = sql.SQL("({} AT TIME ZONE {})").format(value, z)
    e = sql.SQL("(({v} - (({a} - interval '1 day') AT TIME ZONE {z} - ({a} - interval '1 day') AT TIME ZONE 'UTC'))"
                " AT TIME ZONE 'UTC')").format(v=value, a=a, z=z)
    return sql.SQL("(CASE WHEN {e} < {a} AND ({e} AT TIME ZONE {z}) = {v} THEN {e} ELSE {a} END)").format(
        e=e, a=a, z=z, v=value)


def sqlite_kind(declared: str) -> str | None:
    """SQLite's type affinity rules, applied to a declared column type."""
    d = declared.upper()
    if not d:
        return None
    if "INT" in d:
        return "integer"
    if any(t in d for t in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if any(t in d for t in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")):
        return "decimal"
    if "BOOL" in d:
        return "boolean"
    if "TIMESTAMP" in d or "DATETIME" in d:
        return "timestamp"
    if "DATE" in d:
        return "date"
    return None
