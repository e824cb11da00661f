"""Fetching a steward's URL without letting it reach the exchange's own network (SSRF).

A URL connection is fetched only over http or https, from a host whose every resolved address
is a public one: loopback, private, link-local (the cloud metadata service at
169.254.169.254 among them), shared, multicast, unspecified and reserved addresses are
refused, unless an operator allowed the address or the host name in
``SYNC_URL_ALLOWED_NETWORKS`` (an internal open-data service, the test suite's local server).

The check happens where the socket is opened, on the addresses the connection then uses, so a
host name that resolves differently between a check and the connection (DNS rebinding) gains
nothing; every redirect opens a new connection and is checked the same way. Proxies from the
environment are not used: through a proxy the exchange could not see where a request goes.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from typing import Any
from urllib.parse import urljoin, urlsplit

from django.conf import settings

from exchange.sync.allowlist import parse_allowed
from exchange.sync.errors import SourceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(SourceError):
    """The URL points where the exchange does not fetch from."""


def _refusal(address: IPAddress) -> str:
    """Why the address is not fetched from, or '' if it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _refusal(address.ipv4_mapped)
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        # 6to4 (2002::/16) carries an IPv4 address that a relay would deliver to.
        return _refusal(address.sixtofour)
    for label, test in (("a loopback", address.is_loopback), ("a link-local", address.is_link_local),
                        ("a multicast", address.is_multicast), ("an unspecified", address.is_unspecified),
                        ("a reserved", address.is_reserved), ("a private", address.is_private)):
        if test:
            return f"{label} address"
    if not address.is_global:
        return "a non-public address"
    return ""


def check_address(host: str, address: str) -> None:
    """Raise UrlRefused unless ``address`` (one that ``host`` resolved to) may be fetched from."""
    networks, hosts = parse_allowed(settings.SYNC_URL_ALLOWED_NETWORKS)
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if host.lower().rstrip(".") in hosts or any(ip in n for n in networks):
        return
    why = _refusal(ip)
    if why:
        raise UrlRefused(
            f"The URL's host {host} resolves to {ip}, {why}: the exchange only fetches from public "
            f"addresses (an operator can allow internal ones with SYNC_URL_ALLOWED_NETWORKS)."
        )


def check_literal(url: str) -> None:
    """Refuse (UrlRefused) a URL whose host is an IP address that may not be fetched from.
    Host names pass: only the addresses they resolve to when fetched count."""
    check_scheme(url)
    try:
        host = urlsplit(url).hostname or ""
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return
    check_address(host, host)


def check_scheme(url: str) -> None:
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise UrlRefused("Only http:// and https:// URLs can be sources.")


def _guarded_create_connection(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
                               source_address: Any = None) -> socket.socket:
    """socket.create_connection, but every address the host resolves to is checked first, and
    the socket is connected to those checked addresses, not to a second lookup's."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from exc
    for *_, sockaddr in infos:
        check_address(host, str(sockaddr[0]))
    error: OSError | None = None
    for family, type_, proto, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"cannot connect to {host}")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_GuardedHTTPConnection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_GuardedHTTPSConnection, req, context=self._context)  # type: ignore[attr-defined]


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Redirects to anything but http(s) are refused with our message; where an http(s)
    redirect leads is checked when its connection opens."""

    max_redirections = 5

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any) -> Any:
        location = headers.get("location") or headers.get("uri")
        if location:
            check_scheme(urljoin(req.full_url, location))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302  # type: ignore[assignment]


def _opener() -> urllib.request.OpenerDirector:
    """Only http and https (no file:, ftp:, data:), no proxies, guarded sockets."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler({}), urllib.request.UnknownHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _RedirectHandler(),
                    urllib.request.HTTPErrorProcessor(), _GuardedHTTPHandler(), _GuardedHTTPSHandler()):
        opener.add_handler(handler)
    return opener


def urlopen(url: str, *, method: str = "GET", timeout: float) -> Any:
    """Open ``url`` like ``urllib.request.urlopen``, refusing (UrlRefused) what this module
    describes. HTTP errors and unreachable hosts raise as urllib raises them."""
    check_scheme(url)
    if not urlsplit(url).hostname:
        raise UrlRefused("The URL names no host.")
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "city-data-exchange/1"})  # noqa: S310
    return _opener().open(request, timeout=timeout)
