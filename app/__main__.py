"""``python -m app worker``: check the settings, then hand over to Faust's command line.

Settings are validated *before* Faust starts, so a bad variable ends the process with one line
naming it (exit code 2) instead of a traceback from deep inside the worker.
"""

from __future__ import annotations

import sys

from app.settings import ConfigError, Settings

USAGE = """usage: python -m app worker [faust worker options]
       python -m app repartition --partitions N   (every worker stopped; see app/repartition.py)"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args[0] == "repartition":
        return repartition(settings, args[1:])

    from app.runtime.worker import use_event_loop

    use_event_loop(settings.event_loop)

    import asyncio

    from aiokafka.errors import KafkaError

    from app.kafka_admin import ensure_topics, partition_counts, partitions_refusal
    from app.main import create_app
    from tables import internal_topics, topic_specs

    try:
        counts = asyncio.run(
            partition_counts(settings.kafka_bootstrap_servers, internal_topics(settings))
        )
        refusal = partitions_refusal(settings.topic_partitions, counts)
        if refusal is not None:
            print(f"configuration error: {refusal}", file=sys.stderr)
            return 2
        asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, topic_specs(settings)))
    except (KafkaError, OSError, TimeoutError) as exc:
        print(
            f"cannot prepare Kafka topics at {settings.kafka_bootstrap_servers}: {exc}",
            file=sys.stderr,
        )
        return 1
    app = create_app(settings)
    if args[0] == "worker" and not any(a.startswith(("-l", "--loglevel")) for a in args):
        faust_level = {"WARNING": "warn", "CRITICAL": "crit"}.get(settings.log_level)
        args += ["--loglevel", faust_level or settings.log_level.lower()]
    if args[0] == "worker" and not any(a.startswith("--without-web") for a in args):
        args += ["--web-port", str(settings.web_port), "--web-host", settings.web_host]
    if settings.log_format == "json":
        args.insert(0, "--quiet")  # Faust's banner is a text table: keep the output JSON
    sys.argv = [sys.argv[0], *args]
    app.main()
    return 0


def repartition(settings: Settings, args: list[str]) -> int:
    """Move the live state onto ``--partitions N`` (the same environment as a worker)."""
    import argparse
    import asyncio

    from aiokafka.errors import KafkaError

    from app.repartition import RepartitionRefused
    from app.repartition import repartition as run

    parser = argparse.ArgumentParser(prog="python -m app repartition")
    parser.add_argument("--partitions", type=int, required=True, help="the new partition count")
    parser.add_argument(
        "--wait",
        type=float,
        default=15.0,
        help="seconds to wait for stopped workers to leave the consumer group (default 15)",
    )
    options = parser.parse_args(args)
    if options.partitions < 1:
        print("repartition: --partitions must be at least 1", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run(settings, options.partitions, group_wait=options.wait))
    except RepartitionRefused as exc:
        print(f"repartition refused: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, OSError, TimeoutError) as exc:
        print(f"repartition failed, run it again: {exc!r}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
