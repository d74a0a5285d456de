"""Hostile templates against a real worker: every bomb saved or previewed over HTTP is a 400
naming the limit, never a 5xx, and the worker keeps answering ``/health`` while it runs.

Saves and previews render in the worker's renderer processes (``app.render_pool``) under the
render budget (``app.core.render``); these tests drive that whole path end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from app import codec
from devtools.support import SEED_SMS, Api, Worker, free_port, unique, worker_env

pytestmark = pytest.mark.integration

#: ``/health`` must answer within this while a hostile template is being saved or previewed.
HEALTH_MAX_SECONDS = 1.0
TIME = "RENDER_TIMEOUT_MS=200"
SIZE = "RENDER_MAX_OUTPUT_BYTES=1048576"
LOOPS = "more than 100000 loop iterations"


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    base: Path = tmp_path_factory.mktemp("hostile-worker")
    env = worker_env(kafka_bootstrap, unique("hostile"), free_port())
    w = Worker(env=env, data_dir=base / "data", log_path=base / "worker.log").start()
    try:
        w.wait_ready_sync()
        yield w
    finally:
        w.stop()
    log = w.log_path.read_text(errors="replace")
    assert "unhandled error" not in log, w.log_tail(80)
    assert "Traceback" not in log, w.log_tail(80)


@pytest.fixture
def api(worker: Worker) -> Api:
    return Api(worker.url)


class HealthWatch:
    """Polls ``GET /health`` back to back while a request runs; keeps every latency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.statuses: list[int] = []

    async def poll(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with session.get(f"{self.url}/health") as resp:
                        await resp.read()
                        self.statuses.append(resp.status)
                except (aiohttp.ClientError, TimeoutError):
                    self.statuses.append(0)
                self.latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def health_watched(worker: Worker) -> AsyncIterator[HealthWatch]:
    watch = HealthWatch(worker.url)
    stop = asyncio.Event()
    task = asyncio.create_task(watch.poll(stop))
    await asyncio.sleep(0.05)  # the first probe is in flight before the hostile request
    try:
        yield watch
    finally:
        await asyncio.sleep(0.05)
        stop.set()
        await task
    assert watch.latencies, "no health probe ran"
    assert set(watch.statuses) == {200}, watch.statuses
    assert max(watch.latencies) < HEALTH_MAX_SECONDS, max(watch.latencies)


def assert_refused(status: int, body: Any, error: str, field: str, names: str) -> None:
    """A 400 in the API's error shape whose detail names the limit."""
    assert status == 400, (status, body)
    assert isinstance(body, dict) and set(body) == {"error", "details"}, body
    assert body["error"] == error, body
    assert [d["field"] for d in body["details"]] == [field], body
    assert names in body["details"][0]["message"], body


def sms(body: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {**SEED_SMS, "name": unique("hostile"), "body": body, "params": params or []}


# --------------------------------------------------------------------------- saves

SAVE_BOMBS = [
    (
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        LOOPS,
    ),
    ("{{ 'x'|center(5000000) }}", SIZE),
    ("{{ 'x'|center(1000000000) }}", SIZE),
    ("{{ '%05000000d' % 1 }}", SIZE),
    ("{{ '{:>5000000}'.format(1) }}", SIZE),
    ("{% set body = 'line\\n' * 10000 %}{{ body|indent(500) }}", SIZE),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        SIZE,
    ),
    ("{{ ((9**1024)**1024)**1024 }}", "65536 bits"),
    ("{{ (1).to_bytes(1000000000, 'big') }}", "method allowlist"),
    ("{{ 'a'.expandtabs(1000000000) }}", "method allowlist"),
    ("{{ range(1)|slice(1000000000)|list }}", "100000 items"),
    ("{{ [1]|tojson(indent=1000000000) }}", SIZE),
    (
        "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}"
        "{{ m(40) }}",
        TIME,
    ),
    ("{{ 1" + "0" * 5000 + " }}", "number literal is too long"),
    ("{{ '\\ud800' }}", "not valid Unicode"),
    ("{% for i in x %}" * 25 + "{% endfor %}" * 25, "nested too deeply"),
]


@pytest.mark.parametrize(("source", "names"), SAVE_BOMBS, ids=[s[:40] for s, _ in SAVE_BOMBS])
async def test_hostile_save_is_400_naming_the_limit(
    worker: Worker, api: Api, source: str, names: str
) -> None:
    template = sms(source)
    async with health_watched(worker):
        status, body = await api.call("POST", "/api/template", template)
    assert_refused(status, body, "invalid template", "body", names)
    status, _ = await api.call("GET", f"/api/template/{template['name']}")
    assert status == 404  # nothing was stored
    template["name"] = unique("hostile")
    async with health_watched(worker):
        status, body = await api.call("PUT", f"/api/template/{template['name']}", template)
    assert_refused(status, body, "invalid template", "body", names)


async def test_a_compile_over_the_hard_limit_kills_the_renderer(worker: Worker, api: Api) -> None:
    """Compiling 100,000 characters of filters takes seconds and cannot be interrupted inside
    the renderer: the worker kills it at its hard limit and answers 400; the next save gets a
    fresh renderer."""
    source = "{{ a|e|e|e|e|e|e|e }}" * 4700  # 98,700 characters, valid to the end
    started = time.monotonic()
    async with health_watched(worker):
        status, body = await api.call("POST", "/api/template", sms(source))
    assert_refused(status, body, "invalid template", "body", TIME)
    assert "the renderer was stopped" in body["details"][0]["message"]
    assert time.monotonic() - started < 5
    status, body = await api.call("POST", "/api/template", sms("OTP [(${otpValue})]"))
    assert status == 201, body


# --------------------------------------------------------------------------- previews

#: (body, hostile preview data, harmless preview data, limit): saved fine (the trial render has
#: no optional data), refused when previewed with the hostile data.
PREVIEW_BOMBS = [
    (
        "{% for a in range(n|int) %}{% for b in range(n|int) %}x{% endfor %}{% endfor %}",
        {"n": "100000"},
        {"n": "3"},
        LOOPS,
    ),
    ("{{ 'x'|center(w|int) }}", {"w": "5000000"}, {"w": "3"}, SIZE),
    ("{{ ('%0' ~ w ~ 'd') % 1 }}", {"w": "5000000"}, {"w": "3"}, SIZE),
    ("{{ ('{:>' ~ w ~ '}').format(1) }}", {"w": "5000000"}, {"w": "3"}, SIZE),
    ("{{ body|indent(500) }}", {"body": "line\n" * 10000}, {"body": "a\nb"}, SIZE),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(k|int) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        {"k": "40"},
        {"k": "3"},
        SIZE,
    ),
    ("{{ (x|int) ** (y|int) }}", {"x": "9", "y": "100000"}, {"x": "9", "y": "3"}, "65536 bits"),
    ("{{ s.replace('a', 'x' * 100000) }}", {"s": "a" * 1000}, {"s": "ab"}, SIZE),
    ("{% if show %}{{ '\\ud800' }}{% endif %}", {"show": True}, {}, "not valid Unicode"),
]


