"""The send log's rules: joining events to entries, queries, pages across partitions, retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import codec
from app.flows import SWEEP_ROWS_PER_TURN, Inbound, Route
from app.flows.sendlog import (
    MAX_EVENT_BYTES,
    MAX_LOG_ROW_BYTES,
    Newest,
    Query,
    QueryError,
    SendLog,
    apply,
    encode_cursor,
    merge,
    parse_query,
)
from app.metrics import Metrics
from tests.fakes.flows import Outbox, scan_of, turns_alongside


def page(entries: list[dict[str, Any]], query: Query) -> tuple[list[dict[str, Any]], bool]:
    """One partition's answer to ``query``, as ``SendLog.answer`` builds it."""
    newest = Newest(query)
    newest.offer(entries)
    return newest.page()


def event(n: int, entry: str, receiver: str = "a@x.example", **fields: Any) -> dict[str, Any]:
    return {
        "eventId": f"e{n}",
        "type": fields.pop("type", "otp.sent"),
        "at": f"2026-12-01T10:00:{n:02d}.000Z",
        "entryId": entry,
        "receiver": receiver,
        "channel": "MAIL",
        "clientId": fields.pop("clientId", "c1"),
        "processInstanceId": fields.pop("processInstanceId", 7),
        "templateName": "otpMail",
        **fields,
    }


def test_events_join_their_entry_in_order_and_once():
    row = apply(None, event(1, "s1"))
    row = apply(row, event(2, "s1", type="otp.attempt_failed", status="invalid"))
    assert apply(row, event(2, "s1", type="otp.attempt_failed")) is None  # redelivered
    row = apply(row, event(3, "s1", type="otp.validated"))
    [entry] = row["entries"].values()
    assert [e["type"] for e in entry["events"]] == [
        "otp.sent",
        "otp.attempt_failed",
        "otp.validated",
    ]
    assert entry["status"] == "validated" and entry["at"] < entry["last"]
    assert apply(row, {**event(4, ""), "entryId": None}) is None  # belongs to no send


def entries(count: int) -> list[dict[str, Any]]:
    row = None
    for n in range(count):
        row = apply(row, event(n, f"s{n}", clientId=f"c{n % 3}"))
    return list(row["entries"].values())


def test_queries_filter_and_page_newest_first():
    all_ = entries(10)
    found, more = page(all_, parse_query({"clientId": "c1", "limit": "2"}))
    assert [e["id"] for e in found] == ["s7", "s4"] and more
    cursor = encode_cursor(found[-1])
    rest, more = page(all_, parse_query({"clientId": "c1", "limit": "2", "cursor": cursor}))
    assert [e["id"] for e in rest] == ["s1"] and not more
    since = parse_query({"since": "2026-12-01T10:00:08Z"})
    assert [e["id"] for e in page(all_, since)[0]] == ["s9", "s8"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"color": "red"}, "color"),
        ({"since": "yesterday"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),  # a digit to str.isdigit, not to int()
        ({"limit": "\u0661\u0662"}, "limit"),  # Arabic-Indic 12: ASCII digits only
        ({"cursor": "%%%"}, "cursor"),
        ({"cursor": "WzFd"}, "cursor"),  # a valid encoding of [1]
        ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "until"),
        ({"receiver": ""}, "receiver"),
        ({"since": "2026-12-01T12:30:60Z"}, "since"),  # a leap second ends a UTC day only
        # valid ISO-8601 times that fall outside years 1-9999 once in UTC
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
    ],
)
def test_bad_queries_name_the_parameter(params: dict[str, str], field: str):
    with pytest.raises(QueryError) as err:
        parse_query(params)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("raw", "utc"),
    [
        ("2026-12-01t10:00:00z", "2026-12-01T10:00:00.000Z"),  # RFC 3339 5.6: any case
        ("2026-12-01T23:59:60Z", "2026-12-02T00:00:00.000Z"),  # a leap second
        ("2017-01-01T00:59:60.5+01:00", "2017-01-01T00:00:00.500Z"),
        ("2026-12-01T10:00:00-00:00", "2026-12-01T10:00:00.000Z"),
    ],
)
def test_every_rfc3339_time_is_a_bound(raw: str, utc: str):
    assert parse_query({"since": raw}).since == utc


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=5))
def test_any_query_string_parses_or_names_a_parameter(params: dict[str, str]):
    try:
        parse_query(params)
    except QueryError as exc:
        assert exc.field in params


