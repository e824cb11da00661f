"""Abuse limits of the API: rates per user and per token (exports on their own), page sizes
that are refused rather than clamped, and a deadline on every statement a request makes."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import DatabaseError, connection
from knox.models import AuthToken
from rest_framework.test import APIClient

from config.api.throttling import RateThrottle
from config.api.timeouts import is_statement_timeout, statement_timeout
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_counters(settings):
    """Counters of this test alone, in the configured cache (Redis on the PostgreSQL run)."""
    settings.CACHES = {name: {**conf, "KEY_PREFIX": f"limits-{uuid.uuid4().hex}"}
                       for name, conf in django_settings.CACHES.items()}


def _rates(settings, **rates: str | None) -> None:
    settings.API_THROTTLE_RATES = {"user": None, "token": None, "export": None, "export_token": None, **rates}


def _token(user) -> str:
    return AuthToken.objects.create(user=user)[1]


def _with_token(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def _throttled(response, *, ckan: bool = False) -> None:
    assert response.status_code == 429, response.content
    error = response.json()["error"]
    if ckan:  # CKAN's own envelope, which CKAN clients read
        assert response.json()["success"] is False and "throttled" in error["message"].lower()
    else:
        assert error["code"] == "throttled" and error["status"] == 429
    assert int(response["Retry-After"]) > 0


def test_each_user_has_an_allowance_of_their_own(settings, own_counters, as_user, people):
    _rates(settings, user="3/min")
    api = as_user(people["steward"])
    for _ in range(3):
        assert api.get("/api/v1/sync/connections/").status_code == 200
    _throttled(api.get("/api/v1/sync/connections/"))
    _throttled(api.get("/api/v1/datasets/"))  # every endpoint counts against the user
    other = APIClient()
    other.force_authenticate(people["analyst"])
    assert other.get("/api/v1/sync/connections/").status_code == 200


def test_all_tokens_of_a_user_share_the_users_allowance(settings, own_counters, people):
    _rates(settings, user="4/min")
    first, second = _with_token(_token(people["steward"])), _with_token(_token(people["steward"]))
    for client in (first, first, second, second):
        assert client.get("/api/v1/me/").status_code == 200
    _throttled(first.get("/api/v1/me/"))
    _throttled(second.get("/api/v1/me/"))


def test_each_token_has_its_own_lower_allowance(settings, own_counters, people):
    _rates(settings, user="100/min", token="2/min")
    runaway, other = _with_token(_token(people["steward"])), _with_token(_token(people["steward"]))
    assert [runaway.get("/api/v1/me/").status_code for _ in range(2)] == [200, 200]
    _throttled(runaway.get("/api/v1/me/"))
    assert other.get("/api/v1/me/").status_code == 200  # the owner's other token still works


def test_anonymous_callers_count_by_address(settings, own_counters):
    _rates(settings, user="2/min")
    client = APIClient(REMOTE_ADDR="203.0.113.7")
    assert [client.get("/api/3/action/package_list").status_code for _ in range(2)] == [200, 200]
    _throttled(client.get("/api/3/action/package_list"), ckan=True)
    assert APIClient(REMOTE_ADDR="203.0.113.8").get("/api/3/action/package_list").status_code == 200


@pytest.fixture
def permits(department, people):
    dataset = published_dataset(department)
    load_rows(dataset, [{"permit_id": i, "district": "North"} for i in range(1, 4)])
    grant(dataset, user=people["outsider"], approved_by=people["steward"],
          fields={"permit_id": "clear", "district": "clear"})
    return dataset


def test_exports_have_their_own_rates_per_user_and_per_token(settings, own_counters, people, permits):
    _rates(settings, export="2/hour", export_token="1/hour")
    export = f"/api/v1/datasets/{permits.pk}/export/?format=csv"
    session = APIClient()
    session.force_authenticate(people["outsider"])
    assert _read(session.get(export)) == 200
    token_client = _with_token(_token(people["outsider"]))
    assert _read(token_client.get(export)) == 200
    _throttled(token_client.get(export))  # the token's one export an hour
    _throttled(session.get(export))  # and the user's two, tokens included
    assert session.get(f"/api/v1/datasets/{permits.pk}/records/").status_code == 200  # pages are not exports


def _read(response) -> int:
    """Read a streamed export to its end, as a client does (its query holds the connection)."""
    b"".join(response.streaming_content)
    return response.status_code


def test_audit_exports_are_throttled_too(settings, own_counters, people):
    _rates(settings, export="1/hour")
    api = APIClient()
    api.force_authenticate(people["auditor"])
    assert _read(api.get("/api/v1/audit/events/export/?format=ndjson")) == 200
    _throttled(api.get("/api/v1/audit/events/export/?format=ndjson"))



def _at(monkeypatch, moment: float) -> None:
    monkeypatch.setattr(RateThrottle, "timer", staticmethod(lambda: moment))


def test_a_burst_at_the_end_of_a_window_still_counts_in_the_next(settings, own_counters, monkeypatch, as_user,
                                                                   people):
    """Counted in windows of one period, weighted: the window's edge does not reset the count."""
    _rates(settings, user="4/min")
    api = as_user(people["steward"])
    _at(monkeypatch, 6_000_000 * 60 + 50)  # 50 s into a window
    assert [api.get("/api/v1/me/").status_code for _ in range(4)] == [200] * 4
    _at(monkeypatch, 6_000_001 * 60 + 5)  # 5 s into the next: 4 × 55/60 of the last window still count
    _throttled(api.get("/api/v1/me/"))
    _at(monkeypatch, 6_000_001 * 60 + 16)  # 4 × 44/60 ≈ 2.9: one more fits
    assert api.get("/api/v1/me/").status_code == 200
    _throttled(api.get("/api/v1/me/"))


