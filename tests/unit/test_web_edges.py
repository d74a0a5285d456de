"""HTTP edges that need the real aiohttp server in front of the views: bodies that arrive in
pieces or not at all, header bytes that are not text. No broker: the views' Kafka sends are
answered in place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import app.main as main
from app import codec
from app.flows.receipts import twilio_signature
from app.runtime import http as http_hooks
from app.settings import Settings
from web import http, template_io
from web.errors import STREAM_CHUNK_BYTES, json_stream

TWILIO_TOKEN = "x" * 20
BASE_URL = "https://otp.example.com"
API_TOKEN = "t" * 20
# Not configured anywhere: a token of a tokens file, which the worker knows only by its digest.
SCOPED_TOKEN = "r" * 24
PARAMS = [
    ("MessageSid", "SM" + "a" * 32),
    ("MessageStatus", "delivered"),
    ("AccountSid", "AC" + "b" * 32),
    ("Body", "x" * 300),
]


@pytest.fixture
async def served(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    contexts: list[Any] = []
    register = main.register_views

    def capture(ctx: Any) -> None:
        contexts.append(ctx)
        register(ctx)

    monkeypatch.setattr(main, "register_views", capture)
    settings = Settings.from_env(
        {
            "OTP_HMAC_SECRET": "s" * 32,
            "NOTIFY_API_TOKEN": API_TOKEN,
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "DATA_DIR": str(tmp_path),
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "PUBLIC_BASE_URL": BASE_URL,
        }
    )
    app = main.create_app(settings)
    ctx = contexts[0]
    ctx.cache.ready.set()
    sent: list[dict[str, Any]] = []

    async def answer(key: Any = None, value: Any = None, **_: Any) -> None:
        command = codec.loads(value)
        sent.append(command)
        ctx.cache._deliver_result(codec.dumps({"id": command["id"], "status": 204}))

    ctx.topics.message_commands.send = answer
    client = TestClient(TestServer(app.web.web_app))
    await client.start_server()
    client.sent = sent  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        await client.close()


def _signed() -> tuple[bytes, dict[str, str]]:
    body = urlencode(PARAMS).encode()
    signature = twilio_signature(TWILIO_TOKEN, BASE_URL + "/api/callbacks/twilio", PARAMS)
    headers = {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return body, headers


async def test_a_signed_callback_sent_in_pieces_is_accepted(served: Any):
    body, headers = _signed()

    async def pieces() -> AsyncIterator[bytes]:
        yield body[:100]
        await asyncio.sleep(0.05)
        yield body[100:]

    response = await served.post("/api/callbacks/twilio", data=pieces(), headers=headers)
    assert response.status == 204
    assert len(served.sent) == 1


async def test_a_signed_callback_with_its_length_in_two_writes_is_accepted(served: Any):
    body, headers = _signed()
    reader, writer = await asyncio.open_connection(served.server.host, served.server.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(
        f"POST /api/callbacks/twilio HTTP/1.1\r\nHost: x\r\n{head}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body[:100]
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(body[100:])
    await writer.drain()
    status_line = (await reader.read()).split(b"\r\n", 1)[0]
    writer.close()
    assert status_line == b"HTTP/1.1 204 No Content"


async def test_a_signature_that_is_not_text_is_refused_not_a_500(served: Any):
    reader, writer = await asyncio.open_connection(served.server.host, served.server.port)
    writer.write(
        b"POST /api/callbacks/twilio HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: \xff\xfe\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"X-Twilio-Signature" in answer


async def test_a_body_that_never_arrives_is_a_408(served: Any, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(http, "BODY_READ_SECONDS", 0.2)
    reader, writer = await asyncio.open_connection(served.server.host, served.server.port)
    writer.write(
        f"POST /api/templates/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{".encode()
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(400), 5)  # aiohttp lingers for the rest
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"did not arrive" in body


async def test_an_import_too_slow_to_check_is_refused_naming_where_it_stopped(
    served: Any, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(template_io, "IMPORT_CHECK_SECONDS", 0.0)
    templates = [
        {"name": f"t{n}", "language": "en", "channel": "SMS", "body": "x [(${otpValue})]"}
        for n in range(3)
    ]
    response = await served.post(
        "/api/templates/import?dryRun=true",
        json={"templates": templates},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert response.status == 400
    (detail,) = (await response.json())["details"]
    assert detail["field"] == "templates" and "templates[0] of 3" in detail["message"]


async def test_an_import_of_names_no_json_writer_could_echo_is_answered(served: Any):
    """Each template's result line names it; a name nested 300 deep used to fail the answer."""
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    response = await served.post(
        "/api/templates/import?dryRun=true",
        json={"templates": [{"name": deep, "language": "en"}, {"name": "ok", "language": deep}]},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert response.status == 200
    lines = (await response.json())["results"]
    assert [(line["name"], line["language"], line["action"]) for line in lines] == [
        (None, "en", "refused"),
        ("ok", None, "refused"),
    ]


@pytest.fixture
async def open_api(tmp_path: Any) -> AsyncIterator[TestClient]:
    """The API with ``NOTIFY_API_AUTH=disabled``, where nothing but the origin check stops a
    page of another site."""
    settings = Settings.from_env(
        {
            "OTP_HMAC_SECRET": "s" * 32,
            "NOTIFY_API_AUTH": "disabled",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "DATA_DIR": str(tmp_path),
            "API_WRITE_TIMEOUT_SECONDS": "0.5",
        }
    )
    client = TestClient(TestServer(main.create_app(settings).web.web_app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://[::1"},
    ],
)
async def test_a_page_of_another_origin_cannot_post(open_api: TestClient, headers: dict[str, str]):
    """A cross-site form can POST to a body-less route without any CORS preflight."""
    response = await open_api.post("/api/otp/alice/cancel", headers=headers)
    assert response.status == 403
    assert (await response.json())["details"] == [
        {"field": "Origin", "message": "must be this service's own, or absent"}
    ]


async def test_the_services_own_pages_and_other_clients_pass_the_origin_check(
    open_api: TestClient,
):
    host = f"{open_api.server.host}:{open_api.server.port}"
    for headers in ({}, {"Sec-Fetch-Site": "same-origin"}, {"Origin": f"http://{host}"}):
        response = await open_api.post("/api/otp/alice/cancel", headers=headers)
        assert response.status == 503, headers  # past the gate: the read model is not ready
    cross = {"Sec-Fetch-Site": "cross-site"}
    assert (await open_api.get("/api/otp/alice", headers=cross)).status == 503  # reads are safe


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        (b"Authorization: Bearer " + API_TOKEN.encode() + b"\x01", "Authorization", "Invalid"),
        (b"Authorization Bearer " + API_TOKEN.encode(), "request", "Invalid header token"),
        (b"Content-Length: zz", "Content-Length", "Invalid character in Content-Length"),
        # aiohttp quotes an over-long value without its header's name
        (b"Authorization: " + SCOPED_TOKEN.encode() + b" " + b"A" * 9000, "request", "Got more"),
    ],
)
async def test_a_request_aiohttp_cannot_parse_is_answered_in_json_without_its_values(
    served: Any, line: bytes, field: str, message: str, caplog: pytest.LogCaptureFixture
):
    reader, writer = await asyncio.open_connection(served.server.host, served.server.port)
    writer.write(b"GET /api/template HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") or head.startswith(b"HTTP/1.0 400 ")
    assert b"Content-Type: application/json" in head
    error = codec.loads(body)
    assert error["error"] == "malformed HTTP request"
    [detail] = error["details"]
    assert detail["field"] == field and detail["message"].startswith(message)
    assert API_TOKEN.encode() not in answer and SCOPED_TOKEN.encode() not in answer
    # A token from a tokens file is known to the worker only by its digest, so no redaction
    # could find it in a quoted line: the log says what the answer says, and quotes nothing.
    logged = "\n".join(caplog.text.splitlines())
    assert "refused a malformed HTTP request" in logged
    assert API_TOKEN not in logged and SCOPED_TOKEN not in logged and "AAAAAAAA" not in logged


