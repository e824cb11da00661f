"""Streaming readers of sources: a PostgreSQL or SQLite table or read-only query, an HTTP(S)
URL, an uploaded file. Each yields :class:`RawRow` one at a time, never the whole source.

Errors are sorted into two kinds the job treats differently: :class:`TransientSourceError`
(worth retrying: the source is unreachable or the connection dropped) and
:class:`SourceError` (fix something first: bad query, missing table, wrong encoding).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sqlparse
from django.conf import settings

from exchange.sync import limits, secrets
from exchange.sync.convert import PG_KINDS, local_timestamp_sql
from exchange.sync.errors import SourceError, TransientSourceError
from exchange.sync.models import Connection, ConnectionKind, FileFormat, Source


@dataclass
class RawRow:
    number: int  # 1-based record number, header excluded
    values: dict[str, Any]
    problem: str = ""


@dataclass
class Reader:
    columns: list[str]
    # normalised type of each column where the source declares it (databases), else absent
    kinds: dict[str, str] = field(default_factory=dict)
    estimate: int | None = None
    rows: Iterator[RawRow] = field(default_factory=lambda: iter(()))
    description: str = ""
    # PostgreSQL sources: the database's own type name of each column, and the rows as
    # COPY text (the selected columns, then the record number), for the bulk path; a
    # timestamp without time zone comes out as the instant it names in the city's zone.
    pg_types: dict[str, str] = field(default_factory=dict)
    selected: list[str] = field(default_factory=list)
    copy_out: Callable[[], Iterator[bytes]] | None = None
    # Column sets a unique constraint (or primary key) of the source table holds unique.
    unique_columns: list[frozenset[str]] = field(default_factory=list)
    # CSV sources: the records themselves (``rows`` is made of them), for the COPY path; an
    # ingest reads one or the other. An uploaded file can also be read by PostgreSQL's own CSV
    # parser (see :func:`plain_csv_chunks`).
    csv_records: Iterator[list[str] | RawRow] | None = None
    csv_file: Path | None = None
    csv_encoding: str = ""


def check_read_only_query(query: str) -> str:
    """A single SELECT or WITH statement, without a trailing semicolon, or SourceError."""
    statements = [s for s in sqlparse.parse(query) if s.value.strip().strip(";").strip()]
    if len(statements) != 1:
        raise SourceError("The query must be exactly one SELECT (or WITH … SELECT) statement.")
    statement = statements[0]
    first = statement.token_first(skip_cm=True, skip_ws=True)
    if first is None or first.normalized.upper() not in ("SELECT", "WITH") or statement.get_type() != "SELECT":
        raise SourceError("Only a read-only SELECT (or WITH … SELECT) query may be a source.")
    return str(statement).strip().rstrip(";").strip()


def sqlite_path(secret: str) -> Path:
    """The file a SQLite connection names, resolved, if it lies below SYNC_SQLITE_DIRS and is a
    regular file (or does not exist yet: a delivery creates its target). A FIFO or a device
    would hang or feed the worker; a ``..`` or a symbolic link could lead anywhere."""
    given = Path(secret.removeprefix("sqlite:///"))
    if ".." in given.parts:
        raise SourceError("A SQLite path may not contain '..': give the file's full path below one of the "
                          "directories configured in SYNC_SQLITE_DIRS.")
    path = given.resolve()
    allowed = [Path(d).resolve() for d in settings.SYNC_SQLITE_DIRS]
    if not any(path.is_relative_to(d) for d in allowed):
        if any(given.absolute().is_relative_to(d) for d in allowed):
            raise SourceError(f"{given.name} is a symbolic link to a file outside the directories configured in "
                              f"SYNC_SQLITE_DIRS.")
        raise SourceError("SQLite files must live in one of the directories configured in SYNC_SQLITE_DIRS.")
    if path.exists() and not path.is_file():
        raise SourceError(f"{given.name} is not a regular file (a directory, device or pipe); a SQLite "
                          f"connection names a database file.")
    return path


# --- PostgreSQL -----------------------------------------------------------------------------

def pg_connect(dsn: str, *, read_only: bool) -> Any:
    import psycopg

    from exchange.sync.sqlguard import session_options

    options = session_options(statement_timeout=settings.SYNC_SOURCE_STATEMENT_TIMEOUT_SECONDS) if read_only else None
    try:
        conn = psycopg.connect(dsn, connect_timeout=10, application_name="exchange-sync", options=options)
    except psycopg.OperationalError as exc:
        raise TransientSourceError(f"Cannot connect to the database: {_first_line(exc)}") from exc
    if read_only:
        conn.read_only = True
    return conn


def _timed_out(exc: BaseException) -> SourceError:
    # Not worth retrying: the same query would take as long again.
    return SourceError(f"The source query took longer than SYNC_SOURCE_STATEMENT_TIMEOUT_SECONDS "
                       f"({settings.SYNC_SOURCE_STATEMENT_TIMEOUT_SECONDS} s) and was stopped: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _pg_relation(source: Source) -> tuple[Any, list[Any]]:
    from psycopg import sql

    if source.query:
        # Never executed with parameters (values go in as sql.Literal), so a % stays a %.
        return sql.SQL("({}) AS q").format(sql.SQL(check_read_only_query(source.query))), []
    if not source.table:
        raise SourceError("The source names neither a table nor a query.")
    return sql.Identifier(*source.table.split(".", 1)), []


@contextmanager
def _pg_reader(source: Source, dsn: str, *, since: str | None, batch: int) -> Iterator[Reader]:
    import psycopg
    from psycopg import sql

    from exchange.sync.sqlguard import check_source

    conn = pg_connect(dsn, read_only=True)
    try:
        relation, _ = _pg_relation(source)
        # Again before every run: a function or a view may have been redefined since the save.
        check_source(conn, query=check_read_only_query(source.query) if source.query else "", table=source.table)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(relation))
                desc = cur.description or []
                columns = [d.name for d in desc]
                kinds, pg_types = {}, {}
                for d in desc:
                    info = conn.adapters.types.get(d.type_code)
                    pg_types[d.name] = info.name if info else ""
                    kinds[d.name] = PG_KINDS.get(pg_types[d.name], "other")
                estimate = None
                unique_columns: list[frozenset[str]] = []
                if source.table and not source.query:
                    # Whole-column unique indexes only: a partial or expression index proves nothing.
                    cur.execute(
                        "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a "
                        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indisvalid "
                        "AND i.indpred IS NULL AND i.indexprs IS NULL GROUP BY i.indexrelid",
                        [sql.Identifier(*source.table.split(".", 1)).as_string(conn)],
                    )
                    unique_columns = [frozenset(r[0]) for r in cur.fetchall()]
                    cur.execute(
                        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                        [sql.Identifier(*source.table.split(".", 1)).as_string(conn)],
                    )
                    got = cur.fetchone()
                    estimate = int(got[0]) if got and got[0] else None
        except psycopg.errors.UndefinedTable as exc:
            if source.query:
                raise SourceError(f"The source query failed: {_first_line(exc)}") from exc
            raise SourceError(f"The source table {source.table!r} does not exist (any more).") from exc
        except psycopg.errors.QueryCanceled as exc:
            raise _timed_out(exc) from exc
        except psycopg.OperationalError as exc:
            raise TransientSourceError(f"The source database went away: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise SourceError(f"The source query failed: {_first_line(exc)}") from exc

        wanted = [c for c in source.mapping if c in columns]
        if source.watermark_column and source.watermark_column in columns and source.watermark_column not in wanted:
            wanted.append(source.watermark_column)
        select = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, wanted)), relation)
        if since is not None and source.watermark_column:
            select += sql.SQL(" WHERE {} > {}").format(sql.Identifier(source.watermark_column), sql.Literal(since))

        def rows() -> Iterator[RawRow]:
            n = 0
            try:
                with conn.cursor(name="exchange_sync_read") as cur:
                    cur.itersize = batch
                    cur.execute(select)
                    for record in cur:
                        n += 1
                        yield RawRow(n, dict(zip(wanted, record, strict=True)))
            except psycopg.errors.QueryCanceled as exc:
                raise _timed_out(exc) from exc
            except psycopg.OperationalError as exc:
                raise TransientSourceError(f"The source database went away mid-run: {_first_line(exc)}") from exc
            except psycopg.Error as exc:
                raise SourceError(f"Reading the source failed: {_first_line(exc)}") from exc

        def copy_out() -> Iterator[bytes]:
            # A timestamp without time zone leaves as the instant the city's wall time names
            # (written with its offset, so the store reads it whatever its session's zone).
            selected = [local_timestamp_sql(sql.Identifier(c)) if pg_types.get(c) == "timestamp"
                        else sql.Identifier(c) for c in wanted]
            numbered = sql.SQL("SELECT {}, row_number() OVER () FROM {}").format(
                sql.SQL(", ").join(selected), relation)
            if since is not None and source.watermark_column:
                numbered += sql.SQL(" WHERE {} > {}").format(sql.Identifier(source.watermark_column),
                                                            sql.Literal(since))
            try:
                with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT").format(numbered)) as copy:
                    for chunk in copy:
                        yield bytes(chunk)
            except psycopg.errors.QueryCanceled as exc:
                raise _timed_out(exc) from exc
            except psycopg.OperationalError as exc:
                raise TransientSourceError(f"The source database went away mid-run: {_first_line(exc)}") from exc
            except psycopg.Error as exc:
                raise SourceError(f"Reading the source failed: {_first_line(exc)}") from exc

        yield Reader(columns=columns, kinds=kinds, estimate=estimate, rows=rows(),
                     description=source.table or "query", pg_types=pg_types, selected=wanted, copy_out=copy_out,
                     unique_columns=unique_columns)
    finally:
        conn.close()


# --- SQLite ---------------------------------------------------------------------------------

@contextmanager
def _sqlite_reader(source: Source, secret: str, *, since: str | None, batch: int) -> Iterator[Reader]:
    path = sqlite_path(secret)
    if not path.exists():
        raise SourceError(f"The SQLite file {path.name} does not exist.")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        q = lambda name: '"' + name.replace('"', '""') + '"'  # noqa: E731 - SQLite's own quoting
        relation = f"({check_read_only_query(source.query)})" if source.query else ".".join(
            q(p) for p in source.table.split(".", 1))
        try:
            cur = conn.execute(f"SELECT * FROM {relation} LIMIT 0")  # noqa: S608 - quoted identifiers
        except sqlite3.Error as exc:
            raise SourceError(f"The source cannot be read: {exc}") from exc
        columns = [d[0] for d in cur.description]
        wanted = [c for c in source.mapping if c in columns]
        if source.watermark_column and source.watermark_column in columns and source.watermark_column not in wanted:
            wanted.append(source.watermark_column)
        select = f"SELECT {', '.join(q(c) for c in wanted)} FROM {relation}"  # noqa: S608
        params: list[Any] = []
        if since is not None and source.watermark_column:
            select += f" WHERE {q(source.watermark_column)} > ?"
            params.append(since)

        def rows() -> Iterator[RawRow]:
            n = 0
            try:
                cur = conn.execute(select, params)
                while chunk := cur.fetchmany(batch):
                    for record in chunk:
                        n += 1
                        yield RawRow(n, dict(zip(wanted, record, strict=True)))
            except sqlite3.Error as exc:
                raise SourceError(f"Reading the source failed: {exc}") from exc

        # SQLite declares types loosely (dates are text); values are checked one by one.
        yield Reader(columns=columns, rows=rows(), description=source.table or "query")
    finally:
        conn.close()


# --- Files and URLs -------------------------------------------------------------------------

_ENCODING_HINT = ("Is the file in another encoding (e.g. Windows-1252 / Latin-1)? Re-export it as UTF-8, "
                  "or set the source's encoding.")


_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _undecodable(values: list[str]) -> bool:
    joined = "".join(values)
    return not joined.isascii() and _UNDECODABLE.search(joined) is not None


def _csv_records(stream: IO[bytes], encoding: str) -> tuple[list[str], Iterator[list[str] | RawRow]]:
    """The header and the records of a CSV file: each record either as its list of values
    (as many as the header has, all decodable) or as a RawRow saying what is wrong with it.
    Every item is the next record: the n-th item is record number n (blank lines skipped)."""
    enc = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    # surrogateescape keeps undecodable bytes visible per row, so one bad row is quarantined
    # with its number instead of the whole file failing at an unknown place.
    text = io.TextIOWrapper(stream, encoding=enc, errors="surrogateescape", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        raise SourceError("The file is empty: no header row.") from None
    except csv.Error as exc:
        raise SourceError(f"The header row cannot be parsed as CSV: {exc}") from exc
    if _undecodable(header):
        raise SourceError(f"The header row is not valid {encoding}. {_ENCODING_HINT}")
    header = [h.strip() for h in header]
    width = len(header)

    def records() -> Iterator[list[str] | RawRow]:
        n = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                n += 1
                yield RawRow(n, {}, f"cannot be parsed as CSV: {exc}")
                continue
            if not record:
                continue  # blank line
            n += 1
            if _undecodable(record):
                raw = dict(zip(header, record, strict=False))
                yield RawRow(n, {k: v.encode("utf-8", "surrogateescape").decode("latin-1") for k, v in raw.items()},
                             f"not valid {encoding}. {_ENCODING_HINT}")
            elif len(record) != width:
                raw = dict(zip(header, record, strict=False))
                yield RawRow(n, raw | {"_extra": record[width:]} if len(record) > width else raw,
                             f"ragged row: {len(record)} values, the header has {width}")
            else:
                yield record

    return header, records()


def _csv_rows(header: list[str], records: Iterator[list[str] | RawRow]) -> Iterator[RawRow]:
    for n, record in enumerate(records, start=1):
        yield record if isinstance(record, RawRow) else RawRow(n, dict(zip(header, record, strict=True)))


def _ndjson_rows(stream: IO[bytes], encoding: str) -> Iterator[RawRow]:
    n = 0
    for line in stream:
        if not line.strip():
            continue
        n += 1
        try:
            obj = json.loads(line.decode(encoding))
        except UnicodeDecodeError:
            yield RawRow(n, {"line": line.decode("latin-1")[:2000]}, f"not valid {encoding}. {_ENCODING_HINT}")
            continue
        except ValueError as exc:
            yield RawRow(n, {"line": line.decode(encoding, "replace")[:2000]}, f"not valid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield RawRow(n, {"value": obj}, "not a JSON object")
            continue
        yield RawRow(n, obj)


def _json_rows(stream: IO[bytes], encoding: str) -> Iterator[RawRow]:
    """The objects of a JSON array (or of the first array an object holds), parsed as a stream
    with ijson: one record at a time in memory, whatever the size of the document. Malformed
    JSON anywhere, even after the last record, fails the run (nothing has been merged yet)."""
    import ijson

    events = ijson.basic_parse(_as_utf8(stream, encoding), use_float=True)
    n = 0

    def step() -> tuple[str, Any]:
        try:
            return next(events)
        except StopIteration:
            raise SourceError("The JSON document ends too early.") from None

    try:
        event, _ = step()
        if event == "start_map":
            while True:  # the first member whose value is an array holds the records
                event, _ = step()
                if event == "end_map":
                    raise SourceError("The JSON document must be an array of objects (or an object holding one).")
                event, value = step()
                if event == "start_array":
                    break
                _build(events, event, value)
        elif event != "start_array":
            raise SourceError("The JSON document must be an array of objects (or an object holding one).")
        while True:
            event, value = step()
            if event == "end_array":
                break
            n += 1
            obj = _build(events, event, value)
            yield RawRow(n, obj) if isinstance(obj, dict) else RawRow(n, {"value": obj}, "not a JSON object")
        for _ in events:  # the rest must be well-formed too
            pass
    except ijson.JSONError as exc:
        where = f"after record {n}" if n else "before the first record"
        raise SourceError(f"The file is not valid JSON {where} ({exc}).") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"The file is not valid {encoding} after record {n}. {_ENCODING_HINT}") from exc


def _build(events: Iterator[tuple[str, Any]], event: str, value: Any) -> Any:
    """The value that starts with (event, value), read to its end from ``events``."""
    import ijson

    if event not in ("start_map", "start_array"):
        return value
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    depth = 1
    for event, value in events:
        builder.event(event, value)
        depth += 1 if event in ("start_map", "start_array") else -1 if event in ("end_map", "end_array") else 0
        if depth == 0:
            return builder.value
    raise SourceError("The JSON document ends too early.")


class _Utf8(io.RawIOBase):
    """A byte stream in another encoding, re-encoded as UTF-8 (what ijson parses) on the fly."""

    def __init__(self, stream: IO[bytes], encoding: str) -> None:
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._stream.read(64 * 1024)
            self._pending = memoryview(self._decoder.decode(chunk, final=not chunk).encode("utf-8"))
            if not chunk:
                break
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _as_utf8(stream: IO[bytes], encoding: str) -> IO[bytes]:
    """UTF-8 bytes without a byte order mark, as ijson wants them."""
    return io.BufferedReader(_Utf8(stream, "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding))


def _peek_columns(rows: Iterator[RawRow]) -> tuple[list[str], Iterator[RawRow]]:
    first = next(rows, None)
    if first is None:
        return [], iter(())

    def chained() -> Iterator[RawRow]:
        yield first
        yield from rows

    return ([] if first.problem else list(first.values)), chained()


@contextmanager
def _stream_reader(source: Source, stream: IO[bytes], *, size: int | None, description: str) -> Iterator[Reader]:
    fmt = source.file_format
    if fmt == FileFormat.CSV:
        header, records = _csv_records(stream, source.encoding or "utf-8")
        estimate = None
        if size:
            estimate = max(1, size // 100)  # refined as rows arrive; only for the progress bar
        yield Reader(columns=header, rows=_csv_rows(header, records), estimate=estimate, description=description,
                     csv_records=records)
        return
    raw_rows = (_ndjson_rows if fmt == FileFormat.NDJSON else _json_rows)(stream, source.encoding or "utf-8")
    columns, rows = _peek_columns(raw_rows)
    yield Reader(columns=columns or list(source.mapping), rows=rows, description=description)


@contextmanager
def _file_reader(source: Source) -> Iterator[Reader]:
    path = Path(settings.MEDIA_ROOT) / source.upload
    if not source.upload or not path.is_file():
        raise SourceError("No file has been uploaded for this source.")
    with path.open("rb") as stream, _stream_reader(source, limits.line_limited(stream, file_format=source.file_format),
                                                   size=path.stat().st_size, description=path.name) as reader:
        limits.check_columns(reader.columns)
        if reader.csv_records is not None:
            # PostgreSQL may read the file itself (plain_csv_chunks, under the same line limit)
            reader.csv_file, reader.csv_encoding = path, source.encoding or "utf-8"
        yield reader


# --- CSV files as PostgreSQL parses them ------------------------------------------------------
# PostgreSQL's CSV parser reads a file much faster than Python's csv module, and reads it the
# same way as long as the file is *plain*: every quote opens a field right after a comma or a
# line break and closes it right before one, no blank line (Python skips it, PostgreSQL
# refuses it), no line that is only ``\.`` (PostgreSQL's end-of-data mark), no NUL byte, and an
# encoding both decode alike. Anything else PostgreSQL would parse differently it refuses
# outright (a ragged row, an unterminated quote, bytes not valid in the encoding, mixed line
# ends), and the caller reads the file with Python instead.

class NotPlainCSV(Exception):
    """The file may parse differently in PostgreSQL: read it with Python's csv module."""


