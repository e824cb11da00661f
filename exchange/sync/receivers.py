"""How data movement reacts to grant changes (exchange.access.signals), connected in
ExchangeConfig.ready()."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from exchange.sync.services import subscriptions_end_for_grant, subscriptions_lock_for_grant


def on_grant_changing(sender: Any, *, grant: Any, **_: Any) -> None:
    subscriptions_lock_for_grant(grant=grant)


def on_grant_narrowed(sender: Any, *, grant: Any, reason: str, at: datetime | None, **_: Any) -> None:
    subscriptions_end_for_grant(grant=grant, reason=reason, at=at)
