from django.contrib.auth.models import User
from rest_framework.request import Request


def request_user(request: Request) -> User:
    """The signed-in user of a request that passed ``IsAuthenticated``."""
    user = request.user
    assert isinstance(user, User), "request_user() needs an authenticated request"
    return user
