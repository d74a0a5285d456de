"""``python -m app repartition --partitions N``: move the live state onto N partitions.

Kafka adds partitions to a topic, but a keyed record's partition is ``murmur2(key) % count``:
with more partitions most keys belong elsewhere, and a worker looks for an identifier's row only
in the partition its commands now land in. So the state has to move with the count.

The procedure (workers stopped; the window is what this command takes, measured in the README):

1. Checks, before anything changes: no member in the app's consumer group (``APP_ID``), and
   every internal command topic and the events topic read to its end by the group, so no
   command still waits to be applied under the old key layout. Either refusal names what to do.
2. The tables' changelog topics get N partitions.
3. Every live row of every table (OTPs, receivers, templates, notifications, messages, the send
   log) is written to the partition its key belongs to under N, with the bytes it had; then,
   once all those writes are acknowledged, each moved row's old copy gets a tombstone. A
   worker's RocksDB store keeps the changelog offset it read up to, so on start it reads only
   these appended records for the partitions it had, and the new partitions whole.
4. The command topics and the events topic get N partitions.

Then start the workers with ``TOPIC_PARTITIONS=N``.

Safe to run twice: a key already in its partition is not written again, and when every
internal topic has N partitions there is nothing to do. A crash in the middle loses nothing:
before step 2 nothing has changed (the old workers can simply be started again); after it the
workers refuse to start (the changelogs and the command topics disagree on the partition count)
until the command has been run again, which resumes: a key's copy in its new partition, if one
was written, decides, else its live copy in the old one; tombstones are written only after every
new copy is acknowledged, so no key is ever left with none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from app.core.partitions import partition_of
from app.kafka_admin import partition_counts
from app.settings import Settings
from tables import TABLES, changelog_topic, internal_topics

# Records read per fetch while the changelogs are scanned.
FETCH_RECORDS = 5000
# Seconds to wait for the consumer group to empty (past the workers' 10 s session timeout).
GROUP_WAIT = 15.0


class RepartitionRefused(Exception):
    """The command cannot run now; the message says why and what to do."""


@dataclass
class Report:
    """What one run did: rows kept and moved per table, and how long it took."""

    target: int
    live: dict[str, int] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    nothing_to_do: bool = False

    def summary(self) -> str:
        if self.nothing_to_do:
            return f"every internal topic already has {self.target} partitions: nothing to do"
        tables = ", ".join(
            f"{name} {self.moved[name]}/{self.live[name]}" for name in sorted(self.live)
        )
        return (
            f"moved to {self.target} partitions in {self.seconds:.1f} s "
            f"(rows moved/live: {tables}); start the workers with TOPIC_PARTITIONS={self.target}"
        )


def plan_key(copies: dict[int, bytes | None], home: int) -> tuple[bytes | None, list[int]]:
    """For one key's last record in each partition (None: a tombstone), the value to write to
    its ``home`` partition (None: nothing to write) and the other partitions to tombstone.

    A copy already at home decides (a previous run wrote it, or the key never moved); else the
    live copy elsewhere is the row. Every other live copy is an old one."""
    if home in copies:
        value = None
    else:
        live = [v for p, v in sorted(copies.items()) if v is not None]
        value = live[-1] if live else None
    stale = [p for p, v in sorted(copies.items()) if p != home and v is not None]
    return value, stale


async def repartition(
    settings: Settings,
    target: int,
    say: Callable[[str], None] = print,
    group_wait: float = GROUP_WAIT,
) -> Report:
    bootstrap = settings.kafka_bootstrap_servers
    changelogs = [changelog_topic(settings, table) for table in TABLES]
    commands = [t for t in internal_topics(settings) if t not in changelogs]
    counts = await partition_counts(bootstrap, [*commands, *changelogs])
    report = Report(target)
    smaller = {name: n for name, n in counts.items() if n > target}
    if smaller:
        name, n = sorted(smaller.items())[0]
        raise RepartitionRefused(
            f"{name} has {n} partitions: Kafka cannot take partitions away, so the state can "
            f"move only to more than {n}"
        )
    if counts and all(n == target for n in counts.values()):
        report.nothing_to_do = True
        return report
    started = time.monotonic()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await _refuse_if_running(admin, settings.app_id, group_wait)
        await _refuse_if_pending(admin, bootstrap, settings.app_id, commands, counts)
        await _grow(admin, {name: counts[name] for name in changelogs if name in counts}, target)
        say(f"changelogs have {target} partitions; moving rows")
        for table, topic in zip(TABLES, changelogs, strict=True):
            if topic in counts:
                live, moved = await _move(bootstrap, topic, target)
                report.live[table], report.moved[table] = live, moved
                say(f"{table}: {moved} of {live} live rows moved")
        await _grow(admin, {name: counts[name] for name in commands if name in counts}, target)
    finally:
        await admin.close()
    report.seconds = time.monotonic() - started
    return report


async def _refuse_if_running(admin: AIOKafkaAdminClient, group_id: str, wait: float) -> None:
    """A worker stopped a moment ago may still be listed: the broker drops a member that left
    without saying so after the session timeout (10 s), so wait up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        members = await _members(admin, group_id)
        if not members:
            return
        if time.monotonic() > deadline:
            raise RepartitionRefused(
                f"consumer group {group_id} has {members} member(s): stop every worker first "
                "(SIGTERM lets them finish and commit)"
            )
        await asyncio.sleep(1)


