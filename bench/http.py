"""Benchmark of the records API over HTTP against a minimal server that answers the same pages.

In a scratch database ``<configured name>_bench_http``, a dataset of ``--rows`` rows and 21
fields is made through the project's services (created, schema set, submitted, approved by a
reviewer; published, so the store table exists) and filled with ``INSERT … SELECT``; an analyst
of another department asks for 5 fields, a steward of the owner approves them (the 2 personal
ones masked) and a data protection officer approves the grant. Then, on loopback:

- the project under gunicorn (``DEBUG=0``, 2 workers, the production settings), with a token
  per user;
- ``bench/reference_server.py``: stdlib ``http.server`` and psycopg, ``json_agg`` in SQL, no
  authentication, policy or audit;
- the stack's floor (``bench/floor.py``): the same statement answered by one DRF view under
  gunicorn with the project's settings, middleware and token authentication, but no rate
  limits, policy, masking, cursor or audit: the most the records API could reach here.

Each case runs 1 and 4 concurrent keep-alive clients for ``--seconds`` each, every request a
1,000-row page from a random key (the API through a signed cursor at that key, the reference
through ``after=``), and prints rows/s, p50 and p99 and the ratio to the reference over the
same columns at the same concurrency. A line's seconds are split into ``--rounds`` rounds in
which the reference, the floor and the API take turns, so that a slow spell of the machine
(a neighbour on the same host) falls on all three rather than on whichever ran then:

- analyst: the 5 granted fields (2 masked) vs the reference over the same 5 columns, unmasked
- steward: all 21 fields (the owner's view) vs the reference over the 21 columns

each with the floor over the same columns just before the API, and the largest RSS of a
gunicorn worker seen while the API was under load.

Run: ``DATABASE_URL=postgres://… python -m bench http [-- --rows N --seconds S --rounds R]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

SECRET_KEY = secrets.token_urlsafe(50)
os.environ["SECRET_KEY"] = SECRET_KEY  # the bench signs cursors with the key gunicorn checks them with

from bench.setup import run_on_postgres  # noqa: E402

ANALYST_FIELDS = {"id": "clear", "t1": "masked", "t2": "masked", "n1": "clear", "d1": "clear"}
PAGE = 1000


def _specs() -> list[tuple[str, str, bool]]:
    return [("id", "integer", True)] + [(f"t{i}", "text", False) for i in range(1, 8)] + [
        (f"n{i}", "integer", False) for i in range(1, 6)] + [(f"d{i}", "decimal", False) for i in range(1, 4)] + [
        ("day", "date", False), ("at", "timestamp", False), ("flag", "boolean", False), ("note", "text", False),
        ("code", "text", False)]


def build(rows: int) -> dict[str, Any]:
    """The dataset, its rows and the grant, through the project's services."""
    import datetime as dt

    from django.contrib.auth.models import User
    from django.db import connection
    from django.utils import timezone

    from catalog import services as catalog_services
    from departments import services
    from exchange.access import services as access_services
    from exchange.access.models import Grant
    from exchange.records.store import ident, store_table

    owner = services.department_create(actor=None, code="bench-owner", name="Bench owner")
    reader = services.department_create(actor=None, code="bench-reader", name="Bench reader")
    steward, analyst, reviewer, dpo = (User.objects.create_user(n) for n in (
        "bench-steward", "bench-analyst", "bench-reviewer", "bench-dpo"))
    services.membership_add(actor=None, department=owner, user=steward, role="steward")
    services.membership_add(actor=None, department=reader, user=analyst, role="analyst")
    services.city_role_grant(actor=None, user=reviewer, role="governance_reviewer")
    services.city_role_grant(actor=None, user=dpo, role="data_protection_officer")

    dataset = catalog_services.dataset_create(
        actor=steward, department=owner, title="Bench records", slug="bench-records",
        description="Benchmark.", licence="CC-BY-4.0", themes=["GOVE"], contact=steward)
    catalog_services.dataset_schema_set(actor=steward, dataset=dataset, fields=[
        {"name": name, "type": ftype, "is_key": key, "description": name,
         "sensitivity": "personal" if name in ("t1", "t2") else "internal"} for name, ftype, key in _specs()])
    dataset = catalog_services.dataset_transition(actor=steward, dataset=dataset, action="submit")
    dataset = catalog_services.dataset_transition(actor=reviewer, dataset=dataset, action="approve")
    dataset.refresh_from_db()
    table = store_table(dataset)

    names = [name for name, *_ in _specs()]
    exprs = ["g"] + [f"'text value ' || (g * {i})" for i in range(1, 8)] + [f"g * {i}" for i in range(1, 6)] + [
        f"(g * {i})::numeric / 100" for i in range(1, 4)] + [
        "DATE '2020-01-01' + (g %% 2000)", "TIMESTAMPTZ '2020-01-01' + g * INTERVAL '1 minute'", "g %% 2 = 0",
        "'note ' || g", "md5(g::text)"]
    system = ["g", "''", "false", "now()", "now()"]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table.qualified} ({', '.join(ident(c) for c in names)}, "
            f"{', '.join(ident(c) for c in ['_seq', '_hash', '_deleted', '_first_seen', '_last_seen'])}) "
            f"SELECT {', '.join(exprs + system)} FROM generate_series(1, %s) AS g", [rows])
        cursor.execute(f"VACUUM ANALYZE {table.qualified}")

    now = timezone.now()
    request = access_services.access_request_submit(
        actor=analyst, dataset=dataset, fields=list(ANALYST_FIELDS), purpose="Benchmark", legal_basis="Bench Act §1",
        requested_start=now, requested_end=now + dt.timedelta(days=30))
    access_services.access_request_decide(actor=steward, access_request=request, decisions=[
        access_services.FieldDecisionInput(name=n, approved=True, form=f) for n, f in ANALYST_FIELDS.items()])
    grant = Grant.objects.get(request=request)
    access_services.grant_dpo_approve(actor=dpo, grant=grant)
    grant.refresh_from_db()
    assert grant.status == "active", grant.status
    return {"dataset": dataset, "table": table, "analyst": analyst, "steward": steward, "columns": names}


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def add(self, other: Result) -> None:
        """Count ``other``'s requests, rows and time in this one (one line made of rounds)."""
        self.latencies += other.latencies
        self.rows += other.rows
        self.seconds += other.seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, path: str, headers: dict[str, str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path, headers=headers)
            if conn.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing answered on port {port}")


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> bytes:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
    if response.getheader("Connection", "").lower() == "close":
        conn.close()  # the server said it closes the connection: reconnect on the next request
    return body


