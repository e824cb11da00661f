"""The operator's allow-list of internal networks and hosts for URL connections; plain Python,
so that settings can check it at start-up."""

from __future__ import annotations

import ipaddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allowed(entries: list[str]) -> tuple[list[IPNetwork], set[str]]:
    """The allow-list as networks and lower-case host names. Raises ValueError on an entry
    that looks like an address or network but is not one (``10.0.0.0/33``)."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "/" in entry or ":" in entry or entry.replace(".", "").isdigit():
                raise ValueError(f"{entry!r} is neither a network (CIDR) nor a host name") from None
            hosts.add(entry.lower().rstrip("."))
    return networks, hosts
