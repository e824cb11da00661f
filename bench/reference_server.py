"""The baseline of ``python -m bench http``: the least an HTTP server can do to answer a
records page. Standard library ``http.server`` (threads, keep-alive) and psycopg, one
connection per thread; the page is one ``json_agg`` statement whose text is sent as it comes,
with no authentication, policy, masking or audit.

``GET /page?after=K&columns=a,b,c&size=1000`` answers ``{"results": [...]}``: the rows with key
above K in key order. Column names come from the table's own columns (anything else is
refused) and are quoted with ``psycopg.sql.Identifier``.

Run: ``python -m bench.reference_server --dsn postgres://… --table exchange_store.ds_1 --key id
--port 8765`` (loopback only).
"""

from __future__ import annotations

import argparse
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql


def serve(dsn: str, schema: str, table: str, key: str, port: int) -> None:
    local = threading.local()
    with psycopg.connect(dsn) as conn:
        known = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            [schema, table])}
    target = sql.Identifier(schema, table)
    statements: dict[tuple[str, ...], sql.Composed] = {}

    def statement(columns: tuple[str, ...]) -> sql.Composed:
        if columns not in statements:
            statements[columns] = sql.SQL(
                "SELECT COALESCE(json_agg(t), '[]')::text FROM (SELECT {cols} FROM {table} "
                "WHERE _deleted = false AND {key} > %s ORDER BY {key} LIMIT %s) AS t"
            ).format(cols=sql.SQL(", ").join(map(sql.Identifier, columns)), table=target, key=sql.Identifier(key))
        return statements[columns]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            columns = tuple(query.get("columns", [""])[0].split(","))
            if url.path != "/page" or not set(columns) <= known:
                self.send_error(404)
                return
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = psycopg.connect(dsn, autocommit=True)
            after, size = int(query.get("after", ["0"])[0]), int(query.get("size", ["1000"])[0])
            row = conn.execute(statement(columns), [after, size]).fetchone()
            assert row is not None  # an aggregate always answers one row
            body = b'{"results":' + row[0].encode() + b"}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the interface's name
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True, help="schema.table")
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    schema, table = args.table.split(".", 1)
    serve(args.dsn, schema, table, args.key, args.port)


if __name__ == "__main__":
    main()
