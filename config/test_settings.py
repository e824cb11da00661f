"""Settings for the test suite: the production settings, with a fast hasher, mail kept in
memory and Celery eager unless a test starts a real worker."""

import os
from pathlib import Path

os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-used-anywhere-else-0123456789abcdef")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
# The suite serves its URL sources from loopback; the SSRF tests take the allowance away.
os.environ.setdefault("SYNC_URL_ALLOWED_NETWORKS", "127.0.0.1/32")
# Tests never share a broker directory with a `make run` on the same checkout.
os.environ.setdefault("BROKER_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test-broker"))

from config.settings import *  # noqa: E402,F403
from config.settings import STORAGES  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# Eager in the test process; a real worker process started by a test sets it to 0, so that the
# tasks it sends itself (retries with their backoff, the reaper's re-runs) go through the broker.
CELERY_TASK_ALWAYS_EAGER = os.environ.get("CELERY_TASK_ALWAYS_EAGER", "1") != "0"
CELERY_TASK_EAGER_PROPAGATES = True
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"login": "1000/min"}  # noqa: F405
# The throttle tests set their own rates; everything else must never meet one.
API_THROTTLE_RATES = {"user": "100000/min", "token": "100000/min", "export": "100000/min",
                      "export_token": "100000/min"}
