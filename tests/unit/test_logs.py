"""Logs: one JSON object per line, request context as fields, recipients masked."""

import logging

from app import codec
from app.logs import JsonFormatter, mask_recipient, request_context


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
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in codec.loads(line)["exception"]