def load(port: int, paths: list[str], headers: dict[str, str], clients: int, seconds: float,
         seed: int = 0) -> Result:
    """``clients`` threads, each on its own connection, requesting random pages for ``seconds``
    (client ``i`` picks them with the random seed ``seed + i``)."""
    result = Result()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            _get(conn, rng.choice(paths), headers)
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            result.latencies += mine

    threads = [threading.Thread(target=client, args=(seed + i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t0
    result.rows = len(result.latencies) * PAGE
    return result


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssWatch:
    """The largest RSS of the gunicorn master's children, sampled twice a second."""

    def __init__(self, master: int) -> None:
        self.master, self.peak, self._stop = master, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for child in _children(self.master):
                self.peak = max(self.peak, _rss_mb(child))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    auth = quote(s.get("USER") or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    return f"postgres://{auth}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Rates no benchmark client reaches: the throttles still count every request (their cost is
# part of what is measured), but a client asking as fast as it can is not told to wait.
BENCH_RATES = {"API_USER_THROTTLE_RATE": "100000000/min", "API_TOKEN_THROTTLE_RATE": "100000000/min"}


def production_env(database_url: str) -> dict[str, str]:
    """The production settings (DEBUG=0) on loopback, plain HTTP, with the bench's key and
    rate limits out of the clients' reach."""
    return {**os.environ, "DEBUG": "0", "DJANGO_SETTINGS_MODULE": "config.settings", "SECRET_KEY": SECRET_KEY,
            "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "0", "SECURE_HSTS_SECONDS": "0",
            "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", **BENCH_RATES}


def start_gunicorn(port: int, *, env: dict[str, str], workers: int, threads: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--threads", str(threads), "--log-level", "warning"],
        cwd=Path(__file__).resolve().parent.parent, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per case and concurrency")
    parser.add_argument("--rounds", type=int, default=5,
                        help="each line's seconds are split into this many rounds, taken in turn with the "
                             "other servers' at that concurrency")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="per worker, as in the Dockerfile")
    args = parser.parse_args(argv)
    return run_on_postgres("http", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from django.db import connection

    from departments.services import token_issue
    from exchange.access.policy import effective_view
    from exchange.records.selectors import encode_cursor

    t0 = time.perf_counter()
    world = build(args.rows)
    dataset, table = world["dataset"], world["table"]
    print(f"built {args.rows:,} rows x {len(world['columns'])} fields through the services in "
          f"{time.perf_counter() - t0:.1f} s; grant of {len(ANALYST_FIELDS)} fields, 2 masked")
    tokens = {who: token_issue(user=world[who])[1] for who in ("analyst", "steward")}
    connection.close()  # gunicorn and the reference get the server to themselves

    database_url = _database_url()
    root = Path(__file__).resolve().parent.parent
    api_port, ref_port = _free_port(), _free_port()
    env = production_env(database_url)
    gunicorn = start_gunicorn(api_port, env=env, workers=args.workers, threads=args.threads)
    floor_port = _free_port()
    floor = start_gunicorn(floor_port, env={**env, "DJANGO_SETTINGS_MODULE": "bench.floor_settings",
                                            "BENCH_FLOOR_TABLE": f"{table.schema}.{table.name}",
                                            "BENCH_FLOOR_KEY": "id"},
                           workers=args.workers, threads=args.threads)
    reference = subprocess.Popen(
        [sys.executable, "-m", "bench.reference_server", "--dsn", database_url, "--table",
         f"{table.schema}.{table.name}", "--key", "id", "--port", str(ref_port)], cwd=root, env=env)
    try:
        api_headers = {who: {"Authorization": f"Token {token}", "Accept": "application/json"}
                       for who, token in tokens.items()}
        _wait_for(api_port, "/api/v1/health/", {})
        _wait_for(ref_port, "/page?columns=id&after=0&size=1", {})
        _wait_for(floor_port, "/floor/?columns=id&after=0&size=1", api_headers["analyst"])

        rng = random.Random(15)
        keys = [rng.randrange(0, args.rows - PAGE) for _ in range(4000)]
        cases = {
            "analyst": list(ANALYST_FIELDS),
            "steward": world["columns"],
        }
        api_paths: dict[str, list[str]] = {}
        for who in cases:
            view = effective_view(dataset=dataset, user=world[who])
            api_paths[who] = [f"/api/v1/datasets/{dataset.pk}/records/?page_size={PAGE}&cursor="
                              f"{encode_cursor(view, [k])}" for k in keys]
        connection.close()
        ref_paths = {who: [f"/page?columns={','.join(cols)}&after={k}&size={PAGE}" for k in keys]
                     for who, cols in cases.items()}
        floor_paths = {who: [f"/floor/?columns={','.join(cols)}&after={k}&size={PAGE}" for k in keys]
                       for who, cols in cases.items()}

        # Both answer the same page with the same rows (the analyst's two masked fields aside).
        check = http.client.HTTPConnection("127.0.0.1", api_port)
        api_page = json.loads(_get(check, api_paths["steward"][0], api_headers["steward"]))
        check = http.client.HTTPConnection("127.0.0.1", ref_port)
        ref_page = json.loads(_get(check, ref_paths["steward"][0], {}))
        assert [r["id"] for r in api_page["results"]] == [r["id"] for r in ref_page["results"]]
        check = http.client.HTTPConnection("127.0.0.1", floor_port)
        assert json.loads(_get(check, floor_paths["steward"][0], api_headers["steward"])) == ref_page
        assert len(api_page["results"]) == PAGE and set(api_page["results"][0]) == set(cases["steward"])
        check = http.client.HTTPConnection("127.0.0.1", api_port)
        analyst_page = json.loads(_get(check, api_paths["analyst"][0], api_headers["analyst"]))
        assert set(analyst_page["results"][0]) == set(ANALYST_FIELDS)
        assert analyst_page["results"][0]["t1"].startswith("*")

        # Warm up: every worker builds its context and its connections.
        load(api_port, api_paths["analyst"], api_headers["analyst"], 4, 2)
        load(api_port, api_paths["steward"], api_headers["steward"], 4, 2)
        load(ref_port, ref_paths["steward"], {}, 4, 2)
        load(floor_port, floor_paths["steward"], api_headers["steward"], 4, 2)

        print(f"pages of {PAGE:,} rows from random keys, {args.seconds:.0f} s per line in {args.rounds} rounds "
              f"taken in turn, gunicorn "
              f"{args.workers} workers x {args.threads} threads (DEBUG=0) vs the reference (http.server + psycopg, "
              f"json_agg)")
        print(f"{'case':<44} {'clients':>7} {'rows/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'vs ref':>7}")
        peak = 0.0
        status = 0
        for who, cols in cases.items():
            for clients in (1, 4):
                # The three servers take turns, a round each, so that whatever else the machine
                # does meanwhile weighs on all three alike.
                ref, stack, api = Result(), Result(), Result()
                for r in range(args.rounds):
                    seconds, seed = args.seconds / args.rounds, 100 * r
                    ref.add(load(ref_port, ref_paths[who], {}, clients, seconds, seed))
                    stack.add(load(floor_port, floor_paths[who], api_headers[who], clients, seconds, seed))
                    with RssWatch(gunicorn.pid) as watch:
                        api.add(load(api_port, api_paths[who], api_headers[who], clients, seconds, seed))
                    peak = max(peak, watch.peak)
                ratio = api.rows_per_s / ref.rows_per_s
                label = f"reference, json_agg, {len(cols)} columns"
                print(f"{label:<44} {clients:>7} {ref.rows_per_s:>10,.0f} {ref.pct(0.5):>7.1f} {ref.pct(0.99):>7.1f}"
                      f" {1:>7.2f}")
                label = "floor: Django + DRF + token, json_agg"
                print(f"{label:<44} {clients:>7} {stack.rows_per_s:>10,.0f} {stack.pct(0.5):>7.1f}"
                      f" {stack.pct(0.99):>7.1f} {stack.rows_per_s / ref.rows_per_s:>7.2f}")
                label = (f"records API, {who} ({len(cols)} fields"
                         + (", 2 masked)" if who == "analyst" else ")"))
                print(f"{label:<44} {clients:>7} {api.rows_per_s:>10,.0f} {api.pct(0.5):>7.1f} {api.pct(0.99):>7.1f}"
                      f" {ratio:>7.2f}")
                if ratio < 0.5 or (clients == 4 and api.pct(0.99) >= 100):
                    status = 1
        print(f"gunicorn worker peak RSS under load: {peak:.0f} MB (aim < 250 MB)")
        print("aims: records API >= 0.50 of the reference, p99 < 100 ms at 4 clients: "
              + ("met" if status == 0 else "NOT met"))
        return 0
    finally:
        _stop(gunicorn)
        _stop(floor)
        _stop(reference)
