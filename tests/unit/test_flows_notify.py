"""The send-notification handlers with a dict for the table, fake channels, a fake store.

Every refusal of the README's notification contract is here; the broker tests keep delivery
through real Kafka, SMTP and S3, restarts and the kill -9.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import codec
from app.attachments import Attachment, AttachmentError, ByteBudget
from app.channels.base import UnconfiguredChannel, check_phone
from app.core import render
from app.flows import Inbound, Route
from app.flows.notify import NotifyFlows, NotifyLimits, sender_refusal
from app.metrics import Metrics
from tests.fakes.flows import Clock, FakeChannel, Outbox, Templates, check_mail, scan_of

HEADERS = [("processInstanceId", b"4242"), ("fxContext", b"main")]
WELCOME = {
    "templateName": "welcomeLetter",
    "channel": "MAIL",
    "language": "en",
    "receivers": ["john.doe@mail.com"],
    "contentParams": {"firstName": "John"},
}
CONTRACT = {
    "templateName": "contractCopy",
    "identifier": "text",
    "language": "en",
    "receivers": ["someone@somewhere.com"],
    "contentParams": {"clientId": "clientId", "firstName": "first", "lastName": "last"},
    "attachments": [{"filename": "contract", "path": "contracts/contract.pdf"}],
}
PDF = b"%PDF-1.4 " + bytes(range(256)) * 40


class Store:
    """Objects by path; ``fetch`` behaves as ``AttachmentStore.fetch`` does."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {"contracts/contract.pdf": PDF}
        self.fetched: list[str] = []

    async def fetch(self, filename: str, path: str, budget: ByteBudget) -> Attachment:
        self.fetched.append(path)
        await asyncio.sleep(0)  # reads of one mail run at once: let the others start
        if path not in self.objects:
            raise AttachmentError(filename, path, "not found")
        data = self.objects[path]
        if len(data) > budget.limit or not budget.take(len(data)):  # as its ContentLength is
            reason = f"larger than {budget.limit} bytes"
            raise AttachmentError(filename, path, reason, len(data) <= budget.limit)
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
        return Attachment(filename, "application/pdf", len(data), encoded)


class Forwarder:
    topic = "external-out"

    def __init__(self) -> None:
        self.published: list[tuple[bytes, dict[str, Any], dict[str, Any]]] = []

    async def publish(self, key: bytes, record: dict[str, Any], headers: dict[str, Any]) -> None:
        self.published.append((key, record, headers))


