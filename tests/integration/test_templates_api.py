"""The template REST API end to end: one real worker process on the real broker, driven over HTTP.

One worker serves the whole module (starting one takes seconds); every test uses its own
template names, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import json
import os
import re
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.support import (
    SECRET,
    SEED_MAIL,
    SEED_SMS,
    TOKEN,
    Api,
    Worker,
    config_refusal,
    free_port,
    unique,
    worker_env,
)

pytestmark = pytest.mark.integration

MAX_BODY = 4096  # API_MAX_BODY_BYTES of the module's worker
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SERVER_FIELDS = {"version", "createdAt", "updatedAt"}

# The two templates of the FlowX "Generate OTP" page, verbatim.


# --------------------------------------------------------------------------- helpers


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from synchronous code, on a loop of its own (own thread)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def start_worker(bootstrap: str, base: Path, **extra: str) -> Worker:
    env = worker_env(bootstrap, unique("tpl"), free_port(), **extra)
    worker = Worker(env=env, data_dir=base / "data", log_path=base / "worker.log").start()
    try:
        worker.wait_ready_sync()
    except BaseException:
        worker.stop()
        raise
    return worker


def assert_error(status: int, body: Any, expected: int, field: str | None = None) -> None:
    """An error answer: the expected status and the JSON shape ``{"error", "details"}``."""
    assert status == expected, (status, body)
    assert isinstance(body, dict), body
    assert set(body) == {"error", "details"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert "Traceback" not in body["error"]
    assert isinstance(body["details"], list), body
    for detail in body["details"]:
        assert set(detail) == {"field", "message"}, detail
    if field is not None:
        assert field in [d["field"] for d in body["details"]], body


def template_part(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stored.items() if k not in SERVER_FIELDS}


class Raw:
    """Requests with full control over headers and body, answering (status, json-or-text)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def __call__(
        self, method: str, path: str, *, data: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, self.base_url + path, data=data, headers=headers or {}
            ) as resp:
                raw = await resp.read()
                assert b"Traceback" not in raw
                if resp.content_type == "application/json":
                    return resp.status, json.loads(raw), resp.headers
                return resp.status, raw.decode(errors="replace"), resp.headers


AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = start_worker(
        kafka_bootstrap, tmp_path_factory.mktemp("api-worker"), API_MAX_BODY_BYTES=str(MAX_BODY)
    )
    yield w
    w.stop()
    log = w.log_path.read_text(errors="replace")
    # No request may have crashed inside a view (the middleware logs those as "unhandled error").
    assert "unhandled error" not in log, w.log_tail(80)


@pytest.fixture
def api(worker: Worker) -> Api:
    return Api(worker.url)


@pytest.fixture
def raw(worker: Worker) -> Raw:
    return Raw(worker.url)


@pytest.fixture(scope="module")
def seeds(worker: Worker) -> dict[str, dict[str, Any]]:
    """The two seed templates, POSTed verbatim once for the module: name -> stored template."""

    async def post_both() -> dict[str, dict[str, Any]]:
        api = Api(worker.url)
        stored = {}
        for seed in (SEED_MAIL, SEED_SMS):
            status, body = await api.call("POST", "/api/template", seed)
            assert status == 201, body
            stored[seed["name"]] = body
        return stored

    return run_sync(post_both())


# --------------------------------------------------------------------------- CRUD


async def test_post_seed_templates_verbatim(api: Api, seeds: dict[str, dict[str, Any]]):
    for seed in (SEED_MAIL, SEED_SMS):
        stored = seeds[seed["name"]]
        assert template_part(stored) == {"strategyType": None, "forwardOnKafka": False, **seed}
        assert stored["version"] == 1
        assert ISO_UTC.match(stored["createdAt"]), stored
        assert stored["createdAt"] == stored["updatedAt"]
        # POST again: 409, nothing changed
        status, body = await api.call("POST", "/api/template", seed)
        assert_error(status, body, 409, field="name")
        assert seed["name"] in body["error"]
        status, body = await api.call("GET", f"/api/template/{seed['name']}")
        assert (status, body) == (200, stored)


async def test_get_by_name_and_language(api: Api, seeds: dict[str, dict[str, Any]]):
    mail = seeds["otpMail"]
    assert await api.call("GET", "/api/template/otpMail") == (200, mail)
    assert await api.call("GET", "/api/template/otpMail?language=en") == (200, mail)
    status, body = await api.call("GET", "/api/template/otpMail?language=ro")
    assert_error(status, body, 404)
    status, body = await api.call("GET", "/api/template/noSuchTemplate")
    assert_error(status, body, 404)