@given(
    st.datetimes(
        timezones=st.builds(timezone, st.timedeltas(-timedelta(hours=23), timedelta(hours=23)))
    ),
    st.sampled_from(["since", "until"]),
)
def test_any_iso_time_with_any_offset_parses_or_names_its_parameter(moment, name):
    try:
        parse_query({name: moment.isoformat()})
    except QueryError as exc:
        assert exc.field == name


@given(
    st.lists(st.integers(0, 59), unique=True, max_size=30),
    st.integers(1, 4),
    st.integers(1, 7),
)
def test_pages_merged_across_partitions_walk_every_entry_once(times, partitions, limit):
    everything = [apply(None, event(t, f"s{t}"))["entries"][f"s{t}"] for t in times]
    shards = [
        [e for i, e in enumerate(everything) if i % partitions == p] for p in range(partitions)
    ]
    seen: list[str] = []
    params: dict[str, str] = {"limit": str(limit)}
    for _ in range(len(times) + 2):
        query = parse_query(params)
        items, last = merge((page(shard, query) for shard in shards), limit)
        seen += [e["id"] for e in items]
        if last is None:
            break
        params["cursor"] = encode_cursor(last)
    expected = [e["id"] for e in sorted(everything, key=lambda e: e["last"], reverse=True)]
    assert seen == expected


def test_the_store_answers_its_partition_and_sweeps_old_entries():
    rows: dict[bytes, bytes] = {}
    outbox = Outbox()

    log = SendLog(rows, outbox, Metrics(), scan_of(rows, lambda k: 0 if k == b"a@x.example" else 1))
    for n, receiver in ((1, "a@x.example"), (2, "b@x.example"), (40, "a@x.example")):
        value = codec.dumps(event(n, f"s{n}", receiver))
        log.record(Inbound("events", 0, n, receiver.encode(), value, [], None))
    log.record(Inbound("events", 0, 99, b"x", b"not json", [], None))  # skipped
    query = {"k": "q", "id": "r1", "q": parse_query({}).to_dict()}
    asyncio.run(log.command(Inbound("log-queries", 0, 1, None, codec.dumps(query), [], None)))
    [answer] = outbox.on(Route.TEMPLATE_RESULTS)
    assert [e["id"] for e in answer["body"]["items"]] == ["s40", "s1"]
    sweep = {"k": "x", "cutoff": "2026-12-01T10:00:30.000Z"}
    for partition in (0, 1):
        asyncio.run(log.command(Inbound("q", partition, 2, None, codec.dumps(sweep), [], None)))
    assert list(rows) == [b"a@x.example"]
    assert list(codec.loads(rows[b"a@x.example"])["entries"]) == ["s40"]


def test_a_query_over_a_whole_partition_lets_the_streams_run_while_it_reads():
    """An operator's query without a receiver reads every row of a partition; it is paced like
    a sweep, so a large log does not hold the worker's requests meanwhile."""
    rows: dict[bytes, bytes] = {}
    outbox = Outbox()
    log = SendLog(rows, outbox, Metrics(), scan_of(rows))
    for n in range(5 * SWEEP_ROWS_PER_TURN):
        receiver = f"r{n}@x.example"
        value = codec.dumps(event(n % 60, f"s{n}", receiver, clientId=f"c{n % 7}"))
        log.record(Inbound("events", 0, n, receiver.encode(), value, [], None))
    query = {"k": "q", "id": "r1", "q": parse_query({"clientId": "c3", "limit": "5"}).to_dict()}
    command = Inbound("log-queries", 0, 1, None, codec.dumps(query), [], None)
    _, turns = asyncio.run(turns_alongside(log.command(command)))
    [answer] = outbox.on(Route.TEMPLATE_RESULTS)
    entries = [codec.loads(raw)["entries"] for raw in rows.values()]
    expected = sorted(
        (e for row in entries for e in row.values() if e["clientId"] == "c3"),
        key=lambda e: (e["last"], e["id"]),
        reverse=True,
    )
    assert answer["body"]["items"] == expected[:5]
    assert answer["body"]["more"] is True
    assert turns >= 5


