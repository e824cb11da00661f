from __future__ import annotations

from hmac import compare_digest
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.db.models.expressions import RawSQL
from django.utils import timezone
from knox.auth import TokenAuthentication
from knox.crypto import hash_token
from knox.models import get_token_model
from knox.settings import CONSTANTS
from rest_framework import HTTP_HEADER_ENCODING, exceptions
from rest_framework.authentication import get_authorization_header

from departments.access_version import VERSION_ATTR, VERSION_SQL


class ExpiringTokenAuthentication(TokenAuthentication):
    """API tokens from django-rest-knox: stored only as SHA-512 digests, each with an expiry,
    revocable one by one. Unlike knox's own check, a malformed token is a clean 401 rather
    than a decoding error, and an expired token says so instead of "invalid". The statement
    that finds the token also reads the access version, for the records request's cached
    context (``exchange/records/read_cache.py``): one round trip fewer per request."""

    def authenticate_credentials(self, token: bytes) -> Any:
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Malformed token.", code="malformed_token") from exc
        if not text.isalnum() or not CONSTANTS.TOKEN_KEY_LENGTH <= len(text) <= 128:
            raise exceptions.AuthenticationFailed("Malformed token.", code="malformed_token")
        digest = hash_token(text)
        candidates = get_token_model().objects.filter(token_key=text[: CONSTANTS.TOKEN_KEY_LENGTH])
        candidates = candidates.select_related("user").annotate(
            access_version=RawSQL(VERSION_SQL, ()))  # noqa: S611 - a fixed statement without input
        for auth_token in candidates:
            if not compare_digest(digest, auth_token.digest):
                continue
            if auth_token.expiry is not None and auth_token.expiry < timezone.now():
                raise exceptions.AuthenticationFailed(
                    "This token has expired; sign in again to get a new one.", code="token_expired"
                )
            setattr(auth_token.user, VERSION_ATTR, auth_token.access_version)
            return self.validate_user(auth_token)
        raise exceptions.AuthenticationFailed("Invalid token.", code="invalid_token")


class CkanTokenAuthentication(ExpiringTokenAuthentication):
    """The same tokens, presented the ways CKAN clients present them (CKAN endpoints only):
    bare in ``X-CKAN-API-Key`` or in ``Authorization`` (ckanapi sends both), or as
    ``Authorization: Token …``. ``X-CKAN-API-Key`` wins, as in CKAN. An ``Authorization``
    header of another scheme (``Basic …``) is not a token and is left to other backends."""

    def authenticate(self, request: Any) -> Any:
        api_key = request.headers.get("X-CKAN-API-Key", "")
        if api_key:
            return self.authenticate_credentials(api_key.encode(HTTP_HEADER_ENCODING))
        words = get_authorization_header(request).split()
        if len(words) == 1:
            return self.authenticate_credentials(words[0])
        return super().authenticate(request)


class SessionUserBackend(ModelBackend):
    """Django's model backend, whose session lookup (``get_user``, once per signed-in page)
    reads the access version in the statement that loads the user, as token authentication
    does: the principal (``departments.selectors.principal_of``) is then taken from the
    per-process cache when no membership, department or city role changed since."""

    def get_user(self, user_id: Any) -> Any:
        model = get_user_model()
        user = (model._default_manager.filter(pk=user_id)
                .annotate(_version=RawSQL(VERSION_SQL, ()))  # noqa: S611 - a fixed statement without input
                .first())
        if user is None:
            return None
        setattr(user, VERSION_ATTR, user.__dict__.pop("_version"))
        return user if self.user_can_authenticate(user) else None