async def test_same_name_other_language_coexists(api: Api, seeds: dict[str, dict[str, Any]]):
    name = unique("lang")
    en = {**SEED_MAIL, "name": name}
    ro = {**SEED_MAIL, "name": name, "language": "ro", "subject": "cod pentru [(${clientId})]"}
    status, stored_en = await api.call("POST", "/api/template", en)
    assert status == 201, stored_en
    status, stored_ro = await api.call("POST", "/api/template", ro)
    assert status == 201, stored_ro
    assert stored_ro["language"] == "ro" and stored_ro["version"] == 1
    assert await api.call("GET", f"/api/template/{name}") == (200, stored_en)
    assert await api.call("GET", f"/api/template/{name}?language=ro") == (200, stored_ro)
    status, body = await api.call("POST", "/api/template", ro)
    assert_error(status, body, 409)
    status, preview = await api.call(
        "POST", f"/api/template/{name}/preview?language=ro", {"data": {"clientId": "42"}}
    )
    assert status == 200, preview
    assert preview["subject"] == "cod pentru 42" and preview["language"] == "ro"
    # deleting one language leaves the other
    assert (await api.call("DELETE", f"/api/template/{name}?language=ro"))[0] == 204
    assert (await api.call("GET", f"/api/template/{name}?language=ro"))[0] == 404
    assert await api.call("GET", f"/api/template/{name}") == (200, stored_en)


async def test_list_with_filters(api: Api, seeds: dict[str, dict[str, Any]]):
    tag = unique("list")
    made = {
        f"{tag}-mail-en": {**SEED_MAIL, "name": f"{tag}-mail-en"},
        f"{tag}-sms-en-off": {**SEED_SMS, "name": f"{tag}-sms-en-off", "active": False},
        f"{tag}-sms-de": {**SEED_SMS, "name": f"{tag}-sms-de", "language": "de"},
        f"{tag}-push-de": {
            "name": f"{tag}-push-de",
            "type": "PUSH",
            "language": "de",
            "body": "Code: [(${otpValue})]",
        },
    }
    for template in made.values():
        status, body = await api.call("POST", "/api/template", template)
        assert status == 201, body

    async def listed(query: str) -> dict[str, dict[str, Any]]:
        status, body = await api.call("GET", f"/api/template{query}")
        assert status == 200, body
        assert body["count"] == len(body["items"])
        return {(t["name"], t["language"]): t for t in body["items"]}

    def mine(items: dict[Any, dict[str, Any]]) -> set[str]:
        return {name for name, _ in items if name.startswith(tag)}

    everything = await listed("")
    assert mine(everything) == set(made)
    assert ("otpMail", "en") in everything and ("otpSMS", "en") in everything

    by_type = await listed("?type=SMS")
    assert all(t["type"] == "SMS" for t in by_type.values())
    assert mine(by_type) == {f"{tag}-sms-en-off", f"{tag}-sms-de"}
    assert ("otpSMS", "en") in by_type and ("otpMail", "en") not in by_type

    by_language = await listed("?language=de")
    assert all(t["language"] == "de" for t in by_language.values())
    assert mine(by_language) == {f"{tag}-sms-de", f"{tag}-push-de"}

    inactive = await listed("?active=false")
    assert all(t["active"] is False for t in inactive.values())
    assert mine(inactive) == {f"{tag}-sms-en-off"}
    active = await listed("?active=true")
    assert mine(active) == set(made) - {f"{tag}-sms-en-off"}

    combined = await listed("?type=SMS&language=en&active=false")
    assert mine(combined) == {f"{tag}-sms-en-off"}
    assert all(
        (t["type"], t["language"], t["active"]) == ("SMS", "en", False) for t in combined.values()
    )

    for query, field in (("?type=FAX", "type"), ("?type=sms", "type"), ("?active=maybe", "active")):
        status, body = await api.call("GET", f"/api/template{query}")
        assert_error(status, body, 400, field=field)


async def test_put_replaces_with_version_bump(api: Api):
    name = unique("put")
    status, v1 = await api.call("POST", "/api/template", {**SEED_SMS, "name": name})
    assert status == 201, v1
    changed = {**SEED_SMS, "name": name, "body": "Your code is [(${otpValue})]", "active": False}
    status, v2 = await api.call("PUT", f"/api/template/{name}", changed)
    assert status == 200, v2
    assert v2["version"] == 2
    assert v2["createdAt"] == v1["createdAt"]
    assert v2["updatedAt"] >= v1["updatedAt"] and ISO_UTC.match(v2["updatedAt"])
    assert template_part(v2) == {**changed, "strategyType": "SMS", "forwardOnKafka": False}
    assert await api.call("GET", f"/api/template/{name}") == (200, v2)
    status, preview = await api.call("POST", f"/api/template/{name}/preview", {"data": {}})
    assert status == 200, preview
    assert preview["body"] == f"Your code is {preview['otpValue']}" and preview["version"] == 2
    # A body naming another template does not rename: the URL names the template.
    status, v3 = await api.call("PUT", f"/api/template/{name}", {**changed, "name": "elsewhere"})
    assert status == 200, v3
    assert (v3["name"], v3["language"], v3["version"]) == (name, "en", 3)
    assert (await api.call("GET", "/api/template/elsewhere"))[0] == 404
    # an invalid body is refused before anything is written
    status, body = await api.call("PUT", f"/api/template/{name}", {**changed, "type": "FAX"})
    assert_error(status, body, 400, field="type")
    assert (await api.call("GET", f"/api/template/{name}"))[1]["version"] == 3


