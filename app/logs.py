"""Logging: one JSON object per line, request context on every line, no secrets.

Operators ship worker logs to a collector that indexes fields; a line that is a JSON object
with ``processInstanceId`` lets them follow one request across workers. Recipients are masked
(``u***@example.com``); OTP codes are never passed to a logger in the first place.

Credentials are a different matter: we do not control what aiohttp, aiokafka or Faust put in
a record. aiohttp's server logger, for one, writes the raw bytes of a header line it cannot
parse (``b'Authorization: Bearer <token>\\x00'``) into the traceback of an ERROR record. So
the last step of every formatter here is :class:`Redactor`, run on the finished text of the
record (message after ``%`` formatting, exception and stack text included): whatever a
library logs, the handler never writes a configured secret, an ``Authorization`` header
value, a bearer/basic credential or a ``password=``-style value.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO
from urllib.parse import quote, quote_plus

import orjson

CONTEXT_FIELDS = ("processInstanceId", "clientId", "channel", "recipient", "templateName", "source")
_NUMBERS = (int, float)

TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
REDACTED = "***"
# A configured secret shorter than this is not searched for: a 3-character value would blank
# out every word it happens to occur in, and nobody configures a credential that short.
MIN_SECRET_CHARS = 6

# Where a header value or a key's value ends. Text from libraries often shows escaped bytes
# (``\r\n`` as four characters), so those end a value too.
_HEADER_VALUE = r"""(?:(?!\\[rn])[^'"\r\n])"""
_BARE_VALUE = r"""[^\s&,;'"<>()\[\]{}\\]"""
# The keys whose value is a credential. The lookahead is only for speed: a branch that starts
# with a case-sensitive character class fails fast on the characters it cannot start with.
_SECRET_KEYS = (
    r"(?=[PpSsTtAaCc])(?i:pass(?:word|wd|phrase)|secret|token|a(?:pi|ccess)[_-]?key"
    r"|private[_-]?key|credentials?)"
)
# Substrings (lower case) that any match of a keyword branch below contains; keep in step with
# _SECRET_KEYS and the header and scheme branches. A line holding none of them (nor a
# configured secret's first or last characters) is not scanned.
_KEYWORDS = (
    "authorization",
    "bearer",
    "basic",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "_key",
    "-key",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
)
# ``key=value``, ``"key": value`` (JSON, dict reprs), ``key: 'value'``.
_KEY_SEPARATOR = r"""(?:[ \t]*=[ \t]*|['"][ \t]*[:=][ \t]*|[ \t]*:[ \t]*(?=b?['"]))"""
# Words that follow "Bearer"/"Basic" in prose ("missing bearer token", "Basic realm=..."):
# not credentials, and redacting them only makes logs harder to read.
_SCHEME_PROSE = (
    r"(?!(?:token|tokens|auth|authentication|authorization|credentials?|realm|scheme)\b)"
)


def _repr_bodies(text: str) -> set[str]:
    """What ``repr``/``ascii`` put between the quotes for ``text``, with the single quote
    escaped and not: which of the two happens depends on the whole string being repr'd (a
    token next to a ``"`` elsewhere in a message), not on the token alone."""
    bodies = set()
    for shown in (repr(text + '"'), ascii(text + '"')):
        escaped = shown[1:-2]  # the appended '"' forces '...' quoting, so ' is escaped
        bodies |= {escaped, escaped.replace("\\'", "'")}
    return bodies


def _bytes_repr_bodies(data: bytes) -> set[str]:
    escaped = repr(data + b'"')[2:-2]
    return {escaped, escaped.replace("\\'", "'")}


def secret_forms(secret: str) -> set[str]:
    """The spellings a secret takes in log text, not only the literal one.

    A token reaches a log line through ``repr`` of a ``str`` or of ``bytes`` (aiohttp's
    parser errors, ``%r`` arguments, dict reprs in tracebacks), as JSON, percent-encoded in a
    URL, or escaped once more when a repr is itself repr'd; a token containing a character
    that those escape would otherwise slip through a plain substring match.
    """
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms |= {quote(secret, safe=""), quote_plus(secret, safe="")}
    forms |= _repr_bodies(secret)
    for encoding in ("utf-8", "latin-1"):
        try:
            forms |= _bytes_repr_bodies(secret.encode(encoding))
        except UnicodeEncodeError:
            pass
    # A repr of text that already holds one of these (KeyError of a repr, a tuple of reprs).
    forms |= {body for form in list(forms) for body in _repr_bodies(form)}
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


class Redactor:
    """Replaces credentials in finished log text with ``***``.

    One regex, compiled once. It runs on every line a worker logs, and Python's regex engine
    has no fast path for a many-branch pattern (about 70 us for a 160-character line), so a
    line is scanned only if it holds a substring that one of the branches needs: a secret's
    first or last characters, or a keyword (``authorization``, ``token``, ...). Those are
    plain ``in`` checks, about a microsecond per line; most lines hold none of them.

    Each branch that keeps a prefix (a header name, a key) has exactly one capturing group,
    so ``m.lastindex`` tells the replacement what to keep.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_CHARS:
                forms |= secret_forms(secret)
        # Longest first: where one secret contains another, the longer one is replaced whole.
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        heads = sorted({f[:MIN_SECRET_CHARS] for f in ordered})
        tails = sorted({f[-MIN_SECRET_CHARS:] for f in ordered})
        self.triggers = tuple(sorted(set(heads) | set(tails)))
        literal = "|".join(re.escape(form) for form in ordered)
        # A value consumes a whole secret even where the secret holds a character that would
        # end the value, so no tail of the secret is left behind after "key=***".
        inside = f"(?:{literal})|" if literal else ""
        alternatives: list[str] = []
        if literal:
            alternatives.append(literal)
            # A library that shortens long text (aiohttp: the first 100 bytes of an oversized
            # header value, then "...") can cut a secret; the part it kept is still a secret.
            # The fragment is never longer than the secret, and a run of dots is one "...":
            # that keeps a line of 8,000 dots (a header anyone can send) from costing a
            # quadratic scan.
            head = "|".join(re.escape(h) for h in heads)
            tail = "|".join(re.escape(t) for t in tails)
            rest = max(map(len, ordered)) - MIN_SECRET_CHARS
            alternatives.append(f"""(?:{head})[^\\s'"]{{0,{rest}}}?(?=\\.\\.\\.)""")
            alternatives.append(f"""(\\.\\.\\.)(?!\\.)[^\\s'"]{{0,{rest}}}?(?:{tail})""")
        alternatives += [
            # Authorization and Proxy-Authorization (matched from "Authorization" on), in any
            # case and quoting, to the end of the value.
            r"((?i:authorization)(?:['\"]?[ \t]*[:=][ \t]*|['\"][ \t]*,[ \t]*)(?:b?['\"])?)"
            rf"(?:{inside}{_HEADER_VALUE})+",
            # The credential after an auth scheme, wherever it appears.
            rf"((?:B(?:earer|EARER|asic|ASIC)|bearer)[ \t]+){_SCHEME_PROSE}"
            rf"(?:{inside}{_BARE_VALUE})+",
            # password=..., "token": "...", api_key='...', ?auth_token=...&. A quoted value
            # runs to its closing quote (spaces included), a bare one to a delimiter.
            rf"""({_SECRET_KEYS}{_KEY_SEPARATOR}(?:b?(?P<quote>["']))?)"""
            rf"""(?(quote)(?:{inside}\\.|(?!(?P=quote))[^\\\r\n])+"""
            rf"""|(?!b?['"])(?:{inside}{_BARE_VALUE})+)""",
        ]
        # Every branch starts with one of these characters; saying so up front lets the
        # engine skip the other positions without trying each branch there (1.6x faster).
        firsts = {f[0] for f in ordered} | set(".AaBbCcPpSsTt")
        first = "".join(re.escape(c) for c in sorted(firsts))
        # ASCII: case-insensitive parts fold only A-Z, which ``str.lower`` in ``needed``
        # folds too, so a line the pre-check skips cannot match a branch.
        self.pattern = re.compile(f"(?=[{first}])(?:{'|'.join(alternatives)})", re.ASCII)

    def needed(self, text: str) -> bool:
        """False when no branch of the pattern can match ``text`` (most lines)."""
        return any(map(text.__contains__, self.triggers)) or any(
            map(text.lower().__contains__, _KEYWORDS)
        )

    def __call__(self, text: str) -> str:
        return self.pattern.sub(_replacement, text) if self.needed(text) else text


def _replacement(match: re.Match[str]) -> str:
    group = match.lastindex
    return REDACTED if group is None else match.group(group) + REDACTED


class TextFormatter(logging.Formatter):
    """The human-readable format, redacted like the JSON one (``LOG_FORMAT=text``)."""

    def __init__(
        self,
        fmt: str | None = TEXT_FORMAT,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        validate: bool = True,
        *,
        secrets: Iterable[str] = (),
    ) -> None:
        super().__init__(fmt, datefmt, style, validate)
        self.redact = Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        # The finished line, so message, arguments, traceback and stack are all covered.
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; every string field is redacted before it is encoded.

    Redacting the fields rather than the encoded line means the patterns see the text as it
    was logged, not with JSON's escapes, and the output stays valid JSON.
    """

    def __init__(self, *args: Any, secrets: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redact = Redactor(secrets)
        self._default = lambda value: self.redact(str(value))

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        # The text the redaction has to look at; one pre-check over all of it together, so a
        # record none of whose fields could match (most records) costs one check, not one per
        # field. A context value that is neither text nor a number is scrubbed field by field.
        probe = [record.name, message]
        structured = False
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = value
                if type(value) is str:
                    probe.append(value)
                elif not isinstance(value, _NUMBERS):
                    structured = True
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
            probe.append(doc["exception"])
        elif record.exc_text:
            doc["exception"] = record.exc_text
            probe.append(record.exc_text)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
            probe.append(doc["stack"])
        if structured or self.redact.needed("\n".join(probe)):
            doc = {k: self._scrub(v) for k, v in doc.items()}
        return orjson.dumps(doc, default=self._default).decode()

    def _scrub(self, value: Any) -> Any:
        """Context values are whatever a caller passed in ``extra=``; strings anywhere inside
        them are redacted (other types are left to ``default=`` above, which redacts their
        ``str``)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value


class RedactingStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler whose "--- Logging error ---" report goes through the redaction too.

    The stock ``handleError`` bypasses the formatter and prints the record's message and
    arguments to stderr as they are; a malformed log call (``log.info("%s %s", token)``)
    would print the token. This prints the same report, redacted.
    """

    def handleError(self, record: logging.LogRecord) -> None:
        if not (logging.raiseExceptions and sys.stderr):
            return
        redact = getattr(self.formatter, "redact", None) or Redactor()
        try:
            report = "".join(
                [
                    "--- Logging error ---\n",
                    traceback.format_exc(),
                    f"Logged from file {record.filename}, line {record.lineno}\n",
                    f"Message: {record.msg!r}\nArguments: {record.args!r}\n",
                ]
            )
            sys.stderr.write(redact(report))
        except Exception:  # the report must never raise into the code that logged
            pass


def logging_config(
    level: str, fmt: str, secrets: Iterable[str] = (), library_level: str = "WARNING"
) -> dict[str, Any]:
    """A dictConfig for Faust's worker (``logging_config``): everything to stderr, redacted.

    ``secrets`` are the worker's configured credentials (API token, HMAC key, provider
    passwords); the formatter removes them, in any of their escaped forms, from every line.
    The formatter only iterates over the list: dictConfig would turn an item that looks like
    ``ext://...`` into an object if it were indexed, and a secret must stay a string.
    """
    kept = [s for s in secrets if s and len(s) >= MIN_SECRET_CHARS]
    formatter: dict[str, Any] = (
        {"()": "app.logs.JsonFormatter", "secrets": kept}
        if fmt == "json"
        else {"()": "app.logs.TextFormatter", "fmt": TEXT_FORMAT, "secrets": kept}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "app.logs.RedactingStreamHandler",
                "formatter": "default",
                "level": level,
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        # Library loggers get their own level (LIBRARY_LOG_LEVEL): at INFO, Faust alone
        # prints about a hundred lines of partition tables at start. Set explicitly also
        # because the worker's start-up lowers the root logger's level, and aiokafka's fetcher
        # then builds a DEBUG record per fetch (~9% of a worker's CPU in the profile).
        # aiokafka logs every transient metadata miss at ERROR; those are not actionable.
        "loggers": {
            # The service's own loggers too: at WARNING and above Faust's worker sets the root
            # logger to DEBUG (for its terminal spinner), and every INFO line, the one per
            # request included, would then build its record only for the handler to drop it.
            **{name: {"level": level} for name in SERVICE_LOGGERS},
            "aiokafka": {"level": library_level},
            "faust": {"level": library_level},
            "mode": {"level": library_level},
            # The attachment store's client: at DEBUG it prints request headers (access key id).
            "botocore": {"level": library_level},
            "aiobotocore": {"level": library_level},
            "aiokafka.cluster": {"level": "CRITICAL"},
            **{name: {"level": _at_least_info(library_level)} for name in PAYLOAD_LOGGERS},
        },
    }


# The service's top-level packages: their loggers take LOG_LEVEL whatever the root's level.
SERVICE_LOGGERS = ("app", "agents", "tables", "web")

# Library loggers that print what they carry at DEBUG, so they never go below INFO, whatever
# LIBRARY_LOG_LEVEL says: aiokafka's producer logs every record's key and value (an SMS sent
# on Kafka holds a live code, a validate command the code the user typed), botocore's signer
# the request's signature on a line of its own, which no redaction pattern can recognise.
PAYLOAD_LOGGERS = ("aiokafka.producer.producer", "botocore.auth")


def _at_least_info(level: str) -> str:
    number = logging.getLevelNamesMapping().get(level.upper(), logging.NOTSET)
    return level if number >= logging.INFO else "INFO"


def mask_recipient(recipient: str) -> str:
    """Enough to recognise a recipient in a support case, not enough to harvest it."""
    if "@" in recipient:
        user, _, domain = recipient.rpartition("@")
        return f"{user[:1]}***@{domain}"
    if len(recipient) > 4:
        return f"{recipient[:3]}{'*' * (len(recipient) - 5)}{recipient[-2:]}"
    return "***"


def request_context(
    process_instance_id: Any, client_id: Any = None, **fields: Any
) -> dict[str, Any]:
    """``extra=`` for a log call about one request."""
    context = {"processInstanceId": process_instance_id, "clientId": client_id, **fields}
    if isinstance(context.get("recipient"), str):
        context["recipient"] = mask_recipient(context["recipient"])
    return context