class Service:
    """The notification flow over a dict, with a driver that plays the re-keying hop."""

    def __init__(self, *, store: bool = True, **limits: Any) -> None:
        self.templates = Templates()
        self.templates.add(
            "welcomeLetter",
            "MAIL",
            "<p>Welcome, [(${firstName})]!</p>",
            subject="Welcome [(${firstName})]",
            params=[{"key": "firstName", "mandatory": True}],
        )
        self.templates.add(
            "contractCopy",
            "MAIL",
            "<p>Dear [(${firstName})] [(${lastName})], your contract is attached.</p>",
            subject="Your contract",
            params=[],
        )
        self.templates.add("reminder", "SMS", "Hi [(${firstName})]", params=[])
        self.templates.add(
            "forwarded",
            "MAIL",
            "<p>hi [(${name})]</p>",
            subject="s",
            params=[],
            forwardOnKafka=True,
        )
        self.mail = FakeChannel(check_mail)
        self.sms = FakeChannel(check_phone)
        self.channels = {"MAIL": self.mail, "SMS": self.sms, "PUSH": UnconfiguredChannel("PUSH")}
        self.rows: dict[bytes, bytes] = {}
        self.outbox = Outbox()
        self.clock = Clock()
        self.store = Store() if store else None
        self.forwarder = Forwarder()
        self.undecodable: dict[tuple[str, int, int], str] = {}
        self.limits = NotifyLimits(
            sender_allowlist=("@bank.example", "ceo@other.example"), **limits
        )
        self.flows = NotifyFlows.build(
            rows=self.rows,
            scan_of=scan_of,
            templates=self.templates,
            channels=self.channels,
            forwarder=self.forwarder,
            store=self.store,
            limits=self.limits,
            render_limits=render.RenderLimits(),
            outbox=self.outbox,
            metrics=Metrics(),
            clock=self.clock,
            undecodable=lambda t, p, o: self.undecodable.get((t, p, o)),
            secret=b"s" * 32,
        )
        self.offset = 0
        self.commands: list[Inbound] = []

    async def send(self, request: Any, *, headers: Any = HEADERS, **kw: Any) -> Any:
        """Ingest one request and play the hop; the reply, or None (dead-lettered)."""
        value = request if request is None or isinstance(request, bytes) else codec.dumps(request)
        self.offset += 1
        record = Inbound("notify-in", 0, self.offset, None, value, headers, self.clock.now)
        start = len(self.outbox.sent)
        await self.flows.ingest.handle(record)
        [(route, key, command, hdrs)] = self.produced(start)
        if route is Route.DLQ:
            return None
        if route is Route.NOTIFY_OUT:
            assert hdrs == headers
            return codec.loads(command)
        assert route is Route.NOTIFY_COMMANDS
        hop = Inbound("notify-commands", 0, self.offset, key, command, hdrs, None)
        self.commands.append(hop)
        return await self.play(hop)

    def produced(self, start: int) -> list[Any]:
        """What a handler produced since ``start``, delivery events aside (``self.events``)."""
        return [sent for sent in self.outbox.sent[start:] if sent[0] is not Route.EVENTS]

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.outbox.on(Route.EVENTS)

    async def play(self, hop: Inbound) -> dict[str, Any]:
        start = len(self.outbox.sent)
        await self.flows.sender.handle(hop)
        [(route, key, value, _)] = self.produced(start)
        assert route is Route.NOTIFY_OUT
        reply = codec.loads(value)
        pid = reply["processInstanceId"]
        assert key == str(pid if pid is not None else reply["identifier"]).encode()
        return reply


@pytest.fixture
def svc() -> Service:
    return Service()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the FlowX examples ---------------------------------------------------------------------


def test_welcome_letter_is_delivered_and_answered_with_flowx_fields(svc: Service):
    reply = run(svc.send(WELCOME))
    assert reply == {
        "identifier": None,
        "templateName": "welcomeLetter",
        "language": "en",
        "channel": "MAIL",
        "receivers": ["john.doe@mail.com"],
        "error": None,
        "processInstanceId": "4242",
        "forwarded": False,
        "results": [{"receiver": "john.doe@mail.com", "sent": True, "error": None}],
    }
    [mail] = svc.mail.sent
    assert mail.recipient == "john.doe@mail.com" and mail.subject == "Welcome John"
    assert mail.body == "<p>Welcome, John!</p>" and mail.attachments == ()
    assert mail.headers == dict(HEADERS)


def test_contract_copy_without_a_channel_uses_the_template_type_and_attaches_the_pdf(
    svc: Service,
):
    reply = run(svc.send(CONTRACT))
    assert reply["channel"] == "MAIL" and reply["identifier"] == "text"
    assert reply["error"] is None and reply["results"][0]["sent"] is True
    [mail] = svc.mail.sent
    [attachment] = mail.attachments
    assert attachment.filename == "contract"
    assert base64.b64decode(attachment.encoded) == PDF


def test_body_process_instance_id_wins_and_identifier_alone_addresses_the_reply(svc: Service):
    assert run(svc.send({**WELCOME, "processInstanceId": 9}))["processInstanceId"] == 9
    reply = run(svc.send({**WELCOME, "identifier": "id-1"}, headers=[]))
    assert reply["processInstanceId"] is None and reply["identifier"] == "id-1"


def test_data_wins_over_content_params_and_language_defaults(svc: Service):
    request = {k: v for k, v in WELCOME.items() if k != "language"}
    reply = run(svc.send({**request, "data": {"firstName": "Ann"}}))
    assert reply["language"] == "en"
    assert svc.mail.sent[0].subject == "Welcome Ann"