async def test_put_unknown_is_404(api: Api):
    name = unique("nothere")
    status, body = await api.call("PUT", f"/api/template/{name}", {**SEED_SMS, "name": name})
    assert_error(status, body, 404)
    assert (await api.call("GET", f"/api/template/{name}"))[0] == 404  # PUT never creates


async def test_delete(api: Api):
    name = unique("del")
    assert (await api.call("POST", "/api/template", {**SEED_SMS, "name": name}))[0] == 201
    status, body = await api.call("DELETE", f"/api/template/{name}")
    assert (status, body) == (204, b"")
    for _ in range(5):  # stays deleted (the changelog catching up must not resurrect it)
        status, body = await api.call("GET", f"/api/template/{name}")
        assert_error(status, body, 404)
        await asyncio.sleep(0.1)
    status, body = await api.call("POST", f"/api/template/{name}/preview", {"data": {}})
    assert_error(status, body, 404)
    _, listing = await api.call("GET", "/api/template")
    assert name not in {t["name"] for t in listing["items"]}
    status, body = await api.call("DELETE", f"/api/template/{name}")
    assert_error(status, body, 404)
    # and it can be created again, from version 1
    status, again = await api.call("POST", "/api/template", {**SEED_SMS, "name": name})
    assert (status, again["version"]) == (201, 1)
    await asyncio.sleep(0.3)
    assert await api.call("GET", f"/api/template/{name}") == (200, again)


# --------------------------------------------------------------------------- preview


async def test_preview_seed_mail(api: Api, seeds: dict[str, dict[str, Any]]):
    status, body = await api.call(
        "POST", "/api/template/otpMail/preview", {"data": {"clientId": "1234567890"}}
    )
    assert status == 200, body
    # the sample code is 123456: the first FLOWX_OTP_LENGTH (default 6) digits of 1234567890
    assert body["otpValue"] == "123456"
    assert body["subject"] == "otp for 1234567890"
    assert "<p>123456</p>" in body["body"]
    assert "th:" not in body["body"]
    assert "Yay, an otp was generated for you:" in body["text"] and "123456" in body["text"]
    assert (body["name"], body["language"], body["type"], body["version"]) == (
        "otpMail",
        "en",
        "MAIL",
        1,
    )


async def test_preview_seed_sms(api: Api, seeds: dict[str, dict[str, Any]]):
    status, body = await api.call("POST", "/api/template/otpSMS/preview", {"data": {}})
    assert status == 200, body
    assert body["body"] == "OTP 123456"
    assert body["subject"] is None and body["text"] is None
    # without any body fields at all, and a request cannot choose the code
    status, body = await api.call(
        "POST", "/api/template/otpSMS/preview", {"data": {"otpValue": "999999"}}
    )
    assert (status, body["body"]) == (200, "OTP 123456")
    status, body = await api.call("POST", "/api/template/otpSMS/preview", {})
    assert (status, body["body"]) == (200, "OTP 123456")


async def test_preview_missing_mandatory(api: Api, seeds: dict[str, dict[str, Any]]):
    for data in ({}, {"clientId": None}, {"clientId": ""}, {"other": "x"}):
        status, body = await api.call("POST", "/api/template/otpMail/preview", {"data": data})
        assert_error(status, body, 400, field="data.clientId")
        assert [d["field"] for d in body["details"]] == ["data.clientId"]
    for payload in ({"data": None}, {"data": ["clientId"]}, {"data": "x"}, [], "x"):
        status, body = await api.call("POST", "/api/template/otpMail/preview", payload)
        assert_error(status, body, 400, field="data")
    status, body = await api.call("POST", "/api/template/otpMail/preview?language=ro", {})
    assert_error(status, body, 404)


async def test_html_escaping(api: Api):
    name = unique("esc")
    template = {
        "name": name,
        "type": "MAIL",
        "subject": "hello [(${name})]",
        "body": "<p th:text='${name}'></p><div>[[${name}]]</div><pre>[(${name})]</pre>",
        "params": [{"key": "name", "mandatory": True}],
    }
    assert (await api.call("POST", "/api/template", template))[0] == 201
    status, body = await api.call(
        "POST", f"/api/template/{name}/preview", {"data": {"name": "<script>"}}
    )
    assert status == 200, body
    assert "<p>&lt;script&gt;</p>" in body["body"]  # th:text escapes
    assert "<div>&lt;script&gt;</div>" in body["body"]  # [[...]] escapes
    assert "<pre><script></pre>" in body["body"]  # [(...)] is unescaped, as in Thymeleaf
    assert body["subject"] == "hello <script>"  # a header, not markup
    # an SMS body is text: nothing is escaped
    sms = {"name": name + "-sms", "type": "SMS", "body": "[[${name}]] [(${name})]"}
    assert (await api.call("POST", "/api/template", sms))[0] == 201
    status, body = await api.call(
        "POST", f"/api/template/{name}-sms/preview", {"data": {"name": "<b>&"}}
    )
    assert (status, body["body"]) == (200, "<b>& <b>&")


