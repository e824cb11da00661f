"""The demo seed: sources with generated data for the demo datasets that exist, and
subscriptions that deliver; a second run changes nothing."""

from __future__ import annotations

import io
import sqlite3

import pytest

from exchange import demo
from exchange.sync.models import Run, RunStatus, Source, Subscription
from tests.exchange.sync.helpers import store_rows
from tests.factories import DepartmentFactory, MembershipFactory
from tests.sync_factories import published_dataset

pytestmark = pytest.mark.django_db(transaction=True)

AIR = [("station", "text", True, "public"), ("measured_at", "timestamp", True, "public"),
       ("pm10", "decimal", False, "public"), ("no2", "decimal", False, "public"),
       ("operator_phone", "text", False, "personal"), ("updated_at", "timestamp", False, "public")]


def test_seed_creates_flowing_sources_and_subscriptions(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.SYNC_SQLITE_DIRS = [str(tmp_path / "demo-sources")]
    monkeypatch.setattr(demo, "SOURCES", [(s, k, 150, c) for s, k, _, c in demo.SOURCES])
    depts = {code: DepartmentFactory(code=code, slug=code, name=code.title())
             for code in ("planning", "environment", "health", "transport")}
    for d in depts.values():
        MembershipFactory(department=d, role="steward")
    air = published_dataset(department=depts["environment"], slug="air-quality", fields=AIR)
    permits = published_dataset(department=depts["planning"], slug="building-permits")

    out = io.StringIO()
    assert demo.seed(stdout=out) > 0
    assert "no published dataset 'food-inspections', skipped" in out.getvalue()
    assert Source.objects.count() == 2 and Subscription.objects.count() == 2
    assert Source.objects.get(dataset=air).watermark_column == "updated_at"
    assert Source.objects.get(dataset=air).watch_seconds == 30
    # Tests run Celery eagerly, so the queued runs have run on commit, in the order queued.
    assert set(Run.objects.values_list("status", flat=True)) == {RunStatus.SUCCEEDED}
    assert len(store_rows(air)) == 150 and len(store_rows(permits)) == 150
    target = sqlite3.connect(tmp_path / "demo-sources" / "health-warehouse.sqlite3")
    columns = [r[1] for r in target.execute("PRAGMA table_info(air_quality)")]
    assert "operator_phone" not in columns and "pm10" in columns
    assert target.execute("SELECT count(*) FROM air_quality").fetchone()[0] == 150
    assert Subscription.objects.get(dataset=air).deliver_on_change  # live: changes flow on their own
    assert not Subscription.objects.get(dataset=permits).deliver_on_change

    assert demo.seed(stdout=io.StringIO()) == 0