def test_receivers_listed_twice_get_one_mail(svc: Service):
    reply = run(svc.send({**WELCOME, "receivers": ["a@x.example", "b@x.example", "a@x.example"]}))
    assert [r["receiver"] for r in reply["results"]] == ["a@x.example", "b@x.example"]
    assert len(svc.mail.sent) == 2


# -- partial failure, redelivery ------------------------------------------------------------


def test_one_refused_receiver_of_three_is_named_and_the_others_get_theirs(svc: Service):
    svc.mail.refused["bad@x.example"] = "recipient refused (550)"
    receivers = ["a@x.example", "bad@x.example", "c@x.example"]
    reply = run(svc.send({**WELCOME, "receivers": receivers}))
    assert reply["results"] == [
        {"receiver": "a@x.example", "sent": True, "error": None},
        {
            "receiver": "bad@x.example",
            "sent": False,
            "error": "fake delivery failed: recipient refused (550)",
        },
        {"receiver": "c@x.example", "sent": True, "error": None},
    ] or sorted(r["receiver"] for r in reply["results"]) == sorted(receivers)
    failed = [r for r in reply["results"] if not r["sent"]]
    assert [r["receiver"] for r in failed] == ["bad@x.example"]
    assert "550" in failed[0]["error"]
    assert reply["error"].startswith("1 of 3 receivers not reached: bad@x.example")
    assert sorted(m.recipient for m in svc.mail.sent) == ["a@x.example", "c@x.example"]


def test_a_redelivered_request_sends_nothing_again_and_replies_the_same(svc: Service):
    first = run(svc.send({**WELCOME, "receivers": ["a@x.example", "b@x.example"]}))
    again = run(svc.play(svc.commands[-1]))
    assert again == first and len(svc.mail.sent) == 2


def test_a_request_cut_short_by_a_crash_sends_only_to_the_receivers_left(svc: Service):
    svc.mail.refused["b@x.example"] = "boom"  # stands for the crash: b never got it
    run(svc.send({**WELCOME, "receivers": ["a@x.example", "b@x.example"]}))
    [key] = svc.rows
    state = codec.loads(svc.rows[key])
    del state["results"]["b@x.example"]
    state["done"] = False
    svc.rows[key] = codec.dumps(state)
    svc.mail.refused.clear()
    reply = run(svc.play(svc.commands[-1]))
    assert [m.recipient for m in svc.mail.sent] == ["a@x.example", "b@x.example"]
    assert all(r["sent"] for r in reply["results"]) and reply["error"] is None


def test_a_receiver_whose_outcome_a_crash_lost_gets_the_same_message_again(svc: Service):
    run(svc.send({**WELCOME, "receivers": ["a@x.example", "b@x.example"]}))
    [key] = svc.rows
    state = codec.loads(svc.rows[key])
    del state["results"]["b@x.example"]  # sent, but the crash came before the row was written
    state["done"] = False
    svc.rows[key] = codec.dumps(state)
    run(svc.play(svc.commands[-1]))
    first_a, first_b, again_b = svc.mail.sent
    assert again_b.recipient == "b@x.example"
    assert again_b.message_key == first_b.message_key != first_a.message_key
    assert (again_b.subject, again_b.body, again_b.text) == (
        first_b.subject,
        first_b.body,
        first_b.text,
    )
    assert re.fullmatch(r"[0-9a-f]{32}", again_b.message_key)


def test_a_new_request_gets_new_message_ids(svc: Service):
    run(svc.send({**WELCOME, "receivers": ["a@x.example"]}))
    run(svc.send({**WELCOME, "receivers": ["a@x.example"]}))
    first, second = svc.mail.sent
    assert first.message_key != second.message_key


def test_rows_are_deleted_after_the_replay_window(svc: Service):
    run(svc.send(WELCOME))
    assert run(svc.flows.sender.expired_keys()) == []
    svc.clock.now += svc.limits.replay_seconds + 1
    [key] = run(svc.flows.sender.expired_keys())
    run(svc.flows.sender.handle(Inbound("c", 0, 99, key, b'{"k":"x"}', [], None)))
    assert svc.rows == {}