async def test_sandbox_refused_at_save(api: Api):
    name = unique("sbx")
    for bad, field in (
        ({"type": "SMS", "body": "{{ ''.__class__ }}"}, "body"),
        ({"type": "SMS", "body": "x\n{{ ''.__class__.__mro__[1].__subclasses__() }}"}, "body"),
        ({"type": "SMS", "body": "{{ otpValue|attr('__class__') }}"}, "body"),
        ({"type": "SMS", "body": "{% include 'x' %}"}, "body"),
        ({"type": "MAIL", "subject": "{{ ''.__class__ }}", "body": "b"}, "subject"),
    ):
        status, body = await api.call("POST", "/api/template", {"name": name, **bad})
        assert_error(status, body, 400, field=field)
        assert "line" in body["details"][0]["message"], body
        assert "<class" not in json.dumps(body)  # never executed
    assert (await api.call("GET", f"/api/template/{name}"))[0] == 404
    # and a safe template cannot reach internals through the data at render time either
    ok = {"name": name, "type": "SMS", "body": "[(${x})] [(${otpValue})]"}
    assert (await api.call("POST", "/api/template", ok))[0] == 201
    status, body = await api.call(
        "POST", f"/api/template/{name}/preview", {"data": {"x": "{{ ''.__class__ }}"}}
    )
    assert (status, body["body"]) == (200, "{{ ''.__class__ }} 123456")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, ["name", "type", "body"]),
        ({**SEED_SMS, "name": "bad name"}, ["name"]),
        ({**SEED_SMS, "type": "EMAIL"}, ["type"]),
        ({**SEED_SMS, "body": ""}, ["body"]),
        ({**SEED_SMS, "body": None}, ["body"]),
        ({**SEED_MAIL, "subject": None}, ["subject"]),
        ({**SEED_SMS, "active": "yes"}, ["active"]),
        ({**SEED_SMS, "language": "english!"}, ["language"]),
        ({**SEED_SMS, "params": {"key": "otpValue"}}, ["params"]),
        ({**SEED_SMS, "params": [{"key": "otpValue"}, {"key": "otpValue"}]}, ["params[1].key"]),
        (
            {**SEED_SMS, "params": [{"key": "otpValue", "mandatory": "yes"}]},
            ["params[0].mandatory"],
        ),
        ({**SEED_MAIL, "name": "m", "body": "<p>no code</p>"}, ["params"]),
        ({**SEED_SMS, "body": "OTP {{ otpValue"}, ["body"]),
        ({**SEED_SMS, "context": "x"}, ["context"]),
        ([SEED_SMS], ["$"]),
        ("otpSMS", ["$"]),
        (None, ["$"]),
    ],
)
async def test_invalid_body_is_400_naming_the_field(api: Api, payload: Any, fields: list[str]):
    status, body = await api.call(
        "POST", "/api/template", data=json.dumps(payload).encode(), headers=JSON
    )
    assert_error(status, body, 400)
    assert [d["field"] for d in body["details"]] == fields, body


async def test_deep_context_is_400_not_500(api: Api):
    """A ``context`` nested 300 deep parsed fine but could not be re-serialized: a 500 once."""
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    template = {**SEED_SMS, "name": unique("deep"), "context": [deep]}
    status, body = await api.call(
        "POST", "/api/template", data=json.dumps(template).encode(), headers=JSON
    )
    assert_error(status, body, 400, field="context")


async def test_syntax_error_names_the_line(api: Api):
    payload = {**SEED_SMS, "name": unique("syn"), "body": "one\ntwo\nOTP [(${otpValue)]"}
    status, body = await api.call("POST", "/api/template", payload)
    assert_error(status, body, 400, field="body")
    assert "line 3" in body["details"][0]["message"], body


async def test_invalid_path_and_query(api: Api):
    status, body = await api.call("GET", "/api/template/bad%20name")
    assert_error(status, body, 400, field="name")
    status, body = await api.call("GET", "/api/template/otpMail?language=en!")
    assert_error(status, body, 400, field="language")
    status, body = await api.call("DELETE", "/api/template/bad%20name")
    assert_error(status, body, 400, field="name")


async def test_a_misspelt_or_repeated_query_parameter_changes_nothing(api: Api):
    """``?Draft=true`` would have published, ``?lang=fr`` deleted the default language's
    template, ``?draft=false&draft=true`` saved what its first value said: each is a 400
    naming the parameter, and the template is as it was."""
    name = unique("query")
    status, created = await api.call("POST", "/api/template", {**SEED_SMS, "name": name})
    assert status == 201, created
    changed = {**SEED_SMS, "name": name, "body": "changed [(${otpValue})]"}
    for method, query, field in [
        ("PUT", "?Draft=true", "Draft"),
        ("PUT", "?draft=true&draft=false", "draft"),
        ("DELETE", "?lang=fr", "lang"),
        ("DELETE", "?language=en&language=fr", "language"),
    ]:
        status, body = await api.call(method, f"/api/template/{name}{query}", changed)
        assert_error(status, body, 400, field=field)
    status, body = await api.call("GET", f"/api/template/{name}")
    assert (status, body) == (200, created)
    status, body = await api.call("GET", f"/api/template/{name}?language=%FF")
    assert_error(status, body, 400, field="query")
    status, body = await api.call("GET", "/api/template/a%FFb")
    assert_error(status, body, 400, field="path")