def test_a_sweep_over_many_chunks_deletes_every_old_row_and_skips_rows_not_of_the_log():
    rows: dict[bytes, bytes] = {}
    log = SendLog(rows, Outbox(), Metrics(), scan_of(rows))
    for n in range(3 * SWEEP_ROWS_PER_TURN):
        receiver = f"r{n:04d}@x.example"
        value = codec.dumps(event(10 if n % 2 else 50, f"s{n}", receiver))
        log.record(Inbound("events", 0, n, receiver.encode(), value, [], None))
    rows[b"r0100-broken"] = b"not json"
    rows[b"r0101-not-a-row"] = b"[1, 2]"
    sweep = {"k": "x", "cutoff": "2026-12-01T10:00:30.000Z"}
    asyncio.run(log.command(Inbound("q", 0, 1, None, codec.dumps(sweep), [], None)))
    kept = {f"r{n:04d}@x.example".encode() for n in range(0, 3 * SWEEP_ROWS_PER_TURN, 2)}
    assert set(rows) == kept | {b"r0100-broken", b"r0101-not-a-row"}


def test_a_sweep_loses_nothing_recorded_while_it_pauses():
    """The delivery events go on being recorded while a sweep pauses between chunks; a row the
    sweep writes back must be the row as it is then, with what was recorded meanwhile."""
    rows: dict[bytes, bytes] = {}
    log = SendLog(rows, Outbox(), Metrics(), scan_of(rows))
    receivers = [f"r{n:04d}@x.example" for n in range(3 * SWEEP_ROWS_PER_TURN)]
    for n, receiver in enumerate(receivers):
        for at, send in ((10, f"old{n}"), (50, f"kept{n}")):
            value = codec.dumps(event(at, send, receiver))
            log.record(Inbound("events", 0, n, receiver.encode(), value, [], None))

    async def record_late_sends() -> None:  # runs in the sweep's first pause
        for n, receiver in enumerate(receivers):
            value = codec.dumps(event(55, f"late{n}", receiver))
            log.record(Inbound("events", 0, 10_000 + n, receiver.encode(), value, [], None))

    async def sweep_while_recording() -> None:
        sweep = {"k": "x", "cutoff": "2026-12-01T10:00:30.000Z"}
        command = log.command(Inbound("q", 0, 1, None, codec.dumps(sweep), [], None))
        await asyncio.gather(command, record_late_sends())

    asyncio.run(sweep_while_recording())
    for n, receiver in enumerate(receivers):
        entries = codec.loads(rows[receiver.encode()])["entries"]
        assert set(entries) == {f"kept{n}", f"late{n}"}, receiver


@pytest.mark.parametrize(
    "value",
    [
        b"[]",
        b"null",
        b"7",
        codec.dumps({**event(10, "s1"), "at": 0}),  # a number where the time belongs
        codec.dumps({**event(10, "s1"), "eventId": None}),
        codec.dumps({**event(10, "s1"), "type": ["otp.sent"]}),
    ],
)
def test_an_event_not_of_ours_is_skipped_and_queries_and_sweeps_go_on(value: bytes):
    rows: dict[bytes, bytes] = {}
    outbox = Outbox()
    log = SendLog(rows, outbox, Metrics(), scan_of(rows))
    log.record(Inbound("events", 0, 1, b"a@x.example", codec.dumps(event(50, "s0")), [], None))
    log.record(Inbound("events", 0, 2, b"a@x.example", value, [], None))
    assert [e["id"] for e in codec.loads(rows[b"a@x.example"])["entries"].values()] == ["s0"]
    query = {"k": "q", "id": "r1", "q": parse_query({}).to_dict()}
    asyncio.run(log.command(Inbound("q", 0, 1, None, codec.dumps(query), [], None)))
    assert [i["id"] for i in codec.loads(outbox.sent[-1][2])["body"]["items"]] == ["s0"]


def test_a_sweep_whose_cutoff_is_not_a_time_deletes_nothing():
    rows: dict[bytes, bytes] = {}
    log = SendLog(rows, Outbox(), Metrics(), scan_of(rows))
    log.record(Inbound("events", 0, 1, b"a@x.example", codec.dumps(event(50, "s0")), [], None))
    sweep = {"k": "x", "cutoff": "~"}  # sorts after every ISO time
    asyncio.run(log.command(Inbound("q", 0, 1, None, codec.dumps(sweep), [], None)))
    assert b"a@x.example" in rows


