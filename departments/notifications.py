"""Telling people what happened and what waits on them: an inbox row per recipient, and an
email sent after the surrounding transaction commits (never for a change that rolled back)."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import send_mass_mail
from django.db import transaction
from django.db.models import Model
from django.utils import timezone

from departments.models import Notification


def notify(
    *,
    recipients: Iterable[User],
    kind: str,
    subject: str,
    body: str = "",
    link: str = "",
    action_required: bool = False,
    obj: Model | None = None,
) -> list[Notification]:
    people = {u.pk: u for u in recipients if u is not None and u.is_active}
    if not people:
        return []
    rows = Notification.objects.bulk_create(
        Notification(
            recipient=user, kind=kind, subject=subject[:200], body=body, link=link,
            action_required=action_required,
            object_type=obj._meta.label_lower if obj is not None else "",
            object_id=str(obj.pk) if obj is not None else "",
        )
        for user in people.values()
    )
    url = f"{settings.SITE_URL}{link}" if link else settings.SITE_URL
    messages = tuple(
        (f"[City data exchange] {subject}", f"{body}\n\n{url}\n", settings.DEFAULT_FROM_EMAIL, [user.email])
        for user in people.values() if user.email
    )
    if messages:
        transaction.on_commit(lambda: send_mass_mail(messages, fail_silently=True))
    return rows


def inbox(*, user: User, unread_only: bool = False):  # type: ignore[no-untyped-def]
    qs = Notification.objects.filter(recipient=user)
    return qs.filter(read_at__isnull=True) if unread_only else qs


def notification_mark_read(*, user: User, notification_ids: Iterable[int] | None = None) -> int:
    qs = Notification.objects.filter(recipient=user, read_at__isnull=True)
    if notification_ids is not None:
        qs = qs.filter(pk__in=list(notification_ids))
    return qs.update(read_at=timezone.now())