def test_a_row_the_sweep_cannot_judge_is_left_alone(svc: Service):
    svc.rows[b"odd"] = b'{"created": "yesterday", "done": true}'
    svc.clock.now += svc.limits.replay_seconds + 1
    assert run(svc.flows.sender.expired_keys()) == []
    assert b"odd" in svc.rows


# -- forward on Kafka -----------------------------------------------------------------------


def test_a_forwarded_template_is_published_not_sent(svc: Service):
    request = {**WELCOME, "templateName": "forwarded", "contentParams": {"name": "Ann"}}
    reply = run(svc.send({**request, "identifier": "i-7"}))
    assert reply["forwarded"] is True and reply["error"] is None and reply["results"] == []
    assert svc.mail.sent == []
    [(key, record, headers)] = svc.forwarder.published
    assert key == b"4242" and headers == dict(HEADERS)
    assert record == {
        "templateName": "forwarded",
        "channel": "MAIL",
        "language": "en",
        "receivers": ["john.doe@mail.com"],
        "subject": "s",
        "body": "<p>hi Ann</p>",
        "text": "hi Ann",
        "attachments": [],
        "identifier": "i-7",
        "processInstanceId": "4242",
    }


# -- refusals --------------------------------------------------------------------------------


def test_the_sender_checked_is_the_sender_sent(svc: Service):
    """Only the allowlist lookup ignores case: a check of a stripped, lowered copy let through
    a sender whose line breaks ended the mail's header, and one the mail could not encode."""
    kelvin = run(svc.send({**WELCOME, "senderEmail": "o\u212a@bank.example"}))
    assert kelvin["error"] == "senderEmail: must be one e-mail address (user@domain)"
    run(svc.send(WELCOME))
    for field, value, error in [
        ("sender_email", "ok@bank.example\r\n\r\n", "senderEmail: must be one e-mail"),
        ("sender_name", "Desk\x00", "senderName: must be a one-line string"),
    ]:
        command = codec.loads(svc.commands[-1].value or b"")
        command["r"] = {**command["r"], "sender_email": "desk@bank.example", field: value}
        svc.offset += 1
        forged = Inbound("notify-commands", 0, svc.offset, b"forged", codec.dumps(command), [])
        reply = run(svc.play(forged))
        assert reply["error"].startswith(error), reply["error"]
    assert len(svc.mail.sent) == 1  # the genuine one


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"templateName": "nope"}, "template 'nope' not found"),
        ({"channel": "SMS"}, "template 'welcomeLetter' is a MAIL template, not SMS"),
        ({"contentParams": {}}, "missing mandatory parameter(s): firstName"),
        ({"receivers": ["a@x.example", "not-an-address"]}, "receivers[1]: recipient must be"),
        ({"senderEmail": "boss@evil.example"}, "senderEmail: is not allowed to send"),
        ({"senderEmail": "not an address"}, "senderEmail: must be one e-mail address"),
        ({"channel": "PUSH"}, "template 'welcomeLetter' is a MAIL template, not PUSH"),
    ],
)
def test_refusals_send_nothing_and_say_why(svc: Service, change: dict[str, Any], error: str):
    reply = run(svc.send({**WELCOME, **change}))
    assert reply["error"].startswith(error), reply["error"]
    assert reply["results"] == [] and svc.mail.sent == []


def test_inactive_template_is_refused(svc: Service):
    svc.templates.entries[("welcomeLetter", "en")].data["active"] = False
    assert run(svc.send(WELCOME))["error"] == "template 'welcomeLetter' is inactive"


def test_allowed_sender_is_used_for_the_mail(svc: Service):
    reply = run(svc.send({**WELCOME, "senderEmail": "Desk@Bank.example", "senderName": "Desk"}))
    assert reply["error"] is None
    assert svc.mail.sent[0].from_email == "Desk@Bank.example"
    assert svc.mail.sent[0].from_name == "Desk"
    assert sender_refusal("ceo@other.example", svc.limits.sender_allowlist) is None
    assert sender_refusal("cfo@other.example", svc.limits.sender_allowlist) is not None


