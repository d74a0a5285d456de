"""Templates across two workers: every worker reads every template, and a new worker rebuilds them.

Workers A and B share the app id and topics (``TOPIC_PARTITIONS=4``) but not their data dirs or
web ports. The tests of this module run in order and share the workers:

1. a template created through A can be read and previewed on B within seconds;
2. an update through B is visible on A;
3. OTP generate requests spread over all partitions, so both workers render the template;
4. B is stopped, its data dir deleted, and started again: it rebuilds the templates (read model
   and table) from the changelog alone.

The measured delays are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.partitioner import murmur2

from app import codec
from devtools.support import Api, Collector, Kafka, Worker, flowx, topic_env, unique, worker_env
from tests.conftest import SmtpSink

pytestmark = pytest.mark.integration

PARTITIONS = 4
CODE_IN_MAIL = re.compile(r"<p>(\d{6})</p>")


def partition_of(key: str) -> int:
    """The partition Kafka's default (murmur2) partitioner picks for ``key``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def covering(prefix: str, count: int, key: Any = lambda k: k) -> list[str]:
    """At least ``count`` distinct names whose keys land on every partition."""
    names: list[str] = []
    hit: set[int] = set()
    i = 0
    while len(names) < count or hit != set(range(PARTITIONS)):
        name, i = f"{prefix}{i}", i + 1
        partition = partition_of(key(name))
        if len(names) < count or partition not in hit:
            names.append(name)
            hit.add(partition)
    return names


def mail_template(name: str, marker: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "MAIL",
        "language": "en",
        "subject": "code for [(${clientId})]",
        "body": f"<html><body><p>{marker} [(${{clientId}})]</p>"
        "<p th:text='${otpValue}'></p></body></html>",
        "params": [{"key": "clientId", "mandatory": True}, {"key": "otpValue", "mandatory": True}],
    }


async def poll(
    url: str, method: str, path: str, json: Any, ok: Any, timeout: float = 10.0
) -> tuple[float, Any]:
    """Repeat a request until ``ok(status, body)``; the seconds it took and the last body."""
    api = Api(url)
    started = time.monotonic()
    status, body = None, None
    while time.monotonic() - started < timeout:
        status, body = await api.call(method, path, json)
        if ok(status, body):
            return time.monotonic() - started, body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{method} {path} on {url}: still {status} {body} after {timeout}s")


async def owners(bootstrap: str, group: str, topic: str) -> dict[int, str]:
    """Partition of ``topic`` -> URL of the worker it is assigned to, as the group says."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    found: dict[int, str] = {}
    for member in response.groups[0][5]:
        # Faust puts the worker's URL in its subscription metadata
        url = codec.loads(ConsumerProtocolMemberMetadata.decode(member[-2]).user_data)["url"]
        for name, partitions in ConsumerProtocolMemberAssignment.decode(member[-1]).assignment:
            if name == topic:
                found.update(dict.fromkeys(partitions, url))
    return found


def handled_in_log(log_path: Path, client_ids: set[str]) -> set[str]:
    """The clientIds whose generate request this worker answered with success (its JSON log)."""
    found = set()
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = codec.loads(line)
        except ValueError:
            continue
        if (
            isinstance(entry, dict)
            and str(entry.get("message", "")).startswith("generate ok")
            and entry.get("clientId") in client_ids
        ):
            found.add(entry["clientId"])
    return found


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture(scope="module")
def cluster(
    kafka_bootstrap: str, sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Workers A and B of one app; ``state`` carries names and timings from test to test."""
    suffix = unique("two")
    env = worker_env(
        kafka_bootstrap, suffix, sink.port, TOPIC_PARTITIONS=str(PARTITIONS), LOG_FORMAT="json"
    )
    base: Path = tmp_path_factory.mktemp("two-workers")
    a = Worker(env=env, data_dir=base / "a" / "data", log_path=base / "a" / "worker.log").start()
    b = Worker(env=env, data_dir=base / "b" / "data", log_path=base / "b" / "worker.log").start()
    state: dict[str, Any] = {"env": env, "suffix": suffix, "base": base, "a": a, "b": b}
    try:
        a.wait_ready_sync()
        b.wait_ready_sync()
        a.wait_ready_sync()  # A rebalanced when B joined
        yield state
    finally:
        for w in (state["a"], state["b"]):
            w.stop()
        for w in (state["a"], state["b"]):
            log = w.log_path.read_text(errors="replace")
            assert "unhandled error" not in log, w.log_tail(80)


# --------------------------------------------------------------------------- tests