# Python codec name -> PostgreSQL encoding, for encodings both decode byte for byte alike.
PG_CSV_ENCODINGS = {"utf-8": "UTF8", "iso8859-1": "LATIN1"}
# A quoted field: opened right after a comma or line break (or at the start), closed right
# before one (or at the end), with quotes inside doubled. Starts with the quote, so that the
# search skips to quotes.
_QUOTED_FIELD = re.compile(rb'"(?<![^,\r\n]")[^"]*(?:""[^"]*)*"(?=[,\r\n]|$)')
# A line that is only "\." (the lookbehind, after the literal for a fast search: at the start
# or after a line feed).
_END_MARK = re.compile(rb"\\\.(?<![^\n]\\\.)\r?(?:\n|$)")
_CHUNK = 8 << 20


def pg_csv_encoding(encoding: str) -> str:
    """PostgreSQL's name of ``encoding``; NotPlainCSV if the two may decode it differently."""
    try:
        return PG_CSV_ENCODINGS[codecs.lookup(encoding).name]
    except (KeyError, LookupError):
        raise NotPlainCSV(f"encoding {encoding}") from None


def _check_plain(chunk: bytes, *, first: bool) -> bytes:
    # A carriage return is rare, and looked for by memchr: only then the searches for pairs.
    if b"\x00" in chunk or b"\n\n" in chunk or (b"\r" in chunk and (b"\n\r\n" in chunk or b"\r\r" in chunk)) \
            or (not first and chunk[:1] in (b"\n", b"\r")) or _END_MARK.search(chunk):
        raise NotPlainCSV("a blank line, a NUL byte or an end-of-data mark")
    if b'"' in chunk and b'"' in _QUOTED_FIELD.sub(b"", chunk):
        raise NotPlainCSV("a quote inside a field")
    return chunk