@pytest.mark.parametrize(
    ("attachments", "error"),
    [
        ([{"filename": "c.pdf", "path": "contracts/missing.pdf"}], "attachments: c.pdf"),
        (
            [
                {"filename": "a.pdf", "path": "contracts/contract.pdf"},
                {"filename": "b.pdf", "path": "contracts/contract.pdf"},
            ],
            "attachments: together larger than",
        ),
        (
            [
                {"filename": "a.pdf", "path": "contracts/contract.pdf"},
                {"filename": "b.pdf", "path": "contracts/contract.pdf"},
                {"filename": "c.pdf", "path": "contracts/missing.pdf"},
            ],
            "attachments: c.pdf (contracts/missing.pdf): not found",
        ),
    ],
)
def test_no_mail_goes_out_with_an_attachment_missing(attachments: list[dict[str, str]], error: str):
    svc = Service(attachment_max_bytes=len(PDF) + 10)
    reply = run(svc.send({**CONTRACT, "attachments": attachments}))
    assert reply["error"].startswith(error), reply["error"]
    assert svc.mail.sent == []


def test_the_attachments_of_one_mail_are_read_at_once_and_kept_in_order():
    svc = Service(attachment_max_bytes=3 * len(PDF))
    assert svc.store is not None
    read, started, everyone = svc.store.fetch, [], asyncio.Event()
    finished: list[str] = []

    async def fetch(filename: str, path: str, budget: ByteBudget) -> Attachment:
        started.append(filename)
        if len(started) == 3:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 5)  # one read at a time would time out here
        while len(finished) < 2 - names.index(filename):  # they finish last to first
            await asyncio.sleep(0)
        finished.append(filename)
        return await read(filename, path, budget)

    svc.store.fetch = fetch  # type: ignore[method-assign]
    names = ["a.pdf", "b.pdf", "c.pdf"]
    items = [{"filename": n, "path": "contracts/contract.pdf"} for n in names]
    reply = run(svc.send({**CONTRACT, "attachments": items}))
    assert reply["error"] is None and finished == names[::-1]
    [mail] = svc.mail.sent
    assert [a.filename for a in mail.attachments] == names


def test_one_attachment_too_large_by_itself_is_named_alone():
    svc = Service(attachment_max_bytes=len(PDF) + 10)
    assert svc.store is not None
    svc.store.objects["contracts/big.pdf"] = PDF * 2
    items = [
        {"filename": "a.pdf", "path": "contracts/contract.pdf"},
        {"filename": "big.pdf", "path": "contracts/big.pdf"},
    ]
    reply = run(svc.send({**CONTRACT, "attachments": items}))
    assert reply["error"] == (
        f"attachments: big.pdf (contracts/big.pdf): larger than {len(PDF) + 10} bytes"
    )


def test_the_first_failed_read_stops_the_others():
    svc = Service(attachment_max_bytes=3 * len(PDF))
    assert svc.store is not None
    read, stalled = svc.store.fetch, []

    async def fetch(filename: str, path: str, budget: ByteBudget) -> Attachment:
        if filename == "slow.pdf":
            try:
                await asyncio.Event().wait()  # a store that never answers
            except asyncio.CancelledError:
                stalled.append("cancelled")  # and, stopped, fails its own way: not the answer
                raise AttachmentError(filename, path, "storage connection lost") from None
        return await read(filename, path, budget)

    svc.store.fetch = fetch  # type: ignore[method-assign]
    items = [
        {"filename": "slow.pdf", "path": "contracts/contract.pdf"},
        {"filename": "gone.pdf", "path": "contracts/missing.pdf"},
    ]
    reply = run(asyncio.wait_for(svc.send({**CONTRACT, "attachments": items}), 5))
    assert reply["error"] == "attachments: gone.pdf (contracts/missing.pdf): not found"
    assert stalled == ["cancelled"] and svc.mail.sent == []