async def test_create_on_a_visible_on_b(cluster: dict[str, Any]):
    a, b = cluster["a"], cluster["b"]
    name = unique("shared")
    cluster["name"] = name
    posted = time.monotonic()
    status, created = await Api(a.url).call("POST", "/api/template", mail_template(name, "v1"))
    answered = time.monotonic() - posted
    assert status == 201, created
    delay, got = await poll(b.url, "GET", f"/api/template/{name}", None, lambda s, _: s == 200)
    assert got == created
    _, preview = await poll(
        b.url,
        "POST",
        f"/api/template/{name}/preview",
        {"data": {"clientId": "77"}},
        lambda s, _: s == 200,
    )
    assert preview["subject"] == "code for 77"
    assert "<p>v1 77</p>" in preview["body"] and "<p>123456</p>" in preview["body"]
    # B refuses a second create: the writer is shared, not per worker
    status, body = await Api(b.url).call("POST", "/api/template", mail_template(name, "again"))
    assert status == 409, body
    cluster["a_to_b"] = delay
    print(
        f"\nA -> B propagation: visible on B {delay * 1000:.0f} ms after A's 201 "
        f"(POST on A took {answered * 1000:.0f} ms)"
    )
    assert delay < 10


async def test_update_on_b_visible_on_a(cluster: dict[str, Any]):
    a, b, name = cluster["a"], cluster["b"], cluster["name"]
    put = time.monotonic()
    status, updated = await Api(b.url).call(
        "PUT", f"/api/template/{name}", mail_template(name, "v2")
    )
    answered = time.monotonic() - put
    assert status == 200, updated
    assert updated["version"] == 2
    delay, got = await poll(
        a.url, "GET", f"/api/template/{name}", None, lambda s, t: s == 200 and t["version"] == 2
    )
    assert got == updated
    status, preview = await Api(a.url).call(
        "POST", f"/api/template/{name}/preview", {"data": {"clientId": "78"}}
    )
    assert status == 200 and "<p>v2 78</p>" in preview["body"], preview
    print(
        f"\nB -> A propagation: visible on A {delay * 1000:.0f} ms after B's 200 "
        f"(PUT on B took {answered * 1000:.0f} ms)"
    )
    assert delay < 10


async def generate_everywhere(
    cluster: dict[str, Any], kafka_bootstrap: str, sink: SmtpSink, tag: str, marker: str
) -> set[str]:
    """Send generate requests for clientIds on every partition; the workers that handled them.

    Each request is proven to be answered (otpSent true) and its mail rendered with the latest
    template; which worker handled it is read from the workers' logs ("generate ok" with the
    clientId), checked against where its command landed (the otp-commands partition) and who
    owns that partition (the consumer group's assignment).
    """
    topics = topic_env(cluster["suffix"])
    app_id = cluster["env"]["APP_ID"]
    commands_topic = f"{app_id}-otp-commands"
    client_ids = covering(f"{tag}-", 16)
    pids = {cid: 9000 + i for i, cid in enumerate(client_ids)}
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as replies,
        Collector(kafka_bootstrap, commands_topic) as commands,
    ):
        for cid in client_ids:
            await kafka.send(
                topics["KAFKA_TOPIC_OTP_GENERATE_IN"],
                {
                    "processInstanceId": pids[cid],
                    "templateName": cluster["name"],
                    "channel": "MAIL",
                    "recipient": f"{cid}@example.com",
                    "clientId": cid,
                },
            )
        ours = set(client_ids)
        found = await replies.wait_for(lambda v: v["clientId"] in ours, count=len(ours))
        answers = {codec.loads(r.value)["clientId"]: codec.loads(r.value) for r in found}
        for cid in client_ids:
            assert flowx(answers[cid]) == {
                "processInstanceId": pids[cid],
                "clientId": cid,
                "channel": "MAIL",
                "otpSent": True,
                "error": None,
            }, answers[cid]
        await commands.wait_for(
            lambda v: (v.get("r") or {}).get("client_id") in ours, count=len(ours)
        )
        landed = {r.key.decode(): r.partition for r in commands.records if r.key}
    for cid in client_ids:
        [mail] = sink.to(f"{cid}@example.com")
        assert mail["Subject"] == f"code for {cid}"
        html = mail.get_body(preferencelist=("html",)).get_content()
        assert f"<p>{marker} {cid}</p>" in html and CODE_IN_MAIL.search(html), html
    assert {landed[cid] for cid in client_ids} == set(range(PARTITIONS))
    assert all(landed[cid] == partition_of(cid) for cid in client_ids)
    # Who handled each request: its worker's log, which must agree with the group's assignment.
    owner = await owners(kafka_bootstrap, app_id, commands_topic)
    assert set(owner) == set(range(PARTITIONS)), owner
    workers = {w.url: w for w in (cluster["a"], cluster["b"])}
    by_worker = {url: handled_in_log(w.log_path, ours) for url, w in workers.items()}
    assert set().union(*by_worker.values()) == ours, by_worker
    for cid in client_ids:
        assert cid in by_worker[owner[landed[cid]]], (cid, owner, by_worker)
    return {url for url, handled in by_worker.items() if handled}


