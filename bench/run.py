"""``make bench``: the OTP pipeline against its two baselines, on this machine, in one run.

    .venv/bin/python bench/run.py [options]      (every option also reads a BENCH_* variable)

One run starts (or reuses) the bench broker (``scripts/kafka-local`` on port 19192, data in
``.local/kafka-bench``), a counting SMTP server + SMS webhook (``bench/sinks.py``), N OTP
workers (``python -m app worker``, each with its own DATA_DIR and WEB_PORT, LOG_LEVEL=WARNING),
N raw aiokafka echo services (``bench/echo_raw.py``, the limit) and N Faust echo services
(``bench/echo_faust.py``, the framework floor), all on fresh topics of this run with the same
partition count, and creates the seed templates (``examples/otpMail.json``, ``otpSMS.json``,
``welcomeLetter.json``) over REST. Then, after a warm-up of every pipeline:

1. saturation: ``--requests`` requests produced as fast as possible, for the raw echo, the Faust
   echo, generate+MAIL, generate+SMS, validate and notify+MAIL; completed replies per second
   from the first send to the last reply. The echo services get the very generate-request bytes
   (and engine headers) the OTP service gets, and answer a reply of the OTP reply's shape.
2. fixed rate: generate (first of ``--channels``), then notify+MAIL, at each of ``--rates`` for
   ``--step-seconds`` each, and the two echo baselines at ``--baseline-rates``; latency from
   each request's *scheduled* send time to its reply being consumed (p50/p95/p99/max), so a
   stalled pipeline cannot hide its backlog. A step whose replies do not all arrive in time
   ends the sweep.

Validate is measured with WRONG codes against the records generate+MAIL just stored: the
counting sink does not read mails, so the codes are unknown. Each identifier gets exactly one
wrong guess, which costs what a right one costs (table read, HMAC, constant-time compare,
table write, reply); only ``otpValid: false, error: invalid code`` (or, one time in a million,
``true``) counts as done.

Notify+MAIL (``--notify``, the default; ``--no-notify`` or BENCH_NOTIFY=0 leaves it out) sends
the README's send-notification request (``examples/notify-welcome.json``) with the
``processInstanceId`` Kafka header, one receiver of its own per request (nothing dedups); only
a reply with ``error: null`` and every result ``sent`` counts as done.

Writes ``bench/results/latest.json`` (every figure, the machine, the options) and
``bench/results/latency.png``, and prints a table. Every process it started is stopped at the
end, also on failure or Ctrl-C; the run's topics are deleted; the broker is stopped only if
this run started it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from app.kafka_admin import TopicSpec, ensure_topics  # noqa: E402
from bench import harness  # noqa: E402
from bench.harness import Target  # noqa: E402

# The performance issue's targets: ratios are at least, the rest at most.
TARGETS = {
    "generate_mail_vs_faust_echo": 0.6,
    "generate_mail_vs_echo": 0.05,
    "validate_vs_faust_echo": 0.8,
    "p99_ms_at_200rps": 25.0,
    "p99_ms_at_500rps": 50.0,
    "worker_cpu_ms_per_generate_mail": 0.6,
    "faust_echo_cores_at_saturation": 0.9,
}
SMS_UNAVAILABLE = "skipped: SMS webhook provider not available"
WRONG_CODE = "000000"
# A fixed-rate step whose replies came back slower than this share of the offered rate was
# more than the pipeline can take.
OVERLOAD = 0.9
# A saturation round of a fast pipeline gets enough requests to last about this long: shorter
# rounds weigh a Faust pipeline's start of stream (fetch, first commit) against its throughput.
MIN_ROUND_SECONDS = 10.0
MAX_ROUND_REQUESTS = 200_000
# Seconds kept for the fixed-rate sweep and the clean-up when deciding on another round,
# and for the notify+MAIL sweep when it runs.
SWEEP_RESERVE = 90.0
NOTIFY_SWEEP_RESERVE = 30.0


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _flag(text: str) -> bool:
    return text.strip().lower() not in ("0", "false", "no", "off")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(" ", "").split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--requests",
        type=int,
        default=int(_env("BENCH_REQUESTS", "6000")),
        help="requests per saturation run (BENCH_REQUESTS, 6000)",
    )
    p.add_argument(
        "--rates",
        type=_floats,
        default=_floats(_env("BENCH_RATES", "100,200,500,1000")),
        help="fixed rates for generate and notify, req/s (BENCH_RATES, 100,200,500,1000)",
    )
    p.add_argument(
        "--baseline-rates",
        type=_floats,
        default=_floats(_env("BENCH_BASELINE_RATES", "200")),
        help="fixed rates for the echo baselines; empty for none (BENCH_BASELINE_RATES, 200)",
    )
    p.add_argument(
        "--step-seconds",
        type=float,
        default=float(_env("BENCH_STEP_SECONDS", "5")),
        help="seconds per fixed-rate step (BENCH_STEP_SECONDS, 5)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(_env("BENCH_WORKERS", "1")),
        help="OTP workers, and processes per echo baseline (BENCH_WORKERS, 1)",
    )
    p.add_argument(
        "--channels",
        default=_env("BENCH_CHANNELS", "MAIL,SMS"),
        help="generate channels to measure; the first is used for validate and the fixed-rate "
        "sweep (BENCH_CHANNELS, MAIL,SMS)",
    )
    p.add_argument(
        "--notify",
        action=argparse.BooleanOptionalAction,
        default=_flag(_env("BENCH_NOTIFY", "1")),
        help="measure notify+MAIL too, saturation and fixed rate (BENCH_NOTIFY, 1)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=int(_env("BENCH_PARTITIONS", "8")),
        help="partitions of every topic (BENCH_PARTITIONS, 8)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=int(_env("BENCH_REPEATS", "3")),
        help="saturation rounds; medians are reported (BENCH_REPEATS, 3)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=float(_env("BENCH_TIME_BUDGET", "300")),
        help="seconds: no saturation round is started that would not leave time for the "
        "fixed-rate sweep (BENCH_TIME_BUDGET, 300)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=int(_env("BENCH_WARMUP", "200")),
        help="unmeasured requests per pipeline first (BENCH_WARMUP, 200)",
    )
    p.add_argument(
        "--kafka-port",
        type=int,
        default=int(_env("BENCH_KAFKA_PORT", str(harness.DEFAULT_KAFKA_PORT))),
        help="bench broker port (BENCH_KAFKA_PORT, 19192)",
    )
    p.add_argument(
        "--kafka-data-dir",
        default=_env("BENCH_KAFKA_DATA_DIR", harness.DEFAULT_KAFKA_DATA_DIR),
        help="bench broker data dir (BENCH_KAFKA_DATA_DIR, .local/kafka-bench)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(_env("BENCH_OUT", str(ROOT / "bench" / "results"))),
        help="where latest.json and latency.png go (BENCH_OUT, bench/results)",
    )
    args = p.parse_args(argv)
    args.channels = [c.strip().upper() for c in args.channels.split(",") if c.strip()]
    if not args.channels or not set(args.channels) <= {"MAIL", "SMS"}:
        p.error("--channels: MAIL and/or SMS")
    if args.requests < 1 or args.repeats < 1 or args.workers < 1 or args.partitions < args.workers:
        p.error("need --requests >= 1 and 1 <= --workers <= --partitions")
    return args


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _median(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def _gen_ok(body: dict[str, Any]) -> bool:
    return body.get("otpSent") is True


def _validate_ok(body: dict[str, Any]) -> bool:
    # A wrong guess is the expected answer; a right one (1 in 10^6) is handled all the same.
    return body.get("otpValid") is True or body.get("error") == "invalid code"


class Run:
    """One benchmark run: its processes, topics, driver and results."""

    def __init__(
        self,
        args: argparse.Namespace,
        procs: harness.Processes,
        broker: harness.Broker,
        began: float,
    ) -> None:
        self.args = args
        self.procs = procs
        self.broker = broker
        self.run_id = harness.new_run_id()
        self.topics = harness.run_topics(self.run_id)
        self.work = ROOT / ".local" / "bench" / self.run_id
        self.driver = harness.Driver(broker.bootstrap)
        self.workers: list[Any] = []
        self.baselines: list[harness.Child] = []
        self.sinks: harness.Sinks | None = None
        self.sms_available = False
        self.delivered = {"MAIL": 0, "SMS": 0}
        self.notified = 0  # receivers notify+MAIL reported sent (one per request)
        self.last_cpu_seconds: dict[str, float] = {}
        self.began = began
        self.last_round = 0.0
        self.meter = harness.CpuMeter(self._pids)
        self.results: dict[str, Any] = {"saturation": {}, "fixed_rate": {}, "cpu_cores": {}}

    def _pids(self) -> dict[str, int | None]:
        pids: dict[str, int | None] = {"driver": os.getpid(), "broker": self.broker.pid()}
        if self.sinks is not None:
            pids["sinks"] = self.sinks.child.pid
        for child in self.procs.children:
            if child.alive():
                pids[child.name] = child.pid
        return pids

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def log(self, message: str) -> None:
        print(f"bench [{time.strftime('%H:%M:%S')}] {message}", flush=True)

    # -- targets -----------------------------------------------------------------------------
    def targets(self) -> dict[str, Target]:
        t, rid = self.topics, self.run_id

        def bench_client(pid: int) -> str:
            return f"bench-{pid}"

        targets = {
            "echo": Target(
                "raw aiokafka echo",
                t["ECHO_IN"],
                t["ECHO_OUT"],
                harness.generate_request(rid, "MAIL", bench_client),
                _gen_ok,
            ),
            "faust_echo": Target(
                "Faust echo",
                t["FAUST_ECHO_IN"],
                t["FAUST_ECHO_OUT"],
                harness.generate_request(rid, "MAIL", bench_client),
                _gen_ok,
            ),
        }
        for channel in self.args.channels:
            targets[f"generate_{channel.lower()}"] = Target(
                f"generate+{channel}",
                t["KAFKA_TOPIC_OTP_GENERATE_IN"],
                t["KAFKA_TOPIC_OTP_GENERATE_OUT"],
                harness.generate_request(rid, channel, bench_client),
                _gen_ok,
            )
        if self.args.notify:
            targets["notify_mail"] = Target(
                "notify+MAIL",
                t["KAFKA_TOPIC_NOTIFICATION_INTERNAL_IN"],
                t["KAFKA_TOPIC_NOTIFICATION_INTERNAL_OUT"],
                harness.notify_request(rid),
                harness.notify_ok,
                pid_header="processInstanceId",
            )
        return targets

    def validate_target(self, channel: str, clients: list[str]) -> Target:
        """Validate requests for ``clients`` (in order), one wrong guess each."""
        queue = iter(clients)

        def make(pid: int) -> harness.Request:
            body = {
                "processInstanceId": pid,
                "clientId": next(queue),
                "channel": channel,
                "otp": WRONG_CODE,
            }
            return str(pid).encode(), orjson.dumps(body), harness.engine_headers(self.run_id, pid)

        return Target(
            "validate",
            self.topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
            self.topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"],
            make,
            _validate_ok,
        )

    # -- phases ------------------------------------------------------------------------------
    async def measure(self, key: str, coro: Any) -> dict[str, Any]:
        before = self.meter.snapshot()
        result = await coro
        after = self.meter.snapshot()
        self.results["cpu_cores"][key] = harness.CpuMeter.cores(before, after)
        self.last_cpu_seconds = harness.CpuMeter.cpu_seconds(before, after)
        await asyncio.sleep(1.0)  # let commits and changelog writes of the phase settle
        return result

    def count_deliveries(self, target: Target, ok: int) -> None:
        for channel in ("MAIL", "SMS"):
            if target.name == f"generate+{channel}":
                self.delivered[channel] += ok
        if target.name == "notify+MAIL":
            self.notified += ok

    async def saturation(
        self, key: str, target: Target, pids: range, service: str = "worker"
    ) -> dict[str, Any]:
        """One saturation round; ``service`` prefixes the names of the serving processes."""
        entry = self.results["saturation"].setdefault(
            key, {"name": target.name, "service": service, "status": "ok", "rounds": []}
        )
        number = len(entry["rounds"]) + 1
        self.log(f"saturation {number}/{self.args.repeats}: {target.name}, {len(pids)} requests")
        phase_key = f"saturation.{key}.{number}"
        result = await self.measure(phase_key, self.driver.saturate(target, pids))
        self.count_deliveries(target, result["completed"])
        used = sum(v for k, v in self.last_cpu_seconds.items() if k.startswith(service))
        result["service_cpu_ms_per_request"] = (
            round(1000 * used / result["completed"], 3) if result["completed"] else None
        )
        entry["rounds"].append(result)
        extra = (
            ""
            if not (result["failed"] or result["missing"])
            else (
                f" ({result['failed']} failed, {result['missing']} missing:"
                f" {result['first_failures'][:1]})"
            )
        )
        self.log(f"  {result['rps']} req/s{extra}")
        return result

    def summarize_saturation(self) -> None:
        """Median over the rounds (and their spread) for every saturation mode."""
        order = ["echo", "faust_echo", "generate_mail", "generate_sms", "validate", "notify_mail"]
        sat = self.results["saturation"]
        self.results["saturation"] = sat = {k: sat[k] for k in sorted(sat, key=order.index)}
        faust_rounds = (sat.get("faust_echo") or {}).get("rounds") or []
        for key, entry in sat.items():
            rounds = entry.get("rounds")
            if not rounds:
                continue
            rps = [r["rps"] or 0.0 for r in rounds]
            cpu = [r["service_cpu_ms_per_request"] for r in rounds]
            cores = [
                self.results["cpu_cores"][f"saturation.{key}.{i + 1}"] for i in range(len(rounds))
            ]
            entry.update(
                rps=round(statistics.median(rps), 1),
                rps_min=min(rps),
                rps_max=max(rps),
                service_cpu_ms_per_request=round(statistics.median(c for c in cpu if c), 3)
                if any(cpu)
                else None,
                **{
                    q: _median(r[q] for r in rounds)
                    for q in ("p50_ms", "p95_ms", "p99_ms", "max_ms")
                },
                failed=sum(r["failed"] for r in rounds),
                # Against the Faust echo of the same round (same neighbour load): the spread.
                vs_faust_echo_by_round=[
                    _ratio(r["rps"], f["rps"]) for r, f in zip(rounds, faust_rounds, strict=False)
                ]
                if key not in ("echo", "faust_echo")
                else None,
                missing=sum(r["missing"] for r in rounds),
                cpu_cores={
                    role: round(statistics.mean(c.get(role, 0.0) for c in cores), 2)
                    for role in cores[-1]
                },
            )

    async def sweep(self, key: str, target: Target, rates: list[float]) -> None:
        """Fixed-rate steps from the lowest rate up, until one is more than the pipeline takes.

        Past that rate latency only measures how long the step lasted (the backlog grows
        linearly), so higher rates are reported as skipped rather than spent time on.
        """
        steps: list[dict[str, Any]] = []
        self.results["fixed_rate"][key] = {"name": target.name, "steps": steps}
        rates = sorted(rates)
        for i, rate in enumerate(rates):
            self.log(f"fixed rate: {target.name} at {rate:g} req/s for {self.args.step_seconds:g}s")
            step = await self.measure(
                f"fixed_rate.{key}.{rate:g}",
                self.driver.fixed_rate(target, rate, self.args.step_seconds),
            )
            overloaded = bool(step["missing"]) or step["achieved_rps"] < OVERLOAD * rate
            step["status"] = "overloaded" if overloaded else "ok"
            self.count_deliveries(target, step["completed"])
            steps.append(step)
            self.log(
                f"  p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms, "
                f"{step['completed']}/{step['requests']} ok, {step['achieved_rps']} req/s"
                + (" (overloaded)" if overloaded else "")
            )
            if overloaded and i + 1 < len(rates):
                skipped = ", ".join(f"{r:g}" for r in rates[i + 1 :])
                self.log(f"  not going higher: {skipped} req/s skipped")
                steps.extend(
                    {"offered_rps": r, "status": f"skipped: overloaded at {rate:g} req/s"}
                    for r in rates[i + 1 :]
                )
                break

    # -- the run -----------------------------------------------------------------------------
    async def start(self) -> None:
        a, t = self.args, self.topics
        for old in self.work.parent.glob("*"):  # logs of runs more than an hour old
            if old.is_dir() and time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        bootstrap = self.broker.bootstrap
        echo_topics = [t["ECHO_IN"], t["ECHO_OUT"], t["FAUST_ECHO_IN"], t["FAUST_ECHO_OUT"]]
        # The OTP workers create their own topics (python -m app worker); the echoes do not.
        await ensure_topics(bootstrap, [TopicSpec(name, a.partitions, 1) for name in echo_topics])
        self.sinks = harness.start_sinks(self.procs, self.work)
        self.sms_available = "SMS" in a.channels and harness.sms_webhook_available()
        self.log(
            f"starting {a.workers} OTP worker(s), {a.workers} raw echo, {a.workers} Faust echo "
            f"(run {self.run_id}, logs in {self.work.relative_to(ROOT)})"
        )
        self.baselines = harness.start_raw_echo(
            self.procs, self.work, a.workers, bootstrap=bootstrap, topics=t
        ) + harness.start_faust_echo(
            self.procs, self.work, a.workers, bootstrap=bootstrap, topics=t, partitions=a.partitions
        )
        self.workers = harness.start_otp_workers(
            self.procs,
            self.work,
            a.workers,
            bootstrap=bootstrap,
            topics=t,
            partitions=a.partitions,
            sinks=self.sinks,
            sms=self.sms_available,
        )
        began = time.monotonic()
        await asyncio.gather(*(w.wait_ready(timeout=180) for w in self.workers))
        self.log(f"OTP workers ready in {time.monotonic() - began:.1f}s")
        templates = [harness.SEED_MAIL] + ([harness.SEED_SMS] if "SMS" in a.channels else [])
        if a.notify:
            templates.append(harness.SEED_WELCOME)
        await harness.create_templates(self.workers[0], templates)
        reply_topics = [
            t["ECHO_OUT"],
            t["FAUST_ECHO_OUT"],
            t["KAFKA_TOPIC_OTP_GENERATE_OUT"],
            t["KAFKA_TOPIC_OTP_VALIDATE_OUT"],
        ]
        if a.notify:
            reply_topics.append(t["KAFKA_TOPIC_NOTIFICATION_INTERNAL_OUT"])
        await self.driver.start(reply_topics, a.partitions)

    def round_size(self, warm: harness.Phase) -> int:
        """Requests per saturation round: ``--requests``, or more for a pipeline so fast that
        they would take less than MIN_ROUND_SECONDS (a shorter round measures start-up and
        timer granularity more than throughput); the rate is the warm-up's."""
        seconds = warm.last_reply - min(warm.scheduled.values())
        rate = len(warm.latencies) / seconds if seconds > 0 else 0.0
        return min(MAX_ROUND_REQUESTS, max(self.args.requests, math.ceil(rate * MIN_ROUND_SECONDS)))

    async def warm_up(
        self, target: Target, n: int | None = None, retry_on: tuple[str, ...] = ()
    ) -> harness.Phase:
        began = time.monotonic()
        phase, _ = await self.driver.warm_up(target, n or self.args.warmup, retry_on=retry_on)
        self.count_deliveries(target, len(phase.latencies))
        self.log(f"warm-up {target.name}: {time.monotonic() - began:.1f}s")
        return phase

    async def execute(self) -> None:
        a = self.args
        targets = self.targets()
        first = a.channels[0]
        n = a.requests

        # Warm-ups. The echo baselines get a full-size one: the raw echo is mostly broker
        # work, and a broker that has just started (JIT) would make it look slower.
        size: dict[str, int] = {}
        for key in ("echo", "faust_echo"):
            size[key] = self.round_size(await self.warm_up(targets[key], max(a.warmup, n)))
        channels = []
        for channel in a.channels:
            key = f"generate_{channel.lower()}"
            skipped = None
            if channel == "SMS" and not self.sms_available:
                skipped = SMS_UNAVAILABLE
            else:
                # A template may not have reached the read model of every worker yet.
                warm = await self.warm_up(targets[key], retry_on=("not found",))
                errors = sorted({str(f.get("error")) for f in warm.failures})
                if channel == "SMS" and any("not configured" in e for e in errors):
                    skipped = f"{SMS_UNAVAILABLE} ({errors[0]})"
                elif errors:
                    raise RuntimeError(f"{targets[key].name} warm-up failed: {errors[:3]}")
                size[key] = self.round_size(warm)
                if channel == first:
                    # Only identifiers whose generate succeeded have a record to guess against.
                    clients = [f"bench-{p}" for p in warm.scheduled]
                    await self.warm_up(self.validate_target(first, clients))
            if skipped:
                name = f"generate+{channel}"
                self.results["saturation"][key] = {"name": name, "status": skipped}
                self.log(f"{name} {skipped}")
            else:
                channels.append(channel)
        if a.notify:
            key = "notify_mail"
            warm = await self.warm_up(targets[key], retry_on=("not found",))
            errors = sorted({str(f.get("error")) for f in warm.failures})
            if errors:
                raise RuntimeError(f"{targets[key].name} warm-up failed: {errors[:3]}")
            size[key] = self.round_size(warm)

        # Saturation, in rounds: each round measures every mode once, so a neighbour's load
        # that comes and goes hits baselines and pipeline alike; the medians are reported.
        for number in range(a.repeats):
            began = time.monotonic()
            reserve = SWEEP_RESERVE + (NOTIFY_SWEEP_RESERVE if a.notify and a.rates else 0.0)
            if number and self.elapsed() + self.last_round > a.time_budget - reserve:
                self.log(f"time budget ({a.time_budget:g} s): stopping after {number} round(s)")
                break
            for key, service in (("echo", "raw-echo"), ("faust_echo", "faust-echo")):
                await self.saturation(key, targets[key], self.driver.pids(size[key]), service)
            generated: range | None = None
            for channel in channels:
                key = f"generate_{channel.lower()}"
                pids = self.driver.pids(size[key])
                await self.saturation(key, targets[key], pids)
                if channel == first:
                    generated = pids
            if generated is not None:
                # Validate the identifiers this round's generate just stored, one guess each.
                target = self.validate_target(first, [f"bench-{p}" for p in generated])
                await self.saturation("validate", target, self.driver.pids(len(generated)))
            if a.notify:
                key = "notify_mail"
                await self.saturation(key, targets[key], self.driver.pids(size[key]))
            self.last_round = time.monotonic() - began
        self.summarize_saturation()

        # Fixed rates: the baselines, then (with their processes stopped) the pipeline.
        if a.baseline_rates:
            for key in ("echo", "faust_echo"):
                await self.sweep(key, targets[key], a.baseline_rates)
        await asyncio.to_thread(self.procs.stop, self.baselines)
        if first in channels:
            key = f"generate_{first.lower()}"
            await self.sweep(key, targets[key], a.rates)
        if a.notify and a.rates:
            # What the generate sweep left queued (an overloaded step) drains first.
            await self.warm_up(targets["notify_mail"], 50)
            await self.sweep("notify_mail", targets["notify_mail"], a.rates)

    async def stop(self) -> None:
        """Stop everything this run started (but the broker) and delete the run's topics."""
        await self.driver.stop()
        await asyncio.to_thread(self.procs.stop_all)
        with contextlib.suppress(Exception):
            deleted = await asyncio.wait_for(
                harness.delete_topics_containing(self.broker.bootstrap, self.run_id), 30
            )
            self.log(f"deleted the run's {deleted} topics")


