"""Every setting Callwire reads, in one place.

Settings come in three layers: the defaults below, the process environment,
and overrides handed to ``create_app`` (tests). All three use the environment
variable names of the README's configuration table, so a test override reads
like a deployment. Validation happens once, at start-up, and fails with a
sentence a person can act on.
"""

from __future__ import annotations

import logging
import math
import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

#: Project id used in development mode (Firebase's ``demo-`` prefix marks an
#: emulator-only project that can never reach production).
DEV_PROJECT_ID = "demo-callwire"


#: Default bound on the bytes waiting in one connection's outgoing queue (WS_SEND_QUEUE_BYTES).
DEFAULT_SEND_QUEUE_BYTES = 4 * 1024 * 1024

#: The secrets ``make run`` sets (Makefile). They are public, so the start-up
#: log may show them; any other value of these variables is never logged.
MAKE_RUN_DEFAULTS = {
    "EVENTS_API_KEY": "dev-events-key",
    "VAPI_WEBHOOK_SECRET": "dev-vapi-secret",
    "TWILIO_AUTH_TOKEN": "dev-twilio-token",
}


#: The Procfile's ``--worker-connections``: gunicorn serves at most this many
#: connections (sockets and HTTP requests together) per worker.
PROCFILE_WORKER_CONNECTIONS = 20000


