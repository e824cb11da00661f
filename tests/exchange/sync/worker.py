"""Real Celery worker processes for the sync tests (like conftest's ``celery_worker``, but
several may share a queue, with extra environment, and a test may kill one with SIGKILL),
and a local HTTP server that can serve a file slowly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import database_url_of_test_db


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    queue: str
    logfile: Path

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def children(self) -> list[int]:
        pids: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").glob("*"):
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        return pids

    def kill(self) -> None:
        """SIGKILL the pool children and the main process: nothing gets to clean up."""
        for pid in self.children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(queue: str, *, env: dict[str, str] | None = None, concurrency: int = 1) -> Worker:
    logfile = Path(tempfile.mkstemp(prefix="sync-worker-", suffix=".log")[1])
    full_env = {
        **os.environ, "DATABASE_URL": database_url_of_test_db(), "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "CELERY_TASK_ALWAYS_EAGER": "0", **(env or {}),
    }
    with logfile.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue, "-n",
             f"{queue}-{time.monotonic_ns()}@localhost", "--pool", "prefork", "--concurrency", str(concurrency),
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
            env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[3],
        )
    worker = Worker(process, queue, logfile)
    deadline = time.monotonic() + 60
    while "ready." not in worker.log():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Celery worker did not start:\n{worker.log()}")
        time.sleep(0.2)
    return worker


def wait_for(condition: Callable[[], Any], *, timeout: float = 60, what: str = "condition",
             worker: Worker | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}" + (f"\n{worker.log()}" if worker else ""))


@dataclass
class Served:
    content: bytes
    chunk_delay: float = 0.0  # seconds between lines, on the first `slow_requests` requests
    slow_requests: int = 0
    fail_first: int = 0  # answer 503 to this many requests first
    requests: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # e.g. ETag, Last-Modified


@dataclass
class FileServer:
    server: ThreadingHTTPServer
    files: dict[str, Served] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_files(port: int = 0) -> FileServer:
    files: dict[str, Served] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, head: bool) -> None:
            served = files.get(self.path)
            if served is None:
                self.send_error(404)
                return
            served.requests += 1
            if served.requests <= served.fail_first:
                self.send_error(503)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            for name, value in served.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if head:
                return
            slow = served.requests <= served.slow_requests
            try:
                for line in served.content.splitlines(keepends=True):
                    self.wfile.write(line)
                    if slow:
                        self.wfile.flush()
                        time.sleep(served.chunk_delay)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:  # noqa: N802
            self._send(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._send(head=True)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return FileServer(server, files)
