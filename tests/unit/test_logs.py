"""Logs: one JSON object per line, request context as fields, recipients masked, no secrets."""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import logging.config
import re
import string
import sys
import time
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
from aiohttp.http_parser import HttpRequestParser
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app import codec
from app.logs import (
    PAYLOAD_LOGGERS,
    SERVICE_LOGGERS,
    TEXT_FORMAT,
    JsonFormatter,
    Redactor,
    TextFormatter,
    logging_config,
    mask_recipient,
    request_context,
)

TOKEN = "tok-0123456789abcdef"
HMAC = "hmac-secret-0123456789abcdef"
FORMATS = ("json", "text")


def test_mask_recipient():
    assert mask_recipient("user@example.com") == "u***@example.com"
    assert mask_recipient("+40712345678") == "+40*******78"
    assert mask_recipient("abc") == "***"


def test_json_line_with_request_context():
    record = logging.LogRecord(
        "agents.otp", logging.INFO, __file__, 1, "generate %s", ("ok",), None
    )
    record.__dict__.update(
        request_context(12345, "42", channel="MAIL", recipient="user@example.com")
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = codec.loads(line)
    assert doc["message"] == "generate ok" and doc["level"] == "INFO"
    assert doc["processInstanceId"] == 12345 and doc["clientId"] == "42"
    assert doc["recipient"] == "u***@example.com"


def test_exception_stays_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in codec.loads(line)["exception"]


# --- redaction: the patterns -------------------------------------------------------------

GENERIC = [
    # Authorization / Proxy-Authorization, any case and quoting, to the end of the value.
    ("Authorization: Bearer abc", "Authorization: ***"),
    ("authorization: basic dXNlcjpwYXNz", "authorization: ***"),
    ("AUTHORIZATION:Bearer x y z\r\nHost: h", "AUTHORIZATION:***\r\nHost: h"),
    ("Proxy-Authorization: Basic Zm9vOmJhcg==", "Proxy-Authorization: ***"),
    (
        "{'Authorization': 'Basic dXNlcjpwYXNz', 'Host': 'x'}",
        "{'Authorization': '***', 'Host': 'x'}",
    ),
    ('{"authorization": "Bearer a.b.c"}', '{"authorization": "***"}'),
    ("[('Authorization', 'Bearer abc')]", "[('Authorization', '***')]"),
    ("b'Authorization: Bearer abc\\x00'", "b'Authorization: ***'"),
    (
        "b'GET / HTTP/1.1\\r\\nAuthorization: Bearer abc\\r\\nHost: x\\r\\n'",
        "b'GET / HTTP/1.1\\r\\nAuthorization: ***\\r\\nHost: x\\r\\n'",
    ),
    (
        "<CIMultiDictProxy('Authorization': 'Bearer q')>",
        "<CIMultiDictProxy('Authorization': '***')>",
    ),
    # A credential after its scheme, anywhere.
    ("sent Bearer eyJhbGciOi.J9.x-_~+/= to upstream", "sent Bearer *** to upstream"),
    ("retry with Basic dXNlcjpwYXNz=", "retry with Basic ***"),
    ("headers=Bearer abc, next", "headers=Bearer ***, next"),
    # Secret-bearing keys in query strings, key=value text, JSON and reprs.
    ("GET /otp?token=abc123&user=1", "GET /otp?token=***&user=1"),
    ("password=hunter2, user=bob", "password=***, user=bob"),
    ("secret=s3cr3t; api_key=k-1 auth_token=t1", "secret=***; api_key=*** auth_token=***"),
    ("Settings(smtp_password='p w d', x=1)", "Settings(smtp_password='***', x=1)"),
    ('{"password": "p\\"w", "secret": 5}', '{"password": "***", "secret": ***}'),
    ("{'access_token': 'abc', 'ok': True}", "{'access_token': '***', 'ok': True}"),
    (
        "X-Api-Key=k1 apikey=k2 private_key='-----BEGIN'",
        "X-Api-Key=*** apikey=*** private_key='***'",
    ),
    ("client_secret: 'abc def' credentials=u:p", "client_secret: '***' credentials=***"),
    ("sasl_plain_password=None", "sasl_plain_password=***"),
]

UNCHANGED = [
    # Prose and the lines libraries log all day stay as they are.
    "missing bearer token",
    "invalid bearer token; expected 'Bearer <token>'",
    'WWW-Authenticate: Basic realm="otp"',
    "[^Worker]: Starting...",
    "Updating subscribed topics to: frozenset({'otp-templates-changelog'})",
    "tokens per second: 40, token_type=bearer",
    "OTP_HMAC_SECRET: must be at least 16 characters",
    "secret_ref=vault/otp",
]


@pytest.mark.parametrize(("text", "expected"), GENERIC)
def test_generic_patterns(text: str, expected: str):
    assert Redactor()(text) == expected


@pytest.mark.parametrize("text", UNCHANGED)
def test_no_false_positive(text: str):
    assert Redactor([TOKEN])(text) == text


def test_configured_secret_literal_and_escaped_forms():
    token = "tok\x00en-\x01é'\"\\-12345"
    redact = Redactor([token])
    for shown in (
        token,
        repr(token),  # str repr: \x00, \x01, the quotes, the backslash escaped
        repr(token.encode()),  # bytes repr: also é as \xc3\xa9
        repr(token.encode("latin-1")),
        repr(repr(token)),  # a repr inside a repr (a tuple in an exception message)
        codec.dumps(token).decode(),
        "https://h/cb?t=" + "tok%00en-%01%C3%A9%27%22%5C-12345",
    ):
        out = redact(f"before {shown} after")
        assert "tok" not in out and "12345" not in out, (shown, out)
        assert out.startswith("before ") and out.endswith(" after"), out


def test_secret_inside_generic_value_is_removed_whole():
    # The token holds a quote, which would end the header value; the tail must not survive.
    token = "abc'defghijk"
    out = Redactor([token])(f"{{'Authorization': 'Bearer {token}'}}")
    assert "defghijk" not in out and "abc" not in out, out


def test_short_or_empty_secrets_are_ignored():
    redact = Redactor(["", "abc", "12345"])
    assert redact("abc 12345 abcdef") == "abc 12345 abcdef"


def test_truncated_secret_is_still_redacted():
    """aiohttp shows the first 100 bytes of an oversized header value, then "..."."""
    redact = Redactor([TOKEN])
    cut = "b'" + "a" * 90 + TOKEN[:10] + "...'"
    assert TOKEN[:10] not in redact(cut)
    assert redact("'aaa..." + TOKEN[-9:] + "'") == "'aaa...***'"


@pytest.mark.parametrize(
    "line",
    [
        "token b'X-A: " + "." * 8190 + "'",
        "token b'" + TOKEN[:6] * 1365 + "'",
        "b'" + "Authorization: " * 546 + "'",
        "token=" * 1365,
        "Bearer " * 1170,
        "password='" * 819,
    ],
    ids=["dots", "heads", "headers", "keys", "schemes", "quotes"],
)
def test_hostile_header_lines_stay_linear(line: str):
    """Anyone can make aiohttp log an 8 KB header line of their choosing; redacting it must
    not cost a quadratic scan (8,190 dots once took 1.2 s)."""
    redact = Redactor([TOKEN, HMAC])
    started = time.process_time()  # CPU time: a descheduled test is not a slow scan
    redact(line)
    assert time.process_time() - started < 0.1


def test_longer_secret_wins_over_one_it_contains():
    assert Redactor(["abcdef", "xxabcdefyy"])("[xxabcdefyy]") == "[***]"


# --- formatters and the dictConfig -------------------------------------------------------


Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """Applies ``logging_config`` for real (root handler and all), writing to a buffer."""
    root = logging.getLogger()
    names = ("aiokafka", "faust", "mode", "aiokafka.cluster", "aiohttp.server", "botocore")
    names += ("aiobotocore", *PAYLOAD_LOGGERS, *SERVICE_LOGGERS)
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in names})

    def apply(
        fmt: str, secrets: list[str], level: str = "INFO", library_level: str = "WARNING"
    ) -> io.StringIO:
        config = logging_config(level, fmt, secrets=secrets, library_level=library_level)
        logging.config.dictConfig(config)
        buffer = io.StringIO()
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        return buffer

    yield apply
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    handlers, level, levels = saved
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def bad_request_error(raw: bytes) -> Exception:
    """The exception aiohttp's own (C) request parser raises for ``raw``."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(
            mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190
        )
        try:
            parser.feed_data(raw)
        except Exception as exc:
            return exc
    finally:
        loop.close()
    raise AssertionError("the parser accepted the request")


def texts(output: str, fmt: str) -> str:
    """Everything a reader of the log sees: for JSON, the decoded fields as well."""
    if fmt == "text":
        return output
    lines = [codec.loads(line) for line in output.splitlines()]
    return output + "\n".join(str(v) for doc in lines for v in doc.values())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\x01\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-" + TOKEN.encode() + b"\x00bad name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 90 + TOKEN.encode() + b"a" * 9000 + b"\r\n\r\n",
    ],
    ids=["nul-after-token", "ctl-after-token", "bad-header-name", "long-header"],
)
def test_aiohttp_server_error_is_redacted(configure: Configure, fmt: str, raw: bytes):
    """What aiohttp's server logs for a request its parser refuses, through the real config."""
    buffer = configure(fmt, [TOKEN, HMAC])
    exc = bad_request_error(raw)
    assert TOKEN[:10] in str(exc)  # the text aiohttp would log does carry the token
    logging.getLogger("aiohttp.server").error(
        "Error handling request from %s", "127.0.0.1", exc_info=exc
    )
    out = buffer.getvalue()
    assert "aiohttp.server" in out and "Error handling request from 127.0.0.1" in out
    assert "BadHttpMessage" in out or "LineTooLong" in out
    seen = texts(out, fmt)
    assert TOKEN[:10] not in seen and repr(TOKEN.encode())[2:-1] not in seen, seen