def test_every_attachment_read_at_once_has_a_connection_of_the_store():
    from app.attachments import POOL_CONNECTIONS
    from app.flows.notify import ATTACHMENT_READS_PER_REQUEST, ATTACHMENT_REQUESTS_IN_FLIGHT

    assert ATTACHMENT_REQUESTS_IN_FLIGHT * ATTACHMENT_READS_PER_REQUEST <= POOL_CONNECTIONS


def test_attachments_without_a_store_are_refused_naming_them():
    svc = Service(store=False)
    reply = run(svc.send(CONTRACT))
    assert reply["error"] == ("attachments: no file store is configured, cannot attach contract")
    assert svc.mail.sent == []


def test_attachments_on_sms_are_refused(svc: Service):
    request = {**CONTRACT, "templateName": "reminder", "receivers": ["+40712345678"]}
    assert run(svc.send(request))["error"].startswith("attachments: only MAIL")


def test_sms_receivers_are_normalized_and_countries_checked():
    svc = Service(sms_allowed_countries=frozenset({"RO"}))
    request = {"templateName": "reminder", "receivers": ["+40 712 345 678"], "contentParams": {}}
    reply = run(svc.send(request))
    assert reply["channel"] == "SMS" and reply["results"][0]["receiver"] == "+40712345678"
    refused = run(svc.send({**request, "receivers": ["+40712345678", "+14155550123"]}))
    assert refused["error"].startswith("receivers[1]: ") and len(svc.sms.sent) == 1


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (b"not json", "message is not valid JSON"),
        (b"[1, 2]", "message must be a JSON object"),
        ({**WELCOME, "receivers": []}, "receivers: is required"),
        ({**WELCOME, "receivers": "a@x.example"}, "receivers: is required"),
        ({**WELCOME, "receivers": [1]}, "receivers[0]: must be a non-empty string"),
        ({**WELCOME, "channel": "FAX"}, "channel: must be one of MAIL, SMS, PUSH"),
        ({**WELCOME, "templateName": 3}, "templateName: is required"),
        ({**WELCOME, "language": "english!"}, "language: must be a language tag"),
        ({**WELCOME, "contentParams": [1]}, "contentParams: must be a JSON object"),
        (
            {**WELCOME, "attachments": [{"filename": "a/b", "path": "x/y"}]},
            "attachments[0].filename",
        ),
        (
            # a forged log line (text logs) and a forged reply line otherwise
            {**WELCOME, "attachments": [{"filename": "a", "path": "x/y\r\n[INFO] login ok"}]},
            "attachments[0].path: must not contain control characters",
        ),
        ({**WELCOME, "attachments": {"filename": "a"}}, "attachments: must be a list"),
        ({**WELCOME, "identifier": {"a": 1}}, "identifier: must be a string or a number"),
    ],
)
def test_malformed_requests_with_a_process_instance_header_get_an_error_reply(
    svc: Service, request_: Any, error: str
):
    reply = run(svc.send(request_))
    assert reply["error"].startswith(error), reply["error"]
    assert reply["processInstanceId"] == "4242" and reply["results"] == []


def test_too_many_receivers_are_refused():
    svc = Service(max_receivers=2)
    reply = run(svc.send({**WELCOME, "receivers": ["a@x.example", "b@x.example", "c@x.example"]}))
    assert reply["error"] == "receivers: has more than 2 entries"


def test_oversized_requests_are_answered():
    svc = Service(max_request_bytes=1000)
    reply = run(svc.send({**WELCOME, "contentParams": {"firstName": "x" * 2000}}))
    assert "over the 1000-byte limit" in reply["error"]


def test_requests_nobody_can_be_answered_for_are_dead_lettered(svc: Service):
    assert run(svc.send(b"not json", headers=[])) is None
    assert run(svc.send({"receivers": []}, headers=[])) is None
    [(_, _, _, headers)] = [s for s in svc.outbox.sent if s[0] is Route.DLQ][:1]
    assert dict(headers)["x-dlq-reason"] == b"message is not valid JSON"


