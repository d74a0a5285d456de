"""The pieces every benchmark here is built from: processes, broker, topics, load, statistics.

- :class:`Processes` owns every child process a run starts and stops them all (SIGTERM to each
  process group, SIGKILL after a grace period), whatever happens.
- :class:`Broker` starts (or reuses) ``scripts/kafka-local`` on the bench's port.
- :func:`start_sinks` starts ``bench.sinks`` (counting SMTP server + SMS webhook).
- :func:`start_otp_workers`, :func:`start_raw_echo`, :func:`start_faust_echo` start the systems
  under test, each in its own process.
- :class:`Driver` plays the engine: it produces requests and reads replies, matching them by
  ``processInstanceId`` (a number, or its decimal string as the notification replies carry
  it; a :class:`Target` can also put it in a Kafka header). :meth:`Driver.saturate` sends as
  fast as it can; :meth:`Driver.fixed_rate` sends on a fixed schedule and measures every
  latency from the request's *scheduled* time, so a stalled pipeline cannot hide its backlog
  (no coordinated omission).
- :class:`CpuMeter` records how much CPU each process (and the whole machine) used per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.support import TOKEN, Api, Worker, worker_env  # noqa: E402

KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"
DEFAULT_KAFKA_PORT = 19192
DEFAULT_KAFKA_DATA_DIR = ".local/kafka-bench"
SEED_MAIL = orjson.loads((ROOT / "examples" / "otpMail.json").read_bytes())
SEED_SMS = orjson.loads((ROOT / "examples" / "otpSMS.json").read_bytes())
SEED_WELCOME = orjson.loads((ROOT / "examples" / "welcomeLetter.json").read_bytes())


# ---------------------------------------------------------------------------- processes


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[Any]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Processes:
    """Every process a run started; :meth:`stop_all` ends them (idempotent, never raises)."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def spawn(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, not them
            )
        return self.add(Child(name, proc, log_path))

    def stop(self, children: Iterable[Child], grace: float = 20.0) -> None:
        children = [c for c in children if c.alive()]
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(10)

    def stop_all(self) -> None:
        try:
            self.stop(reversed(self.children))
        except BaseException as exc:  # last resort: never leave a process behind
            for child in self.children:
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.killpg(child.pid, signal.SIGKILL)
            if not isinstance(exc, Exception):
                raise


# ---------------------------------------------------------------------------- broker


