"""Outages for the fault tests, without touching the shared PostgreSQL and Redis servers: a
TCP forwarder on loopback that the worker, beat and web processes connect through, and that a
test cuts (every connection dropped, new ones refused) and restores; plus beat and web
processes, and the checks that source, store and target agree."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import database_url_of_test_db

ROOT = Path(__file__).resolve().parents[3]


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``. ``down()`` drops every open connection and
    closes the port (connections are refused, as by a stopped server); ``up()`` listens on the
    same port again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._down = False
        self.connections = 0  # accepted so far: shows that clients came back after an outage
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._start_accepting()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        listener.settimeout(0.2)  # the accept loop notices an outage within this
        return listener

    def _start_accepting(self) -> None:
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                if listener.fileno() == -1:
                    return
                continue
            except OSError:  # closed by down()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
                client.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._down:
                    client.close()
                    server.close()
                    continue
                self._sockets |= {client, server}
                self.connections += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def down(self) -> None:
        with self._lock:
            self._down = True
            self._listener.close()
            open_sockets = list(self._sockets)
        for s in open_sockets:
            self._close(s)

    def up(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                listener = self._listen(self.port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with self._lock:
            self._down = False
            self._listener = listener
        self._start_accepting()

    def close(self) -> None:
        self.down()


def postgres_proxy() -> tuple[FaultProxy, str]:
    """A proxy in front of the test database, and the DATABASE_URL that goes through it."""
    direct = urlsplit(database_url_of_test_db())
    proxy = FaultProxy((direct.hostname or "127.0.0.1", direct.port or 5432))
    netloc = direct.netloc.rsplit("@", 1)
    via = (netloc[0] + "@" if len(netloc) == 2 else "") + f"127.0.0.1:{proxy.port}"
    return proxy, urlunsplit(direct._replace(netloc=via))


def redis_proxy(redis_url: str) -> tuple[FaultProxy, str]:
    """A proxy in front of the configured Redis, and the REDIS_URL (same db) through it."""
    direct = urlsplit(redis_url)
    proxy = FaultProxy((direct.hostname or "127.0.0.1", direct.port or 6379))
    auth = direct.netloc.rsplit("@", 1)
    via = (auth[0] + "@" if len(auth) == 2 else "") + f"127.0.0.1:{proxy.port}"
    return proxy, urlunsplit(direct._replace(netloc=via))


# --- Beat and web processes -----------------------------------------------------------------

@dataclass
class Process:
    process: subprocess.Popen[bytes]
    logfile: Path

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawn(args: list[str], env: dict[str, str], prefix: str) -> Process:
    logfile = Path(tempfile.mkstemp(prefix=prefix, suffix=".log")[1])
    full_env = {**os.environ, "DATABASE_URL": database_url_of_test_db(),
                "DJANGO_SETTINGS_MODULE": "config.test_settings", "CELERY_TASK_ALWAYS_EAGER": "0", **env}
    with logfile.open("wb") as out:
        process = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return Process(process, logfile)


def start_beat(env: dict[str, str]) -> Process:
    """``celery beat`` with the database scheduler, as in production."""
    schedule = Path(tempfile.mkdtemp(prefix="beat-")) / "schedule"
    beat = _spawn([sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
                   "--schedule", str(schedule), "--max-interval", "1"], env, "beat-")
    _wait_started(beat, "beat: Starting...")
    return beat


def start_web(env: dict[str, str]) -> tuple[Process, str]:
    """gunicorn serving the WSGI application on a free loopback port; returns it and its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = _spawn([sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
                  "--workers", "1", "--timeout", "60"], env, "web-")
    _wait_started(web, "Booting worker")
    return web, f"http://127.0.0.1:{port}"


def _wait_started(process: Process, marker: str) -> None:
    deadline = time.monotonic() + 60
    while marker not in process.log():
        if not process.alive() or time.monotonic() > deadline:
            process.stop()
            pytest.fail(f"process did not start:\n{process.log()}")
        time.sleep(0.2)


def http_status(url: str, timeout: float = 5) -> int | None:
    """The status code of a GET, or None if nothing answered."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback test server
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


# --- Agreement of source, store and target --------------------------------------------------

def checksum(rows: Iterable[Sequence[Any]]) -> str:
    """An order-independent checksum of rows (each value by its text)."""
    lines = sorted("\x1f".join("" if v is None else str(v) for v in row) for row in rows)
    return hashlib.sha256("\x1e".join(lines).encode()).hexdigest()