async def _members(admin: AIOKafkaAdminClient, group_id: str) -> int:
    responses = await admin.describe_consumer_groups([group_id])
    return sum(len(group[5]) for response in responses for group in response.groups)


async def _refuse_if_pending(
    admin: AIOKafkaAdminClient,
    bootstrap: str,
    group_id: str,
    topics: list[str],
    counts: dict[str, int],
) -> None:
    """No command may wait: it would be applied under the new layout to a row of the old."""
    committed = await admin.list_consumer_group_offsets(group_id)
    tps = [TopicPartition(t, p) for t in topics if t in counts for p in range(counts[t])]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps) if tps else {}
        starts = await consumer.beginning_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    for tp in tps:
        done = committed[tp].offset if tp in committed else starts[tp]
        if ends[tp] > max(done, starts[tp]):
            raise RepartitionRefused(
                f"{tp.topic}[{tp.partition}] has {ends[tp] - done} record(s) the workers have "
                "not handled: start them until they are idle, stop them, and run this again"
            )


async def _grow(admin: AIOKafkaAdminClient, counts: dict[str, int], target: int) -> None:
    wanted = {name: NewPartitions(total_count=target) for name, n in counts.items() if n < target}
    if wanted:
        await admin.create_partitions(wanted)


async def _move(bootstrap: str, topic: str, target: int) -> tuple[int, int]:
    """Move one changelog's live rows to their partitions under ``target``: (live, moved)."""
    last = await _last_records(bootstrap, topic, target)
    plans = {key: plan_key(copies, partition_of(key, target)) for key, copies in last.items()}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        for key, (value, _) in plans.items():
            if value is not None:
                await producer.send(topic, value, key=key, partition=partition_of(key, target))
        await producer.flush()  # every new copy is in before an old one goes
        for key, (_, stale) in plans.items():
            for partition in stale:
                await producer.send(topic, None, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    live = sum(1 for copies in last.values() if any(v is not None for v in copies.values()))
    moved = sum(1 for value, _ in plans.values() if value is not None)
    return live, moved


async def _last_records(
    bootstrap: str, topic: str, partitions: int
) -> dict[bytes, dict[int, bytes | None]]:
    """Each key's last record in each of ``topic``'s partitions, read up to its end now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        last: dict[bytes, dict[int, bytes | None]] = {}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=FETCH_RECORDS)
            for tp, records in batches.items():
                for record in records:
                    if record.key is not None and record.offset < ends[tp]:
                        last.setdefault(record.key, {})[tp.partition] = record.value
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return last
    finally:
        await consumer.stop()
