"""Rate limits of the API, per user and per token (DRF throttles; counted in the default
cache: Redis when REDIS_URL is set, so every web process counts together, else the one
process's memory).

Every request counts against its user (all their tokens and their browser session together;
an anonymous caller by address) and, when it comes with an API token, against that token as
well, so one runaway script cannot use up its owner's whole allowance. Exports count again,
against their own, lower rates. Rates come from ``settings.API_THROTTLE_RATES`` when the
request is made (``None``: no limit). A refused request is a 429 in the API's error shape,
with ``Retry-After``.

How a rate is counted: a **sliding window of counters**, not DRF's log of timestamps. DRF's
``SimpleRateThrottle`` keeps, per key, the list of every request's time within the period,
reads and rewrites the whole pickled list on each request (up to 1,200 entries at the default
user rate) and loses counts when two processes rewrite it at once. Here each key has one
integer per period-long window; a request adds one to the current window's counter
(atomically: ``INCR`` on Redis) and is allowed while

    current + previous × (the part of the previous window still inside the period) ≤ rate.

That is the usual approximation of a sliding log (it assumes the previous window's requests
were spread evenly); it never lets more than the rate through in any one window, and it
forgets a burst smoothly instead of all at once at a window's edge. All the scopes of one
request (user and token) are counted by a single command to Redis (a short Lua script). A
refused request takes its count back, so being refused does not use up allowance (as with
DRF's throttles).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """("600/min") → (600, 60): the requests allowed and the period in seconds."""
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period.strip()[0]]


@dataclass(frozen=True)
class Window:
    """One scope's counters for one caller: the key prefix, the rate and the period."""

    key: str
    limit: int
    period: int

    def keys(self, now: float) -> tuple[str, str]:
        """(the current window's key, the previous window's key)."""
        index = int(now // self.period)
        return f"{self.key}:{index}", f"{self.key}:{index - 1}"

    def estimate(self, now: float, current: int, previous: int) -> float:
        """Requests counted within the last period, the previous window weighted by how much
        of it is still inside the period."""
        elapsed = now % self.period
        return current + previous * (self.period - elapsed) / self.period

    def wait(self, now: float, current: int, previous: int) -> float:
        """Seconds until one more request fits, ``current`` already including the refused one
        (which is taken back)."""
        elapsed = now % self.period
        room = self.limit - (current - 1)  # what must fit: this request, with the others counted
        if current - 1 >= self.limit:
            # The current window alone is full: wait for it to become the previous one and
            # decay until `limit - 1` of its requests remain inside the period.
            into_next = self.period * (1 - (self.limit - 1) / (current - 1)) if current > 1 else 0.0
            return (self.period - elapsed) + into_next
        if previous <= 0:
            return 0.0
        # previous × (period - t) / period + (current - 1) ≤ limit - 1, solved for t.
        needed = self.period * (1 - (room - 1) / previous)
        return max(0.0, needed - elapsed)


# Counts a request in each window and reads the window before it, all in one command
# (``EVALSHA``, run atomically by Redis): KEYS are (current, previous) per window, ARGV the
# current window's expiry in seconds per window; the answer is (current, previous) per window.
_COUNT_SCRIPT = """
local answer = {}
for i = 1, #ARGV do
  local current = KEYS[2 * i - 1]
  answer[2 * i - 1] = redis.call('INCR', current)
  redis.call('EXPIRE', current, ARGV[i])
  answer[2 * i] = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
end
return answer
"""


class _Counter:
    """Counts a request in several windows at once and reads their previous windows: one
    script, so one command and one round trip, on Redis; the cache API elsewhere."""

    def count(self, windows: list[Window], now: float) -> list[tuple[int, int]]:
        keys = [w.keys(now) for w in windows]
        backend = caches["default"]
        if isinstance(backend, RedisCache):
            return self._count_redis(backend, windows, keys)
        return self._count_cache(backend, windows, keys)

    def uncount(self, windows: list[Window], now: float) -> None:
        backend = caches["default"]
        for window in windows:
            current, _previous = window.keys(now)
            try:
                backend.decr(current)
            except ValueError:  # expired meanwhile: nothing left to take back
                pass

    # One client per connection pool, with the counting script registered on it. Django's cache
    # builds a new ``redis.Redis`` for every call, and building one (its table of reply
    # parsers) cost more than the round trip; a client is safe to share between threads,
    # taking a connection from the pool for each command.
    _clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    @classmethod
    def _script(cls, backend: RedisCache) -> Any:
        cache_client: Any = backend._cache
        pool = cache_client._get_connection_pool(write=True)
        script = cls._clients.get(pool)
        if script is None:
            script = cls._clients[pool] = cache_client._client(connection_pool=pool).register_script(_COUNT_SCRIPT)
        return script

    @classmethod
    def _count_redis(cls, backend: RedisCache, windows: list[Window],
                     keys: list[tuple[str, str]]) -> list[tuple[int, int]]:
        flat = [backend.make_and_validate_key(key) for pair in keys for key in pair]
        answers = cls._script(backend)(keys=flat, args=[2 * w.period for w in windows])
        return [(int(answers[2 * i]), int(answers[2 * i + 1])) for i in range(len(windows))]

    @staticmethod
    def _count_cache(backend: Any, windows: list[Window], keys: list[tuple[str, str]]) -> list[tuple[int, int]]:
        previous = backend.get_many([p for _c, p in keys])
        counted = []
        for window, (current_key, previous_key) in zip(windows, keys, strict=True):
            backend.add(current_key, 0, timeout=2 * window.period)
            try:
                current = backend.incr(current_key)
            except ValueError:  # expired between add and incr
                backend.set(current_key, 1, timeout=2 * window.period)
                current = 1
            counted.append((int(current), int(previous.get(previous_key) or 0)))
        return counted


class RateThrottle(BaseThrottle):
    """The API's per-user and per-token limits (``scopes``), counted together."""

    scopes: ClassVar[tuple[str, str]] = ("user", "token")
    counter = _Counter()
    timer = staticmethod(time.time)

    def __init__(self) -> None:
        self._wait = 0.0

    def _windows(self, request: Request) -> list[Window]:
        user_scope, token_scope = self.scopes
        rates = settings.API_THROTTLE_RATES
        windows = []
        user_rate = rates.get(user_scope)
        if user_rate:
            user = request.user
            ident = f"u{user.pk}" if user is not None and user.is_authenticated else f"ip{self.get_ident(request)}"
            windows.append(Window(f"rate:{user_scope}:{ident}", *parse_rate(user_rate)))
        token_rate = rates.get(token_scope)
        digest = getattr(request.auth, "digest", None)
        if token_rate and digest:
            # Keyed by the token's digest, never the token.
            windows.append(Window(f"rate:{token_scope}:{digest[:64]}", *parse_rate(token_rate)))
        return windows

    def allow_request(self, request: Request, view: Any) -> bool:
        windows = self._windows(request)
        if not windows:
            return True
        now = self.timer()
        counted = self.counter.count(windows, now)
        refused = [(w, c, p) for w, (c, p) in zip(windows, counted, strict=True) if w.estimate(now, c, p) > w.limit]
        if not refused:
            return True
        self.counter.uncount(windows, now)
        self._wait = max(w.wait(now, c, p) for w, c, p in refused)
        return False

    def wait(self) -> float | None:
        return float(max(1, math.ceil(self._wait)))


class ExportRateThrottle(RateThrottle):
    scopes = ("export", "export_token")


def export_throttles() -> list[type[BaseThrottle]]:
    """The throttles of an export endpoint: the API's own, then the export rates."""
    defaults = cast(list[type[BaseThrottle]], list(api_settings.DEFAULT_THROTTLE_CLASSES))
    return [*defaults, ExportRateThrottle]
