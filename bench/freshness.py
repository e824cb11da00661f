"""Freshness: how long a change at a department's source takes to reach every subscriber, with
nobody pressing a button (``python -m bench freshness``).

Against the database of DATABASE_URL (migrated if needed; REDIS_URL for the broker, else the
embedded one), with a source and a target database next to it (created and dropped): a
PostgreSQL source table of ``--rows`` rows (1,000,000) and 20 fields, watched every
``--watch`` seconds through its indexed watermark column, loaded into the store, and three
subscriptions of a granted department into three tables of the target database, each
delivering on change. A real Celery worker process and a real beat process run beside it, as in
production. Then ``--changes`` times (20) a transaction changes ``--size`` rows (1,000) at the
source, and the clock runs until all three targets hold the change: no call into the exchange
is made, the watch finds the change, its run ingests it, and the ingest queues the deliveries.

It prints p50, p95 and the largest of those times (the aim: p95 under 10 s), then what
watching costs while nothing changes: the CPU time of the worker and beat processes over
``--idle`` seconds with the watch on, against the same span with it off, as a share of one core.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg  # noqa: E402  (bench.sync configures Django first)
from django.conf import settings  # noqa: E402
from django.db import connection, connections  # noqa: E402

from bench.sync import FIELDS, GENERATE, admin, dsn_of, run_job, setup
from exchange.sync import secrets  # noqa: E402
from exchange.sync.models import Connection, Source, Subscription  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("copy_a", "copy_b", "copy_c")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its children (the worker's pool processes)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", *command], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def wait_until(condition, *, timeout: float, what: str, logs: list[Path]) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    raise SystemExit(f"timed out waiting for {what}\n{tails}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--size", type=int, default=1_000, help="Rows per change.")
    parser.add_argument("--watch", type=int, default=2, help="Seconds between two checks of the source.")
    parser.add_argument("--idle", type=float, default=30.0, help="Seconds of each idle measurement.")
    args = parser.parse_args(argv)
    if connection.vendor != "postgresql":
        sys.exit("The benchmark needs PostgreSQL: set DATABASE_URL.")
    base = connection.settings_dict["NAME"]
    src, tgt = f"{base}_bench_fsrc", f"{base}_bench_ftgt"
    for db in (src, tgt):
        admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin(f'CREATE DATABASE "{db}"')
    columns = ", ".join(f"{n} {t}" for n, _, t in FIELDS[1:])
    with psycopg.connect(dsn_of(src), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE bench_source (id bigint PRIMARY KEY, {columns})")  # type: ignore[arg-type]
        conn.execute(GENERATE, [args.rows])  # type: ignore[arg-type]
        conn.execute("CREATE INDEX ON bench_source (updated_at)")
        conn.execute("VACUUM ANALYZE bench_source")
    source, template = setup(args.rows, src)
    started = time.perf_counter()
    run_job(kind="ingest", source=source, mode="full")()
    print(f"loaded {args.rows:,} rows × {len(FIELDS)} fields into the store in {time.perf_counter() - started:.1f} s")
    target = Connection.objects.create(department=template.department, name=f"tgt {source.dataset.slug}",
                                       kind="postgresql", secret_encrypted=secrets.encrypt(dsn_of(tgt)), redacted=tgt)
    subscriptions = [Subscription.objects.create(dataset=source.dataset, department=template.department,
                                                 connection=target, target_table=name, deliver_on_change=True)
                     for name in TARGETS]
    for subscription in subscriptions:
        run_job(kind="delivery", subscription=subscription)()
    Source.objects.filter(pk=source.pk).update(watch_seconds=args.watch)
    connections.close_all()

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": os.environ.get("DEBUG", "1"),
           "DATABASE_URL": os.environ["DATABASE_URL"]}
    logs = [Path(settings.VAR_DIR) / f"bench-freshness-{name}.log" for name in ("worker", "beat")]
    logs[0].parent.mkdir(parents=True, exist_ok=True)
    worker = start(["worker", "-Q", "default,ingest,delivery,housekeeping", "--concurrency", "4", "--pool",
                    "prefork", "--without-gossip", "--without-mingle", "--loglevel", "WARNING"], logs[0], env)
    beat = start(["beat", "--loglevel", "WARNING", "--schedule", str(logs[1].with_suffix(".db"))], logs[1], env)
    try:
        def noted() -> bool:
            return bool(Source.objects.filter(pk=source.pk).exclude(watch_state="").exists())

        wait_until(noted, timeout=120, what="the first check of the source", logs=logs)
        seconds: list[float] = []
        with psycopg.connect(dsn_of(src), autocommit=True) as src_db, \
                psycopg.connect(dsn_of(tgt), autocommit=True) as tgt_db:
            for i in range(1, args.changes + 1):
                ids = random.sample(range(1, args.rows + 1), args.size)
                marker = -i
                changed_at = time.monotonic()
                src_db.execute("UPDATE bench_source SET amount = %s, updated_at = clock_timestamp() "
                               "WHERE id = ANY(%s)", [marker, ids])

                def arrived(marker: int = marker) -> bool:
                    counts = [tgt_db.execute(f"SELECT count(*) FROM {name} WHERE amount = %s",  # noqa: S608
                                             [marker]).fetchone() for name in TARGETS]
                    return all(c is not None and c[0] == args.size for c in counts)

                wait_until(arrived, timeout=120, what=f"change {i} at every target", logs=logs)
                seconds.append(time.monotonic() - changed_at)
                print(f"change {i:>2}: {seconds[-1]:6.2f} s", flush=True)
                time.sleep(random.uniform(0, args.watch))  # changes come at any moment of the watch's cycle
        seconds.sort()
        p95 = seconds[max(0, int(round(0.95 * len(seconds))) - 1)]
        print(f"\n{args.changes} changes of {args.size:,} rows in a {args.rows:,}-row source, watched every "
              f"{args.watch} s, delivered to {len(TARGETS)} subscribers:")
        print(f"  p50 {statistics.median(seconds):.2f} s   p95 {p95:.2f} s   max {seconds[-1]:.2f} s   "
              f"(aim: p95 < 10 s): {'met' if p95 < 10 else 'NOT met'}")

        def idle_share() -> float:
            time.sleep(2)
            before = cpu_seconds(worker.pid) + cpu_seconds(beat.pid)
            time.sleep(args.idle)
            return (cpu_seconds(worker.pid) + cpu_seconds(beat.pid) - before) / args.idle

        watching = idle_share()
        Source.objects.filter(pk=source.pk).update(watch_seconds=None)
        connections.close_all()
        not_watching = idle_share()
        cost = watching - not_watching
        print(f"idle, worker and beat: {watching:.2%} of one core while watching, {not_watching:.2%} with the watch "
              f"off: the watch costs {cost:.2%} (aim < 1 %): {'met' if cost < 0.01 else 'NOT met'}")
    finally:
        for process in (beat, worker):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        connections.close_all()
        for db in (src, tgt):
            admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