async def test_an_edit_made_since_a_read_is_never_overwritten(raw: Raw):
    """Two editors read the template; the first one's draft (If-Match its ETag) is saved, the
    second one's gets 412 naming the template's new tag, and the first one's draft stays; so
    does a template re-created after a delete, against a tag read before it."""
    name = unique("ifmatch")
    path = f"/api/template/{name}"
    body = json.dumps({**SEED_SMS, "name": name})
    status, created, headers = await raw(
        "POST", "/api/template", data=body, headers={**AUTH, **JSON}
    )
    assert status == 201, created
    status, _, headers = await raw("GET", path, headers=AUTH)
    read = headers["ETag"]
    first = json.dumps({**SEED_SMS, "name": name, "body": "first [(${otpValue})]"})
    second = json.dumps({**SEED_SMS, "name": name, "body": "second [(${otpValue})]"})
    read_at = {**AUTH, **JSON, "If-Match": read}
    status, draft, headers = await raw("PUT", f"{path}?draft=true", data=first, headers=read_at)
    assert status == 200 and headers["ETag"] != read, draft
    drafted = headers["ETag"]
    status, refused, _ = await raw("PUT", f"{path}?draft=true", data=second, headers=read_at)
    assert status == 412, refused
    assert (
        refused["details"][0]["field"] == "If-Match" and drafted in refused["details"][0]["message"]
    )
    for stale in (f"W/{drafted}", read, '"v1"'):  # weak tags never match (strong comparison)
        status, _, _ = await raw("POST", f"{path}/publish", headers={**AUTH, "If-Match": stale})
        assert status == 412, stale
    status, _, headers = await raw("GET", f"{path}?draft=true", headers=AUTH)
    assert headers["ETag"] == drafted
    status, kept, _ = await raw("GET", f"{path}?draft=true", headers=AUTH)
    assert kept["body"] == "first [(${otpValue})]"
    status, _, _ = await raw("DELETE", path, headers={**AUTH, "If-Match": f'"x", {drafted}'})
    assert status == 204
    status, _, _ = await raw("DELETE", path, headers={**AUTH, "If-Match": "*"})
    assert status == 404  # the answer without the precondition stands (RFC 9110 13.2.1)
    status, again, headers = await raw("POST", "/api/template", data=body, headers={**AUTH, **JSON})
    assert status == 201 and headers["ETag"] not in (read, drafted), again
    status, _, _ = await raw("DELETE", path, headers={**AUTH, "If-Match": read})
    assert status == 412  # a tag of the template deleted does not name the new one


async def test_invalid_json_is_400(raw: Raw):
    for data in (b"{", b"{'name': 1}", b"", b"\xff\xfe", b'{"a": NaN}', b"[1,]"):
        status, body, _ = await raw("POST", "/api/template", data=data, headers={**AUTH, **JSON})
        assert_error(status, body, 400, field="$")
        assert body["error"] == "request body is not valid JSON"


ENDPOINTS = [
    ("GET", "/api/template"),
    ("POST", "/api/template"),
    ("GET", "/api/template/otpMail"),
    ("PUT", "/api/template/otpMail"),
    ("DELETE", "/api/template/otpMail"),
    ("POST", "/api/template/otpMail/preview"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        TOKEN,
    ],
)
async def test_unauthorized_is_401(
    raw: Raw, seeds: dict[str, dict[str, Any]], method: str, path: str, authorization: str | None
):
    headers = {**JSON} if authorization is None else {**JSON, "Authorization": authorization}
    data = json.dumps({**SEED_MAIL, "body": "changed"}).encode()
    status, body, _ = await raw(method, path, data=data, headers=headers)
    assert_error(status, body, 401, field="Authorization")
    assert TOKEN not in json.dumps(body)


async def test_unauthorized_changes_nothing(api: Api, raw: Raw, seeds: dict[str, dict[str, Any]]):
    headers = {**JSON, "Authorization": "Bearer wrong"}
    data = json.dumps({**SEED_MAIL, "subject": "hacked"}).encode()
    assert (await raw("PUT", "/api/template/otpMail", data=data, headers=headers))[0] == 401
    assert (await raw("DELETE", "/api/template/otpMail", headers=headers))[0] == 401
    assert await api.call("GET", "/api/template/otpMail") == (200, seeds["otpMail"])


async def test_unknown_route_and_method(raw: Raw):
    status, body, _ = await raw("GET", "/api/nothing", headers=AUTH)
    assert_error(status, body, 404)
    status, body, _ = await raw("PATCH", "/api/template", headers=AUTH)
    assert_error(status, body, 405)