@pytest.mark.parametrize("fmt", FORMATS)
def test_secrets_in_args_exceptions_and_tracebacks(configure: Configure, fmt: str):
    buffer = configure(fmt, [TOKEN, HMAC])
    log = logging.getLogger("agents.otp")
    log.info("token is %s, key is %r", TOKEN, HMAC.encode())
    log.warning("retrying %s", {"headers": {"Authorization": "Bearer other-credential"}})
    try:
        raise RuntimeError(f"upstream refused {TOKEN} (hmac {HMAC!r})")
    except RuntimeError:
        log.exception("send failed")
    try:
        {}[TOKEN]
    except KeyError:
        log.error("lookup failed", exc_info=True, stack_info=True)
    out = buffer.getvalue()
    seen = texts(out, fmt)
    for leaked in (TOKEN, HMAC, "other-credential"):
        assert leaked not in seen, (leaked, seen)
    assert "RuntimeError: upstream refused ***" in seen and "KeyError: '***'" in seen
    assert "Stack (most recent call last)" in seen
    assert "token is ***, key is b'***'" in seen
    if fmt == "json":
        assert all(codec.loads(line)["logger"] == "agents.otp" for line in out.splitlines())
    else:
        assert "[ERROR] agents.otp: send failed" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_context_fields_are_redacted(configure: Configure, fmt: str):
    buffer = configure(fmt, [TOKEN])
    logging.getLogger("agents.otp").info(
        "generate", extra=request_context(7, TOKEN, source={"url": f"https://h/?token={TOKEN}"})
    )
    out = buffer.getvalue()
    assert TOKEN not in out
    if fmt == "json":
        doc = codec.loads(out)
        assert doc["clientId"] == "***" and doc["source"] == {"url": "https://h/?token=***"}