def plain_csv_chunks(path: Path, *, size: int = _CHUNK) -> Iterator[bytes]:
    """The bytes of a plain CSV file (header included) in chunks of whole records, each
    checked before it is handed out; raises NotPlainCSV at the first that is not plain."""
    line = 1  # the first line of the next chunk, for the line limit (as limits.LineLimited counts)
    with path.open("rb") as f:
        carry = b""
        first = True
        while True:
            data = f.read(size)
            buffer = carry + data
            if not data:
                rest = buffer.rstrip(b"\r\n")  # blank lines at the end, which Python skips
                if rest:
                    _within_line_limit(rest, line)
                    yield _check_plain(rest, first=first)
                return
            # The last line break that ends a record (one with an even number of quotes before
            # it) and has more than line breaks after it: blank lines at the very end are
            # skipped, as Python skips them.
            cut = len(buffer.rstrip(b"\r\n"))
            while (cut := buffer.rfind(b"\n", 0, cut)) >= 0 and buffer.count(b'"', 0, cut) % 2:
                pass
            if cut < 0:
                if len(buffer) - (buffer.rfind(b"\n") + 1) > settings.SYNC_MAX_LINE_BYTES:
                    _within_line_limit(buffer, line)
                if len(buffer) > 8 * size:
                    raise NotPlainCSV("no line break that ends a record")
                carry = buffer
                continue
            line = _within_line_limit(buffer[:cut + 1], line)
            yield _check_plain(buffer[:cut + 1], first=first)
            first = False
            carry = buffer[cut + 1:]


