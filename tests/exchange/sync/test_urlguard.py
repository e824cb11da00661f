"""URL connections cannot be pointed at the exchange's own network (SSRF guard)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from exchange.sync import urlguard
from exchange.sync.allowlist import parse_allowed
from exchange.sync.models import RunStatus, Source
from tests.exchange.sync.helpers import run_ingest
from tests.sync_factories import PERMIT_FIELDS, connection, csv_bytes, identity_mapping, permit_rows, published_dataset

CSV = csv_bytes([f[0] for f in PERMIT_FIELDS], permit_rows(5))


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    """On 127.0.0.1: /permits.csv, and /to?u=URL redirecting to URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/to?u="):
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/to?u="))
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.end_headers()
            self.wfile.write(CSV)

        do_HEAD = do_GET  # noqa: N815

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def base(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def nothing_allowed(settings):
    settings.SYNC_URL_ALLOWED_NETWORKS = []


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1/x.csv", "a loopback address"),
    ("http://127.8.9.10:8080/x.csv", "a loopback address"),
    ("http://[::1]/x.csv", "a loopback address"),
    ("http://[::ffff:127.0.0.1]/x.csv", "a loopback address"),
    ("http://10.1.2.3/x.csv", "a private address"),
    ("http://172.16.0.1/x.csv", "a private address"),
    ("https://192.168.1.20/x.csv", "a private address"),
    ("http://[fd00::1]/x.csv", "a private address"),
    ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
    ("http://[fe80::1]/x.csv", "a link-local address"),
    ("http://224.0.0.1/x.csv", "a multicast address"),
    ("http://0.0.0.0/x.csv", "an unspecified address"),
    ("http://240.0.0.1/x.csv", "a reserved address"),
    ("http://100.64.0.1/x.csv", "a non-public address"),  # carrier-grade NAT
])
def test_internal_addresses_are_refused(nothing_allowed, url, why):
    with pytest.raises(urlguard.UrlRefused, match=why):
        urlguard.urlopen(url, timeout=2)


def test_every_resolved_address_is_checked(nothing_allowed, monkeypatch):
    def two_addresses(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    with pytest.raises(urlguard.UrlRefused, match=r"data\.example resolves to 10\.0\.0\.7, a private address"):
        urlguard.urlopen("https://data.example/permits.csv", timeout=2)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://data.example/x.csv", "gopher://data.example/",
                                 "data:text/csv,a,b", "http:///no-host"])
def test_only_http_and_https_with_a_host(url):
    with pytest.raises(urlguard.UrlRefused):
        urlguard.urlopen(url, timeout=2)


def test_redirects_are_checked_like_the_first_request(server):
    # 127.0.0.1 is allowed in the test settings; 127.0.0.2 and the metadata address are not.
    port = server.server_address[1]
    with urlguard.urlopen(f"{base(server)}/to?u={base(server)}/permits.csv", timeout=5) as response:
        assert response.read() == CSV
    for target in (f"http://127.0.0.2:{port}/permits.csv", "http://169.254.169.254/latest/meta-data/"):
        with pytest.raises(urlguard.UrlRefused, match="resolves to"):
            urlguard.urlopen(f"{base(server)}/to?u={target}", timeout=5)
    with pytest.raises(urlguard.UrlRefused, match="Only http"):
        urlguard.urlopen(f"{base(server)}/to?u=file:///etc/passwd", timeout=5)


def test_the_allow_list_admits_networks_and_host_names(settings, server):
    port = server.server_address[1]
    settings.SYNC_URL_ALLOWED_NETWORKS = []
    with pytest.raises(urlguard.UrlRefused):
        urlguard.urlopen(f"{base(server)}/permits.csv", timeout=5)
    settings.SYNC_URL_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with urlguard.urlopen(f"{base(server)}/permits.csv", timeout=5) as response:
        assert response.read() == CSV
    settings.SYNC_URL_ALLOWED_NETWORKS = ["LocalHost"]  # by name: whatever it resolves to
    with urlguard.urlopen(f"http://localhost:{port}/permits.csv", timeout=5) as response:
        assert response.read() == CSV
    with pytest.raises(urlguard.UrlRefused):
        urlguard.urlopen(f"{base(server)}/permits.csv", timeout=5)  # the address itself is not listed


def test_allow_list_entries_are_validated():
    networks, hosts = parse_allowed(["10.0.0.0/8", " fd00::/8 ", "data.internal.example", ""])
    assert [str(n) for n in networks] == ["10.0.0.0/8", "fd00::/8"] and hosts == {"data.internal.example"}
    for bad in ("10.0.0.0/33", "300.1.1.1", "fd00::zz"):
        with pytest.raises(ValueError, match="neither a network"):
            parse_allowed([bad])


