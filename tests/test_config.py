"""Settings: the README's defaults, environment parsing, and every refusal's sentence."""

from __future__ import annotations

import logging
import resource

import pytest

from webapp.config import DEV_PROJECT_ID, ConfigError, Settings, load_settings

DEV = {"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}
PROD = {"FIREBASE_PROJECT_ID": "callwire-prod"}


def settings(**environ: str) -> Settings:
    return Settings.from_environ({**DEV, **environ})


def test_defaults_are_the_spec_table():
    s = Settings.from_environ(PROD)
    assert s.port == 3000
    assert s.web_concurrency == 1
    assert s.firebase_project_id == "callwire-prod"
    assert s.project_id == "callwire-prod"
    assert s.emulator_host is None
    assert s.development is False
    assert s.redis_url is None
    assert s.require_token is True
    assert s.events_api_key is None
    assert s.vapi_webhook_secret is None
    assert s.twilio_auth_token is None
    assert s.admin_emails == frozenset()
    assert s.allowed_origins == ()
    assert s.history_size == 200
    assert s.history_ttl_seconds == 86400
    assert s.ping_interval == 25
    assert s.init_timeout == 10
    assert s.max_message_bytes == 65536
    assert s.max_connections_per_user == 20
    assert s.send_queue == 1000


def test_every_variable_is_read():
    s = Settings.from_environ({
        **PROD,
        "PORT": "8080",
        "WEB_CONCURRENCY": "3",
        "REDIS_URL": "rediss://user:pw@redis.example:6380/0",
        "WS_REQUIRE_TOKEN": "false",
        "EVENTS_API_KEY": "k1",
        "VAPI_WEBHOOK_SECRET": "v1",
        "TWILIO_AUTH_TOKEN": "t1",
        "ADMIN_EMAILS": " Admin@Example.com , ops@example.com,,",
        "ALLOWED_ORIGINS": "https://app.example.com/, http://localhost:5173",
        "HISTORY_SIZE": "50",
        "HISTORY_TTL_SECONDS": "600",
        "WS_PING_INTERVAL": "0.5",
        "WS_INIT_TIMEOUT": "2.5",
        "WS_MAX_MESSAGE_BYTES": "1024",
        "WS_MAX_CONNECTIONS_PER_USER": "3",
        "WS_SEND_QUEUE": "7",
    })
    assert s.port == 8080
    assert s.web_concurrency == 3
    assert s.redis_url == "rediss://user:pw@redis.example:6380/0"
    assert s.require_token is False
    assert (s.events_api_key, s.vapi_webhook_secret, s.twilio_auth_token) == ("k1", "v1", "t1")
    assert s.admin_emails == frozenset({"admin@example.com", "ops@example.com"})
    assert s.allowed_origins == ("https://app.example.com", "http://localhost:5173")
    assert (s.history_size, s.history_ttl_seconds) == (50, 600)
    assert (s.ping_interval, s.init_timeout) == (0.5, 2.5)
    assert (s.max_message_bytes, s.max_connections_per_user, s.send_queue) == (1024, 3, 7)


def test_development_mode_uses_the_demo_project():
    s = settings()
    assert s.development is True
    assert s.project_id == DEV_PROJECT_ID == "demo-callwire"


def test_google_cloud_project_is_honoured():
    s = Settings.from_environ({"GOOGLE_CLOUD_PROJECT": "gcp-project"})
    assert s.project_id == "gcp-project"
    assert s.development is False
    both = Settings.from_environ({"GOOGLE_CLOUD_PROJECT": "gcp", "FIREBASE_PROJECT_ID": "fb"})
    assert both.project_id == "fb"


@pytest.mark.parametrize("raw", ["", "   "])
def test_blank_values_mean_unset(raw):
    s = settings(PORT=raw, EVENTS_API_KEY=raw, REDIS_URL=raw, WS_REQUIRE_TOKEN=raw)
    assert s.port == 3000
    assert s.events_api_key is None
    assert s.redis_url is None
    assert s.require_token is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), (" yes ", True), ("1", True), ("on", True),
     ("false", False), ("False", False), ("no", False), ("0", False), ("off", False)],
)
def test_require_token_booleans(raw, expected):
    assert settings(WS_REQUIRE_TOKEN=raw).require_token is expected