async def test_body_too_large_is_413(raw: Raw):
    big = json.dumps({**SEED_SMS, "name": unique("big"), "body": "x" * MAX_BODY}).encode()
    assert len(big) > MAX_BODY
    for method, path in (
        ("POST", "/api/template"),
        ("PUT", "/api/template/otpSMS"),
        ("POST", "/api/template/otpSMS/preview"),
    ):
        status, body, _ = await raw(method, path, data=big, headers={**AUTH, **JSON})
        assert_error(status, body, 413)
        assert str(MAX_BODY) in body["error"]
    # the limit is inclusive: a body of exactly MAX_BODY bytes is read (and here refused as JSON)
    exact = b"[" + b" " * (MAX_BODY - 2) + b"]"
    status, body, _ = await raw("POST", "/api/template", data=exact, headers={**AUTH, **JSON})
    assert_error(status, body, 400, field="$")
    status, body, _ = await raw(
        "POST", "/api/template", data=exact + b" ", headers={**AUTH, **JSON}
    )
    assert_error(status, body, 413)


async def test_chunked_body_too_large_is_413(raw: Raw):
    """No Content-Length: the limit holds while reading."""
    sent = 0

    async def chunks():
        nonlocal sent
        for _ in range(8):
            sent += 1024
            yield b"x" * 1024

    status, body, _ = await raw("POST", "/api/template", data=chunks(), headers={**AUTH, **JSON})
    assert_error(status, body, 413)
    assert sent > MAX_BODY

    async def small():
        yield json.dumps({**SEED_SMS, "name": "bad name"}).encode()

    status, body, _ = await raw("POST", "/api/template", data=small(), headers={**AUTH, **JSON})
    assert_error(status, body, 400, field="name")  # a small chunked body is read normally


async def test_compressed_body_limit_applies_after_decompression(raw: Raw):
    payload = json.dumps({**SEED_SMS, "name": unique("gz"), "body": "x" * (4 * MAX_BODY)})
    packed = gzip.compress(payload.encode())
    assert len(packed) < MAX_BODY
    headers = {**AUTH, **JSON, "Content-Encoding": "gzip"}
    status, body, _ = await raw("POST", "/api/template", data=packed, headers=headers)
    assert_error(status, body, 413)


async def test_wrong_content_type_is_415(raw: Raw):
    data = json.dumps(SEED_SMS).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = dict(AUTH) if content_type is None else {**AUTH, "Content-Type": content_type}
        for method, path in (
            ("POST", "/api/template"),
            ("PUT", "/api/template/otpSMS"),
            ("POST", "/api/template/otpSMS/preview"),
        ):
            status, body, _ = await raw(method, path, data=data, headers=headers)
            assert_error(status, body, 415, field="Content-Type")


async def test_openapi_document(api: Api, raw: Raw):
    """Served to anyone, token or not (a client reads it before it has one); the document's
    truth is test_openapi_contract.py's business."""
    status, doc, _ = await raw("GET", "/api/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert {"/api/template", "/api/template/{name}", "/api/template/{name}/preview"} <= set(
        doc["paths"]
    )
    assert set(doc["paths"]["/api/template"]) == {"get", "post"}
    assert set(doc["paths"]["/api/template/{name}"]) >= {"get", "put", "delete"}
    assert "Error" in doc["components"]["schemas"]
    # every status the API answers with is documented for POST /api/template
    assert {"201", "400", "401", "409", "413", "415", "503"} <= set(
        doc["paths"]["/api/template"]["post"]["responses"]
    )
    assert doc["paths"]["/api/openapi.json"]["get"]["security"] == []
    assert await api.call("GET", "/api/openapi.json") == (200, doc)  # a token changes nothing


async def test_405_names_the_allowed_methods(raw: Raw, worker: Worker):
    """RFC 9110: a 405 carries Allow. HEAD is answered with GET, so it is allowed only there."""
    for method, path, allowed in (
        ("TRACE", "/api/template", "GET, HEAD, POST"),
        ("PATCH", "/api/template/otpMail", "DELETE, GET, HEAD, PUT"),
        ("GET", "/api/template/otpMail/preview", "POST"),
        ("DELETE", "/api/otp/42/cancel", "POST"),
    ):
        status, body, headers = await raw(method, path, headers=AUTH)
        assert_error(status, body, 405)
        assert headers["Allow"] == allowed, (method, path, headers)
    async with aiohttp.ClientSession() as session:
        url = f"{worker.url}/api/template/otpMail/preview"
        async with session.head(url, headers=AUTH) as resp:
            assert (resp.status, resp.headers["Allow"]) == (405, "POST")


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record of ``topic`` so far."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            if not batches and records:
                break
            records += [r for batch in batches.values() for r in batch]
    finally:
        await consumer.stop()
    return records