def _within_line_limit(chunk: bytes, first_line: int) -> int:
    """The line number after ``chunk``; SourceError (as the Python path's limits.LineLimited
    raises it) if one of its lines is longer than SYNC_MAX_LINE_BYTES."""
    limit = settings.SYNC_MAX_LINE_BYTES
    if not _lines_within(chunk, limit):
        lines = chunk.split(b"\n")
        number = first_line + next(i for i, text in enumerate(lines) if len(text) > limit)
        raise SourceError(f"Line {number} of the file is longer than {limit} bytes (SYNC_MAX_LINE_BYTES); "
                          f"nothing was loaded. Is it a CSV or NDJSON file at all?")
    return first_line + chunk.count(b"\n")


def _lines_within(chunk: bytes, limit: int) -> bool:
    """Whether no line of ``chunk`` (line feeds not counted) is longer than ``limit`` bytes.
    A step per ``limit`` bytes rather than one per line: from the start of a line, the last
    line feed within ``limit`` bytes after it starts the next line to look at; none there
    means the line is too long."""
    start = 0
    while len(chunk) - start > limit:
        feed = chunk.rfind(b"\n", start, start + limit + 1)
        if feed < 0:
            return False
        start = feed + 1
    return True


def _url_open(url: str, *, method: str = "GET") -> Any:
    """Open ``url`` through the SSRF guard: an HTTP error or an unreachable host is a
    SourceError (transient for 5xx, 429 and no answer)."""
    from exchange.sync import urlguard

    try:
        return urlguard.urlopen(url, method=method, timeout=settings.SYNC_HTTP_TIMEOUT)
    except urllib.error.HTTPError as exc:
        error = f"The URL answered {exc.code} {exc.reason}."
        raise (TransientSourceError(error) if exc.code >= 500 or exc.code == 429 else SourceError(error)) from exc
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        raise TransientSourceError(f"The URL cannot be reached: {getattr(exc, 'reason', exc)}") from exc


