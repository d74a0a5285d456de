"""The template lifecycle's rules (``app.flows.templates``): drafts, publish, history, restore,
the history's bounds, and typed parameters (``app.core.templates``). Pure: no Kafka, no HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from app import codec
from app.core import templates as model
from app.flows.templates import (
    DRAFT_FIELD,
    HISTORY_FIELD,
    HistoryLimits,
    answer,
    apply_command,
    public,
    revision,
    row_etag,
    versions,
)

SMS = {
    "name": "otpSms",
    "language": "en",
    "type": "SMS",
    "subject": None,
    "body": "Code [(${otpValue})]",
    "params": [],
    "context": [],
    "active": True,
    "strategyType": None,
    "forwardOnKafka": False,
}


def run(
    current: dict[str, Any] | None, op: str, limits: HistoryLimits | None = None, **fields: Any
) -> tuple[int, dict[str, Any] | None]:
    command = {"op": op, "key": "otpSms:en", "by": "editor", **fields}
    if limits is None:
        return apply_command(current, command)
    return apply_command(current, command, limits)


def created() -> dict[str, Any]:
    status, row = run(None, "create", template=SMS)
    assert status == 201 and row is not None
    return row


def test_a_write_if_match_goes_ahead_only_on_the_row_it_read() -> None:
    v1 = created()
    read = row_etag(v1)
    changed = {**SMS, "body": "Changed [(${otpValue})]"}
    status, drafted = run(v1, "save_draft", template=changed, ifMatch=[read])
    assert status == 200 and drafted is not None and row_etag(drafted) != read
    # another editor read the row before that draft: each of their writes is refused
    for op, fields in [
        ("replace", {"template": SMS}),
        ("save_draft", {"template": SMS}),  # the draft saved first is not overwritten
        ("discard_draft", {}),
        ("delete", {}),
        ("publish", {}),  # nor published unseen
        ("restore", {"version": 1}),
    ]:
        assert run(drafted, op, ifMatch=[read], **fields) == (412, drafted), op
    assert run(drafted, "publish", ifMatch=['"x"', row_etag(drafted)])[0] == 200  # any tag
    assert run(drafted, "delete", ifMatch="*")[0] == 204
    assert run(drafted, "versions", ifMatch=[read])[0] == 200  # reads are not preconditioned
    # a write that would fail anyway answers as it would, whatever If-Match says (RFC 9110
    # 13.2.1): a missing template, draft or version, no draft to publish
    assert run(None, "delete", ifMatch=[read]) == (404, None)
    assert run(v1, "discard_draft", ifMatch=['"stale"'])[0] == 404
    assert run(v1, "publish", ifMatch=['"stale"'])[0] == 409
    assert run(v1, "restore", version=9, ifMatch=['"stale"'])[0] == 404
    assert run(None, "replace", template=SMS, ifMatch="*") == (404, None)
    with pytest.raises(ValueError):
        run(drafted, "delete", ifMatch=2)


def test_a_template_created_again_after_a_delete_has_other_etags() -> None:
    """Its revisions count from 1 again: only its creation time tells it from the one that
    was deleted, and a tag read before the delete must not match it."""
    first = created()
    status, again = run(None, "create", template=SMS)
    again = {**(again or {}), "createdAt": "2099-01-01T00:00:00.000Z"}
    assert status == 201 and revision(again) == revision(first) == 1
    assert row_etag(again) != row_etag(first)
    assert run(again, "delete", ifMatch=[row_etag(first)]) == (412, again)


def test_a_change_keeps_the_previous_version_with_who_and_what() -> None:
    v1 = created()
    status, v2 = run(v1, "replace", template={**SMS, "body": "Your code [(${otpValue})]"})
    assert status == 200 and v2 is not None and v2["version"] == 2
    listed = versions(v2)
    assert [v["version"] for v in listed] == [2, 1]
    assert listed[0] == {
        "version": 2,
        "updatedAt": v2["updatedAt"],
        "changedBy": "editor",
        "summary": "body changed",
        "current": True,
    }
    assert listed[1]["summary"] == "created" and listed[1]["current"] is False
    one = answer(200, v2, {"op": "version", "version": 1})["body"]
    assert one["body"] == SMS["body"] and one["version"] == 1 and one["changedBy"] == "editor"


def test_a_draft_does_not_change_what_is_sent_until_published() -> None:
    v1 = created()
    draft_body = {**SMS, "body": "Draft [(${otpValue})]"}
    status, row = run(v1, "save_draft", template=draft_body)
    assert status == 200 and row is not None
    assert public(row) == public(v1), "the published version is untouched"
    assert row[DRAFT_FIELD]["body"] == "Draft [(${otpValue})]"
    assert row[DRAFT_FIELD]["baseVersion"] == 1 and row[DRAFT_FIELD]["savedBy"] == "editor"
    status, published = run(row, "publish")
    assert status == 200 and published is not None
    assert published["version"] == 2 and published["body"] == "Draft [(${otpValue})]"
    assert DRAFT_FIELD not in published
    assert "savedAt" not in published and "baseVersion" not in published
    assert versions(published)[0]["summary"] == "published draft: body changed"


def test_publish_without_a_draft_is_409_and_changes_nothing() -> None:
    v1 = created()
    assert run(v1, "publish") == (409, v1)
    assert run(None, "publish") == (404, None)
    assert run(v1, "discard_draft") == (404, v1)


def test_discard_draft() -> None:
    _, row = run(created(), "save_draft", template=SMS)
    status, row = run(row, "discard_draft")
    assert status == 204 and row is not None and DRAFT_FIELD not in row and row["version"] == 1


def test_restore_makes_a_new_version_with_the_old_content() -> None:
    v1 = created()
    _, v2 = run(v1, "replace", template={**SMS, "body": "Two [(${otpValue})]", "active": False})
    status, v3 = run(v2, "restore", version=1)
    assert status == 200 and v3 is not None and v3["version"] == 3
    assert v3["body"] == SMS["body"] and v3["active"] is True
    assert versions(v3)[0]["summary"] == "restored version 1"
    assert [v["version"] for v in versions(v3)] == [3, 2, 1]
    assert run(v3, "restore", version=7) == (404, v3)


def test_a_redelivered_command_is_answered_as_the_first_time() -> None:
    v1 = created()
    status, row = run(v1, "save_draft", template=SMS, id="r1")
    assert run(row, "save_draft", template=SMS, id="r1") == (status, row)
    status, published = run(row, "publish", id="r2")
    assert run(published, "publish", id="r2") == (200, published)
    status, restored = run(published, "restore", version=1, id="r3")
    assert run(restored, "restore", version=1, id="r3") == (200, restored)
    assert restored is not None and restored["version"] == 3


def test_history_keeps_the_newest_versions_within_its_bounds() -> None:
    limits = HistoryLimits(versions=3)
    row = created()
    for i in range(10):
        _, row = run(row, "replace", limits, template={**SMS, "body": f"v{i} [(${{otpValue}})]"})
    assert row is not None
    assert [v["version"] for v in versions(row)] == [11, 10, 9, 8]


@given(st.integers(min_value=1, max_value=30), st.integers(min_value=2_000, max_value=20_000))
@example(changes=20, body_chars=3018)  # fitted before its revision field was added: 60,002 bytes
def test_a_row_never_outgrows_a_kafka_record(changes: int, body_chars: int) -> None:
    limits = HistoryLimits(versions=50, max_record_bytes=60_000)
    row = created()
    for i in range(changes):
        body = f"{i} [(${{otpValue}})] " + "x" * body_chars
        _, row = run(row, "replace", limits, template={**SMS, "body": body})
    assert row is not None and row["version"] == changes + 1
    assert len(codec.dumps(row)) <= 60_000 or not row[HISTORY_FIELD]
    assert versions(row)[0]["version"] == changes + 1


def test_reads_do_not_write() -> None:
    v1 = created()
    assert run(v1, "versions") == (200, v1)
    assert run(None, "versions") == (404, None)
    result = answer(200, v1, {"op": "version", "version": 9})
    assert result["status"] == 404 and result["template"] == public(v1)


# --------------------------------------------------------------------------- typed parameters


def check(params: Any) -> list[dict[str, Any]]:
    body = " ".join(f"[(${{{p['key']}}})]" for p in params if isinstance(p, dict) and "key" in p)
    template = model.check_fields(
        {**SMS, "body": body or "x", "params": params},
        default_language="en",
        max_body_chars=10_000,
    )
    return template["params"]


def test_typed_params_are_stored_as_given_and_untyped_ones_unchanged() -> None:
    params = [
        {"key": "amount", "mandatory": True, "type": "NUMBER"},
        {"key": "items", "type": "ARRAY", "item": "STRING"},
        {"key": "name"},
    ]
    assert check(params) == [
        {"key": "amount", "mandatory": True, "type": "NUMBER"},
        {"key": "items", "mandatory": False, "type": "ARRAY", "item": "STRING"},
        {"key": "name", "mandatory": False},
    ]


@pytest.mark.parametrize(
    ("param", "field"),
    [
        ({"key": "a", "type": "DATE"}, "params[0].type"),
        ({"key": "a", "type": "STRING", "item": "STRING"}, "params[0].item"),
        ({"key": "a", "item": "STRING"}, "params[0].item"),
        ({"key": "a", "type": "ARRAY", "item": "DATE"}, "params[0].item"),
        ({"key": "a", "type": 3}, "params[0].type"),
    ],
)
def test_a_bad_type_is_refused_naming_the_field(param: dict[str, Any], field: str) -> None:
    with pytest.raises(model.TemplateInvalid) as caught:
        check([param])
    assert [p.field for p in caught.value.problems] == [field]


@pytest.mark.parametrize(
    ("ptype", "good", "bad"),
    [
        ("STRING", "x", 1),
        ("NUMBER", 1.5, "1.5"),
        ("NUMBER", 2, True),
        ("BOOLEAN", False, "false"),
        ("OBJECT", {"a": 1}, [1]),
        ("ARRAY", [1], {"a": 1}),
    ],
)
def test_mistyped_names_the_parameter(ptype: str, good: Any, bad: Any) -> None:
    params = [{"key": "p", "mandatory": False, "type": ptype}]
    assert model.mistyped(params, {"p": good}) == []
    assert model.mistyped(params, {}) == [] and model.mistyped(params, {"p": None}) == []
    [(key, why)] = model.mistyped(params, {"p": bad})
    assert key == "p" and ptype in why


def test_array_items_are_checked() -> None:
    params = [{"key": "xs", "mandatory": False, "type": "ARRAY", "item": "NUMBER"}]
    assert model.mistyped(params, {"xs": [1, 2.5]}) == []
    assert model.mistyped(params, {"xs": [1, "2"]}) == [("xs", "item 1 must be a NUMBER")]


def test_every_write_counts_a_revision_and_refusals_do_not() -> None:
    row = created()
    assert row["_rev"] == 1
    _, row = run(row, "save_draft", template=SMS)
    _, row = run(row, "discard_draft")
    _, row = run(row, "replace", template=SMS)
    assert row is not None and row["_rev"] == 4 and row["version"] == 2
    assert run(row, "publish") == (409, row)


@pytest.mark.parametrize("language", [False, 0, [], {}])
def test_only_absent_null_or_empty_language_is_the_default(language: Any) -> None:
    with pytest.raises(model.TemplateInvalid) as caught:
        model.check_fields({**SMS, "language": language}, default_language="en", max_body_chars=99)
    assert [p.field for p in caught.value.problems] == ["language"]
    for default in (None, ""):
        template = {**SMS, "language": default}
        assert (
            model.check_fields(template, default_language="de", max_body_chars=99)["language"]
            == "de"
        )


def test_an_older_command_redelivered_after_newer_ones_is_answered_not_applied() -> None:
    """After a crash every command since the last committed offset comes back: publishing a
    draft (A), then saving another (B), then A again must not publish B."""
    _, row = run(created(), "save_draft", template={**SMS, "body": "one [(${otpValue})]"}, id="d1")
    _, row = run(row, "publish", id="A")
    _, row = run(row, "save_draft", template={**SMS, "body": "two [(${otpValue})]"}, id="B")
    assert row is not None
    status, again = run(row, "publish", id="A")
    assert status == 200 and again is row, "answered as the first time, nothing written"
    assert again["version"] == 2 and again[DRAFT_FIELD]["body"] == "two [(${otpValue})]"
    assert run(row, "discard_draft", id="d1") == (204, row)


def test_a_saved_draft_keeps_the_row_within_a_kafka_record() -> None:
    limits = HistoryLimits(versions=50, max_record_bytes=60_000)
    row = created()
    for i in range(10):
        body = f"{i} [(${{otpValue}})] " + "€" * 5_000
        _, row = run(row, "replace", limits, template={**SMS, "body": body})
    _, row = run(row, "save_draft", limits, template={**SMS, "body": "€" * 5_000})
    assert row is not None and len(codec.dumps(row)) <= 60_000
    assert row[DRAFT_FIELD]["body"] == "€" * 5_000 and row["version"] == 11


def test_otp_value_can_only_be_a_string() -> None:
    with pytest.raises(model.TemplateInvalid) as caught:
        check([{"key": "otpValue", "mandatory": True, "type": "NUMBER"}])
    assert [p.field for p in caught.value.problems] == ["params[0].type"]
    assert check([{"key": "otpValue", "type": "STRING"}])[0]["type"] == "STRING"


def test_a_row_written_before_the_request_list_still_answers_its_last_write() -> None:
    row = {**created(), "_request": "old"}
    row.pop("_requests", None)
    assert run(row, "replace", template=SMS, id="old") == (200, row)
    _, newer = run(row, "replace", template=SMS, id="new")
    assert newer is not None and newer["_requests"] == ["old", "new"]


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def write(value: bytes) -> tuple[dict[bytes, bytes], dict[str, Any]]:
    """One command through the writer: (the rows after it, its answer)."""
    import asyncio

    from app.flows import Inbound, Route
    from app.flows.templates import TemplateWriter
    from tests.fakes.flows import Outbox

    rows: dict[bytes, bytes] = {}
    outbox = Outbox()
    writer = TemplateWriter(rows, outbox, default_language="en", max_body_chars=1000)
    asyncio.run(writer.handle(Inbound("c", 0, 1, b"k", value, [], None)))
    (answer,) = outbox.on(Route.TEMPLATE_RESULTS)
    return rows, answer


SMS_TEMPLATE = {"name": "t", "language": "en", "type": "SMS", "body": "[(${otpValue})]"}


@pytest.mark.parametrize(
    "value",
    [
        b"[]",
        b"null",
        b'"x"',
        codec.dumps({"op": "create", "key": ["t:en"], "id": "r1"}),
        # stored, this row could never be answered: its answer nests one level deeper
        codec.dumps(
            {"op": "create", "key": "t:en", "id": "r1", "template": {"context": _deep(250)}}
        ),
        # what the API refuses: a body over the limit (which every worker would compile)...
        codec.dumps(
            {"op": "create", "key": "t:en", "template": {**SMS_TEMPLATE, "body": "x" * 1001}}
        ),
        codec.dumps({"op": "save_draft", "key": "t:en", "template": {**SMS_TEMPLATE, "type": 1}}),
        # ... and a template stored under another one's key
        codec.dumps({"op": "replace", "key": "u:en", "template": SMS_TEMPLATE}),
        codec.dumps({"op": "create", "key": "t:fr", "template": SMS_TEMPLATE}),
    ],
)
def test_a_template_command_not_of_ours_is_answered_400_and_stores_nothing(value: bytes):
    rows, answer = write(value)
    assert answer["status"] == 400 and rows == {}, answer


def test_a_template_command_is_stored_as_the_api_would_store_it() -> None:
    rows, answer = write(codec.dumps({"op": "create", "key": "t:en", "template": SMS_TEMPLATE}))
    assert answer["status"] == 201, answer
    stored = codec.loads(rows[b"t:en"])
    assert stored["body"] == SMS_TEMPLATE["body"] and stored["params"] == []
    assert stored["active"] is True and stored["context"] == []