async def test_write_processed_and_answered_twice_is_harmless(
    worker: Worker, api: Api, kafka_bootstrap: str
):
    """At-least-once: after a rebalance, a template command can be processed, and answered, twice.

    With Faust's ``ask`` a second answer crashed the whole worker (``InvalidStateError`` in its
    ReplyConsumer): the two-worker test found it. Replay a create command and its answer: the
    writer recognises the command's id and answers 201 again (to nobody), the worker goes on,
    the template is unchanged (same version).
    """
    name = unique("dup")
    key = f"{name}:en".encode()
    status, created = await api.call("POST", "/api/template", {**SEED_SMS, "name": name})
    assert status == 201, created
    app_id = worker.env["APP_ID"]
    commands_topic, results_topic = f"{app_id}-template-commands", f"{app_id}-template-results"
    [command] = [r for r in await read_topic(kafka_bootstrap, commands_topic) if r.key == key]
    request_id = json.loads(command.value)["id"]

    def answers(records: list[ConsumerRecord]) -> list[dict[str, Any]]:
        values = [json.loads(r.value) for r in records if r.value]
        return [v for v in values if v.get("id") == request_id]

    [answer] = [
        r
        for r in await read_topic(kafka_bootstrap, results_topic)
        if r.value and json.loads(r.value).get("id") == request_id
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            commands_topic, command.value, key=command.key, partition=command.partition
        )
        for _ in range(2):
            await producer.send_and_wait(results_topic, answer.value, key=answer.key)
    finally:
        await producer.stop()
    deadline = time.monotonic() + 10
    # The original answer, the two copies replayed above, and the writer's answer to the replay.
    while len(answers(await read_topic(kafka_bootstrap, results_topic))) < 4:
        assert time.monotonic() < deadline, "the replayed command was not processed"
        await asyncio.sleep(0.2)
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail(40)
    assert {a["status"] for a in answers(await read_topic(kafka_bootstrap, results_topic))} == {201}
    assert await api.call("GET", f"/api/template/{name}") == (200, created)
    status, body = await api.call("PUT", f"/api/template/{name}", {**SEED_SMS, "name": name})
    assert (status, body["version"], body["createdAt"]) == (200, 2, created["createdAt"]), body


# --------------------------------------------------------------------------- property test

# More examples for a bug hunt: TEMPLATE_FUZZ_EXAMPLES=5000 pytest -k random
FUZZ_EXAMPLES = int(os.environ.get("TEMPLATE_FUZZ_EXAMPLES", "150"))
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# Pieces of Thymeleaf and Jinja syntax, so random bodies reach deep into the translator.
FRAGMENTS = [
    "[(${",
    "[[${",
    "otpValue",
    "clientId",
    "}",
    ")]",
    "]]",
    "<p",
    " th:text='${otpValue}'",
    ' th:utext="${clientId}"',
    " th:if='${x}'",
    " th:unless=${y}",
    " th:each='i : ${l}'",
    " data-th-text='${z}'",
    ">",
    "</p>",
    "<br/>",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    " if ",
    " endif ",
    "''.__class__",
    "\n",
    "'",
    '"',
    "x",
    "<!--",
    "-->",
    "<![CDATA[",
    "&amp;",
]
BODIES = (
    st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join)
    | st.sampled_from([SEED_SMS["body"], SEED_MAIL["body"], "{{ ''.__class__ }}"])
    | st.text(max_size=40)
    | JSON_VALUES
)
PARAMS = st.lists(
    st.fixed_dictionaries(
        {"key": st.sampled_from(["otpValue", "clientId", "x", "1x", ""]) | JSON_VALUES},
        optional={"mandatory": st.booleans() | JSON_VALUES},
    )
    | JSON_VALUES,
    max_size=4,
)
TEMPLATE_SHAPED_KEYS = (
    "name",
    "type",
    "strategyType",
    "active",
    "language",
    "subject",
    "body",
    "context",
    "params",
)
TEMPLATE_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["fz-1", "fz-2", "fz.3", "fz_4"])
        | st.text(max_size=10)
        | JSON_VALUES,
        "type": st.sampled_from(["MAIL", "SMS", "PUSH", "mail", ""]) | JSON_VALUES,
        "strategyType": st.none() | st.text(max_size=5) | JSON_VALUES,
        "active": st.booleans() | JSON_VALUES,
        "language": st.sampled_from(["en", "ro", "pt-BR", "x"]) | st.text(max_size=6) | JSON_VALUES,
        "subject": st.none() | st.sampled_from([SEED_MAIL["subject"], "s\n"]) | BODIES,
        "body": BODIES,
        "context": st.lists(JSON_VALUES, max_size=3) | JSON_VALUES,
        "params": PARAMS | JSON_VALUES,
    },
)

# Valid templates with, half of the time, one field replaced by a random value.
VALID_ISH = st.tuples(
    st.fixed_dictionaries(
        {
            "name": st.from_regex(r"fz[A-Za-z0-9_.-]{0,6}", fullmatch=True),
            "type": st.sampled_from(["MAIL", "SMS", "PUSH"]),
            "language": st.sampled_from(["en", "ro", "pt-BR"]),
            "subject": st.sampled_from(["code", SEED_MAIL["subject"]]),
            "body": st.sampled_from(
                [SEED_SMS["body"], SEED_MAIL["body"], "{{ otpValue }}", "[[${otpValue}]] x"]
            )
            | BODIES,
            "params": st.sampled_from([[], SEED_SMS["params"], SEED_MAIL["params"]]),
            "active": st.booleans(),
            "context": st.lists(JSON_VALUES, max_size=3),
        }
    ),
    st.none() | st.tuples(st.sampled_from(sorted(TEMPLATE_SHAPED_KEYS)), JSON_VALUES),
).map(lambda pair: pair[0] if pair[1] is None else {**pair[0], pair[1][0]: pair[1][1]})