def test_a_receiver_sent_to_all_day_keeps_a_row_of_bounded_size_with_its_newest_sends():
    rows: dict[bytes, bytes] = {}
    log = SendLog(rows, Outbox(), Metrics(), scan_of(rows))
    for n in range(600):
        value = codec.dumps(
            {
                **event(n % 60, f"s{n:04d}"),
                "at": f"2026-12-01T{n // 60:02d}:{n % 60:02d}:00.000Z",
                "eventId": f"e{n}",
                "error": "x" * 3000,
            }
        )
        log.record(Inbound("events", 0, n, b"a@x.example", value, [], None))
    raw = rows[b"a@x.example"]
    assert len(raw) <= MAX_LOG_ROW_BYTES
    kept = sorted(codec.loads(raw)["entries"])
    assert kept[-1] == "s0599" and len(kept) > 20


def test_an_event_over_its_bound_is_skipped():
    rows: dict[bytes, bytes] = {}
    log = SendLog(rows, Outbox(), Metrics(), scan_of(rows))
    value = codec.dumps({**event(1, "s1"), "pad": "x" * MAX_EVENT_BYTES})
    log.record(Inbound("events", 0, 1, b"a@x.example", value, [], None))
    assert rows == {}


def test_a_sweep_never_deletes_what_the_retention_keeps():
    """A sweep command from anyone with produce rights on log-queries asked for a cutoff of
    9999-12-31 and deleted every entry of the partition; the cutoff is now clamped to now
    minus the retention."""
    rows: dict[bytes, bytes] = {}
    now = 1796121000.0  # 2026-12-01T10:30:00Z
    log = SendLog(rows, Outbox(), Metrics(), scan_of(rows), 3600, lambda: now)
    log.record(Inbound("events", 0, 1, b"a@x.example", codec.dumps(event(50, "s0")), [], None))
    sweep = {"k": "x", "cutoff": "9999-12-31T23:59:59Z"}
    asyncio.run(log.command(Inbound("q", 0, 1, None, codec.dumps(sweep), [], None)))
    assert list(codec.loads(rows[b"a@x.example"])["entries"]) == ["s0"]
    now += 3600
    asyncio.run(log.command(Inbound("q", 0, 2, None, codec.dumps(sweep), [], None)))
    assert b"a@x.example" not in rows  # past the retention: swept as before


@pytest.mark.parametrize(
    "q",
    [
        {"filters": [["channel", "MAIL"]] * 10_000},
        {"filters": [["channel", "MAIL"], ["channel", "SMS"]]},
        {"filters": [["status", "sent"]]},
        {"filters": [["channel", 7]]},
        {"filters": [["channel", "x" * 321]]},
        {"filters": "channel=MAIL"},
        {"limit": 10**9},
        {"limit": "5"},
        {"limit": True},
        {"since": 5},
        {"until": "x" * 100_000},
        {"cursor": [1, 2]},
        {"cursor": "abc"},
        [],
    ],
)
def test_a_query_off_the_topic_is_held_to_the_rules_of_a_url(q: Any):
    """log-queries is a plain topic: a query written there by hand is checked as a URL's
    parameters are, and refused whole (ten thousand filters held the stream 0.5 s)."""
    rows: dict[bytes, bytes] = {}
    outbox = Outbox()
    log = SendLog(rows, outbox, Metrics(), scan_of(rows))
    for n in range(3):
        value = codec.dumps(event(n, f"s{n}"))
        log.record(Inbound("events", 0, n, b"a@x.example", value, [], None))
    forged = {"k": "q", "id": "r1", "q": q}
    asyncio.run(log.command(Inbound("q", 0, 1, None, codec.dumps(forged), [], None)))
    assert not outbox.on(Route.TEMPLATE_RESULTS)
    good = {"k": "q", "id": "r2", "q": parse_query({"channel": "MAIL", "limit": "2"}).to_dict()}
    asyncio.run(log.command(Inbound("q", 0, 2, None, codec.dumps(good), [], None)))
    [answer] = outbox.on(Route.TEMPLATE_RESULTS)
    assert [e["id"] for e in answer["body"]["items"]] == ["s2", "s1"]
