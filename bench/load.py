"""Load: many users at once against the production shape, on loopback, for a bounded time.

In a scratch database ``<configured name>_bench_load``, the world of ``bench.http`` (a dataset
of ``--rows`` rows and 21 fields, an analyst of another department granted 5 fields of which 2
masked, all through the services) plus ``--datasets`` more published datasets for the
catalogue to search; ``--users`` users (analysts of the owning department, who read its data
in clear, and the grantee analyst, whose view is masked), each with an API token and a web
session. Then the project runs under gunicorn (``DEBUG=0``, production settings, the worker
and thread counts of the Dockerfile) and each user, in a thread of its own with a keep-alive
connection, repeats for ``--seconds`` a weighted mix, pausing between two requests as a
person does (``--think`` seconds on average, uniformly from half to one and a half times it;
``--think 0`` makes it a stress test of requests back to back). Users arrive as people do, each
at a random moment within the first think time (``--burst`` starts all of them at the same
instant instead, so that the first requests of every user queue up together):

- catalogue search: ``GET /api/v1/datasets/?search=<word>`` (30 %)
- dataset page: ``GET /datasets/<id>/``, the server-rendered page with the caller's preview (20 %)
- records page: ``GET /api/v1/datasets/<id>/records/?page_size=100`` from a random key (40 %)
- export: ``GET /api/v1/datasets/<id>/export/?format=csv`` of a 2,000-row key range (10 %)

It prints, per kind, the requests, errors (any status other than 200, or a failed connection),
requests/s, p50 and p99, and the largest RSS of a gunicorn worker; the aims are no error at all
and a records page p99 under 300 ms. Every request is audited as in production: the run ends
with ``verify_audit`` over the trail it wrote.

Run: ``DATABASE_URL=postgres://… [REDIS_URL=redis://…] python -m bench load [-- --users 50 --seconds 60]``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import http as bench_http
from bench.setup import run_on_postgres

KINDS = {"search": 30, "dataset page": 20, "records page": 40, "export": 10}
WORDS = ["permits", "traffic", "budget", "schools", "parks", "air", "bench", "water", "waste", "housing"]
RECORDS_P99_AIM_MS = 300.0


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            if error:
                self.errors[kind].append(error)


def _catalogue(count: int, steward: Any, reviewer: Any, department: Any) -> list[int]:
    from catalog import services as catalog_services

    ids = []
    for i in range(count):
        word = WORDS[i % len(WORDS)]
        dataset = catalog_services.dataset_create(
            actor=steward, department=department, title=f"{word.title()} register {i}", slug=f"{word}-register-{i}",
            description=f"The city's {word} register, number {i}.", licence="CC-BY-4.0", themes=["GOVE"],
            contact=steward)
        catalog_services.dataset_schema_set(actor=steward, dataset=dataset, fields=[
            {"name": "id", "type": "integer", "is_key": True, "description": "Key", "sensitivity": "public"},
            {"name": "label", "type": "text", "is_key": False, "description": "Label", "sensitivity": "internal"},
        ])
        dataset = catalog_services.dataset_transition(actor=steward, dataset=dataset, action="submit")
        catalog_services.dataset_transition(actor=reviewer, dataset=dataset, action="approve")
        ids.append(dataset.pk)
    return ids


def build(args: argparse.Namespace) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.test import Client

    from departments import services
    from departments.services import token_issue

    world = bench_http.build(args.rows)
    dataset = world["dataset"]
    owner = dataset.department
    reviewer = User.objects.get(username="bench-reviewer")
    others = _catalogue(args.datasets, world["steward"], reviewer, owner)
    readers = [world["analyst"]]
    for i in range(args.users - 1):
        user = User.objects.create_user(f"bench-reader-{i}")
        services.membership_add(actor=None, department=owner, user=user, role="analyst")
        readers.append(user)
    users = []
    for user in readers:
        client = Client()
        client.force_login(user)
        users.append({"token": token_issue(user=user)[1], "session": client.cookies["sessionid"].value,
                      "masked": user == world["analyst"]})
    return {"dataset": dataset.pk, "others": others, "users": users}


def _request(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> tuple[int, int]:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    size = len(response.read())
    return response.status, size


def _user_loop(port: int, user: dict[str, Any], world: dict[str, Any], rows: int, seconds: float, seed: int,
               tally: Tally, think: float = 0.0, arrive: bool = False) -> None:
    rng = random.Random(seed)
    if arrive and think:
        time.sleep(rng.uniform(0, think))
    kinds, weights = list(KINDS), list(KINDS.values())
    api = {"Authorization": f"Token {user['token']}", "Accept": "application/json"}
    web = {"Cookie": f"sessionid={user['session']}", "Accept": "text/html"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    dataset = world["dataset"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        key = rng.randrange(0, max(1, rows - 2000))
        if kind == "search":
            path, headers = f"/api/v1/datasets/?search={rng.choice(WORDS)}", api
        elif kind == "dataset page":
            target = dataset if rng.random() < 0.5 else rng.choice(world["others"])
            path, headers = f"/datasets/{target}/", web
        elif kind == "records page":
            path, headers = f"/api/v1/datasets/{dataset}/records/?page_size=100&id__gte={key}", api
        else:
            path, headers = f"/api/v1/datasets/{dataset}/export/?format=csv&id__gte={key}&id__lt={key + 2000}", api
        started = time.perf_counter()
        error = None
        try:
            status, _ = _request(conn, path, headers)
            if status != 200:
                error = f"{status} {path}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc} {path}"
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        tally.add(kind, time.perf_counter() - started, error)
        if think:
            time.sleep(rng.uniform(0.5 * think, 1.5 * think))
    conn.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--datasets", type=int, default=30, help="more published datasets to search")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=1.0, help="mean pause between a user's requests, seconds")
    parser.add_argument("--burst", action="store_true", help="start every user at the same instant")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="per worker, as in the Dockerfile")
    args = parser.parse_args(argv)
    return run_on_postgres("load", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from django.db import connection

    t0 = time.perf_counter()
    world = build(args)
    print(f"built {args.rows:,} rows, {args.datasets + 1} datasets and {args.users} users with tokens and sessions "
          f"in {time.perf_counter() - t0:.1f} s")
    connection.close()

    database_url = bench_http._database_url()
    root = Path(__file__).resolve().parent.parent
    port = bench_http._free_port()
    env = {**bench_http.production_env(database_url), "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0"}
    # As the image does at build: the pages link the hashed names of the collected files.
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=root,
                   env=env, check=True)
    gunicorn = bench_http.start_gunicorn(port, env=env, workers=args.workers, threads=args.threads)
    try:
        bench_http._wait_for(port, "/api/v1/health/", {})
        # Warm up every worker's connections and caches with a few of each kind.
        _user_loop(port, world["users"][0], world, args.rows, 2, 0, Tally())
        tally = Tally()
        threads = [threading.Thread(target=_user_loop,
                                    args=(port, user, world, args.rows, args.seconds, i, tally, args.think,
                                          not args.burst))
                   for i, user in enumerate(world["users"])]
        started = time.monotonic()
        with bench_http.RssWatch(gunicorn.pid) as watch:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.monotonic() - started
    finally:
        bench_http._stop(gunicorn)

    arrival = "all at once" if args.burst or not args.think else f"arriving within {args.think:.1f} s"
    print(f"{args.users} users ({arrival}, think time {args.think:.1f} s on average) for {args.seconds:.0f} s "
          "against gunicorn "
          f"{args.workers} workers x {args.threads} "
          f"threads (DEBUG=0), PostgreSQL{' + Redis' if os.environ.get('REDIS_URL') else ''}, on loopback")
    print(f"{'kind':<14} {'requests':>9} {'errors':>7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}")
    total = errors = 0
    for kind in KINDS:
        values = tally.latencies[kind]
        total += len(values)
        errors += len(tally.errors[kind])
        print(f"{kind:<14} {len(values):>9,} {len(tally.errors[kind]):>7} {len(values) / elapsed:>7.1f} "
              f"{_pct(values, 0.5):>8.1f} {_pct(values, 0.99):>8.1f}")
    print(f"{'all':<14} {total:>9,} {errors:>7} {total / elapsed:>7.1f}")
    for kind, messages in tally.errors.items():
        for message in messages[:3]:
            print(f"  error ({kind}): {message}")
    print(f"gunicorn worker peak RSS under load: {watch.peak:.0f} MB (aim < 250 MB)")

    from django.core.management import call_command

    call_command("verify_audit", "--no-checkpoint", verbosity=0)
    records_p99 = _pct(tally.latencies["records page"], 0.99)
    met = errors == 0 and records_p99 < RECORDS_P99_AIM_MS
    print(f"aims: 0 errors, records page p99 < {RECORDS_P99_AIM_MS:.0f} ms: {'met' if met else 'NOT met'}")
    return 0
