"""The one settings object of the service, filled from the environment and checked at startup.

Every knob the service has is declared once, as a field of :class:`Settings` whose metadata
holds its variables, default, parser (type and bounds) and one-line doc. ``SPEC``, ``ENV_VARS``
and the README's configuration table (``python -m app.settings table``) are derived from those
declarations, so the docs, the docker-compose file and the tests are checked against the code.
Bad values stop the worker with one line naming the variable: an operator should never have to
read a traceback to learn that ``WEB_PORT=70000`` is out of range.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Generic, Literal, TypeVar

import aiosmtplib.email

from app.channels.fcm import DEFAULT_TOKEN_URL, ServiceAccount
from app.core import access
from app.core.receivers import known_region

FLOWX_GENERATE_IN = "ai.flowx.plugin.notification.trigger.generate.otp.v1"
FLOWX_GENERATE_OUT = "ai.flowx.engine.receive.plugin.notification.generate.otp.results.v1"
FLOWX_VALIDATE_IN = "ai.flowx.plugin.notification.trigger.validate.otp.v1"
FLOWX_VALIDATE_OUT = "ai.flowx.engine.receive.plugin.notification.validate.otp.results.v1"
FLOWX_NOTIFY_IN = "ai.flowx.plugin.notification.trigger.send.notification.v1"
FLOWX_NOTIFY_OUT = "ai.flowx.engine.receive.plugin.notification.confirm.send.notification.v1"
DEFAULT_DLQ = "ai.flowx.plugin.notification.otp.dlq.v1"
DEFAULT_ENGINE_PATTERN = r"^ai\.flowx\..*engine\.receive\..*"
# Faust's producer refuses records over 1,000,000 bytes (``producer_max_request_size``); a
# request must fit in one with room for the dead-letter headers or the reply around it.
PRODUCER_MAX_REQUEST_BYTES = 1_000_000
MAX_REQUEST_BYTES_LIMIT = 900_000


class ConfigError(ValueError):
    """A setting is missing or invalid; ``variable`` names the environment variable."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _sender_address(raw: str) -> str:
    """An address SMTP's ``MAIL FROM`` can carry: one mailbox (a display name is allowed and
    left out of the envelope), nothing that could add parameters, ASCII (SMTPUTF8 is not used).
    """
    value = _text(raw)
    try:
        address = aiosmtplib.email.parse_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not one e-mail address") from None
    if not address.isascii():
        raise ValueError(f"{value!r} is not ASCII (SMTPUTF8 is not used)")
    return value


def _optional_text(raw: str) -> str | None:
    return raw or None


def _topic(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value):
        raise ValueError(f"is not a valid Kafka topic name: {raw!r}")
    return value


def _regex(raw: str) -> str:
    try:
        re.compile(raw)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from None
    return raw


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return value


def _alphabet(raw: str) -> str:
    value = raw.strip()
    named = {
        "numeric": "0123456789",
        "digits": "0123456789",
        # No 0/O, 1/I/L: codes are read off a phone and typed by people.
        "alphanumeric": "23456789ABCDEFGHJKMNPQRSTUVWXYZ",
    }
    value = named.get(value.lower(), value)
    if len(set(value)) < 10 or len(set(value)) != len(value) or not value.isascii():
        raise ValueError("must be 'numeric', 'alphanumeric' or >= 10 distinct ASCII characters")
    if not value.isalnum():
        raise ValueError("must contain only letters and digits")
    return value


def _optional_choice(*allowed: str) -> Callable[[str], str | None]:
    """Like :func:`_choice`, but empty (or ``none``) means "not configured"."""
    pick = _choice(*allowed)

    def parse(raw: str) -> str | None:
        if raw.strip().lower() in ("", "none"):
            return None
        return pick(raw)

    return parse


def _optional_url(raw: str) -> str | None:
    """An http(s) URL without a trailing slash; the value is never echoed (it may hold a token)."""
    value = raw.strip()
    if not value:
        return None
    match = re.fullmatch(r"(https?)://([^/?#\s]+)([^\s]*)", value, flags=re.IGNORECASE)
    if not match or match.group(2).startswith(("@", ":")):
        raise ValueError("must be an http:// or https:// URL with a host")
    return value.rstrip("/")


def _url(raw: str) -> str:
    value = _optional_url(raw)
    if value is None:
        raise ValueError("must not be empty")
    return value


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED_HEADERS = {"content-type", "content-length", "host", "transfer-encoding", "connection"}


