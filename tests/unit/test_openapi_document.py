"""The OpenAPI document's shape, without a worker: it names exactly the routes the app serves,
and its schemas accept exactly what the server's own validators accept (the contract test,
tests/integration/test_openapi_contract.py, holds it to the live server)."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import templates as model
from app.main import create_app
from app.records import RequestError, identifier
from app.settings import Settings
from web import openapi
from web.errors import allow_header
from web.openapi import base
from web.query import shape

BASE_ENV = {
    "OTP_HMAC_SECRET": "s" * 32,
    "NOTIFY_API_TOKEN": "t" * 20,
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
}
TWILIO_ON = {"TWILIO_AUTH_TOKEN": "x" * 20, "PUBLIC_BASE_URL": "https://otp.example.com"}
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def ecma(pattern: str) -> re.Pattern[str]:
    """A JSON Schema pattern as ECMA-262 reads it: ``$`` is the end of the string, not also
    the place before a final newline as in Python (schemathesis translates it the same way;
    our patterns have no literal ``$``)."""
    return re.compile(pattern.replace("$", r"\Z"))


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if isinstance(instance, str) and not ecma(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


#: Draft 2020-12 with ECMA-262 patterns, as the document means them.
Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)


def app_routes(env: dict[str, str], tmp_path: Any) -> set[tuple[str, str]]:
    settings_ = Settings.from_env({**BASE_ENV, "DATA_DIR": str(tmp_path), **env})
    app = create_app(settings_)
    return {
        (shape(resource.canonical), route.method.lower())
        for resource in app.web.web_app.router.resources()
        for route in resource
        # Faust answers HEAD with the view's GET: HEAD on a GET route is GET, not an operation
        if route.method != "HEAD"
    }


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (shape(path), method)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


def limits(**overrides: Any) -> openapi.Limits:
    return openapi.Limits(
        **{
            "max_body_bytes": 262144,
            "max_body_chars": 100000,
            "default_language": "en",
            "twilio_callbacks": True,
            **overrides,
        }
    )


@pytest.mark.parametrize(
    ("env", "twilio"), [({}, False), (TWILIO_ON, True)], ids=["callbacks-off", "callbacks-on"]
)
def test_document_names_exactly_the_served_routes(tmp_path, env, twilio):
    settings_ = Settings.from_env({**BASE_ENV, "DATA_DIR": str(tmp_path), **env})
    doc = openapi.document(openapi.limits_of(settings_))
    served = app_routes(env, tmp_path)
    if not twilio:  # served, but answering 404 to everything: not in the document
        served.discard(("/api/callbacks/twilio", "post"))
    assert documented(doc) == served


def test_every_operation_is_complete():
    doc = openapi.document(limits())
    ids = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ids.append(op["operationId"])
            responses = op["responses"]
            public = op.get("security") == []
            if not public:
                assert "401" in responses, (path, method)
            if "x-scope" in op:  # every scoped operation: 403 without the scope, 503 loading
                assert op["security"] == [{"bearer": [op["x-scope"]]}], (path, method)
                assert {"403", "503"} <= set(responses), (path, method)
            elif not public:
                assert path == "/api/whoami", (path, method)  # any valid token will do
            if "requestBody" in op:
                assert {"413"} <= set(responses), (path, method)
                assert op["requestBody"]["x-max-bytes"] > 0
                if "application/json" in op["requestBody"]["content"]:
                    assert {"400", "415"} <= set(responses), (path, method)
            for name in re.findall(r"\{([^}]+)\}", path):
                params = [p for p in op.get("parameters", []) if p["in"] == "path"]
                assert name in [p["name"] for p in params], (path, method)
            for rule in responses.get("400", {}).get("x-beyond-schema", []):
                re.compile(rule["field"]), re.compile(rule["message"])
    assert len(ids) == len(set(ids))


def test_every_reference_resolves():
    doc = openapi.document(limits())
    refs = re.findall(r"'\$ref': '#/([^']+)'", repr(doc))
    assert refs
    for ref in refs:
        node: Any = doc
        for part in ref.split("/"):
            node = node[part]


def test_allow_header_has_head_only_with_get():
    assert allow_header(["HEAD", "POST"]) == "POST"
    assert allow_header(["GET", "HEAD", "POST"]) == "GET, HEAD, POST"


# --------------------------------------------------------------------------- patterns


def _representatives() -> list[str]:
    """The first, a middle and the last code point of every Unicode category, and every
    whitespace character: identifier()'s rule is by category and by whitespace."""
    by_category: dict[str, list[int]] = {}
    for code in range(0x110000):
        if not 0xD800 <= code <= 0xDFFF:
            by_category.setdefault(unicodedata.category(chr(code)), []).append(code)
    picked = {c for codes in by_category.values() for c in (codes[0], codes[len(codes) // 2])}
    picked |= {codes[-1] for codes in by_category.values()}
    picked |= {code for code in range(0x10000) if chr(code).isspace()}
    return [chr(code) for code in sorted(picked)]


def _accepted(value: str) -> bool:
    try:
        identifier(value, "clientId", None)
    except RequestError:
        return False
    return True


def test_identifier_pattern_is_the_servers_rule():
    """Alone, inside and at the edge of an identifier, a character of each category: the
    pattern admits exactly what identifier() does."""
    pattern = ecma(base.identifier_pattern())
    for c in _representatives():
        for value in (c, f"a{c}b", f"a{c}", f"{c}{c}"):
            assert bool(pattern.search(value)) is _accepted(value), (hex(ord(c)), value)
    schema = openapi.document(limits())["components"]["schemas"]["Identifier"]
    assert (schema["minLength"], schema["maxLength"]) == (1, 200)
    assert _accepted("x" * 200) and not _accepted("x" * 201)


def test_whitespace_is_what_strip_strips():
    blank = re.compile(base.NOT_BLANK)
    for code in range(0x110000):
        if not 0xD800 <= code <= 0xDFFF:
            assert bool(blank.search(chr(code))) is (chr(code).strip() != ""), hex(code)


@pytest.mark.parametrize(
    ("regex", "samples"),
    [
        (model.NAME_RE, ["otpMail", "a", "a" * 100, "a" * 101, ".a", "a\n", "a b", "é"]),
        (model.LANGUAGE_RE, ["en", "pt-BR", "zh_Hant_TW", "e", "en\n", "en-", "éé"]),
        (model.PARAM_KEY_RE, ["otpValue", "x_1", "1x", "_x", "x\n", "x" * 65]),
    ],
)
def test_anchored_patterns_match_as_fullmatch(regex, samples):
    pattern = ecma(base.anchored(regex))
    for value in samples:
        assert bool(pattern.search(value)) is bool(regex.fullmatch(value)), value


# --------------------------------------------------------------------------- template input

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
FIELDS = {
    "name": st.sampled_from(["otpMail", "a.b-c_d", "", "bad name", ".x"]) | JSON,
    "type": st.sampled_from(["MAIL", "SMS", "PUSH", "mail"]) | JSON,
    "strategyType": st.none() | st.text(max_size=3) | st.just("x" * 101) | JSON,
    "active": st.booleans() | JSON,
    "forwardOnKafka": st.booleans() | JSON,
    "language": st.sampled_from(["en", "pt-BR", "", "e", "en\n"]) | JSON,
    "subject": st.none() | st.sampled_from(["code", "a\nb", "x" * 999]) | JSON,
    "body": st.sampled_from(["b", " ", "\u3000", "x" * 101]) | st.text(max_size=5) | JSON,
    "context": st.none() | st.lists(JSON, max_size=2) | JSON,
    "params": st.none()
    | st.lists(
        st.fixed_dictionaries(
            {"key": st.sampled_from(["otpValue", "x1", "1x"]) | JSON},
            optional={
                "mandatory": st.booleans() | JSON,
                "type": st.sampled_from([*model.PARAM_TYPES, "any"]) | JSON,
                "item": st.sampled_from([*model.PARAM_TYPES, "any"]) | JSON,
            },
        )
        | JSON,
        max_size=3,
    )
    | JSON,
    "extra": JSON,
}


@settings(max_examples=400, deadline=None, database=None)
@given(st.fixed_dictionaries({}, optional=FIELDS) | JSON)
def test_template_input_schema_is_check_fields(payload):
    """Valid by TemplateInput if and only if check_fields takes it, but for the rules the
    document lists beyond the schema (duplicate parameter keys, context depth)."""
    doc = openapi.document(limits(max_body_chars=100))
    schema = {"$ref": "#/components/schemas/TemplateInput", "components": doc["components"]}
    valid = Validator(schema).is_valid(payload)
    try:
        model.check_fields(payload, default_language="en", max_body_chars=100)
        accepted = True
    except model.TemplateInvalid as exc:
        accepted = False
        beyond = [
            p
            for p in exc.problems
            if p.message.startswith("duplicates") or "nested more than" in p.message
        ]
        if valid and beyond == exc.problems:
            return  # refused only for what the schema cannot state, as documented
    assert valid is accepted, payload


def test_unicode_version_is_named():
    schema = openapi.document(limits())["components"]["schemas"]["Identifier"]
    assert unicodedata.unidata_version in schema["description"]