def test_formatter_options_come_through_dictconfig(configure: Configure):
    secret = "ext://sys.stderr"  # dictConfig would resolve this if it were indexed
    buffer = configure("text", [secret])
    logging.getLogger("x").warning("value %s", secret)
    assert buffer.getvalue().rstrip().endswith("x: value ***")
    formatter = logging.getLogger().handlers[0].formatter
    assert isinstance(formatter, TextFormatter) and formatter._fmt == TEXT_FORMAT


def test_logging_error_report_is_redacted(configure: Configure, capsys: pytest.CaptureFixture[str]):
    """A malformed log call: the stock handler would print the arguments to stderr as-is."""
    configure("json", [TOKEN])
    logging.getLogger("x").info("two %s %s", TOKEN)
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "Arguments: ('***',)" in err
    assert TOKEN not in err


def test_library_levels_unchanged():
    config = logging_config("WARNING", "json", secrets=[TOKEN])
    assert config["loggers"]["aiokafka.cluster"] == {"level": "CRITICAL"}
    assert config["root"] == {"level": "WARNING", "handlers": ["default"]}
    assert config["formatters"]["default"] == {"()": "app.logs.JsonFormatter", "secrets": [TOKEN]}


# --- property: a secret embedded anywhere never comes out ---------------------------------

PRINTABLE = st.text(alphabet=string.printable, max_size=40)


def forms_of(secret: str) -> set[str]:
    return {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret=st.text(alphabet=string.printable, min_size=8, max_size=40),
    before=PRINTABLE,
    after=PRINTABLE,
    where=st.sampled_from(
        ["message", "arg", "repr-arg", "tuple-arg", "exception", "bytes-exception", "key-error"]
    ),
    fmt=st.sampled_from(FORMATS),
)
def test_embedded_secret_never_appears(secret: str, before: str, after: str, where: str, fmt: str):
    # A "secret" that the log line's own scaffolding spells (a JSON key such as "exception", a
    # word of the traceback) is not one a deployment could have; it says nothing here.
    plain = JsonFormatter() if fmt == "json" else TextFormatter()
    scaffolding = texts(plain.format(log_record(before + after, where)), fmt)
    assume(not any(form in scaffolding for form in forms_of(secret)))
    formatter = (
        JsonFormatter(secrets=[secret]) if fmt == "json" else TextFormatter(secrets=[secret])
    )
    record = log_record(before + secret + after, where)
    seen = texts(formatter.format(record), fmt)
    for form in forms_of(secret):
        assert form not in seen, (form, seen)