def test_random_json_never_5xx(worker: Worker):
    """Random JSON POSTed to /api/template answers 201, 400 or 409 only (and a 201 is readable)."""
    loop = asyncio.new_event_loop()
    session = loop.run_until_complete(_session())
    seen: dict[int, int] = {}

    async def post(value: Any) -> None:
        data = json.dumps(value).encode()
        async with session.post(f"{worker.url}/api/template", data=data, headers=JSON) as resp:
            raw = await resp.read()
            seen[resp.status] = seen.get(resp.status, 0) + 1
            assert resp.status in (201, 400, 409), (resp.status, raw, value)
            body = json.loads(raw)
            if resp.status == 201:
                path = f"/api/template/{body['name']}?language={body['language']}"
                async with session.get(worker.url + path) as got:
                    assert got.status == 200 and json.loads(await got.read()) == body
            else:
                assert set(body) == {"error", "details"}, body
            if resp.status == 400:
                assert body["details"], body  # every refusal names its field(s)

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(st.one_of(JSON_VALUES, TEMPLATE_SHAPED, VALID_ISH, VALID_ISH))
    def check(value: Any) -> None:
        loop.run_until_complete(post(value))

    try:
        check()
    finally:
        loop.run_until_complete(session.close())
        loop.close()
    print(f"\nstatuses seen: {dict(sorted(seen.items()))}")
    assert seen.get(400, 0) > 0 and seen.get(201, 0) > 0, seen  # not vacuous


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers=AUTH)


def test_random_preview_data_never_5xx(worker: Worker, seeds: dict[str, dict[str, Any]]):
    """Random JSON as preview data: 200 (rendered) or 400 (refused), never anything else;
    413 for a body over the worker's limit, and only then."""
    loop = asyncio.new_event_loop()
    session = loop.run_until_complete(_session())

    async def preview(value: Any) -> None:
        data = json.dumps(value).encode()
        url = f"{worker.url}/api/template/otpMail/preview"
        async with session.post(url, data=data, headers=JSON) as resp:
            raw = await resp.read()
            expected = (413,) if len(data) > MAX_BODY else (200, 400)
            assert resp.status in expected, (resp.status, len(data), raw, value)
            body = json.loads(raw)
            if resp.status == 200:
                assert "<p>123456</p>" in body["body"]

    @settings(max_examples=FUZZ_EXAMPLES // 2, deadline=None, database=None)
    @given(
        JSON_VALUES
        | st.fixed_dictionaries({"data": st.dictionaries(st.text(max_size=8), JSON_VALUES)})
        | st.fixed_dictionaries({"data": st.fixed_dictionaries({"clientId": JSON_VALUES})})
    )
    def check(value: Any) -> None:
        loop.run_until_complete(preview(value))

    try:
        check()
    finally:
        loop.run_until_complete(session.close())
        loop.close()


# --------------------------------------------------------------------------- startup rules


def _bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_API_", "OTP_"))}
    return {**env, "OTP_HMAC_SECRET": SECRET, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **extra}


@pytest.mark.parametrize(
    "extra",
    [{}, {"NOTIFY_API_TOKEN": ""}, {"NOTIFY_API_AUTH": "enabled"}],
    ids=["unset", "empty", "explicitly-enabled"],
)
def test_worker_refuses_to_start_without_token(tmp_path: Path, extra: dict[str, str]):
    started = time.monotonic()
    line = config_refusal(_bare_env(DATA_DIR=str(tmp_path), **extra), timeout=30)
    elapsed = time.monotonic() - started
    assert "NOTIFY_API_TOKEN" in line and "NOTIFY_API_AUTH=disabled" in line
    assert elapsed < 10, elapsed
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_auth_disabled_answers_without_token(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
):
    w = start_worker(
        kafka_bootstrap,
        tmp_path_factory.mktemp("noauth-worker"),
        NOTIFY_API_AUTH="disabled",
        NOTIFY_API_TOKEN="",
    )
    try:

        async def scenario() -> None:
            anonymous = Api(w.url, token=None)
            status, body = await anonymous.call("POST", "/api/template", SEED_SMS)
            assert status == 201, body
            assert await anonymous.call("GET", "/api/template/otpSMS") == (200, body)
            status, listing = await anonymous.call("GET", "/api/template")
            assert status == 200 and listing["count"] == 1
            status, doc = await anonymous.call("GET", "/api/openapi.json")
            assert status == 200 and doc["openapi"].startswith("3.")
            # any token is ignored, not rejected
            status, _ = await Api(w.url, token="whatever").call("GET", "/api/template")
            assert status == 200

        run_sync(scenario())
    finally:
        w.stop()