class Broker:
    """``scripts/kafka-local`` on its own port and data dir; stopped only if we started it."""

    def __init__(self, port: int, data_dir: str) -> None:
        self.port = port
        self.data_dir = data_dir
        self.started = False
        self.bootstrap = f"127.0.0.1:{port}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_DATA_DIR": self.data_dir}

    def _run(self, command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAFKA_LOCAL), command], env=self.env, text=True, cwd=ROOT, **kwargs
        )

    def running(self) -> bool:
        return self._run("status", capture_output=True).returncode == 0

    def ensure(self) -> None:
        if self.running():
            print(f"bench: reusing the broker on {self.bootstrap}", flush=True)
            return
        self.started = True  # set first: a start interrupted half-way must still be stopped
        self._run("start", check=True)

    def stop_if_started(self) -> None:
        if self.started:
            self._run("stop", check=False)
            self.started = False

    def version(self) -> str:
        out = self._run("env", capture_output=True).stdout
        for line in out.splitlines():
            if line.startswith("KAFKA_VERSION="):
                return line.split("=", 1)[1]
        return "unknown"

    def pid(self) -> int | None:
        data_dir = Path(self.data_dir)
        if not data_dir.is_absolute():
            data_dir = ROOT / data_dir
        try:
            return int((data_dir / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None


# ---------------------------------------------------------------------------- topics


async def delete_topics_containing(bootstrap: str, marker: str) -> int:
    """Delete every topic whose name holds ``marker`` (this run's id); return how many."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if marker in t]
        if names:
            await admin.delete_topics(names)
        return len(names)
    finally:
        await admin.close()


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    """``--kafka-port`` and ``--kafka-data-dir``: the broker a bench script runs against."""
    parser.add_argument("--kafka-port", type=int, default=DEFAULT_KAFKA_PORT)
    parser.add_argument("--kafka-data-dir", default=DEFAULT_KAFKA_DATA_DIR)


@contextlib.contextmanager
def broker_for(args: argparse.Namespace) -> Iterator[str]:
    """The bootstrap address of the broker :func:`add_broker_options` names: started if it is
    not running, and stopped at the end only if it was started here."""
    broker = Broker(args.kafka_port, args.kafka_data_dir)
    broker.ensure()
    try:
        yield broker.bootstrap
    finally:
        broker.stop_if_started()


def run_topics(run_id: str) -> dict[str, str]:
    """This run's topic names and APP_ID: fresh ones, so runs never read each other's data."""
    return {
        "APP_ID": f"otp-bench-{run_id}",
        "KAFKA_TOPIC_OTP_GENERATE_IN": f"bench.{run_id}.generate.in",
        # _OUT names match ENGINE_TOPIC_PATTERN, so the worker logs no warning about them.
        "KAFKA_TOPIC_OTP_GENERATE_OUT": f"ai.flowx.bench.engine.receive.{run_id}.generate.out",
        "KAFKA_TOPIC_OTP_VALIDATE_IN": f"bench.{run_id}.validate.in",
        "KAFKA_TOPIC_OTP_VALIDATE_OUT": f"ai.flowx.bench.engine.receive.{run_id}.validate.out",
        "KAFKA_TOPIC_OTP_DLQ": f"bench.{run_id}.dlq",
        "KAFKA_TOPIC_NOTIFICATION_INTERNAL_IN": f"bench.{run_id}.notify.in",
        "KAFKA_TOPIC_NOTIFICATION_INTERNAL_OUT": (
            f"ai.flowx.bench.engine.receive.{run_id}.notify.out"
        ),
        "KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT": f"bench.{run_id}.notify.external.out",
        "KAFKA_TOPIC_NOTIFICATION_EVENTS": f"bench.{run_id}.events",
        "ECHO_IN": f"bench.{run_id}.echo.in",
        "ECHO_OUT": f"bench.{run_id}.echo.out",
        "FAUST_ECHO_IN": f"bench.{run_id}.faust-echo.in",
        "FAUST_ECHO_OUT": f"bench.{run_id}.faust-echo.out",
    }


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


# ---------------------------------------------------------------------------- systems under test


@dataclass
class Sinks:
    child: Child
    smtp_port: int
    http_port: int

    @property
    def sms_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/sms"

    async def stats(self) -> dict[str, int]:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.http_port}/stats") as resp:
                return await resp.json()


def start_sinks(procs: Processes, work: Path, timeout: float = 30.0) -> Sinks:
    log_path = work / "sinks.log"
    child = procs.spawn("sinks", [sys.executable, "-m", "bench.sinks"], log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"the sink process exited:\n{child.log_tail()}")
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        if lines and lines[0].startswith("{"):
            ports = json.loads(lines[0])
            return Sinks(child, ports["smtp"], ports["http"])
        time.sleep(0.05)
    raise RuntimeError(f"the sink process did not start:\n{child.log_tail()}")


def sms_webhook_available() -> bool:
    """Whether this checkout's settings know the SMS webhook provider (it may be in flight)."""
    from app.settings import ENV_VARS

    return {"SMS_PROVIDER", "SMS_WEBHOOK_URL"} <= ENV_VARS


def start_otp_workers(
    procs: Processes,
    work: Path,
    n: int,
    *,
    bootstrap: str,
    topics: dict[str, str],
    partitions: int,
    sinks: Sinks,
    sms: bool,
    extra_env: dict[str, str] | None = None,
    first: int = 0,
) -> list[Worker]:
    """N ``python -m app worker`` processes, each with its own DATA_DIR and WEB_PORT; ``first``
    numbers them after the workers already started."""
    service_topics = {k: v for k, v in topics.items() if k.startswith(("APP_ID", "KAFKA_"))}
    extra = {
        **service_topics,
        "TOPIC_PARTITIONS": str(partitions),
        "LOG_LEVEL": "WARNING",
        "LIBRARY_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    if sms:
        extra.update(SMS_PROVIDER="webhook", SMS_WEBHOOK_URL=sinks.sms_url)
    env = worker_env(bootstrap, topics["APP_ID"], sinks.smtp_port, **extra)
    workers = []
    for i in range(first, first + n):
        worker = Worker(
            env=env, data_dir=work / f"worker-{i + 1}", log_path=work / f"worker-{i + 1}.log"
        ).start()
        assert worker.proc is not None
        procs.add(Child(f"worker-{i + 1}", worker.proc, worker.log_path))
        workers.append(worker)
    return workers


def start_raw_echo(
    procs: Processes, work: Path, n: int, *, bootstrap: str, topics: dict[str, str]
) -> list[Child]:
    group = f"{topics['APP_ID']}-raw-echo"
    argv = [
        sys.executable,
        "-m",
        "bench.echo_raw",
        bootstrap,
        topics["ECHO_IN"],
        topics["ECHO_OUT"],
        group,
    ]
    return [
        procs.spawn(f"raw-echo-{i + 1}", argv, work / f"raw-echo-{i + 1}.log") for i in range(n)
    ]


def start_faust_echo(
    procs: Processes,
    work: Path,
    n: int,
    *,
    bootstrap: str,
    topics: dict[str, str],
    partitions: int,
) -> list[Child]:
    app_id = f"{topics['APP_ID']}-faust-echo"
    children = []
    for i in range(n):
        argv = [
            sys.executable,
            "-m",
            "bench.echo_faust",
            bootstrap,
            topics["FAUST_ECHO_IN"],
            topics["FAUST_ECHO_OUT"],
            app_id,
            str(partitions),
            str(work / f"faust-echo-{i + 1}"),
        ]
        log = work / f"faust-echo-{i + 1}.log"
        children.append(procs.spawn(f"faust-echo-{i + 1}", argv, log))
    return children


async def create_templates(worker: Worker, templates: Iterable[dict[str, Any]]) -> None:
    api = Api(worker.url, TOKEN)
    for template in templates:
        status, body = await api.call("POST", "/api/template", template)
        if status not in (201, 409):
            raise RuntimeError(f"creating template {template['name']}: {status} {body}")


# ---------------------------------------------------------------------------- load


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize_ms(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(v * 1000 for v in latencies)
    return {
        "p50_ms": round(percentile(ordered, 50), 2),
        "p95_ms": round(percentile(ordered, 95), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "max_ms": round(ordered[-1], 2),
    }


Request = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers


@dataclass
class Target:
    """One request/reply pipeline: where requests go, where replies come back, what is OK.

    ``pid_header`` names a Kafka header the driver adds to every request, holding its pid as a
    decimal string (FlowX's message send task puts ``processInstanceId`` there, not in the
    body); ``None`` for pipelines that read the pid from the body.
    """

    name: str
    in_topic: str
    out_topic: str
    make: Callable[[int], Request]
    ok: Callable[[dict[str, Any]], bool]
    pid_header: str | None = None


def engine_headers(run_id: str, pid: int) -> list[tuple[str, bytes]]:
    """The kind of headers a FlowX engine puts on its requests (replies must carry them)."""
    return [
        ("fxContext", b"main"),
        ("processInstanceUuid", f"{run_id}-{pid}".encode()),
        ("Fx-AppId", b"bench"),
    ]


def generate_request(
    run_id: str, channel: str, client: Callable[[int], str]
) -> Callable[[int], Request]:
    """The generate request of the README (the echo baselines get the same bytes)."""
    template = "otpMail" if channel == "MAIL" else "otpSMS"

    def make(pid: int) -> Request:
        recipient = f"user{pid}@example.com" if channel == "MAIL" else f"+4071{pid:07d}"
        body = {
            "processInstanceId": pid,
            "templateName": template,
            "channel": channel,
            "recipient": recipient,
            "language": "en",
            "clientId": client(pid),
        }
        return str(pid).encode(), orjson.dumps(body), engine_headers(run_id, pid)

    return make


def notify_request(run_id: str) -> Callable[[int], Request]:
    """The README's send-notification request (``examples/notify-welcome.json``), one receiver
    of its own per request (nothing dedups); the pid goes in a header (``Target.pid_header``)."""

    def make(pid: int) -> Request:
        body = {
            "templateName": SEED_WELCOME["name"],
            "channel": "MAIL",
            "language": "en",
            "receivers": [f"notify{pid}@example.com"],
            "contentParams": {"firstName": f"User{pid}"},
        }
        return str(pid).encode(), orjson.dumps(body), engine_headers(run_id, pid)

    return make


def notify_ok(body: dict[str, Any]) -> bool:
    """A notification reply that reached every receiver: no error and each result sent."""
    results = body.get("results")
    return (
        body.get("error") is None and bool(results) and all(r.get("sent") is True for r in results)
    )


@dataclass
class Phase:
    """Requests of one measurement and their replies."""

    ok: Callable[[dict[str, Any]], bool]
    expected: int
    scheduled: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    last_reply: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def reply(self, pid: int, body: dict[str, Any], now: float) -> None:
        if self.ok(body):
            self.latencies.append(now - self.scheduled[pid])
        else:
            self.failures.append(body)
        self.last_reply = now
        if self.received >= self.expected:
            self.done.set()

    @property
    def received(self) -> int:
        return len(self.latencies) + len(self.failures)


class Collector:
    """Reads one reply topic from its beginning for the whole run; routes replies to phases."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.waiting: dict[int, Phase] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, partitions: int) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self.consumer.start()
        try:
            self.consumer.assign([TopicPartition(self.topic, p) for p in range(partitions)])
            await self.consumer.seek_to_beginning()
        except BaseException:
            await self.consumer.stop()
            raise
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self.consumer is not None
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=10000)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    body = orjson.loads(record.value)
                    pid = body.get("processInstanceId")
                    if isinstance(pid, str) and pid.isdigit():  # notification replies
                        pid = int(pid)
                    phase = self.waiting.pop(pid, None)
                    if phase is not None:
                        phase.reply(pid, body, now)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()


class Driver:
    """Plays the engine: one producer, one collector per reply topic, unique pids per run."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer: AIOKafkaProducer | None = None
        self.collectors: dict[str, Collector] = {}
        self._next_pid = 1

    async def start(self, reply_topics: Iterable[str], partitions: int) -> None:
        # No linger: the driver must not add its own delay to the latencies it measures.
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        await self.producer.start()
        for topic in reply_topics:
            collector = Collector(self.bootstrap, topic)
            await collector.start(partitions)
            self.collectors[topic] = collector

    async def stop(self) -> None:
        for collector in self.collectors.values():
            with contextlib.suppress(Exception):
                await collector.stop()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()

    def pids(self, n: int) -> range:
        first = self._next_pid
        self._next_pid += n
        return range(first, first + n)

    async def _send(self, target: Target, phase: Phase, pid: int, scheduled: float) -> None:
        assert self.producer is not None
        key, value, headers = target.make(pid)
        if target.pid_header is not None:
            headers = [*headers, (target.pid_header, str(pid).encode())]
        phase.scheduled[pid] = scheduled
        self.collectors[target.out_topic].waiting[pid] = phase
        await self.producer.send(target.in_topic, value, key=key, headers=headers)

    async def _wait(self, phase: Phase, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(phase.done.wait(), timeout)
        for collector in self.collectors.values():  # forget what never came back
            for pid in phase.scheduled:
                collector.waiting.pop(pid, None)

    async def warm_up(
        self, target: Target, n: int, timeout: float = 120.0, retry_on: tuple[str, ...] = ()
    ) -> tuple[Phase, int]:
        """Send ``n`` requests and wait for their replies (consumer groups join, caches fill).

        While a failed reply's error contains one of ``retry_on`` (e.g. a template that has not
        reached every worker's read model yet), the warm-up is repeated, until ``timeout``.
        Returns the last round and how many rounds it took.
        """
        deadline = time.monotonic() + timeout
        rounds = 0
        while True:
            rounds += 1
            phase = Phase(target.ok, n)
            for pid in self.pids(n):
                await self._send(target, phase, pid, time.perf_counter())
            await self._wait(phase, max(1.0, deadline - time.monotonic()))
            if phase.received < n:
                raise RuntimeError(
                    f"{target.name}: warm-up got {phase.received}/{n} replies in {timeout:.0f}s"
                )
            retry = any(r in str(f.get("error")) for f in phase.failures for r in retry_on)
            if not retry or time.monotonic() > deadline:
                return phase, rounds
            await asyncio.sleep(0.5)

    async def saturate(
        self, target: Target, pids: range, timeout: float | None = None
    ) -> dict[str, Any]:
        """Produce one request per pid as fast as possible; replies/s from first send to last."""
        assert self.producer is not None
        n = len(pids)
        phase = Phase(target.ok, n)
        began = time.perf_counter()
        for pid in pids:
            await self._send(target, phase, pid, time.perf_counter())
        await self.producer.flush()
        sent = time.perf_counter()
        await self._wait(phase, timeout if timeout is not None else max(60.0, n / 20))
        completed = len(phase.latencies)
        seconds = (phase.last_reply or time.perf_counter()) - began
        return {
            "requests": n,
            "completed": completed,
            "failed": len(phase.failures),
            "missing": n - phase.received,
            "first_failures": phase.failures[:3],
            "seconds": round(seconds, 3),
            "send_rps": round(n / (sent - began), 1),
            "rps": round(completed / seconds, 1) if seconds > 0 else None,
            **summarize_ms(phase.latencies),
        }

    async def fixed_rate(
        self, target: Target, rate: float, seconds: float, drain_timeout: float = 30.0
    ) -> dict[str, Any]:
        """Send ``rate`` requests per second for ``seconds``; latency from scheduled send time."""
        assert self.producer is not None
        n = max(1, round(rate * seconds))
        phase = Phase(target.ok, n)
        pids = self.pids(n)
        start = time.perf_counter() + 0.01
        i = 0
        while i < n:
            due = min(n, int((time.perf_counter() - start) * rate) + 1)
            while i < due:  # behind schedule: send what is due at once, stamped as scheduled
                await self._send(target, phase, pids[i], start + i / rate)
                i += 1
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        last_scheduled = start + (n - 1) / rate
        await self._wait(phase, drain_timeout + max(0.0, last_scheduled - time.perf_counter()))
        completed = len(phase.latencies)
        return {
            "offered_rps": rate,
            "seconds": seconds,
            "requests": n,
            "completed": completed,
            "failed": len(phase.failures),
            "missing": n - phase.received,
            "first_failures": phase.failures[:3],
            "achieved_rps": round(completed / max(1e-9, phase.last_reply - start), 1)
            if completed
            else 0.0,
            **summarize_ms(phase.latencies),
        }


# ---------------------------------------------------------------------------- measurement


def _proc_cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """User and system CPU seconds of a process, or of one of its threads (``thread``, a tid)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(values)
    idle = values[3] + values[4]
    return (total - idle) / ticks, total / ticks


class CpuMeter:
    """CPU used per process role (and by everything else on the machine) during a phase.

    With ``main_threads``, each role also gets a ``<role>/main`` entry: its main thread alone.
    A worker runs Faust's event loop there and aiokafka's consumer in a thread of its own, and
    the split tells the framework's dispatch from the fetches.
    """

    def __init__(
        self, pids: Callable[[], dict[str, int | None]], *, main_threads: bool = False
    ) -> None:
        self.pids = pids
        self.main_threads = main_threads

    def snapshot(self) -> dict[str, Any]:
        per = {}
        for role, pid in self.pids().items():
            if pid is not None:
                value = _proc_cpu_seconds(pid)
                if value is not None:
                    per[role] = value
                main = _proc_cpu_seconds(pid, thread=pid) if self.main_threads else None
                if main is not None:
                    per[f"{role}/main"] = main
        return {"t": time.perf_counter(), "per": per, "machine": _machine_cpu_seconds()[0]}

    @staticmethod
    def cpu_seconds(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        """CPU seconds used per role between two snapshots."""
        return {
            role: after["per"][role] - before["per"][role]
            for role in after["per"]
            if role in before["per"]
        }

    @staticmethod
    def cores(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        """Average cores used per role between two snapshots; ``other`` is everyone else."""
        wall = after["t"] - before["t"]
        if wall <= 0:
            return {}
        used = {
            role: round((after["per"][role] - before["per"][role]) / wall, 2)
            for role in after["per"]
            if role in before["per"]
        }
        machine = (after["machine"] - before["machine"]) / wall
        used["machine"] = round(machine, 2)
        ours = sum(v for k, v in used.items() if k != "machine")
        used["other"] = round(max(0.0, machine - ours), 2)
        return used


def machine_info(kafka_version: str) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = (
        subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True).returncode
        != 0
    )
    from importlib.metadata import version

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kafka": kafka_version,
        "faust_streaming": version("faust-streaming"),
        "aiokafka": version("aiokafka"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "git_commit": (commit + ("+dirty" if dirty else "")) or None,
    }