def test_several_workers_without_redis_are_refused():
    with pytest.raises(ConfigError) as refusal:
        settings(WEB_CONCURRENCY="2")
    message = str(refusal.value)
    assert "REDIS_URL" in message
    assert "WEB_CONCURRENCY" in message
    assert settings(WEB_CONCURRENCY="2", REDIS_URL="redis://127.0.0.1:6379/0").web_concurrency == 2


def test_production_without_a_project_is_refused():
    with pytest.raises(ConfigError) as refusal:
        Settings.from_environ({})
    message = str(refusal.value)
    assert "FIREBASE_PROJECT_ID" in message
    assert "FIREBASE_AUTH_EMULATOR_HOST" in message  # says how to run in development instead
    with pytest.raises(ConfigError):
        Settings.from_environ({"FIREBASE_PROJECT_ID": "  ", "FIREBASE_AUTH_EMULATOR_HOST": ""})


@pytest.mark.parametrize(
    ("name", "raw", "words"),
    [
        ("PORT", "abc", ["PORT", "whole number", "'abc'"]),
        ("PORT", "0", ["PORT", "at least 1"]),
        ("PORT", "3000.5", ["PORT", "whole number"]),
        ("WEB_CONCURRENCY", "0", ["WEB_CONCURRENCY", "at least 1"]),
        ("WEB_CONCURRENCY", "two", ["WEB_CONCURRENCY", "whole number"]),
        ("HISTORY_SIZE", "0", ["HISTORY_SIZE", "at least 1"]),
        ("HISTORY_TTL_SECONDS", "-5", ["HISTORY_TTL_SECONDS", "at least 1"]),
        ("WS_MAX_MESSAGE_BYTES", "10", ["WS_MAX_MESSAGE_BYTES", "at least 64"]),
        ("WS_MAX_MESSAGE_BYTES", "64k", ["WS_MAX_MESSAGE_BYTES", "whole number"]),
        ("WS_MAX_CONNECTIONS_PER_USER", "0", ["WS_MAX_CONNECTIONS_PER_USER", "at least 1"]),
        ("WS_SEND_QUEUE", "0", ["WS_SEND_QUEUE", "at least 1"]),
        ("WS_SEND_QUEUE", "lots", ["WS_SEND_QUEUE", "whole number"]),
        ("WS_PING_INTERVAL", "soon", ["WS_PING_INTERVAL", "number", "'soon'"]),
        ("WS_PING_INTERVAL", "0", ["WS_PING_INTERVAL", "at least"]),
        ("WS_PING_INTERVAL", "nan", ["WS_PING_INTERVAL", "finite"]),
        ("WS_INIT_TIMEOUT", "-1", ["WS_INIT_TIMEOUT", "at least"]),
        ("WS_INIT_TIMEOUT", "inf", ["WS_INIT_TIMEOUT", "finite"]),
        ("WS_WRITE_TIMEOUT", "x", ["WS_WRITE_TIMEOUT", "number"]),
        ("WS_REQUIRE_TOKEN", "maybe", ["WS_REQUIRE_TOKEN", "true or false", "'maybe'"]),
        ("REDIS_URL", "http://redis.example", ["REDIS_URL", "redis://"]),
        ("REDIS_URL", "127.0.0.1:6379", ["REDIS_URL", "redis://"]),
    ],
)
def test_bad_values_are_refused_with_a_sentence(name, raw, words):
    with pytest.raises(ConfigError) as refusal:
        settings(**{name: raw})
    message = str(refusal.value)
    for word in words:
        assert word in message
    assert message.endswith(".")