def test_retry_after_says_when_the_next_request_fits(settings, own_counters, monkeypatch, as_user, people):
    _rates(settings, user="2/min")
    api = as_user(people["steward"])
    _at(monkeypatch, 7_000_000 * 60 + 10)
    assert [api.get("/api/v1/me/").status_code for _ in range(2)] == [200, 200]
    refused = api.get("/api/v1/me/")
    _throttled(refused)
    wait = int(refused["Retry-After"])
    # The window ends in 50 s; then the two requests decay until one of them is left: 30 s more.
    assert wait == 80
    _at(monkeypatch, 7_000_000 * 60 + 10 + wait - 2)
    _throttled(api.get("/api/v1/me/"))
    _at(monkeypatch, 7_000_000 * 60 + 10 + wait)
    assert api.get("/api/v1/me/").status_code == 200


def test_a_refused_request_does_not_use_up_allowance(settings, own_counters, monkeypatch, as_user, people):
    _rates(settings, user="2/min")
    api = as_user(people["steward"])
    _at(monkeypatch, 8_000_000 * 60 + 1)
    assert [api.get("/api/v1/me/").status_code for _ in range(2)] == [200, 200]
    for _ in range(5):
        _throttled(api.get("/api/v1/me/"))
    # Two windows on, the two counted requests are forgotten; the five refused ones never counted.
    _at(monkeypatch, 8_000_002 * 60 + 1)
    assert [api.get("/api/v1/me/").status_code for _ in range(2)] == [200, 200]


@pytest.mark.django_db(transaction=True)
def test_counters_are_shared_across_threads_without_lost_counts(settings, own_counters, people):
    """Each request adds to a counter atomically (INCR on Redis), so callers in parallel,
    as web processes are, never overwrite each other's counts."""
    _rates(settings, user="30/min")
    token = _token(people["steward"])
    statuses: list[int] = []
    lock = threading.Lock()

    def caller() -> None:
        client = _with_token(token)
        for _ in range(10):
            status = client.get("/api/v1/me/").status_code
            with lock:
                statuses.append(status)
        connection.close()

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 30 + [429] * 10


