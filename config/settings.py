"""Settings for the city data exchange.

Everything that differs between a laptop and production is read from the environment here,
and only here, through django-environ's typed helpers (a malformed value fails at start-up,
not at the first request). The embedded default needs no variable at all: a SQLite file and
a broker kept in files under ``var/``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

VAR_DIR = Path(env.str("EXCHANGE_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)
(VAR_DIR / "static").mkdir(exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)


def _secret_key() -> str:
    key = env.str("SECRET_KEY", default="")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    # Development only: one random key per checkout, kept so sessions survive restarts.
    key_file = VAR_DIR / "dev-secret-key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS: list[str] = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Public base URL, used where the exchange must name itself (DCAT identifiers, links in mail).
# Behind a reverse proxy that sets X-Forwarded-For, take the client address from it (audit).
TRUST_X_FORWARDED_FOR = env.bool("TRUST_X_FORWARDED_FOR", default=False)
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "guardian",
    "django_filters",
    "drf_spectacular",
    "django_celery_beat",
    "django_htmx",
    "axes",
    "departments",
    "catalog",
    "exchange",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.RequestContextMiddleware",
    # Inside the request context; around everything that queries (the audit barrier too).
    "config.middleware.StatementTimeoutMiddleware",
    # Inside the request context: waits for a read's audit append before the response leaves.
    "exchange.audit.writer.AuditBarrierMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: turns a refused login of a locked-out user and address into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "departments.context_processors.roles",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'exchange.sqlite3'}")
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.postgresql":
    _db.setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
    _db["CONN_HEALTH_CHECKS"] = True
    # The same backend, with a health check that needs no round trip (see the module).
    _db["ENGINE"] = "config.postgresql"
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one file: wait for a lock rather than fail, and let
    # readers proceed beside a writer (WAL). "IMMEDIATE" takes the write lock at BEGIN so
    # two writers queue instead of dead-locking on a lock upgrade.
    _db.setdefault("OPTIONS", {})
    _db["OPTIONS"].update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file, not memory, so that a real worker process can open the test database too.
    _db.setdefault("TEST", {})["NAME"] = str(VAR_DIR / "test-exchange.sqlite3")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# PostgreSQL: statements run through ``connection.prepared_cursor()`` (a records page, a token's
# lookup) are prepared per connection (config/postgresql). Off behind a pooler that cannot.
DATABASE_PREPARED_STATEMENTS = env.bool("DATABASE_PREPARED_STATEMENTS", default=True)

# --- Auth -----------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    # First: refuses every password check, right or wrong, of a locked-out user and address.
    "axes.backends.AxesStandaloneBackend",
    # Django's model backend, whose session lookup also reads the access version (for the
    # principal cache). Sessions name the backend that signed them in: those signed in by
    # Django's own ModelBackend before it was replaced here end, and their users sign in again.
    "departments.authentication.SessionUserBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Guessing passwords (django-axes): after LOGIN_FAILURE_LIMIT failed logins of one username from
# one address, that pair is refused for LOGIN_LOCKOUT_MINUTES, on the web and the API alike.
# Keyed on the pair, so nobody can lock a colleague out from elsewhere. A success resets it.
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "config.middleware.client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_DISABLE_ACCESS_LOG = True  # successful and failed logins are already in the audit trail
AXES_VERBOSE = False
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user; everything needs a login.

# --- Internationalisation ------------------------------------------------------------------
LANGUAGE_CODE = "en-gb"
TIME_ZONE = env.str("TIME_ZONE", default="Europe/Berlin")
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))

# --- Email ----------------------------------------------------------------------------------
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="exchange@city.example")

# --- Security (production) ------------------------------------------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = env.list("SILENCED_SYSTEM_CHECKS", default=[])

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "departments.authentication.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "config.api.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "config.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.ScopedRateThrottle",
        "config.api.throttling.RateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {"login": env.str("LOGIN_THROTTLE_RATE", default="20/min")},
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # `?format=` belongs to the export endpoints (csv, ndjson), not to renderer selection.
    "URL_FORMAT_OVERRIDE": None,
}


def _rate(name: str, default: str) -> str | None:
    """A DRF rate ("600/min"; "0" or "off": no limit), checked at start-up."""
    value = env.str(name, default=default).strip().lower()
    if value in ("0", "off", "none", ""):
        return None
    count, _, period = value.partition("/")
    if not count.isdigit() or not period or period[0] not in "smhd":
        raise ImproperlyConfigured(f"{name} must look like 600/min (or 0 for no limit), not {value!r}.")
    return value


# Per user (all their tokens and sessions together; anonymous callers per address), per API
# token, and for exports again per user and per token (config/api/throttling.py).
API_THROTTLE_RATES: dict[str, str | None] = {
    "user": _rate("API_USER_THROTTLE_RATE", "1200/min"),
    "token": _rate("API_TOKEN_THROTTLE_RATE", "600/min"),
    "export": _rate("EXPORT_USER_THROTTLE_RATE", "60/hour"),
    "export_token": _rate("EXPORT_TOKEN_THROTTLE_RATE", "30/hour"),
}
# Largest page_size of the API's lists (larger ones are refused, 400); records pages have
# their own (RECORDS_MAX_PAGE_SIZE).
API_MAX_PAGE_SIZE = env.int("API_MAX_PAGE_SIZE", default=500)
# On PostgreSQL (and SQLite), no statement of a web or API request runs longer than this,
# nor one of an export's stream longer than the export's (0: no limit). Filters, search and
# ordering are the user's; a refused one is a 503 (code query_timeout), not a 500.
REQUEST_STATEMENT_TIMEOUT_SECONDS = env.float("REQUEST_STATEMENT_TIMEOUT_SECONDS", default=30)
EXPORT_STATEMENT_TIMEOUT_SECONDS = env.float("EXPORT_STATEMENT_TIMEOUT_SECONDS", default=900)
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=env.int("API_TOKEN_TTL_HOURS", default=24 * 7)),
    "TOKEN_LIMIT_PER_USER": env.int("API_TOKEN_LIMIT_PER_USER", default=20),
    "AUTO_REFRESH": False,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "City data exchange API",
    "DESCRIPTION": (
        "Catalogue, access requests, grants, records and audit of the city data exchange. "
        "Authenticate with `Authorization: Token <token>` (POST /api/v1/auth/login/) or a "
        "browser session. Every error has the shape `{\"error\": {status, code, message, fields}}`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a `status`; name each choice set after its model.
    "ENUM_NAME_OVERRIDES": {
        "DatasetStatusEnum": "catalog.models.DatasetStatus",
        "SchemaStatusEnum": "catalog.models.SchemaStatus",
        "AccessRequestStatusEnum": "exchange.access.models.RequestStatus",
        "GrantStatusEnum": "exchange.access.models.GrantStatus",
        "AccessFormEnum": "exchange.access.models.AccessForm",
        "DataRequestStatusEnum": "exchange.demand.models.DataRequestStatus",
        "ObjectionStatusEnum": "exchange.objections.models.ObjectionStatus",
        "ObjectionKindEnum": "exchange.objections.models.ObjectionKind",
    },
}

# --- Cache ----------------------------------------------------------------------------------
# What several processes must count together (the API's login throttle) lives in Redis when
# there is one; the embedded default runs one web process, whose memory is enough.
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "KEY_PREFIX": "exchange"}}

# --- Celery ---------------------------------------------------------------------------------
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        # A task not acknowledged within this time is handed to another worker; longer than
        # any hard time limit so that a slow but live task is never run twice at once.
        "visibility_timeout": 3 * 3600,
    }
else:
    # Embedded default: kombu's filesystem transport, a directory of message files that
    # web, worker and beat processes on one machine share. No server to install.
    _broker_dir = Path(env.str("BROKER_DIR", default=str(VAR_DIR / "broker")))
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)

# --- Exchange-specific ----------------------------------------------------------------------
def _derived_key(label: str) -> str:
    # A key derived from SECRET_KEY, so that a deployment works without extra setup. Production
    # sets its own, so that rotating SECRET_KEY (sessions) does not change pseudonyms or break
    # signatures.
    return hmac.new(SECRET_KEY.encode(), label.encode(), hashlib.sha256).hexdigest()


# Key of the keyed hash (HMAC-SHA256) that pseudonymises granted fields. Pseudonyms are stable
# for joins across datasets and deliveries, and cannot be reversed without this key.
PSEUDONYM_KEY = env.str("PSEUDONYM_KEY", default="") or _derived_key("exchange-pseudonyms")
RECORDS_PAGE_SIZE = env.int("RECORDS_PAGE_SIZE", default=100)
RECORDS_MAX_PAGE_SIZE = env.int("RECORDS_MAX_PAGE_SIZE", default=1000)
# How long a heartbeat from a worker counts as "alive" on the health endpoint.
WORKER_HEARTBEAT_STALE_AFTER = timedelta(seconds=env.int("WORKER_HEARTBEAT_STALE_SECONDS", default=180))


def _positive_days(name: str, default: int) -> int:
    days = env.int(name, default=default)
    if days < 1:
        raise ImproperlyConfigured(f"{name} must be a whole number of days, at least 1 (got {days}).")
    return days


# Access requests and grants: the longest period one request may ask for; how many days before
# a grant ends its grantee and the owning stewards are reminded to renew; how often stewards
# must confirm (recertify) each active grant on their datasets.
ACCESS_REQUEST_MAX_DAYS = _positive_days("ACCESS_REQUEST_MAX_DAYS", 365)
GRANT_REMINDER_DAYS = _positive_days("GRANT_REMINDER_DAYS", 14)
GRANT_RECERTIFY_DAYS = _positive_days("GRANT_RECERTIFY_DAYS", 90)
# How many days the owning stewards have to answer an objection before it goes to the
# governance reviewers.
OBJECTION_ANSWER_DAYS = _positive_days("OBJECTION_ANSWER_DAYS", 10)

# Key of the HMAC that signs audit checkpoints (see exchange/audit.py). Kept out of the
# database so that whoever can rewrite the audit tables cannot forge a checkpoint. The default
# is derived from SECRET_KEY so that every deployment signs without extra setup; set it
# explicitly in production, because rotating SECRET_KEY would otherwise make every existing
# checkpoint fail verification.
AUDIT_HMAC_KEY = env.str("AUDIT_HMAC_KEY", default="") or _derived_key("exchange.audit.checkpoint")
# On PostgreSQL, a web request's read is appended to the audit trail on a connection of its own
# while the page renders, and the response waits for that append's commit before it leaves
# (see exchange/audit/writer.py). Off: those reads are appended inline, on the request's
# connection. A records page asked for as JSON is appended by its own statement either way.
AUDIT_OVERLAP_READS = env.bool("AUDIT_OVERLAP_READS", default=True)

# --- Sync engine (ingest and delivery jobs) ---------------------------------------------------
# Fernet key(s) encrypting connection secrets at rest, comma-separated: the first encrypts,
# all decrypt (rotation). Unset, a key is derived from SECRET_KEY, so a deployment works out
# of the box; set it in production so that rotating SECRET_KEY does not make every stored
# DSN unreadable (and so that the two secrets can be held by different people).
FIELD_ENCRYPTION_KEYS: list[str] = env.list("FIELD_ENCRYPTION_KEY", default=[])
# Rows per batch when reading sources and writing staging / targets (bounds worker memory).
SYNC_BATCH_SIZE = env.int("SYNC_BATCH_SIZE", default=5000)
# A running run whose heartbeat is older than this is orphaned (its worker died): the reaper
# marks it failed and queues a re-run. Heartbeats are written after every batch.
SYNC_RUN_STALE_AFTER = timedelta(seconds=env.int("SYNC_RUN_STALE_SECONDS", default=300))
# A queued run that no worker has claimed this long after it was due (its message was never
# sent, e.g. the broker was down, or was lost) is sent again by the reaper; each further
# resend waits twice as long. A duplicate message is harmless: the claim takes a run once.
SYNC_RUN_RESEND_AFTER = timedelta(seconds=env.int("SYNC_RUN_RESEND_SECONDS", default=300))
# Transient errors (source unreachable, timeouts) are retried with exponential backoff.
SYNC_MAX_RETRIES = env.int("SYNC_MAX_RETRIES", default=4)
SYNC_RETRY_BACKOFF_SECONDS = env.int("SYNC_RETRY_BACKOFF_SECONDS", default=30)
SYNC_SOFT_TIME_LIMIT = env.int("SYNC_SOFT_TIME_LIMIT_SECONDS", default=3 * 3600)
# SQLite source/target files may only live below these directories (a steward must not be
# able to point a connection at the exchange's own database or any other file).
SYNC_SQLITE_DIRS: list[str] = env.list(
    "SYNC_SQLITE_DIRS", default=[str(VAR_DIR / "demo-sources"), str(VAR_DIR / "sqlite")]
)
SYNC_HTTP_TIMEOUT = env.int("SYNC_HTTP_TIMEOUT_SECONDS", default=60)
# URL connections never reach loopback, private, link-local (cloud metadata), multicast or
# reserved addresses (SSRF), except the networks (CIDR) and host names listed here.
SYNC_URL_ALLOWED_NETWORKS: list[str] = env.list("SYNC_URL_ALLOWED_NETWORKS", default=[])
try:
    from exchange.sync.allowlist import parse_allowed

    parse_allowed(SYNC_URL_ALLOWED_NETWORKS)
except ValueError as _exc:
    raise ImproperlyConfigured(f"SYNC_URL_ALLOWED_NETWORKS: {_exc}") from None
SYNC_UPLOAD_MAX_BYTES = env.int("SYNC_UPLOAD_MAX_BYTES", default=1024 * 1024 * 1024)
# CSV and NDJSON sources (uploads and URLs): the longest line read (a longer one fails the run
# before anything is written, instead of filling a worker's memory), and the most columns
# (PostgreSQL's own limit on a table's columns is 1600).
SYNC_MAX_LINE_BYTES = env.int("SYNC_MAX_LINE_BYTES", default=8 * 1024 * 1024)
SYNC_MAX_COLUMNS = env.int("SYNC_MAX_COLUMNS", default=1600)
# PostgreSQL sources: the longest one statement on a source may take (the COPY of a whole
# table on the bulk path is one statement), and the longest the check of a query may take
# (exchange/sync/sqlguard.py).
SYNC_SOURCE_STATEMENT_TIMEOUT_SECONDS = env.int("SYNC_SOURCE_STATEMENT_TIMEOUT_SECONDS", default=3600)
SYNC_SOURCE_CHECK_TIMEOUT_SECONDS = env.int("SYNC_SOURCE_CHECK_TIMEOUT_SECONDS", default=10)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