# ---------------------------------------------------------------------------- report


def headline(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    sat = results["saturation"]

    def rps(key: str) -> float | None:
        entry = sat.get(key) or {}
        if entry.get("missing") or entry.get("failed") or entry.get("status") != "ok":
            return None  # an incomplete run has no throughput to speak of
        return entry.get("rps")

    def p99_at(key: str, rate: float) -> float | None:
        for step in results["fixed_rate"].get(key, {}).get("steps", []):
            if step["offered_rps"] == rate and step.get("completed") and not step["missing"]:
                return step["p99_ms"]
        return None

    def cores(key: str) -> float | None:
        """Cores the serving processes used during the saturation rounds (their mean)."""
        entry = sat.get(key) or {}
        used = entry.get("cpu_cores") or {}
        mine = [v for k, v in used.items() if k.startswith(entry.get("service", "?"))]
        return round(sum(mine), 2) if mine else None

    echo, faust = rps("echo"), rps("faust_echo")
    mail, sms, validate = rps("generate_mail"), rps("generate_sms"), rps("validate")
    notify = rps("notify_mail")
    notify_entry = sat.get("notify_mail") or {}
    return {
        "echo_baseline_rps": echo,
        "faust_echo_rps": faust,
        "generate_mail_rps": mail,
        "ratio_generate_mail_vs_echo": _ratio(mail, echo),
        "ratio_generate_mail_vs_faust_echo": _ratio(mail, faust),
        "generate_sms_rps": sms,
        "generate_sms_status": (sat.get("generate_sms") or {}).get("status", "not run"),
        "ratio_generate_sms_vs_echo": _ratio(sms, echo),
        "ratio_generate_sms_vs_faust_echo": _ratio(sms, faust),
        "validate_rps": validate,
        "ratio_validate_vs_echo": _ratio(validate, echo),
        "ratio_validate_vs_faust_echo": _ratio(validate, faust),
        "notify_mail_rps": notify,
        "notify_mail_status": notify_entry.get("status", "not run"),
        "ratio_notify_mail_vs_echo": _ratio(notify, echo),
        "ratio_notify_mail_vs_faust_echo": _ratio(notify, faust),
        "notify_mail_saturation_p50_ms": notify_entry.get("p50_ms"),
        "notify_mail_saturation_p99_ms": notify_entry.get("p99_ms"),
        "notify_mail_p99_ms_at_200rps": p99_at("notify_mail", 200),
        "p99_ms_at_200rps": p99_at(f"generate_{args.channels[0].lower()}", 200),
        "p99_ms_at_500rps": p99_at(f"generate_{args.channels[0].lower()}", 500),
        "worker_cpu_ms_per_generate_mail": (sat.get("generate_mail") or {}).get(
            "service_cpu_ms_per_request"
        ),
        "faust_echo_cores_at_saturation": cores("faust_echo"),
    }


def verdicts(head: dict[str, Any], workers: int) -> dict[str, Any]:
    def at_least(value: float | None, goal: float) -> bool | None:
        return None if value is None else value >= goal

    def at_most(value: float | None, goal: float, one_worker: bool = False) -> bool | None:
        return None if value is None or (one_worker and workers != 1) else value <= goal

    t = TARGETS
    goals = {
        "generate_mail_vs_faust_echo": (f">= {t['generate_mail_vs_faust_echo']:g}", at_least),
        "generate_mail_vs_echo": (f">= {t['generate_mail_vs_echo']:g}", at_least),
        "validate_vs_faust_echo": (f">= {t['validate_vs_faust_echo']:g}", at_least),
        "p99_ms_at_200rps": (f"<= {t['p99_ms_at_200rps']:g} ms on one worker", None),
        "p99_ms_at_500rps": (f"<= {t['p99_ms_at_500rps']:g} ms on one worker", None),
        "worker_cpu_ms_per_generate_mail": (
            f"<= {t['worker_cpu_ms_per_generate_mail']:g} ms",
            at_most,
        ),
        "faust_echo_cores_at_saturation": (
            f">= {t['faust_echo_cores_at_saturation']:g} (or a trace of why not, README)",
            at_least,
        ),
    }
    result = {}
    for key, (goal, check) in goals.items():
        value = head.get(f"ratio_{key}", head.get(key))
        met = at_most(value, t[key], one_worker=True) if check is None else check(value, t[key])
        result[key] = {"goal": goal, "value": value, "met": met}
    return result


def _fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def table(doc: dict[str, Any]) -> str:
    sat, opts, head = doc["saturation"], doc["options"], doc
    lines = [
        "",
        f"saturation: median of {len(sat['echo']['rounds'])} rounds, "
        f"{opts['workers']} worker(s), "
        f"{opts['partitions']} partitions ({doc['machine']['cpu_count']} CPUs, "
        f"{doc['machine']['cpu_model']})",
        f"  {'pipeline':<20} {'req/s':>8} {'min-max':>13} {'vs echo':>8} {'vs Faust':>9} "
        f"{'p50/p99 ms':>13} {'CPU ms/req':>11} {'req/round':>10}"
        "  cores: service/broker/driver/not ours",
    ]
    for key, entry in sat.items():
        if entry.get("status", "ok") != "ok":
            lines.append(f"  {entry['name']:<20} {entry['status']}")
            continue
        cpu = entry["cpu_cores"]
        spread = f"{entry['rps_min']:.0f}-{entry['rps_max']:.0f}"
        service = sum(v for k, v in cpu.items() if k.startswith(entry["service"]))
        rps = entry["rps"]
        vs_echo = _ratio(rps, head["echo_baseline_rps"]) if key != "echo" else None
        vs_faust = (
            _ratio(rps, head["faust_echo_rps"]) if key not in ("echo", "faust_echo") else None
        )
        latency = f"{_fmt(entry.get('p50_ms'))}/{_fmt(entry.get('p99_ms'))}"
        note = ""
        if entry["failed"] or entry["missing"]:
            note = f"  INCOMPLETE: {entry['failed']} failed, {entry['missing']} missing"
        lines.append(
            f"  {entry['name']:<20} {_fmt(rps):>8} {spread:>13} {_fmt(vs_echo, '.2f'):>8} "
            f"{_fmt(vs_faust, '.2f'):>9} {latency:>13}"
            f" {_fmt(entry['service_cpu_ms_per_request'], '.2f'):>11}"
            f" {entry['rounds'][0]['requests']:>10}"
            f"  {service:.2f}/{cpu.get('broker', 0):.2f}/{cpu.get('driver', 0):.2f}/"
            f"{cpu.get('other', 0):.2f}{note}"
        )
    for sweep in doc["fixed_rate"].values():
        lines += [
            "",
            f"fixed rate: {sweep['name']}, {opts['step_seconds']:g} s per step, latency from "
            "scheduled send to reply consumed",
            f"  {'offered':>8} {'achieved':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8}  ok/sent",
        ]
        for step in sweep["steps"]:
            if "requests" not in step:
                lines.append(f"  {step['offered_rps']:>8g}  {step['status']}")
                continue
            lines.append(
                f"  {step['offered_rps']:>8g} {_fmt(step['achieved_rps']):>9} "
                f"{_fmt(step['p50_ms'], '.1f'):>8} {_fmt(step['p95_ms'], '.1f'):>8} "
                f"{_fmt(step['p99_ms'], '.1f'):>8} {_fmt(step['max_ms'], '.1f'):>8}  "
                f"{step['completed']}/{step['requests']}"
                + ("  overloaded" if step.get("status") == "overloaded" else "")
            )
    lines.append("")
    for channel, d in (doc.get("deliveries") or {}).items():
        notified = d.get("notify_sent_receivers", 0)
        expected = d["otpSent_replies"] + notified
        if expected:
            lines.append(
                f"{channel}: {d['otpSent_replies']} 'otpSent: true' replies"
                + (f" + {notified} notify receivers sent" if notified else "")
                + f", {d['sink_received']} received by the sink"
                + ("" if d["sink_received"] >= expected else "  MISSING DELIVERIES")
            )
    lines += ["", "targets:"]
    for name, v in doc["targets"].items():
        met = {True: "met", False: "NOT met", None: "n/a"}[v["met"]]
        lines.append(f"  {name:<30} {v['goal']:<24} {_fmt(v['value'], 'g'):>8}  {met}")
    lines.append(
        f"\nwall time {doc['wall_seconds']:.0f} s; results in {doc['output']}; "
        f"logs in {doc['logs']}"
    )
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Latency percentiles against offered rate: the OTP sweep in lines, baselines as marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    colors = {"p50_ms": "tab:blue", "p95_ms": "tab:orange", "p99_ms": "tab:red"}
    fig, ax = plt.subplots(figsize=(10, 5))
    rates_seen: set[float] = set()
    skipped_notes = 0
    for key, sweep in doc["fixed_rate"].items():
        steps = [s for s in sweep["steps"] if s.get("p50_ms") is not None]
        if not steps:
            continue
        rates = [s["offered_rps"] for s in steps]
        rates_seen.update(rates)
        baseline = key in ("echo", "faust_echo")
        for q, color in colors.items():
            values = [s[q] for s in steps]
            label = f"{sweep['name']} {q[:3]}"
            if baseline:
                marker = "o" if key == "echo" else "x"
                ax.scatter(rates, values, marker=marker, color=color, alpha=0.6, label=label)
            else:
                style = "s--" if key.startswith("notify") else "o-"
                ax.plot(rates, values, style, color=color, linewidth=2, label=label)
        if not baseline:
            for s in steps:
                if s.get("status") == "overloaded":
                    ax.annotate(
                        "overloaded",
                        (s["offered_rps"], s["p99_ms"]),
                        textcoords="offset points",
                        xytext=(-20, 8),
                        fontsize=8,
                    )
            skipped = [s["offered_rps"] for s in sweep["steps"] if s.get("p50_ms") is None]
            if skipped:
                note = ", ".join(f"{r:g}" for r in skipped)
                ax.annotate(
                    f"{sweep['name']}: {note} req/s not run (overloaded below)",
                    (0.01, 0.96 - 0.04 * skipped_notes),
                    xycoords="axes fraction",
                    fontsize=8,
                )
                skipped_notes += 1
    ax.axhline(TARGETS["p99_ms_at_200rps"], color="grey", linestyle="--", linewidth=1)
    ax.annotate("target: p99 <= 25 ms at 200 req/s", (0.01, 0.01), xycoords="axes fraction")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if rates_seen:
        ax.set_xticks(sorted(rates_seen))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        lo, hi = min(rates_seen), max(rates_seen)
        ax.set_xlim(lo / 1.3, hi * 1.3)
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("latency, scheduled send to reply consumed (ms)")
    m, o = doc["machine"], doc["options"]
    ax.set_title(
        f"faust-otp latency: {o['workers']} worker(s), {o['partitions']} partitions, "
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), {m['date'][:10]}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish(args: argparse.Namespace, run: Run, machine: dict[str, Any], wall: float) -> dict:
    head = headline(run.results, args)
    out: Path = args.out
    doc = {
        **head,
        "targets": verdicts(head, args.workers),
        "wall_seconds": round(wall, 1),
        "command": "make bench",
        "options": {
            "requests": args.requests,
            "rates": args.rates,
            "baseline_rates": args.baseline_rates,
            "step_seconds": args.step_seconds,
            "workers": args.workers,
            "channels": args.channels,
            "notify": args.notify,
            "partitions": args.partitions,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "time_budget": args.time_budget,
        },
        "method": {
            "payload": "the README's generate request (orjson, "
            f"{len(harness.generate_request(run.run_id, 'MAIL', lambda p: f'bench-{p}')(5000)[1])}"
            " bytes) with 3 engine headers, for the OTP service and both echo baselines alike",
            "throughput": "completed replies / seconds from first send to last reply; "
            "median of the saturation rounds (rounds interleave all modes)",
            "latency": "reply consumed minus the request's scheduled send time "
            "(coordinated-omission-safe); at saturation every request is 'scheduled' when sent",
            "validate": "one WRONG code per identifier stored by the generate saturation run",
            "notify": "examples/notify-welcome.json (template examples/welcomeLetter.json), "
            "processInstanceId in a Kafka header, one receiver of its own per request; done = "
            "error null and every result sent",
            "sinks": "bench/sinks.py: SMTP that only counts DATA, SMS webhook that answers 200",
            "same_machine": "broker, workers, sinks and this driver share the machine's CPUs; "
            "cpu_cores shows who used what during each phase ('other' = not ours)",
        },
        "machine": machine,
        "run_id": run.run_id,
        "deliveries": run.results.get("deliveries"),
        "saturation": run.results["saturation"],
        "fixed_rate": run.results["fixed_rate"],
        "cpu_cores": run.results["cpu_cores"],
        "output": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
        "logs": str(run.work.relative_to(ROOT)),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
    try:
        plot(doc, out / "latency.png")
    except ImportError:
        print("bench: matplotlib is not installed (make bench installs it): no plot", flush=True)
    return doc


async def main_async(args: argparse.Namespace, run: Run) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await run.start()
        await run.execute()
        if run.sinks is not None:
            received = await run.sinks.stats()
            run.results["deliveries"] = {
                channel: {"otpSent_replies": run.delivered[channel], "sink_received": got}
                for channel, got in (("MAIL", received["mails"]), ("SMS", received["sms"]))
            }
            run.results["deliveries"]["MAIL"]["notify_sent_receivers"] = run.notified
    finally:
        await run.stop()


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    began = time.monotonic()
    args = parse_args()
    # SIGTERM outside the event loop (starting the broker): clean up as for Ctrl-C. Inside
    # it, main_async cancels the run instead.
    signal.signal(signal.SIGTERM, _terminate)
    procs = harness.Processes()
    broker = harness.Broker(args.kafka_port, args.kafka_data_dir)
    run: Run | None = None
    ok = interrupted = False
    machine = harness.machine_info(broker.version())
    try:
        broker.ensure()
        run = Run(args, procs, broker, began)
        asyncio.run(main_async(args, run))
        ok = True
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; stopping everything", file=sys.stderr, flush=True)
        interrupted = True
    except Exception as exc:
        print(f"bench: failed: {exc}", file=sys.stderr, flush=True)
        if run is not None:
            print(f"bench: logs kept in {run.work}", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up is bounded: let it finish
        procs.stop_all()
        broker.stop_if_started()
    if interrupted and run is not None:
        shutil.rmtree(run.work, ignore_errors=True)
    if not ok or run is None:
        return 130 if interrupted else 1
    doc = finish(args, run, machine, time.monotonic() - began)
    for path in run.work.iterdir():  # keep the logs of the last run, not the data
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    print(table(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
