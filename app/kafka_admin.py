"""Create the topics a worker consumes before Faust subscribes to them.

Faust's partition assignor silently skips a subscribed topic that is missing from the cluster
metadata at the moment of assignment ("Ignoring missing topic"), and the consumer notices the
topic only at its next metadata refresh, minutes later. On a fresh cluster, where Faust itself
has only just asked for the topics, that race leaves an agent idle while the worker reports
itself ready. So the worker creates every topic it reads (never altering an existing one) and
waits until the broker lists them all, before the Faust worker starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


async def ensure_topics(
    bootstrap_servers: str, specs: list[TopicSpec], timeout: float = 60.0
) -> list[str]:
    """Create the missing topics of ``specs``; return their names once the broker lists all."""
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
                        for s in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass  # another worker won the race: fine
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        wanted = {s.name for s in specs}
        while not wanted <= await consumer.topics():
            if time.monotonic() > deadline:
                absent = sorted(wanted - await consumer.topics())
                raise TimeoutError(f"topics still missing after {timeout:.0f}s: {absent}")
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
    if missing:
        log.info("created topics: %s", ", ".join(s.name for s in missing))
    return [s.name for s in missing]


async def partition_counts(bootstrap_servers: str, names: list[str]) -> dict[str, int]:
    """How many partitions each existing topic of ``names`` has (missing ones are left out)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        # Only topics that exist: a metadata request naming a missing one makes a broker with
        # auto.create.topics.enable create it, with the broker's default partition count.
        existing = set(await admin.list_topics())
        wanted = [name for name in names if name in existing]
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return {
        str(topic["topic"]): len(topic["partitions"])
        for topic in described
        if topic.get("error_code") == 0 and topic.get("partitions")
    }


def partitions_refusal(expected: int, counts: dict[str, int]) -> str | None:
    """Why a worker must not start: its ``TOPIC_PARTITIONS`` is not what the internal topics
    (and so the live state's keys) were made with, or a repartition was left unfinished (the
    topics disagree). Adding partitions moves keys: a code issued before would not be found."""
    found = sorted(set(counts.values()))
    if len(found) > 1:
        name = min(counts, key=lambda n: (counts[n], n))
        return (
            f"the internal topics have {found[0]} ({name}) and {found[-1]} partitions: a "
            f"repartition was not finished; run `python -m app repartition --partitions "
            f"{found[-1]}` again, then start the workers with TOPIC_PARTITIONS={found[-1]}"
        )
    if not found or found[0] == expected:
        return None
    name = sorted(counts)[0]
    line = (
        f"TOPIC_PARTITIONS={expected} but the internal topics have {found[0]} partitions "
        f"({name}): start the workers with TOPIC_PARTITIONS={found[0]}"
    )
    if expected < found[0]:
        return f"{line} (Kafka cannot take partitions away)"
    return (
        f"{line}, or stop them all and move the state first with "
        f"`python -m app repartition --partitions {expected}`"
    )