def test_undecodable_records_are_dead_lettered(svc: Service):
    svc.undecodable[("notify-in", 0, 1)] = "bad header name"
    assert run(svc.send(WELCOME)) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=20,
    ),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "templateName",
                "channel",
                "receivers",
                "language",
                "contentParams",
                "data",
                "attachments",
                "identifier",
                "senderEmail",
                "processInstanceId",
            ]
        ),
        st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=30)
        | st.lists(st.text(max_size=30), max_size=3),
        max_size=6,
    ),
)
def test_any_request_is_answered_or_dead_lettered(body: Any, fields: dict[str, Any]):
    svc = Service()
    request = {**WELCOME, **fields} if isinstance(body, dict) else body
    reply = run(svc.send(codec.dumps(request)))
    assert reply is None or isinstance(reply["error"], str | None)


# -- what a review found -----------------------------------------------------------------------


def test_a_provider_bug_fails_that_receiver_and_the_request_still_finishes(svc: Service):
    original = svc.mail.send

    async def send(notification: Any) -> Any:
        if notification.recipient == "b@x.example":
            raise RuntimeError("client bug")
        return await original(notification)

    svc.mail.send = send  # type: ignore[method-assign]
    reply = run(svc.send({**WELCOME, "receivers": ["a@x.example", "b@x.example"]}))
    assert [(r["receiver"], r["sent"]) for r in reply["results"]] == [
        ("a@x.example", True),
        ("b@x.example", False),
    ]
    [state] = svc.rows.values()
    assert codec.loads(state)["done"] is True


def test_a_request_cut_short_then_refused_keeps_what_was_sent(svc: Service):
    svc.mail.refused["b@x.example"] = "boom"
    run(svc.send({**WELCOME, "receivers": ["a@x.example", "b@x.example"]}))
    [key] = svc.rows
    state = codec.loads(svc.rows[key])
    del state["results"]["b@x.example"]
    state["done"] = False
    svc.rows[key] = codec.dumps(state)
    svc.templates.entries[("welcomeLetter", "en")].data["active"] = False
    before = len(svc.events)
    reply = run(svc.play(svc.commands[-1]))
    assert reply["results"][0] == {"receiver": "a@x.example", "sent": True, "error": None}
    assert reply["results"][1]["sent"] is False
    assert reply["results"][1]["error"] == "template 'welcomeLetter' is inactive"
    failed = [e["receiver"] for e in svc.events[before:] if e["type"] == "notification.failed"]
    assert failed == ["b@x.example"]  # and no "failed" for a, who got it


def test_another_request_at_a_reused_offset_is_not_a_redelivery(svc: Service):
    run(svc.send({**WELCOME, "receivers": ["a@x.example"]}))
    hop = svc.commands[-1]
    other = codec.loads(hop.value)
    other["r"]["receivers"] = ["z@y.example"]
    reply = run(svc.play(Inbound(hop.topic, 0, hop.offset, hop.key, codec.dumps(other), [], None)))
    assert [r["receiver"] for r in reply["results"]] == ["z@y.example"]
    assert [m.recipient for m in svc.mail.sent] == ["a@x.example", "z@y.example"]


def test_logs_count_unreached_receivers_without_naming_them(
    svc: Service, caplog: pytest.LogCaptureFixture
):
    svc.mail.refused["bob.private@x.example"] = "refused"
    with caplog.at_level("INFO"):
        run(svc.send({**WELCOME, "receivers": ["a@x.example", "bob.private@x.example"]}))
    assert "bob.private" not in caplog.text and "1 of 2 not reached" in caplog.text


def test_a_command_with_more_receivers_than_a_request_may_have_sends_nothing(svc: Service):
    """The ingest bounds receivers; a command written straight to the internal topic is bounded
    again, so it cannot hold the loop checking 55,000 addresses against each other."""
    assert run(svc.send(WELCOME))["error"] is None
    command = codec.loads(svc.commands[-1].value)
    command["r"]["receivers"] = [f"r{n}@example.com" for n in range(svc.limits.max_receivers + 1)]
    sent = len(svc.mail.sent)
    hop = Inbound("notify-commands", 0, 99, b"k99", codec.dumps(command), HEADERS, None)
    reply = run(svc.play(hop))
    assert len(svc.mail.sent) == sent
    assert reply is None or reply["error"]