def default_max_connections() -> int:
    """Return 90% of the smaller of this process's open-file limit and worker_connections.

    The rest is left for HTTP requests, Redis and log files, so the worker
    refuses sockets (503) before it runs out of descriptors.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = PROCFILE_WORKER_CONNECTIONS
    if soft != resource.RLIM_INFINITY:
        ceiling = min(ceiling, soft)
    return max(1, ceiling * 9 // 10)


class ConfigError(RuntimeError):
    """The configuration cannot run; the message says what to change."""


def _as_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}.")


def _as_int(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}.") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}.")
    return value


def _as_float(name: str, raw: str, minimum: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}.") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {raw!r}.")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}.")
    return value


def _as_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


#: Values of LOG_FORMAT: human-readable lines, or one JSON object per line.
LOG_FORMATS = ("text", "json")


def _as_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}.")
    return value


def _as_log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(
            f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {raw!r}."
        )
    return value


def _without_tls_verification(url: str | None, verify: bool) -> str | None:
    """Add ``ssl_cert_reqs=none`` to a ``rediss://`` URL when verification is off.

    Heroku Redis serves TLS with a self-signed certificate and owns the
    REDIS_URL config var (it rewrites it when credentials rotate), so the
    option cannot live in the URL itself.
    """
    if verify or not url or not url.startswith("rediss://") or "ssl_cert_reqs=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}ssl_cert_reqs=none"


def normalise_email(value: str) -> str:
    """Return the canonical form of a user id: emails compare case-insensitively."""
    return value.strip().lower()


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one Callwire process."""

    port: int = 3000
    web_concurrency: int = 1
    firebase_project_id: str | None = None
    emulator_host: str | None = None
    redis_url: str | None = None
    require_token: bool = True
    events_api_key: str | None = None
    vapi_webhook_secret: str | None = None
    twilio_auth_token: str | None = None
    admin_emails: frozenset[str] = field(default_factory=frozenset)
    allowed_origins: tuple[str, ...] = ()
    history_size: int = 200
    history_ttl_seconds: int = 86400
    idempotency_ttl_seconds: int = 3600
    ping_interval: float = 25.0
    init_timeout: float = 10.0
    max_message_bytes: int = 65536
    max_connections_per_user: int = 20
    send_queue: int = 1000
    write_timeout: float = 10.0
    allow_unverified_emails: bool = False
    body_timeout: float = 10.0
    send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES
    max_connections: int = field(default_factory=default_max_connections)
    max_pending_per_address: int = 1000
    forwarded_for_hops: int = 0
    log_level: str = "INFO"
    log_format: str = "text"
    redis_tls_verify: bool = True
    redis_max_connections: int = 50
    redis_pool_wait: float = 5.0
    redis_timeout: float = 2.0

    @property
    def development(self) -> bool:
        """True when tokens are Firebase Auth emulator tokens (unsigned)."""
        return bool(self.emulator_host)

    @property
    def project_id(self) -> str:
        """The Firebase project whose tokens are accepted."""
        return self.firebase_project_id or DEV_PROJECT_ID

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate settings from environment-style names."""

        def get(name: str) -> str | None:
            value = environ.get(name)
            return value if value is not None and value.strip() != "" else None

        values: dict = {}
        ints = {
            "PORT": ("port", 1),
            "WEB_CONCURRENCY": ("web_concurrency", 1),
            "HISTORY_SIZE": ("history_size", 1),
            "HISTORY_TTL_SECONDS": ("history_ttl_seconds", 1),
            "IDEMPOTENCY_TTL_SECONDS": ("idempotency_ttl_seconds", 300),
            "WS_MAX_MESSAGE_BYTES": ("max_message_bytes", 64),
            "WS_MAX_CONNECTIONS_PER_USER": ("max_connections_per_user", 1),
            "WS_SEND_QUEUE": ("send_queue", 1),
            "WS_SEND_QUEUE_BYTES": ("send_queue_bytes", 1024),
            "WS_MAX_CONNECTIONS": ("max_connections", 1),
            "WS_MAX_PENDING_PER_ADDRESS": ("max_pending_per_address", 1),
            "FORWARDED_FOR_HOPS": ("forwarded_for_hops", 0),
            "REDIS_MAX_CONNECTIONS": ("redis_max_connections", 4),
        }
        for name, (attr, minimum) in ints.items():
            if (raw := get(name)) is not None:
                values[attr] = _as_int(name, raw, minimum)
        floats = {
            "WS_PING_INTERVAL": ("ping_interval", 0.1),
            "WS_INIT_TIMEOUT": ("init_timeout", 0.1),
            "WS_WRITE_TIMEOUT": ("write_timeout", 0.1),
            "HTTP_BODY_TIMEOUT": ("body_timeout", 0.1),
            "REDIS_POOL_WAIT": ("redis_pool_wait", 0.1),
            "REDIS_TIMEOUT": ("redis_timeout", 0.1),
        }
        for name, (attr, minimum) in floats.items():
            if (raw := get(name)) is not None:
                values[attr] = _as_float(name, raw, minimum)
        if (raw := get("WS_REQUIRE_TOKEN")) is not None:
            values["require_token"] = _as_bool("WS_REQUIRE_TOKEN", raw)
        if get("FORWARDED_FOR_HOPS") is None and get("DYNO") is not None:
            # On Heroku (which sets DYNO) every request comes through its router,
            # which appends the address it saw to X-Forwarded-For.
            values["forwarded_for_hops"] = 1
        if (raw := get("ALLOW_UNVERIFIED_EMAILS")) is not None:
            values["allow_unverified_emails"] = _as_bool("ALLOW_UNVERIFIED_EMAILS", raw)
        values["firebase_project_id"] = get("FIREBASE_PROJECT_ID") or get("GOOGLE_CLOUD_PROJECT")
        values["emulator_host"] = get("FIREBASE_AUTH_EMULATOR_HOST")
        values["redis_url"] = get("REDIS_URL")
        if (raw := get("REDIS_TLS_VERIFY")) is not None:
            values["redis_tls_verify"] = _as_bool("REDIS_TLS_VERIFY", raw)
            values["redis_url"] = _without_tls_verification(
                values["redis_url"], values["redis_tls_verify"]
            )
        if (raw := get("LOG_LEVEL")) is not None:
            values["log_level"] = _as_log_level(raw)
        if (raw := get("LOG_FORMAT")) is not None:
            values["log_format"] = _as_choice("LOG_FORMAT", raw, LOG_FORMATS)
        values["events_api_key"] = get("EVENTS_API_KEY")
        values["vapi_webhook_secret"] = get("VAPI_WEBHOOK_SECRET")
        values["twilio_auth_token"] = get("TWILIO_AUTH_TOKEN")
        values["admin_emails"] = frozenset(
            normalise_email(e) for e in _as_list(environ.get("ADMIN_EMAILS", ""))
        )
        values["allowed_origins"] = tuple(
            o.rstrip("/") for o in _as_list(environ.get("ALLOWED_ORIGINS", ""))
        )
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse configurations that cannot work, saying why."""
        if self.web_concurrency > 1 and not self.redis_url:
            raise ConfigError(
                f"WEB_CONCURRENCY is {self.web_concurrency} but REDIS_URL is not set: "
                "the in-process broker cannot reach sockets held by other workers. "
                "Set REDIS_URL, or run a single worker (WEB_CONCURRENCY=1)."
            )
        if not self.development and not self.firebase_project_id:
            raise ConfigError(
                "No Firebase project configured: set FIREBASE_PROJECT_ID (or "
                "GOOGLE_CLOUD_PROJECT) in production, or set "
                "FIREBASE_AUTH_EMULATOR_HOST=127.0.0.1:9099 for development mode "
                "with unsigned emulator tokens."
            )
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://.")

    def log_summary(self) -> None:
        """Log how this process will run, loudly where it is insecure; no secrets."""
        if self.development:
            logger.warning(
                "DEVELOPMENT MODE: FIREBASE_AUTH_EMULATOR_HOST is set, so UNSIGNED "
                "emulator tokens for project %s are accepted. Never run this in production.",
                self.project_id,
            )
            secrets = {
                "EVENTS_API_KEY": self.events_api_key,
                "VAPI_WEBHOOK_SECRET": self.vapi_webhook_secret,
                "TWILIO_AUTH_TOKEN": self.twilio_auth_token,
            }
            shown = "; ".join(
                f"{name}={_describe_secret(name, value)}" for name, value in secrets.items()
            )
            logger.warning(
                "development settings: FIREBASE_AUTH_EMULATOR_HOST=%s (no emulator needs to "
                "run there: emulator tokens are checked in-process; mint one with POST "
                "/dev/token, or open / and press Connect); %s; Swagger UI with the "
                "development endpoints at /docs",
                self.emulator_host, shown,
            )
        else:
            logger.info(
                "Production mode: only Firebase ID tokens signed by Google for project %s "
                "are accepted (signature, audience, issuer, iat and exp checked).",
                self.project_id,
            )
        if self.allow_unverified_emails:
            logger.warning(
                "ALLOW_UNVERIFIED_EMAILS=true: tokens whose email is not verified are "
                "accepted, so anyone who signs up with someone else's address gets their events."
            )
        if not self.require_token:
            logger.warning(
                "WS_REQUIRE_TOKEN=false: WebSocket init trusts the userId a client sends "
                "(legacy, insecure: anyone can read anyone's call events)."
            )
        logger.info(
            "callwire settings: broker=%s project=%s workers=%d ping=%ss init_timeout=%ss "
            "max_frame=%dB per_user=%d send_queue=%d history=%d/%ds",
            "redis" if self.redis_url else "memory",
            self.project_id,
            self.web_concurrency,
            self.ping_interval,
            self.init_timeout,
            self.max_message_bytes,
            self.max_connections_per_user,
            self.send_queue,
            self.history_size,
            self.history_ttl_seconds,
        )
        logger.info(
            "callwire limits: send_queue_bytes=%d body_timeout=%ss max_connections=%d "
            "max_pending_per_address=%d forwarded_for_hops=%d unverified_emails=%s",
            self.send_queue_bytes,
            self.body_timeout,
            self.max_connections,
            self.max_pending_per_address,
            self.forwarded_for_hops,
            "allowed" if self.allow_unverified_emails else "refused",
        )


def _describe_secret(name: str, value: str | None) -> str:
    """Show a secret in the start-up log only if it is make run's public default."""
    if value is None:
        return "unset (endpoint disabled)"
    if value == MAKE_RUN_DEFAULTS.get(name):
        return f"{value} (make run's default)"
    return "set (value not logged)"


def load_settings(overrides: Mapping[str, str] | None = None) -> Settings:
    """Read settings from the environment, with optional overrides on top."""
    merged = dict(os.environ)
    if overrides:
        merged.update({k: str(v) for k, v in overrides.items()})
    return Settings.from_environ(merged)