async def test_generate_renders_on_both_workers(
    cluster: dict[str, Any], kafka_bootstrap: str, sink: SmtpSink
):
    handled_by = await generate_everywhere(cluster, kafka_bootstrap, sink, "gen", "v2")
    assert handled_by == {cluster["a"].url, cluster["b"].url}, handled_by


async def test_b_recovers_templates_from_changelog(
    cluster: dict[str, Any], kafka_bootstrap: str, sink: SmtpSink
):
    a, b, name = cluster["a"], cluster["b"], cluster["name"]
    api_a = Api(a.url)
    # More templates, keyed onto every partition of the table (so B will own some of them),
    # and one deleted template: its tombstone must win on recovery too.
    extra = covering(f"{unique('rec')}-", 4, key=lambda n: f"{n}:en")
    for extra_name in extra:
        status, body = await api_a.call("POST", "/api/template", mail_template(extra_name, "x"))
        assert status == 201, body
    gone = unique("gone")
    assert (await api_a.call("POST", "/api/template", mail_template(gone, "x")))[0] == 201
    assert (await api_a.call("DELETE", f"/api/template/{gone}"))[0] == 204
    _, before = await api_a.call("GET", "/api/template")

    b.stop()
    shutil.rmtree(b.data_dir)
    assert not b.data_dir.exists()
    b2 = Worker(env=b.env, data_dir=b.data_dir, log_path=b.log_path.with_name("worker2.log"))
    cluster["b"] = b2.start()
    recovery = await b2.wait_ready()
    ready_at = time.monotonic()
    api_b = Api(b2.url)

    _, after = await api_b.call("GET", "/api/template")
    serving = time.monotonic() - ready_at
    assert after == before  # every template, same versions, nothing resurrected
    assert name in {t["name"] for t in after["items"]}
    assert gone not in {t["name"] for t in after["items"]}
    status, got = await api_b.call("GET", f"/api/template/{name}")
    assert status == 200 and got["version"] == 2, got
    status, preview = await api_b.call(
        "POST", f"/api/template/{name}/preview", {"data": {"clientId": "79"}}
    )
    assert status == 200 and "<p>v2 79</p>" in preview["body"], preview
    assert (await api_b.call("GET", f"/api/template/{gone}"))[0] == 404
    print(
        f"\nB recovery after wiping its data dir: ready in {recovery:.2f} s "
        f"(templates served {serving * 1000:.0f} ms after /ready)"
    )

    await a.wait_ready()  # A rebalanced when B came back
    # The table itself was recovered, not just the read model: replacing each template goes
    # through the writer that owns its partition (B owns some) and must find the current
    # version (a writer with an empty table would answer 404).
    app_id = cluster["env"]["APP_ID"]
    commands_topic = f"{app_id}-template-commands"
    keys = {f"{n}:en" for n in extra}
    async with Collector(kafka_bootstrap, commands_topic) as commands:
        for extra_name in extra:
            status, body = await api_b.call(
                "PUT", f"/api/template/{extra_name}", mail_template(extra_name, "y")
            )
            assert status == 200 and body["version"] == 2, (extra_name, status, body)
        await commands.wait_for(lambda v: True, count=len(keys))
        landed = {
            r.key.decode().strip('"'): r.partition
            for r in commands.records
            if r.key and r.key.decode().strip('"') in keys
        }
    assert set(landed) == keys, landed
    owner = await owners(kafka_bootstrap, app_id, commands_topic)
    assert b2.url in {owner[p] for p in landed.values()}, (owner, landed)
    status, body = await api_b.call("POST", "/api/template", mail_template(gone, "back"))
    assert status == 201 and body["version"] == 1, body

    # and the recovered B renders OTP mails again
    handled_by = await generate_everywhere(cluster, kafka_bootstrap, sink, "regen", "v2")
    assert handled_by == {a.url, b2.url}, handled_by
    assert recovery < 60