def test_user_and_token_are_counted_in_one_round_trip_to_redis(settings, own_counters, people, monkeypatch):
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    if not isinstance(caches["default"], RedisCache):
        pytest.skip("the embedded default counts in the process's memory")
    _rates(settings, user="100/min", token="50/min")
    client = _with_token(_token(people["steward"]))
    client.get("/api/v1/me/")  # connections made
    redis = caches["default"]._cache.get_client(write=True)
    before = redis.info("all")
    assert client.get("/api/v1/me/").status_code == 200
    after = redis.info("all")

    def calls(command: str) -> int:
        return int(after.get(f"cmdstat_{command}", {}).get("calls", 0)) - int(
            before.get(f"cmdstat_{command}", {}).get("calls", 0))

    # One command from the client (the counting script, by its digest), which ran INCR,
    # EXPIRE and GET for each scope; and nothing else but the INFO that read the figures.
    assert calls("evalsha") == 1 and calls("eval") == 0
    assert (calls("incr"), calls("expire"), calls("get")) == (2, 2, 2)
    assert after["total_commands_processed"] - before["total_commands_processed"] == 1 + 2 * 3 + 1

    # On a client made once per connection pool, not on a new one per request.
    def no_new_client(**kwargs: object) -> None:
        raise AssertionError("a Redis client was made for one request")

    monkeypatch.setattr(caches["default"]._cache, "_client", no_new_client)
    assert client.get("/api/v1/me/").status_code == 200


# --- Page sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "cap"), [
    ("/api/v1/sync/connections/", 500), ("/api/v1/sync/runs/", 500), ("/api/v1/audit/events/", 500),
    ("/api/v1/datasets/", 500), ("/api/v1/datasets/{permits}/records/", 1000),
])
def test_page_sizes_above_the_cap_are_refused_everywhere(as_user, people, permits, path, cap):
    api = as_user(people["auditor"] if "audit" in path else people["steward"])
    path = path.format(permits=permits.pk)
    assert api.get(path, {"page_size": cap}).status_code == 200
    for bad in (cap + 1, 0, -5, "many"):
        response = api.get(path, {"page_size": bad})
        assert response.status_code == 400, (path, bad, response.content)
        assert "page_size" in response.json()["error"]["fields"]


def test_the_list_cap_is_a_setting(settings, as_user, people):
    settings.API_MAX_PAGE_SIZE = 20
    api = as_user(people["steward"])
    assert api.get("/api/v1/sync/connections/", {"page_size": 20}).status_code == 200
    response = api.get("/api/v1/sync/connections/", {"page_size": 21})
    assert response.status_code == 400 and response.json()["error"]["message"] == "page_size must be between 1 and 20."


# --- Statement timeouts -----------------------------------------------------------------------

def test_a_statement_past_its_deadline_is_stopped_and_recognised():
    slow = ("SELECT pg_sleep(5)" if connection.vendor == "postgresql" else
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r")
    with statement_timeout(0.3), pytest.raises(DatabaseError) as caught, connection.cursor() as cursor:
        cursor.execute(slow)
    assert is_statement_timeout(caught.value), repr(caught.value)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("path", "table"), [
    ("/api/v1/datasets/{permits}/records/?district=North&q=Nor", "store"),
    ("/api/v1/audit/events/?action=records.read", "exchange_auditevent"),
    ("/api/v1/datasets/?q=permits", "catalog_dataset"),
])
def test_a_query_held_up_past_the_deadline_is_a_503_not_a_500(settings, people, permits, path, table):
    """Another session holds the table the request reads; the request's statement gives up
    after REQUEST_STATEMENT_TIMEOUT_SECONDS (a lock wait counts like a slow plan)."""
    if connection.vendor != "postgresql":
        pytest.skip("lock waits are a PostgreSQL matter; the SQLite deadline is tested above")
    from exchange.records.store import store_table

    settings.REQUEST_STATEMENT_TIMEOUT_SECONDS = 0.5
    if table == "store":
        table = store_table(permits).qualified
    api = APIClient()
    api.force_authenticate(people["auditor"] if "audit" in path else people["outsider"])
    holder = _holder()
    try:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        done = threading.Event()
        # Never hang the suite: without a deadline, the lock goes after 20 s and the test fails.
        threading.Timer(20, lambda: None if done.is_set() else holder.rollback()).start()
        response = api.get(path.format(permits=permits.pk))
        done.set()
    finally:
        holder.rollback()
        holder.close()
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "query_timeout"
    # The connection is whole again: the next request is answered, under its own limit.
    assert api.get(path.format(permits=permits.pk)).status_code == 200
    assert _session_limit() == "500ms"