def log_record(text: str, where: str) -> logging.LogRecord:
    """A record carrying ``text`` in the place ``where`` names."""
    msg, args, exc_info = "event", (), None
    if where == "message":
        msg = text
    elif where == "arg":
        msg, args = "got %s here", (text,)
    elif where == "repr-arg":
        msg, args = "got %r here", (text,)
    elif where == "tuple-arg":
        msg, args = "got %s here", ((text, text.encode()),)
    else:
        error = {
            "exception": ValueError(text),
            "bytes-exception": ValueError(text.encode()),
            "key-error": KeyError(text),
        }[where]
        try:
            raise error
        except Exception:
            exc_info = sys.exc_info()
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, msg, args, exc_info)


PIECES = st.sampled_from(
    [
        "Authorization",
        "proxy-authorization",
        "Bearer",
        "BASIC",
        "bearer",
        "token",
        "Password",
        "passwd",
        "secret",
        "api_key",
        "Access-Key",
        "private_key",
        "credentials",
        ": ",
        "=",
        ",",
        "'",
        '"',
        "b'",
        " ",
        "\\r\\n",
        "\r\n",
        "...",
        "tok-01",
        "23456789",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES | st.text(alphabet=string.printable, max_size=3), max_size=12))
def test_pre_check_never_skips_a_line_the_pattern_would_change(parts: list[str]):
    """The cheap substring check in front of the regex only saves time; it changes nothing."""
    redact = Redactor(["tok-0123456789"])
    text = "".join(parts)
    assert redact(text) == redact.pattern.sub(_redacted, text)


def _redacted(match: re.Match[str]) -> str:
    group = match.lastindex
    return "***" if group is None else match.group(group) + "***"


@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
def test_service_lines_below_the_level_cost_no_record_under_faust_spinner(
    configure: Configure, level: str
):
    """Faust's worker, at WARNING and above, lowers the root logger to DEBUG for its terminal
    spinner (``Worker._setup_spinner_handler``); the service's loggers keep LOG_LEVEL, so the
    per-request INFO line is refused at ``isEnabledFor`` instead of built and dropped."""
    from types import SimpleNamespace

    from faust.utils.terminal import Spinner
    from faust.worker import Worker

    buffer = configure("json", [], level=level)
    root = logging.getLogger()  # the fixture restores its handlers and level afterwards
    spinner = SimpleNamespace(spinner=Spinner(file=io.StringIO()))
    Worker._setup_spinner_handler(spinner, root, logging.getLevelNamesMapping()[level])
    assert root.level == logging.DEBUG  # what Faust does; if not, this test needs a look
    for name in ("app.flows.otp", "agents.otp", "tables.template_cache", "web.api"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.ERROR), name
    logging.getLogger("app.flows.otp").error("kept")
    assert "kept" in buffer.getvalue()


def test_libraries_log_at_their_own_level():
    """``make run`` shows the service's INFO lines, not Faust's partition tables."""
    config = logging_config("INFO", "text", library_level="WARNING")
    for name in ("aiokafka", "faust", "mode", "botocore", "aiobotocore"):
        assert config["loggers"][name] == {"level": "WARNING"}
    assert config["root"]["level"] == "INFO"
    assert logging_config("DEBUG", "json", library_level="DEBUG")["loggers"]["faust"] == {
        "level": "DEBUG"
    }


@pytest.mark.parametrize("library_level", ["DEBUG", "INFO", "WARNING"])
def test_loggers_that_print_payloads_stay_at_info_or_above(library_level: str):
    config = logging_config("DEBUG", "json", library_level=library_level)
    for name in PAYLOAD_LOGGERS:
        assert config["loggers"][name] == {"level": max(library_level, "INFO", key=_level)}


def _level(name: str) -> int:
    return logging.getLevelNamesMapping()[name]


def test_aiokafka_producer_logs_record_values_where_the_pin_holds_it():
    """The pin names aiokafka's producer logger; if aiokafka moved that line, say so."""
    import aiokafka.producer.producer as producer

    source = inspect.getsource(producer)
    assert 'log.debug("Sending (key=%s value=%s) to %s"' in source
    assert producer.log.name == "aiokafka.producer.producer"


def test_a_produced_record_is_not_logged_even_at_debug(configure: Configure):
    """Both levels at DEBUG, as an operator chasing a fault would set them."""
    buffer = configure("json", [], level="DEBUG", library_level="DEBUG")
    logging.getLogger("aiokafka.producer.producer").debug(
        "Sending (key=%s value=%s) to %s", b"1", b'{"body":"Your code is 482913"}', "sms"
    )
    logging.getLogger("botocore.auth").debug("Signature:\n%s", "5ec1e7")
    logging.getLogger("aiokafka.consumer").debug("still at DEBUG")
    out = buffer.getvalue()
    assert "482913" not in out and "5ec1e7" not in out
    assert "still at DEBUG" in out
