"""Shared set-up for benchmarks: Django configured from the environment, and a throw-away
database made with Django's test-database machinery (migrations, triggers and all)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def configure() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.test_settings")
    import django

    django.setup()


@contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """Create a fresh database called ``<configured name>_bench_<name>`` next to the configured
    one (on SQLite ``var/bench-<name>.sqlite3``), migrate it,
    point the default connection at it, and drop it afterwards."""
    from django.conf import settings
    from django.db import connection

    settings_dict = connection.settings_dict
    original = settings_dict["NAME"]
    if connection.vendor == "sqlite":
        test_name = str(settings.VAR_DIR / f"bench-{name}.sqlite3")
    else:
        # Named after the configured database, so benchmarks run from two checkouts against
        # one server (each with its own database) never drop each other's scratch database.
        test_name = f"{original}_bench_{name}"
    settings_dict.setdefault("TEST", {})["NAME"] = test_name
    created = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        yield created
    finally:
        connection.creation.destroy_test_db(original, verbosity=0, keepdb=False)


def run_on_postgres(name: str, run: Callable[[], int]) -> int:
    """Configure Django, then ``run()`` in the scratch database ``<configured>_bench_<name>``
    on PostgreSQL (the only backend these benchmarks measure); the audit writer's links are
    closed afterwards, since they would keep the scratch database from being dropped."""
    configure()
    from django.db import connection

    if connection.vendor != "postgresql":
        print(f"bench.{name} needs PostgreSQL: set DATABASE_URL=postgres://…")
        return 2
    with scratch_database(name):
        try:
            return run()
        finally:
            from exchange.audit import writer as audit_writer

            audit_writer.shutdown()