def test_load_settings_layers_overrides_on_the_environment(monkeypatch):
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099")
    monkeypatch.setenv("WS_SEND_QUEUE", "11")
    monkeypatch.setenv("WS_INIT_TIMEOUT", "3")
    s = load_settings({"WS_SEND_QUEUE": 12})
    assert s.send_queue == 12  # override wins, and may be a non-string
    assert s.init_timeout == 3  # environment
    assert s.ping_interval == 25  # default


def test_settings_are_immutable():
    s = settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_start_up_log_warns_about_insecure_modes(caplog):
    caplog.set_level(logging.INFO, logger="webapp.config")
    settings(WS_REQUIRE_TOKEN="false", EVENTS_API_KEY="super-secret-key").log_summary()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("WS_REQUIRE_TOKEN=false" in w and "insecure" in w for w in warnings)
    assert any("DEVELOPMENT MODE" in w for w in warnings)
    assert "super-secret-key" not in caplog.text


def test_production_with_tokens_logs_no_warning(caplog):
    caplog.set_level(logging.INFO, logger="webapp.config")
    Settings.from_environ(PROD).log_summary()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_production_says_at_start_up_that_signed_tokens_are_required(caplog):
    caplog.set_level(logging.INFO, logger="webapp.config")
    Settings.from_environ(PROD).log_summary()
    assert "only Firebase ID tokens signed by Google for project callwire-prod" in caplog.text
    caplog.clear()
    settings().log_summary()
    assert "signed by Google" not in caplog.text


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("false", False), ("", False)])
def test_allow_unverified_emails_is_off_unless_asked_and_warned(caplog, raw, expected):
    caplog.set_level(logging.INFO, logger="webapp.config")
    configured = Settings.from_environ({**PROD, "ALLOW_UNVERIFIED_EMAILS": raw})
    assert configured.allow_unverified_emails is expected
    configured.log_summary()
    warned = [r for r in caplog.records if "ALLOW_UNVERIFIED_EMAILS" in r.getMessage()]
    assert bool(warned) is expected
    with pytest.raises(ConfigError, match="ALLOW_UNVERIFIED_EMAILS"):
        Settings.from_environ({**PROD, "ALLOW_UNVERIFIED_EMAILS": "maybe"})


def test_limit_settings_defaults_and_overrides():
    s = Settings.from_environ(PROD)
    assert s.send_queue_bytes == 4 * 1024 * 1024
    assert s.body_timeout == 10
    assert s.max_pending_per_address == 1000
    assert s.forwarded_for_hops == 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert s.max_connections == min(soft, 20000) * 9 // 10
    s = Settings.from_environ({**PROD, "WS_SEND_QUEUE_BYTES": "65536", "HTTP_BODY_TIMEOUT": "2.5",
                               "WS_MAX_CONNECTIONS": "50", "WS_MAX_PENDING_PER_ADDRESS": "5",
                               "FORWARDED_FOR_HOPS": "2"})
    assert (s.send_queue_bytes, s.body_timeout, s.max_connections,
            s.max_pending_per_address, s.forwarded_for_hops) == (65536, 2.5, 50, 5, 2)


def test_on_heroku_the_router_is_a_trusted_hop_unless_told_otherwise():
    assert Settings.from_environ({**PROD, "DYNO": "web.1"}).forwarded_for_hops == 1
    assert Settings.from_environ(
        {**PROD, "DYNO": "web.1", "FORWARDED_FOR_HOPS": "0"}).forwarded_for_hops == 0


@pytest.mark.parametrize(
    ("name", "raw"),
    [("WS_SEND_QUEUE_BYTES", "100"), ("HTTP_BODY_TIMEOUT", "0"), ("WS_MAX_CONNECTIONS", "0"),
     ("WS_MAX_PENDING_PER_ADDRESS", "x"), ("FORWARDED_FOR_HOPS", "-1")],
)
def test_bad_limit_settings_are_refused(name, raw):
    with pytest.raises(ConfigError, match=name):
        Settings.from_environ({**PROD, name: raw})