@pytest.mark.parametrize(
    ("source", "hostile", "harmless", "names"),
    PREVIEW_BOMBS,
    ids=[s[:40] for s, *_ in PREVIEW_BOMBS],
)
async def test_hostile_preview_is_400_naming_the_limit(
    worker: Worker,
    api: Api,
    source: str,
    hostile: dict[str, Any],
    harmless: dict[str, Any],
    names: str,
) -> None:
    template = sms(source)
    status, stored = await api.call("POST", "/api/template", template)
    assert status == 201, stored
    path = f"/api/template/{template['name']}/preview"
    async with health_watched(worker):
        status, body = await api.call("POST", path, {"data": hostile})
    assert_refused(status, body, "template could not be rendered", "body", names)
    status, body = await api.call("POST", path, {"data": harmless})
    assert status == 200, body  # the same template with harmless data still previews


async def test_preview_subject_drops_control_characters(api: Api) -> None:
    template = {
        **sms("OTP [(${otpValue})]"),
        "type": "MAIL",
        "subject": "Hi [(${name})]",
        "params": [{"key": "name", "mandatory": True}],
        "body": "<p>[[${name}]] [[${otpValue}]]</p>",
    }
    status, stored = await api.call("POST", "/api/template", template)
    assert status == 201, stored
    name = "a\u0000b\u001b[31mc\r\nBcc: evil@example.com\u2028d"
    status, body = await api.call(
        "POST", f"/api/template/{template['name']}/preview", {"data": {"name": name}}
    )
    assert status == 200, body
    assert body["subject"] == "Hi ab[31mc Bcc: evil@example.com d"
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in body["subject"])


async def test_legit_templates_still_save_and_preview(api: Api) -> None:
    source = (
        "{% for x in items %}{{ loop.index }}. {{ x|upper }}{% if not loop.last %}, {% endif %}"
        "{% endfor %} | {{ '%s-%03d' % (name, 7) }} | {{ name|center(9) }} | OTP [(${otpValue})]"
    )
    template = sms(source, [{"key": "name", "mandatory": True}])
    status, stored = await api.call("POST", "/api/template", template)
    assert status == 201, stored
    status, body = await api.call(
        "POST",
        f"/api/template/{template['name']}/preview",
        {"data": {"name": "Ana", "items": ["a", "b"]}},
    )
    assert status == 200, body
    assert body["body"] == f"1. A, 2. B | Ana-007 |    Ana    | OTP {body['otpValue']}"


async def test_many_hostile_saves_at_once_never_5xx_and_health_answers(
    worker: Worker, api: Api
) -> None:
    """More hostile saves than renderer processes: each one is a 400 (or a 503 when too many
    wait), never a 500, and ``/health`` stays quick throughout."""
    source = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
    async with health_watched(worker):
        answers = await asyncio.gather(
            *(api.call("POST", "/api/template", sms(source)) for _ in range(8))
        )
    for status, body in answers:
        assert status in (400, 503), (status, body)
        if status == 400:
            # The loop limit, or on a loaded machine the time budget, whichever comes first.
            message = body["details"][0]["message"]
            assert LOOPS in message or "over its time budget" in message, body


# --------------------------------------------------------------------------- forged commands


async def test_a_forged_template_command_never_holds_the_event_loop(
    worker: Worker, api: Api, kafka_bootstrap: str
) -> None:
    """A create written straight to the writer's topic skips the API's renderer. Its body
    (98,700 characters of valid expressions, seconds of compiling that nothing can interrupt)
    is compiled by every worker's read model in a renderer process, so ``/health`` answers
    throughout, and the template is listed."""
    template = sms("{{ a.b.c.d.e.f.g.h }}" * 4700)
    key = f"{template['name']}:en"
    command = {"id": unique("forged"), "op": "create", "key": key, "template": template}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        async with health_watched(worker):
            topic = f"{worker.env['APP_ID']}-template-commands"
            await producer.send_and_wait(topic, codec.dumps(command), key=key.encode())
            deadline = time.monotonic() + 30
            status, body = await api.call("GET", f"/api/template/{template['name']}")
            while status != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                status, body = await api.call("GET", f"/api/template/{template['name']}")
            assert status == 200, body  # listed once its compile has ended
    finally:
        await producer.stop()
    assert body["body"] == template["body"]