def _optional_headers(raw: str) -> tuple[tuple[str, str], ...] | None:
    """A JSON object of header names to string values; values are never echoed (secrets)."""
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError(
            'must be a JSON object of header names to values, e.g. {"X-Api-Key": "..."}'
        ) from None
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object, e.g. {"X-Api-Key": "..."}')
    headers: list[tuple[str, str]] = []
    for name, value in data.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid HTTP header name")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the service and cannot be configured")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"the value of header {name!r} must be a one-line string")
        headers.append((name, value))
    return tuple(headers)


def _allowlist(raw: str) -> tuple[str, ...] | None:
    """Addresses (``ops@example.com``) and domains (``@example.com``), lower-cased."""
    entries = tuple(entry.strip().lower() for entry in raw.split(",") if entry.strip())
    if not entries:
        return None
    for entry in entries:
        local, at, domain = entry.rpartition("@")
        if not at or not re.fullmatch(r"[a-z0-9.-]+\.[a-z0-9-]+", domain) or " " in local:
            raise ValueError(f"{entry!r} is neither an address nor an @domain entry")
    return entries


def _countries(raw: str) -> frozenset[str] | None:
    """ISO 3166-1 alpha-2 codes; phone numbers are matched to them by their E.164 prefix."""
    codes = frozenset(code.strip().upper() for code in raw.split(",") if code.strip())
    if not codes:
        return None
    unknown = sorted(code for code in codes if not known_region(code))
    if unknown:
        raise ValueError(f"unknown ISO 3166 country code(s): {', '.join(unknown)}")
    return codes


def _optional_id(raw: str) -> str | None:
    """An identifier that goes into a URL path (account SID, project id)."""
    value = raw.strip()
    if not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", value):
        raise ValueError("must contain only letters, digits, '.', '_' and '-'")
    return value


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# The channel providers whose constructor arguments come straight from settings; see
# ``Settings.channel_options`` and app/channels/factory.py.
Provider = Literal["smtp", "twilio", "sms_webhook", "kafka", "fcm", "push_webhook"]


@dataclass(frozen=True)
class Setting(Generic[T_co]):
    """How one field is read (its variables, first set wins; default; parser) and documented.

    ``default`` is the raw text the parser reads when no variable is set (``None``: the field
    is ``None``), so a default is checked exactly like a value from the environment.
    ``shown_default`` replaces it in the README where the raw text would mislead (a required
    secret, a default that depends on a file). ``option`` names the channel constructor argument
    the field feeds, so app/channels/factory.py does not list the fields a second time.
    """

    names: tuple[str, ...]
    default: str | None
    parse: Callable[[str], T_co]
    doc: str
    secret: bool = False
    shown_default: str | None = None
    option: tuple[Provider, str] | None = None

    @property
    def shown(self) -> str:
        """The README's "default" cell."""
        if self.shown_default is not None:
            return self.shown_default
        return "unset" if self.default is None else f"`{self.default}`"

    @property
    def meaning(self) -> str:
        """The README's "meaning" cell: the doc, and whether the value is kept out of logs."""
        return f"{self.doc} (secret)" if self.secret else self.doc


def setting(
    names: str | tuple[str, ...],
    default: str | None,
    parse: Callable[[str], T],
    doc: str,
    *,
    secret: bool = False,
    shown_default: str | None = None,
    option: tuple[Provider, str] | None = None,
) -> T:
    """Declare one field of :class:`Settings`: its annotation and this call are all there is.

    The return type is the parser's, so ``port: int = setting(..., _int(1, 65535), ...)`` reads
    as what it is; the value itself is a ``dataclasses.field`` carrying the :class:`Setting`.
    """
    spec = Setting(
        names if isinstance(names, tuple) else (names,),
        default,
        parse,
        doc,
        secret=secret,
        shown_default=shown_default,
        option=option,
    )
    declared: T = field(metadata={"setting": spec})
    return declared