async def test_a_body_that_does_not_decode_as_declared_is_a_400(
    served: Any, caplog: pytest.LogCaptureFixture
):
    headers = {"Content-Encoding": "gzip", **_signed()[1]}
    response = await served.post("/api/callbacks/twilio", data=b"xxxxx", headers=headers)
    assert response.status == 400
    assert (await response.json())["details"][0]["field"] == "Content-Encoding"
    headers = {"Content-Encoding": "deflate", "Content-Type": "application/json"}
    headers["Authorization"] = f"Bearer {API_TOKEN}"
    response = await served.post("/api/preview", data=b"xxxxx", headers=headers)
    assert response.status == 400
    assert (await response.json())["details"][0]["field"] == "Content-Encoding"
    assert "Unhandled exception" not in caplog.text  # aiohttp read the rest of it, and failed


async def test_an_expectation_other_than_100_continue_is_a_json_417(served: Any):
    headers = {"Expect": "200-ok", "Authorization": f"Bearer {API_TOKEN}"}
    response = await served.post("/api/template", json={}, headers=headers)
    assert response.status == 417 and response.content_type == "application/json"
    assert (await response.json())["details"] == [
        {"field": "Expect", "message": "only 100-continue is understood"}
    ]


def test_parser_details_name_the_header_and_quote_no_value():
    quoted = "Invalid header value char:\n\n  b'X-Api-Key: sesame\\x01'\n           ^"
    assert http_hooks.parser_detail(quoted) == {
        "field": "X-Api-Key",
        "message": "Invalid header value char",
    }
    assert http_hooks.parser_detail("Bad status line 'GET /?token=sesame'") == {
        "field": "request",
        "message": "Bad status line",
    }
    assert http_hooks.parser_detail(None) == {"field": "request", "message": "malformed"}
    assert http_hooks.parser_detail("Got more than 8190 bytes when reading: b'tok AAA'.") == {
        "field": "request",
        "message": "Got more than 8190 bytes when reading",
    }
    assert http_hooks.parser_detail("Transfer-Encoding can't be present with Content-Length") == {
        "field": "request",
        "message": "Transfer-Encoding can't be present with Content-Length",
    }


