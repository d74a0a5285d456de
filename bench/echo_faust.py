"""The framework floor: the least a Faust agent can do per request on this broker.

    python -m bench.echo_faust BOOTSTRAP IN_TOPIC OUT_TOPIC APP_ID PARTITIONS DATA_DIR

One ``faust.App`` with one agent over raw (bytes) topics: each event's value is parsed with
orjson and a reply of the same shape and size as the OTP service's generate reply is sent with
``topic.send``, keyed by ``processInstanceId`` and carrying the request's headers. The app uses
the Faust settings of ``app/main.py`` that matter to a stream's speed (producer linger, commit
interval, ``stream_wait_empty``, offset reset, partitions, logging) and its consumer
(``ledger://``, ``app.runtime.consumer``: Faust's, with each record's delivery stepped at once;
no topic of the echo is the ledger's, so Faust commits as it always does); it has no table, no
web server and no delivery. The OTP service's pipeline is this plus re-keying hops, tables and
a provider.
"""

from __future__ import annotations

import sys
from typing import Any

import faust
import orjson

from app.core.partitions import Partitioner
from app.logs import logging_config
from app.runtime.consumer import LedgerApp
from app.runtime.worker import use_event_loop
from app.settings import Settings
from bench import service_settings


def create_app(
    bootstrap: str,
    in_topic: str,
    out_topic: str,
    app_id: str,
    partitions: int,
    data_dir: str,
    shared: Settings,
) -> faust.App:
    app = LedgerApp(
        app_id,
        env={},  # as the worker: no Faust setting from the environment
        broker=[f"ledger://{h.strip()}" for h in bootstrap.split(",")],
        store="memory://",
        datadir=data_dir,
        autodiscover=False,
        topic_partitions=partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_linger=shared.producer_linger_ms / 1000,
        producer_partitioner=Partitioner(),
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        table_standby_replicas=0,
        web_enabled=False,
        # The worker's logging set-up: without explicit library levels, Faust's start-up lets
        # aiokafka and Faust build a DEBUG record per send (10% of this echo's time in a
        # py-spy trace), a cost the service does not pay.
        logging_config=logging_config("WARNING", "text"),
    )
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    source = app.topic(in_topic, partitions=partitions, **raw)
    sink = app.topic(out_topic, partitions=partitions, **raw)

    @app.agent(source, name="echo")
    async def echo(stream: Any) -> None:
        async for event in stream.events():
            request = orjson.loads(event.value)
            pid = request["processInstanceId"]
            reply = {
                "processInstanceId": pid,
                "clientId": request.get("clientId"),
                "channel": request.get("channel"),
                "otpSent": True,
                "error": None,
            }
            await sink.send(key=str(pid).encode(), value=orjson.dumps(reply), headers=event.headers)

    return app


def main() -> None:
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    bootstrap, in_topic, out_topic, app_id, partitions, data_dir = sys.argv[1:7]
    shared = service_settings()
    app = create_app(bootstrap, in_topic, out_topic, app_id, int(partitions), data_dir, shared)
    use_event_loop(shared.event_loop)  # before the worker makes its loop, as the service
    sys.argv = [sys.argv[0], "worker", "--without-web", "--loglevel", "warn"]
    app.main()


if __name__ == "__main__":
    main()