@dataclass(frozen=True)
class Settings:
    """Typed, validated configuration. Build it with :meth:`from_env`; tests pass overrides.

    Fields are in the README's order: the configuration table lists them as declared here.
    """

    kafka_bootstrap_servers: str = setting(
        "KAFKA_BOOTSTRAP_SERVERS",
        "127.0.0.1:9092",
        _text,
        "Kafka bootstrap servers, comma-separated host:port",
    )
    topic_generate_in: str = setting(
        "KAFKA_TOPIC_OTP_GENERATE_IN",
        FLOWX_GENERATE_IN,
        _topic,
        "generate requests from the engine",
    )
    topic_generate_out: str = setting(
        "KAFKA_TOPIC_OTP_GENERATE_OUT",
        FLOWX_GENERATE_OUT,
        _topic,
        "generate replies to the engine",
    )
    topic_validate_in: str = setting(
        "KAFKA_TOPIC_OTP_VALIDATE_IN",
        FLOWX_VALIDATE_IN,
        _topic,
        "validate requests from the engine",
    )
    topic_validate_out: str = setting(
        "KAFKA_TOPIC_OTP_VALIDATE_OUT",
        FLOWX_VALIDATE_OUT,
        _topic,
        "validate replies to the engine",
    )
    topic_notify_in: str = setting(
        "KAFKA_TOPIC_NOTIFICATION_INTERNAL_IN",
        FLOWX_NOTIFY_IN,
        _topic,
        "send-notification requests from the engine",
    )
    topic_notify_out: str = setting(
        "KAFKA_TOPIC_NOTIFICATION_INTERNAL_OUT",
        FLOWX_NOTIFY_OUT,
        _topic,
        "send-notification replies to the engine",
    )
    topic_events: str = setting(
        "KAFKA_TOPIC_NOTIFICATION_EVENTS",
        "ai.flowx.plugin.notification.events.v1",
        _topic,
        "delivery events of every OTP and notification, keyed by receiver",
    )
    topic_dlq: str = setting(
        "KAFKA_TOPIC_OTP_DLQ",
        DEFAULT_DLQ,
        _topic,
        "dead-letter topic for requests that cannot be answered",
    )
    engine_topic_pattern: str = setting(
        "ENGINE_TOPIC_PATTERN",
        DEFAULT_ENGINE_PATTERN,
        _regex,
        "regex the engine subscribes with; `_OUT` topics that do not match are warned about",
    )
    app_id: str = setting(
        "APP_ID", "faust-otp", _topic, "Faust app id: consumer group and internal topic prefix"
    )
    topic_partitions: int = setting(
        "TOPIC_PARTITIONS",
        "8",
        _int(1, 1024),
        "partitions of internal topics and tables (max workers)",
    )
    topic_replication_factor: int = setting(
        "TOPIC_REPLICATION_FACTOR", "1", _int(1, 16), "replication factor of internal topics"
    )
    data_dir: str = setting("DATA_DIR", ".local/data", _text, "RocksDB directory, one per worker")
    web_host: str = setting("WEB_HOST", "127.0.0.1", _text, "HTTP bind address")
    web_port: int = setting("WEB_PORT", "6066", _int(1, 65535), "HTTP port")
    log_level: str = setting(
        "LOG_LEVEL", "INFO", _log_level, "`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`"
    )
    library_log_level: str = setting(
        "LIBRARY_LOG_LEVEL",
        "WARNING",
        _log_level,
        "level of Faust's, mode's and aiokafka's loggers (`LOG_LEVEL` sets the service's own)",
    )
    event_loop: str = setting(
        "EVENT_LOOP",
        "aio",
        _choice("aio", "uvloop"),
        "the worker's asyncio event loop: `aio` (the standard library's) or `uvloop` (libuv; "
        "within the run-to-run spread here, README, Performance)",
    )
    producer_linger_ms: int = setting(
        "PRODUCER_LINGER_MS",
        "1",
        _int(0, 1000),
        "how long the producer waits to fill a batch per partition: fewer, larger produce "
        "requests for up to this much more latency per hop (README, Performance)",
    )
    log_format: str = setting(
        "LOG_FORMAT",
        "json",
        _choice("json", "text"),
        "`json` (one object per line, with `processInstanceId`, `clientId`, `channel` fields) "
        "or `text` (`make run` uses it)",
    )
    notify_api_auth: str = setting(
        "NOTIFY_API_AUTH",
        "enabled",
        _choice("enabled", "disabled"),
        "`disabled` turns off bearer-token checks on `/api/*` (development only)",
    )
    notify_api_token: str | None = setting(
        "NOTIFY_API_TOKEN",
        None,
        _optional_text,
        "bearer token required on `/api/*`, with every scope (named `default` in the template "
        "history); this or `NOTIFY_API_TOKENS_FILE` is required unless `NOTIFY_API_AUTH=disabled`",
        secret=True,
    )
    notify_api_tokens_file: str | None = setting(
        "NOTIFY_API_TOKENS_FILE",
        None,
        _optional_text,
        "JSON file of named, scoped tokens by SHA-256 (README, Access); read at start",
    )
    api_max_body_bytes: int = setting(
        "API_MAX_BODY_BYTES",
        "262144",
        _int(1024, 16 * 1024 * 1024),
        "largest accepted HTTP request body",
    )
    api_write_timeout_seconds: float = setting(
        "API_WRITE_TIMEOUT_SECONDS",
        "10",
        _float(0.5, 120),
        "how long an API call that goes through Kafka (a template write, an OTP status or "
        "cancel, a send log query, a Twilio callback) waits for its answer",
    )
    template_default_language: str = setting(
        "TEMPLATE_DEFAULT_LANGUAGE",
        "en",
        _text,
        "language used when a request or template names none",
    )
    template_max_body_chars: int = setting(
        "TEMPLATE_MAX_BODY_CHARS",
        "100000",
        _int(16, 4 * 1024 * 1024),
        "largest template body, in characters",
    )
    template_history_versions: int = setting(
        "TEMPLATE_HISTORY_VERSIONS",
        "50",
        _int(0, 1000),
        "earlier published versions kept per template (fewer when they would not fit one "
        "Kafka record)",
    )
    otp_length: int = setting(
        ("FLOWX_OTP_LENGTH", "OTP_LENGTH"),
        "6",
        _int(4, 10),
        "characters in a code (FlowX default 4)",
    )
    otp_alphabet: str = setting(
        "OTP_ALPHABET",
        "numeric",
        _alphabet,
        "`numeric`, `alphanumeric` (without look-alikes such as 0/O and 1/I) or an explicit set "
        "of at least 10 distinct letters and digits",
    )
    otp_expire_seconds: int = setting(
        ("FLOWX_OTP_EXPIRE_TIME_IN_SECONDS", "FLOWX_OTP_EXPIRETIMEINSECONDS", "OTP_EXPIRE_SECONDS"),
        "600",
        _int(1, 7 * 24 * 3600),
        "validity of a code in seconds",
    )
    otp_hmac_secret: str | None = setting(
        "OTP_HMAC_SECRET",
        None,
        _optional_text,
        "key of the HMAC-SHA256 stored instead of codes; at least 16 characters, the same on "
        "every worker",
        secret=True,
        shown_default="*(required)*",
    )
    otp_max_attempts: int = setting(
        "OTP_MAX_ATTEMPTS", "5", _int(1, 100), "wrong tries before a code is locked"
    )
    otp_max_sends: int = setting(
        "OTP_MAX_SENDS", "5", _int(1, 1000), "codes per identifier per window"
    )
    otp_max_sends_per_receiver: int = setting(
        "OTP_MAX_SENDS_PER_RECEIVER",
        "5",
        _int(0, 1000),
        "codes per receiver (e-mail address or phone number, however written) per window, "
        "whatever the `clientId`; `0` turns the check off",
    )
    sms_allowed_countries: frozenset[str] | None = setting(
        "SMS_ALLOWED_COUNTRIES",
        None,
        _countries,
        "ISO 3166 codes SMS may go to, comma-separated (`RO,DE,FR`), matched on the number's "
        "E.164 prefix; unset: all",
    )
    otp_send_window_seconds: int = setting(
        "OTP_SEND_WINDOW_SECONDS",
        "600",
        _int(1, 7 * 24 * 3600),
        "window of `OTP_MAX_SENDS` and `OTP_MAX_SENDS_PER_RECEIVER`",
    )
    otp_sweep_interval_seconds: float = setting(
        "OTP_SWEEP_INTERVAL_SECONDS",
        "30",
        _float(0.2, 3600),
        "how often expired entries are deleted",
    )
    table_standby_replicas: int = setting(
        "TABLE_STANDBY_REPLICAS",
        "0",
        _int(0, 8),
        "standby copies of each table partition kept warm on other workers (faster failover, "
        "more disk and changelog reads)",
    )
    table_memory_mb: int = setting(
        "TABLE_MEMORY_MB",
        "16",
        _int(2, 4096),
        "memory RocksDB may use per table partition a worker holds: half for writes not yet "
        "flushed (two buffers), half for its read cache (Faust's own default is about 2.2 GB "
        "per partition)",
    )
    shutdown_timeout_seconds: float = setting(
        "SHUTDOWN_TIMEOUT_SECONDS",
        "30",
        _float(1, 600),
        "on SIGTERM, finish in-flight requests and exit within this time",
    )
    recovery_stall_seconds: float = setting(
        "RECOVERY_STALL_SECONDS",
        "30",
        _float(1, 3600),
        "table recovery without progress this long re-reads; twice this long, the worker exits",
    )
    max_request_bytes: int = setting(
        "MAX_REQUEST_BYTES",
        "65536",
        _int(256, MAX_REQUEST_BYTES_LIMIT),
        "largest Kafka request acted on, key, value and headers counted (at most "
        f"{MAX_REQUEST_BYTES_LIMIT}, below the producer's {PRODUCER_MAX_REQUEST_BYTES}-byte "
        "limit); a larger one gets an error reply, or is dead-lettered",
    )
    render_timeout_ms: int = setting(
        "RENDER_TIMEOUT_MS",
        "200",
        _int(10, 60_000),
        "CPU-time budget of one template render, preview or save-time compile",
    )
    render_max_output_bytes: int = setting(
        "RENDER_MAX_OUTPUT_BYTES",
        str(1024 * 1024),
        _int(1024, 64 * 1024 * 1024),
        "largest text one render may produce, and any string built on the way",
    )
    smtp_host: str = setting(
        ("SMTP_HOST", "SIMPLEJAVAMAIL_SMTP_HOST"),
        "127.0.0.1",
        _text,
        "SMTP server",
        option=("smtp", "host"),
    )
    smtp_port: int = setting(
        ("SMTP_PORT", "SIMPLEJAVAMAIL_SMTP_PORT"),
        "587",
        _int(1, 65535),
        "SMTP port",
        option=("smtp", "port"),
    )
    smtp_username: str | None = setting(
        ("SMTP_USERNAME", "SIMPLEJAVAMAIL_SMTP_USERNAME"),
        None,
        _optional_text,
        "SMTP AUTH user; set together with `SMTP_PASSWORD`",
        option=("smtp", "username"),
    )
    smtp_password: str | None = setting(
        ("SMTP_PASSWORD", "SIMPLEJAVAMAIL_SMTP_PASSWORD"),
        None,
        _optional_text,
        "SMTP AUTH password",
        secret=True,
        option=("smtp", "password"),
    )
    smtp_security: str = setting(
        "SMTP_SECURITY",
        "starttls",
        _choice("none", "starttls", "tls"),
        "`none`, `starttls` or `tls`",
        option=("smtp", "security"),
    )
    smtp_timeout_seconds: float = setting(
        "SMTP_TIMEOUT_SECONDS",
        "10",
        _float(0.1, 300),
        "connect and per-command SMTP timeout",
        option=("smtp", "timeout"),
    )
    smtp_pool_size: int = setting(
        "SMTP_POOL_SIZE",
        "4",
        _int(1, 64),
        "SMTP connections kept open and used in parallel",
        option=("smtp", "pool_size"),
    )
    smtp_ca_file: str | None = setting(
        "SMTP_CA_FILE",
        None,
        _optional_text,
        "CA bundle to verify the SMTP server; unset: the system's",
        option=("smtp", "ca_file"),
    )
    mail_from_email: str = setting(
        ("MAIL_FROM_EMAIL", "APPLICATION_MAIL_FROM_EMAIL"),
        "no-reply@localhost",
        _sender_address,
        "sender address",
        option=("smtp", "from_email"),
    )
    mail_from_name: str = setting(
        ("MAIL_FROM_NAME", "APPLICATION_MAIL_FROM_NAME"),
        "OTP Service",
        _text,
        "sender display name",
        option=("smtp", "from_name"),
    )
    mail_sender_allowlist: tuple[str, ...] | None = setting(
        "MAIL_SENDER_ALLOWLIST",
        None,
        _allowlist,
        "addresses and `@domain` entries a notification's `senderEmail` may use, comma-separated",
        shown_default="the domain of `MAIL_FROM_EMAIL`",
    )
    notify_max_receivers: int = setting(
        "NOTIFY_MAX_RECEIVERS", "50", _int(1, 1000), "receivers of one notification request"
    )
    notify_replay_seconds: int = setting(
        "NOTIFY_REPLAY_SECONDS",
        "3600",
        _int(60, 30 * 86400),
        "how long a handled notification is remembered, so a redelivery sends nothing again",
    )
    attachment_max_bytes: int = setting(
        "ATTACHMENT_MAX_BYTES",
        str(10 * 1024 * 1024),
        _int(1, 50 * 1024 * 1024),
        "attachment bytes of one notification, all attachments together",
    )
    s3_url: str | None = setting(
        ("APPLICATION_FILE_STORAGE_S3_SERVER_URL", "S3_URL"),
        None,
        _optional_url,
        "S3-compatible store attachments are read from; unset: attachment requests are refused",
    )
    s3_access_key: str | None = setting(
        ("APPLICATION_FILE_STORAGE_S3_ACCESS_KEY", "S3_ACCESS_KEY"),
        None,
        _optional_text,
        "access key of the store",
        secret=True,
    )
    s3_secret_key: str | None = setting(
        ("APPLICATION_FILE_STORAGE_S3_SECRET_KEY", "S3_SECRET_KEY"),
        None,
        _optional_text,
        "secret key of the store",
        secret=True,
    )
    s3_bucket_prefix: str = setting(
        ("APPLICATION_FILE_STORAGE_S3_BUCKET_PREFIX", "S3_BUCKET_PREFIX"),
        "",
        str.strip,
        "prefix put before the bucket named in an attachment's `path`",
        shown_default="empty",
    )
    s3_region: str = setting(
        ("APPLICATION_FILE_STORAGE_S3_REGION", "S3_REGION"),
        "us-east-1",
        _text,
        "region the store's requests are signed for",
    )
    sms_provider: str | None = setting(
        "SMS_PROVIDER",
        None,
        _optional_choice("twilio", "webhook", "kafka"),
        "`twilio`, `webhook` or `kafka`; unset: SMS requests are refused",
    )
    twilio_account_sid: str | None = setting(
        "TWILIO_ACCOUNT_SID",
        None,
        _optional_id,
        "Twilio Account SID (`AC...`); required with `SMS_PROVIDER=twilio`",
        option=("twilio", "account_sid"),
    )
    twilio_auth_token: str | None = setting(
        "TWILIO_AUTH_TOKEN",
        None,
        _optional_text,
        "Twilio auth token; required with `SMS_PROVIDER=twilio`",
        secret=True,
        option=("twilio", "auth_token"),
    )
    twilio_from: str | None = setting(
        "TWILIO_FROM",
        None,
        _optional_text,
        "sender: E.164 number, short code or alphanumeric sender id",
        option=("twilio", "from_number"),
    )
    twilio_messaging_service_sid: str | None = setting(
        "TWILIO_MESSAGING_SERVICE_SID",
        None,
        _optional_id,
        "Twilio Messaging Service (`MG...`); one of it and `TWILIO_FROM` is required, it wins "
        "when both are set",
        option=("twilio", "messaging_service_sid"),
    )
    twilio_base_url: str = setting(
        "TWILIO_BASE_URL",
        "https://api.twilio.com",
        _url,
        "Twilio API base URL",
        option=("twilio", "base_url"),
    )
    sms_webhook_url: str | None = setting(
        "SMS_WEBHOOK_URL",
        None,
        _optional_url,
        "endpoint receiving SMS as JSON, may carry a token; required with `SMS_PROVIDER=webhook`",
        secret=True,
        option=("sms_webhook", "url"),
    )
    sms_webhook_headers: tuple[tuple[str, str], ...] | None = setting(
        "SMS_WEBHOOK_HEADERS",
        None,
        _optional_headers,
        'extra request headers as a JSON object, e.g. `{"X-Api-Key": "..."}`',
        secret=True,
        option=("sms_webhook", "headers"),
    )
    topic_notification_external_out: str = setting(
        "KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT",
        "ai.flowx.plugin.notification.external.out.v1",
        _topic,
        "topic SMS are forwarded to with `SMS_PROVIDER=kafka`, and notifications whose "
        "template has `forwardOnKafka` (FlowX documents the variable, not a default)",
        option=("kafka", "topic"),
    )
    push_provider: str | None = setting(
        "PUSH_PROVIDER",
        None,
        _optional_choice("fcm", "webhook"),
        "`fcm` or `webhook`; unset: PUSH requests are refused",
    )
    fcm_project_id: str | None = setting(
        "FCM_PROJECT_ID",
        None,
        _optional_id,
        "Firebase project id; required with `PUSH_PROVIDER=fcm`",
        option=("fcm", "project_id"),
    )
    # No ``option``: the factory passes the loaded key (``ServiceAccount``), not the path.
    fcm_credentials_file: str | None = setting(
        "FCM_CREDENTIALS_FILE",
        None,
        _optional_text,
        "path of the Google service-account key file (JSON); required with "
        "`PUSH_PROVIDER=fcm`, checked at startup",
    )
    fcm_base_url: str = setting(
        "FCM_BASE_URL",
        "https://fcm.googleapis.com",
        _url,
        "FCM API base URL",
        option=("fcm", "base_url"),
    )
    fcm_token_url: str | None = setting(
        "FCM_TOKEN_URL",
        None,
        _optional_url,
        "OAuth2 token endpoint",
        shown_default=f"the key file's `token_uri`, else `{DEFAULT_TOKEN_URL}`",
        option=("fcm", "token_url"),
    )
    push_webhook_url: str | None = setting(
        "PUSH_WEBHOOK_URL",
        None,
        _optional_url,
        "endpoint receiving push notifications as JSON; required with `PUSH_PROVIDER=webhook`",
        secret=True,
        option=("push_webhook", "url"),
    )
    push_webhook_headers: tuple[tuple[str, str], ...] | None = setting(
        "PUSH_WEBHOOK_HEADERS",
        None,
        _optional_headers,
        "extra request headers as a JSON object",
        secret=True,
        option=("push_webhook", "headers"),
    )
    public_base_url: str | None = setting(
        "PUBLIC_BASE_URL",
        None,
        _optional_url,
        "the service's address as providers reach it; with `SMS_PROVIDER=twilio`, messages are "
        "sent with a status callback to `{PUBLIC_BASE_URL}/api/callbacks/twilio`",
    )
    send_log_retention_days: int = setting(
        "SEND_LOG_RETENTION_DAYS",
        "30",
        _int(1, 3650),
        "days the send log (`GET /api/notifications`) keeps an entry after its last event",
    )
    send_log_sweep_interval_seconds: float = setting(
        "SEND_LOG_SWEEP_INTERVAL_SECONDS",
        "3600",
        _float(1, 86400),
        "how often the send log's entries past retention are deleted (each sweep reads every "
        "row of the worker's partitions, so not as often as the OTP sweep)",
    )
    receipt_window_seconds: int = setting(
        "RECEIPT_WINDOW_SECONDS",
        str(3 * 86400),
        _int(60, 30 * 86400),
        "how long after a send its provider's status reports are taken",
    )
    delivery_timeout_seconds: float = setting(
        "DELIVERY_TIMEOUT_SECONDS",
        "15",
        _float(0.5, 300),
        "time budget of one notification on any channel, every retry included",
    )
    delivery_max_concurrency: int = setting(
        "DELIVERY_MAX_CONCURRENCY",
        "16",
        _int(1, 1024),
        "sends in flight at once per provider",
    )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        check_secrets: bool = True,
        **overrides: object,
    ) -> Settings:
        """Read every field from ``environ`` (default ``os.environ``); raise :class:`ConfigError`.

        ``overrides`` (field name -> already-typed value) win over the environment; tests use
        them to build apps with other settings. ``check_secrets=False`` skips the checks that
        only matter to a running worker (tokens, HMAC key), so tools can read topic names.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, spec in SPEC.items():
            if name in overrides:
                values[name] = overrides[name]
                continue
            variable, raw = next(
                ((n, env[n]) for n in spec.names if n in env), (spec.names[0], None)
            )
            if raw is None:
                values[name] = None if spec.default is None else spec.parse(spec.default)
                continue
            try:
                values[name] = spec.parse(raw)
            except ValueError as exc:
                raise ConfigError(variable, str(exc)) from None
        settings = cls(**values)
        if check_secrets:
            settings.check_secrets()
            settings.check_channels()
        return settings

    def check_secrets(self) -> None:
        """Refuse to run without the secrets a worker needs; never echo their values."""
        if self.otp_hmac_secret is None:
            raise ConfigError(
                "OTP_HMAC_SECRET", "is required (a long random string shared by all workers)"
            )
        if len(self.otp_hmac_secret) < 16:
            raise ConfigError("OTP_HMAC_SECRET", "must be at least 16 characters")
        if self.notify_api_auth == "enabled":
            self._check_tokens()
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ConfigError(
                "SMTP_PASSWORD", "SMTP_USERNAME and SMTP_PASSWORD must be set together"
            )

    def _check_tokens(self) -> None:
        if not self.notify_api_token and not self.notify_api_tokens_file:
            raise ConfigError(
                "NOTIFY_API_TOKEN",
                "or NOTIFY_API_TOKENS_FILE is required unless NOTIFY_API_AUTH=disabled is set "
                "explicitly",
            )
        try:
            self.token_registry()
        except access.AccessConfigError as exc:
            raise ConfigError("NOTIFY_API_TOKENS_FILE", str(exc)) from None

    def token_registry(self) -> access.TokenRegistry:
        """Who may call the API (empty when authentication is disabled)."""
        if self.notify_api_auth != "enabled":
            return access.TokenRegistry([])
        return access.TokenRegistry.build(self.notify_api_token, self.notify_api_tokens_file)

    def check_channels(self) -> None:
        """Each chosen SMS/PUSH provider has what it needs; never echo a credential."""
        if self.sms_provider == "twilio":
            self._check_twilio()
        if self.sms_provider == "webhook" and not self.sms_webhook_url:
            raise ConfigError("SMS_WEBHOOK_URL", "is required when SMS_PROVIDER=webhook")
        if self.push_provider == "webhook" and not self.push_webhook_url:
            raise ConfigError("PUSH_WEBHOOK_URL", "is required when PUSH_PROVIDER=webhook")
        if self.push_provider == "fcm":
            self._check_fcm()
        if self.s3_url and not (self.s3_access_key and self.s3_secret_key):
            raise ConfigError(
                "APPLICATION_FILE_STORAGE_S3_ACCESS_KEY",
                "the access and secret keys are required when the S3 server URL is set",
            )

    @property
    def sender_allowlist(self) -> tuple[str, ...]:
        """What ``senderEmail`` may be: the setting, else the domain of the service's sender."""
        if self.mail_sender_allowlist is not None:
            return self.mail_sender_allowlist
        return ("@" + self.mail_from_email.rpartition("@")[2].lower(),)

    def _check_twilio(self) -> None:
        for name, value in (
            ("TWILIO_ACCOUNT_SID", self.twilio_account_sid),
            ("TWILIO_AUTH_TOKEN", self.twilio_auth_token),
        ):
            if not value:
                raise ConfigError(name, "is required when SMS_PROVIDER=twilio")
        if not (self.twilio_from or self.twilio_messaging_service_sid):
            raise ConfigError(
                "TWILIO_FROM",
                "TWILIO_FROM or TWILIO_MESSAGING_SERVICE_SID is required when SMS_PROVIDER=twilio",
            )

    def _check_fcm(self) -> None:
        if not self.fcm_project_id:
            raise ConfigError("FCM_PROJECT_ID", "is required when PUSH_PROVIDER=fcm")
        if not self.fcm_credentials_file:
            raise ConfigError("FCM_CREDENTIALS_FILE", "is required when PUSH_PROVIDER=fcm")
        try:
            ServiceAccount.load(self.fcm_credentials_file)
        except ValueError as exc:
            raise ConfigError("FCM_CREDENTIALS_FILE", str(exc)) from None

    def channel_options(self, provider: Provider) -> dict[str, object]:
        """The constructor arguments of ``provider``'s channel that are plain settings.

        Each field says which argument it feeds (``option=`` in its declaration), so adding a
        provider setting is one declaration here, not another keyword in the factory. Values
        are as parsed: call this on settings that passed :meth:`check_channels` (``from_env``
        does), which guarantees what the chosen provider requires is not ``None``.
        """
        return {
            spec.option[1]: getattr(self, name)
            for name, spec in SPEC.items()
            if spec.option is not None and spec.option[0] == provider
        }

    def secret_values(self) -> list[str]:
        """Every configured secret (tokens, keys, passwords, webhook URLs and header values),
        for the log redaction: no logger may print one, whatever library it belongs to."""
        values: list[str] = []
        for name, spec in SPEC.items():
            value = getattr(self, name)
            if not spec.secret or not value:
                continue
            if isinstance(value, tuple):
                values.extend(header_value for _, header_value in value)
            else:
                values.append(str(value))
        return values

    def unmatched_out_topics(self) -> list[str]:
        """Reply topics the engine would never read (their names miss ENGINE_TOPIC_PATTERN)."""
        pattern = re.compile(self.engine_topic_pattern)
        return [
            topic
            for topic in (self.topic_generate_out, self.topic_validate_out, self.topic_notify_out)
            if not pattern.search(topic)
        ]

    def __repr__(self) -> str:
        """Show settings with secrets masked, so logging the object cannot leak them."""

        def show(name: str) -> str:
            value = getattr(self, name)
            return "'***'" if SPEC[name].secret and value else repr(value)

        shown = ", ".join(f"{f.name}={show(f.name)}" for f in fields(self))
        return f"Settings({shown})"