async def test_a_streamed_list_is_one_json_document_and_the_loop_runs_while_it_is_sent():
    """A list of every template is tens of megabytes: sent in chunks, it is the same JSON as
    one ``dumps``, and other tasks run between the chunks."""
    items = [{"name": f"t{n}", "body": "x" * 10_000} for n in range(200)]
    turns = 0

    async def listing(request: web.Request) -> web.StreamResponse:
        def counted() -> Any:
            nonlocal turns
            for item in items:
                turns += 1
                yield item

        return await json_stream(request, {"count": len(items)}, "items", counted())

    async def empty(request: web.Request) -> web.StreamResponse:
        return await json_stream(request, {}, "items", [])

    async def broken(request: web.Request) -> web.StreamResponse:
        def failing() -> Any:
            yield from items
            raise RuntimeError("a bug")

        return await json_stream(request, {}, "items", failing())

    app = web.Application()
    app.router.add_get("/list", listing)
    app.router.add_get("/empty", empty)
    app.router.add_get("/broken", broken)
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async with TestClient(TestServer(app)) as client:
        ticker = asyncio.create_task(tick())
        resp = await client.get("/list")
        body = await resp.read()
        stop.set()
        await ticker
        assert resp.status == 200 and resp.content_type == "application/json"
        assert codec.loads(body) == {"count": 200, "items": items}
        assert ticks >= len(body) // STREAM_CHUNK_BYTES  # a turn per chunk at least
        resp = await client.get("/empty")
        assert codec.loads(await resp.read()) == {"items": []}
        # HEAD: the headers a GET gets, no body, and the connection stays in step.
        resp = await client.head("/list")
        assert resp.status == 200 and await resp.read() == b""
        resp = await client.get("/empty")
        assert codec.loads(await resp.read()) == {"items": []}
        # A failure once the status line is out cuts the answer: no 500 inside a 200.
        resp = await client.get("/broken")
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        resp = await client.get("/empty")
        assert codec.loads(await resp.read()) == {"items": []}
    assert turns == 200


@pytest.mark.parametrize(
    ("if_none_match", "status"),
    [
        (None, 200),
        ('"other"', 200),
        ("{etag}", 304),
        ('"other", {etag}', 304),
        ("W/{etag}", 304),  # RFC 9110: If-None-Match compares weakly
        ("*", 304),
    ],
)
def test_a_console_file_the_browser_holds_is_a_304(if_none_match: str | None, status: int):
    from aiohttp.test_utils import make_mocked_request

    from web.console import load_assets, respond

    asset = load_assets()["index.html"]
    headers = {"If-None-Match": if_none_match.format(etag=asset.etag)} if if_none_match else {}
    response = respond(make_mocked_request("GET", "/console", headers=headers), asset)
    assert response.status == status and response.headers["ETag"] == asset.etag