@pytest.mark.django_db(transaction=True)
def test_an_export_held_up_past_its_own_deadline_ends_early(settings, people, permits):
    """An export's deadline (EXPORT_STATEMENT_TIMEOUT_SECONDS) holds until its stream ends;
    its query starts while it streams, so running out of time ends the download early."""
    if connection.vendor != "postgresql":
        pytest.skip("lock waits are a PostgreSQL matter; the SQLite deadline is tested above")
    from exchange.records.store import store_table

    settings.REQUEST_STATEMENT_TIMEOUT_SECONDS = 60
    settings.EXPORT_STATEMENT_TIMEOUT_SECONDS = 0.5
    api = APIClient()
    api.force_authenticate(people["outsider"])
    holder = _holder()
    try:
        holder.execute(f"LOCK TABLE {store_table(permits).qualified} IN ACCESS EXCLUSIVE MODE")
        done = threading.Event()
        threading.Timer(20, lambda: None if done.is_set() else holder.rollback()).start()
        response = api.get(f"/api/v1/datasets/{permits.pk}/export/?format=csv")
        assert response.status_code == 200
        with pytest.raises((DatabaseError, psycopg.Error)) as caught:
            _read(response)
        done.set()
    finally:
        holder.rollback()
        holder.close()
    assert is_statement_timeout(caught.value)
    # The export's deadline is not the next request's.
    assert api.get(f"/api/v1/datasets/{permits.pk}/records/").status_code == 200
    assert _session_limit() == "1min"
    assert _read(api.get(f"/api/v1/datasets/{permits.pk}/export/?format=csv")) == 200


def _session_limit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_each_request_runs_under_its_own_limit_set_once_per_connection(settings, people, permits, monkeypatch):
    """Outside a transaction the limit stays on the web connection: a request whose limit the
    connection holds already costs no round trip; another limit, or a new connection, is set."""
    if connection.vendor != "postgresql":
        pytest.skip("the SQLite deadline is a progress handler, set per request")
    sets: list[str] = []
    raw_class = type(connection.connection) if connection.connection else psycopg.Connection
    execute = raw_class.execute

    def counting(self, query, params=None, **kwargs):
        if "statement_timeout" in str(query):
            sets.append(str(params[0]) if params else str(query))
        return execute(self, query, params, **kwargs)

    monkeypatch.setattr(raw_class, "execute", counting)
    api = APIClient()
    api.force_authenticate(people["outsider"])
    url = f"/api/v1/datasets/{permits.pk}/records/"
    settings.REQUEST_STATEMENT_TIMEOUT_SECONDS = 7
    assert api.get(url).status_code == 200 and sets == ["7000ms"] and _session_limit() == "7s"
    assert api.get(url).status_code == 200 and sets == ["7000ms"]  # held already: no round trip
    settings.REQUEST_STATEMENT_TIMEOUT_SECONDS = 9
    assert api.get(url).status_code == 200 and sets == ["7000ms", "9000ms"] and _session_limit() == "9s"
    settings.EXPORT_STATEMENT_TIMEOUT_SECONDS = 11
    assert _read(api.get(f"/api/v1/datasets/{permits.pk}/export/?format=csv")) == 200
    assert sets[-1] == "11000ms" and _session_limit() == "11s"
    assert api.get(url).status_code == 200 and sets[-1] == "9000ms" and _session_limit() == "9s"
    connection.close()  # a new connection knows no limit: it is set again
    assert api.get(url).status_code == 200 and sets[-1] == "9000ms" and len(sets) == 5


def test_inside_a_transaction_the_limit_is_set_and_reset(settings, people, permits):
    """A rollback would take a limit set inside a transaction back: there, each request sets
    and resets its own."""
    if connection.vendor != "postgresql":
        pytest.skip("the SQLite deadline is a progress handler, set per request")
    settings.REQUEST_STATEMENT_TIMEOUT_SECONDS = 7
    api = APIClient()
    api.force_authenticate(people["outsider"])
    assert api.get(f"/api/v1/datasets/{permits.pk}/records/").status_code == 200
    assert _session_limit() == "0"


def _holder() -> psycopg.Connection:
    s = connection.settings_dict
    return psycopg.connect(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"],
                           password=s["PASSWORD"] or None, dbname=s["NAME"])