def _declaration(name: str, metadata: Mapping[str, object]) -> Setting[object]:
    """The field's :class:`Setting`; a field declared without one fails at import, not later
    as a setting that ``from_env`` cannot read and the README does not list."""
    spec = metadata.get("setting")
    if not isinstance(spec, Setting):
        raise TypeError(f"Settings.{name} is not declared with setting(...)")
    return spec


# Field name -> declaration, in declaration order (the README table's order).
SPEC: dict[str, Setting[object]] = {
    f.name: _declaration(f.name, f.metadata) for f in fields(Settings)
}

ENV_VARS: frozenset[str] = frozenset(name for spec in SPEC.values() for name in spec.names)

TABLE_HEADER = "| variable | default | meaning |\n|---|---|---|\n"


def _row(*cells: str) -> str:
    """A table row; a bare ``|`` would end its cell early, even inside backticks."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |\n"


def markdown_table() -> str:
    """The README's configuration table: one row per setting, in declaration order."""
    rows = (
        _row(" / ".join(f"`{name}`" for name in spec.names), spec.shown, spec.meaning)
        for spec in SPEC.values()
    )
    return TABLE_HEADER + "".join(rows)


def main(argv: list[str]) -> int:
    """``python -m app.settings table``: print the table to paste into README.md."""
    if argv != ["table"]:
        print("usage: python -m app.settings table", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
