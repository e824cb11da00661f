"""What the grant services tell the packages above them that must act in the same transaction
(exchange.sync: the subscriptions a grant feeds), without access knowing those packages. The
receivers are connected in ExchangeConfig.ready(); signals are sent synchronously, so a
receiver's error aborts the grant change with it."""

from __future__ import annotations

from typing import Any

from django.dispatch import Signal

# Sent with ``grant`` before a grant service that may end subscriptions appends anything to
# the audit trail, so that receivers take their row locks first (the order matters: see
# exchange.sync.services.subscriptions_lock_for_grant).
grant_changing = Signal()

# Sent with ``grant``, ``reason`` and ``at`` (the moment it ended) in the transaction that
# revoked, expired or narrowed the grant: deliveries stop with the grant, not at their next run.
grant_narrowed = Signal()


def send_required(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal``; a process where nobody listens would let deliveries outlive their
    grant, so that is an error, not a no-op."""
    if not signal.send(sender=None, **kwargs):
        raise RuntimeError("no receiver is connected to a grant signal (is the exchange app ready?)")