@pytest.mark.django_db
def test_test_connection_and_runs_say_why_they_refuse(as_user, people, department, nothing_allowed):
    conn = connection(department=department, kind="url", secret="http://169.254.169.254/latest/meta-data/")
    body = as_user(people["steward"]).post(f"/api/v1/sync/connections/{conn.pk}/test/").json()
    assert body["ok"] is False and "169.254.169.254, a link-local address" in body["message"]
    dataset = published_dataset(department=department)
    source = Source.objects.create(dataset=dataset, connection=conn, mapping=identity_mapping())
    run = run_ingest(source)
    # Refused at once, not retried as if the host were merely unreachable.
    assert run.status == RunStatus.FAILED and run.attempts == 1
    assert "only fetches from public addresses" in run.error and "SYNC_URL_ALLOWED_NETWORKS" in run.error


@pytest.mark.parametrize("url", ["http://2130706433/x.csv", "http://0177.0.0.1/x.csv", "http://127.1/x.csv",
                                 "http://0x7f.0.0.1/x.csv", "http://[2002:7f00:1::]/x.csv",
                                 "http://[2002:a9fe:a9fe::1]/latest/meta-data/", "http://[::127.0.0.1]/x.csv"])
def test_other_spellings_of_internal_addresses_are_refused(nothing_allowed, url):
    # Decimal, octal, short and hexadecimal IPv4, 6to4 and IPv4-compatible IPv6: each is
    # checked as the address the socket would connect to.
    with pytest.raises(urlguard.UrlRefused, match="address: the exchange only fetches from public"):
        urlguard.urlopen(url, timeout=2)


def _resolver(names: dict[str, str]) -> Any:
    real = socket.getaddrinfo

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], port))]
        return real(host, port, *args, **kwargs)

    return resolve


@pytest.mark.parametrize(("host", "address", "why"), [
    ("localhost.data.example", "127.0.0.1", "a loopback address"),
    ("metadata.data.example", "169.254.169.254", "a link-local address"),
    ("intranet.data.example", "192.168.10.5", "a private address"),
])
def test_a_host_name_resolving_to_an_internal_address_is_refused(nothing_allowed, monkeypatch, host, address, why):
    monkeypatch.setattr(socket, "getaddrinfo", _resolver({host: address}))
    with pytest.raises(urlguard.UrlRefused, match=f"{host} resolves to {address}, {why}"):
        urlguard.urlopen(f"https://{host}/permits.csv", timeout=2)


def test_a_redirect_to_a_name_resolving_inside_is_refused(settings, server, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _resolver({"inside.data.example": "10.9.8.7"}))
    with pytest.raises(urlguard.UrlRefused, match=r"inside\.data\.example resolves to 10\.9\.8\.7, a private"):
        urlguard.urlopen(f"{base(server)}/to?u=http://inside.data.example/permits.csv", timeout=5)


def test_the_socket_connects_to_the_checked_address_not_a_second_lookup(nothing_allowed, monkeypatch):
    """DNS rebinding: a name that answers a public address to the check and a private one
    to the connection gains nothing, because there is no second lookup."""
    answers = iter(["93.184.215.14", "127.0.0.1"])
    lookups: list[str] = []
    connected: list[Any] = []

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    def connect(self: socket.socket, address: Any) -> None:
        connected.append(address)
        raise ConnectionRefusedError("not in tests")

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(OSError):
        urlguard.urlopen("http://rebind.data.example/permits.csv", timeout=2)
    assert lookups == ["rebind.data.example"] and connected == [("93.184.215.14", 80)]


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "why"), [("http://127.0.0.1:9/x.csv", "a loopback address"),
                                          ("http://[fe80::1]/x.csv", "a link-local address"),
                                          ("http://10.0.0.8/x.csv", "a private address"),
                                          ("http://169.254.169.254/latest/meta-data/", "a link-local address")])
def test_an_internal_address_is_refused_when_the_connection_is_saved(as_user, people, nothing_allowed, url, why):
    response = as_user(people["steward"]).post("/api/v1/sync/connections/", {
        "department": "transport", "name": "feed", "kind": "url", "secret": url})
    assert response.status_code == 400 and why in response.json()["error"]["message"]


@pytest.mark.django_db
def test_a_run_redirected_inside_fails_with_the_reason(department, server, nothing_allowed, settings):
    settings.SYNC_URL_ALLOWED_NETWORKS = ["127.0.0.1/32"]  # the test server itself
    port = server.server_address[1]
    conn = connection(department=department, kind="url",
                      secret=f"{base(server)}/to?u=http://127.0.0.2:{port}/permits.csv")
    source = Source.objects.create(dataset=published_dataset(department=department), connection=conn,
                                   mapping=identity_mapping())
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED and run.attempts == 1
    assert "127.0.0.2 resolves to 127.0.0.2, a loopback address" in run.error