@contextmanager
def _url_reader(source: Source, url: str) -> Iterator[Reader]:
    response = _url_open(url)
    with response:
        length = response.headers.get("Content-Length")
        stream = limits.line_limited(io.BufferedReader(_GuardedStream(response)), file_format=source.file_format)
        with _stream_reader(source, stream, size=int(length) if length else None,
                            description=secrets.redact(url)) as reader:
            limits.check_columns(reader.columns)
            yield reader


class _GuardedStream(io.RawIOBase):
    """Turns a connection dropped mid-download into a TransientSourceError."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            # read1: what has arrived, so rows flow (and progress shows) as the file trickles in
            data = self._response.read1(len(buffer))
        except (OSError, ValueError) as exc:  # http.client.IncompleteRead is an HTTPException
            raise TransientSourceError(f"The download broke off mid-file: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - IncompleteRead and friends
            raise TransientSourceError(f"The download broke off mid-file: {exc}") from exc
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def open_source(source: Source, *, since: str | None = None, batch: int | None = None) -> Iterator[Reader]:
    """Open ``source`` for reading; with ``since``, only rows whose watermark is above it."""
    batch = batch or settings.SYNC_BATCH_SIZE
    connection: Connection | None = source.connection
    if connection is None:
        with _file_reader(source) as reader:
            yield reader
        return
    secret = secrets.decrypt(connection.secret_encrypted)
    if connection.kind == ConnectionKind.POSTGRESQL:
        with _pg_reader(source, secret, since=since, batch=batch) as reader:
            yield reader
    elif connection.kind == ConnectionKind.SQLITE:
        with _sqlite_reader(source, secret, since=since, batch=batch) as reader:
            yield reader
    else:
        with _url_reader(source, secret) as reader:
            yield reader


def test_connection(connection: Connection) -> str:
    """Try the connection; return what was found, or raise SourceError with a useful message."""
    secret = secrets.decrypt(connection.secret_encrypted)
    if connection.kind == ConnectionKind.POSTGRESQL:
        conn = pg_connect(secret, read_only=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_database(), current_user, version()")
                db, user, version = cur.fetchone()  # type: ignore[misc]
            return f"Connected to database {db} as {user} ({version.split(',')[0]})."
        finally:
            conn.close()
    if connection.kind == ConnectionKind.SQLITE:
        path = sqlite_path(secret)
        if not path.exists():
            raise SourceError(f"The SQLite file {path.name} does not exist.")
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn2:
                tables = conn2.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        except sqlite3.Error as exc:
            raise SourceError(f"Not a readable SQLite database: {exc}") from exc
        return f"Opened {path.name}: {tables} tables."
    from exchange.sync import urlguard

    try:
        with urlguard.urlopen(secret, method="HEAD", timeout=settings.SYNC_HTTP_TIMEOUT) as response:
            return f"The URL answered {response.status} ({response.headers.get('Content-Type', 'no content type')})."
    except urllib.error.HTTPError as exc:
        raise SourceError(f"The URL answered {exc.code} {exc.reason}.") from exc
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        raise TransientSourceError(f"The URL cannot be reached: {getattr(exc, 'reason', exc)}") from exc


def source_signature(source: Source) -> str:
    """A short answer that moves when the source's data does, found without reading the data:
    the watermark column's maximum for a database source that has one (read from its index, as
    a rule), the file's size and modification time for a SQLite file without one, the
    validators (ETag, Last-Modified, length) of a URL. A PostgreSQL table without a watermark is
    watched through the server's own statistics of the table (rows inserted, updated and deleted,
    and its storage, which TRUNCATE replaces), a query or a view without one by its row count
    and a checksum of its rows (which reads them on the source's side, so such a watch suits a
    small result or a longer interval). Raises SourceError when the source cannot be watched so,
    or cannot be reached (TransientSourceError)."""
    connection: Connection | None = source.connection
    if connection is None:
        raise SourceError("An uploaded file is not watched: each upload is ingested when it arrives.")
    secret = secrets.decrypt(connection.secret_encrypted)
    if connection.kind == ConnectionKind.POSTGRESQL:
        return _pg_signature(source, secret)
    if connection.kind == ConnectionKind.SQLITE:
        return _sqlite_signature(source, secret)
    return _url_signature(secret)


def _pg_signature(source: Source, dsn: str) -> str:
    import psycopg
    from psycopg import sql

    from exchange.sync.sqlguard import check_source

    relation, _ = _pg_relation(source)
    conn = pg_connect(dsn, read_only=True)
    try:
        if source.watermark_column:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT max({})::text FROM {}").format(sql.Identifier(source.watermark_column),
                                                                         relation))
                row = cur.fetchone()
            return f"max:{row[0] if row else None}"
        if source.table:
            with conn.cursor() as cur:
                # A change counts in these once its transaction ends (within a second, as the
                # server reports them); a TRUNCATE gives the table new storage.
                cur.execute(
                    "SELECT c.relkind, pg_relation_filenode(c.oid), s.n_tup_ins, s.n_tup_upd, s.n_tup_del "
                    "FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid "
                    "WHERE c.oid = to_regclass(%s)", [relation.as_string(conn)])
                stats = cur.fetchone()
            if stats is None:
                raise SourceError(f"The table {source.table} does not exist at the source.")
            if stats[0] == "r" and stats[2] is not None:  # a plain table (a partitioned one counts in its parts)
                return "stats:" + ",".join(str(v) for v in stats[1:])
        # A query, or a view: what it returns, counted and summed up on the source's side.
        check_source(conn, query=check_read_only_query(source.query) if source.query else "", table=source.table)
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(r::text, 0)), 0) FROM {} AS r")
                        .format(relation if source.table else sql.SQL("(SELECT * FROM {})").format(relation)))
            row = cur.fetchone()
        return f"rows:{row[0]}:{row[1]}" if row else "rows:"
    except psycopg.errors.QueryCanceled as exc:
        raise _timed_out(exc) from exc
    except psycopg.OperationalError as exc:
        raise TransientSourceError(f"The source went away: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise SourceError(f"The source cannot be read: {_first_line(exc)}") from exc
    finally:
        conn.close()


def _sqlite_signature(source: Source, secret: str) -> str:
    path = sqlite_path(secret)
    if not path.exists():
        raise SourceError(f"The SQLite file {path.name} does not exist.")
    if not source.watermark_column:
        # Any write changes the file (and the write-ahead log beside it, until a checkpoint).
        parts = [path, path.with_name(path.name + "-wal")]
        return "file:" + ";".join(f"{p.stat().st_size}@{p.stat().st_mtime_ns}" for p in parts if p.exists())
    q = lambda name: '"' + name.replace('"', '""') + '"'  # noqa: E731 - SQLite's own quoting
    relation = f"({check_read_only_query(source.query)})" if source.query else ".".join(
        q(p) for p in source.table.split(".", 1))
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(f"SELECT max({q(source.watermark_column)}) FROM {relation}").fetchone()  # noqa: S608
    except sqlite3.Error as exc:
        raise SourceError(f"The source cannot be read: {exc}") from exc
    finally:
        conn.close()
    return f"max:{row[0] if row else None}"


def _url_signature(url: str) -> str:
    with _url_open(url, method="HEAD") as response:
        headers = response.headers
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    if not etag and not modified:
        raise SourceError("The URL's server sends neither ETag nor Last-Modified, so a change cannot be seen "
                          "without downloading it; use a schedule instead.")
    return f"http:{etag or ''}|{modified or ''}|{headers.get('Content-Length', '')}"
