"""Connection secrets: encrypted at rest with Fernet, shown only in redacted form."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@lru_cache(maxsize=1)
def _fernet() -> MultiFernet:
    keys = list(settings.FIELD_ENCRYPTION_KEYS)
    if not keys:
        # Derived, so the embedded default needs no extra variable; see settings.
        digest = hashlib.sha256(("field-encryption:" + settings.SECRET_KEY).encode()).digest()
        keys = [base64.urlsafe_b64encode(digest).decode()]
    return MultiFernet([Fernet(k.encode()) for k in keys])


def encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("the connection secret cannot be decrypted with the configured key") from exc


_SECRET_QUERY_HINTS = ("pass", "secret", "token", "key", "sig", "auth", "credential")


def redact(secret: str) -> str:
    """``postgres://user:***@host/db``: the password and secret-looking query values hidden."""
    if "://" not in secret:
        return secret  # a file path
    parts = urlsplit(secret)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = urlencode(
        [(k, "***" if any(h in k.lower() for h in _SECRET_QUERY_HINTS) else v)
         for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
