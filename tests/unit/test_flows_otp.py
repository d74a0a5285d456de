"""The OTP handlers with a dict for each table, fake channels and a list as the outbox.

Every refusal of the README's contract, for generate and validate, is here; the broker tests
keep what only the broker shows (delivery, ordering, headers, restarts, failover).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from app import codec
from app.channels.base import UnconfiguredChannel, check_phone
from app.core import render
from app.core.otp import OtpPolicy
from app.flows import SWEEP_ROWS_PER_TURN, Inbound, Route, expired_keys
from app.flows.otp import GENERATE, VALIDATE, OtpFlows, OtpLimits
from app.metrics import Metrics
from tests.fakes.flows import (
    Clock,
    FakeChannel,
    Outbox,
    Templates,
    check_mail,
    scan_of,
    turns_alongside,
)

SECRET = b"flow-secret-0123456789"
HEADERS = [("fxContext", b"main"), ("processInstanceUuid", b"u-1")]


class Service:
    """The OTP flows over dicts, with a driver that plays the topics in between."""

    def __init__(self, **limits: Any) -> None:
        self.templates = Templates()
        self.templates.add("otpMail", "MAIL", "<p>[(${otpValue})]</p>", subject="otp")
        self.templates.add("otpSMS", "SMS", "OTP [(${otpValue})]")
        self.mail = FakeChannel(check_mail)
        self.sms = FakeChannel(check_phone)
        self.channels = {"MAIL": self.mail, "SMS": self.sms, "PUSH": UnconfiguredChannel("PUSH")}
        self.otps: dict[bytes, bytes] = {}
        self.receiver_rows: dict[bytes, bytes] = {}
        self.outbox = Outbox()
        self.clock = Clock()
        self.metrics = Metrics()
        self.undecodable: dict[tuple[str, int, int], str] = {}
        self.flows = OtpFlows.build(
            otps=self.otps,
            receiver_rows=self.receiver_rows,
            scan_of=scan_of,
            templates=self.templates,
            channels=self.channels,
            policy=OtpPolicy(max_sends=3, max_attempts=3, ttl_seconds=60),
            secret=SECRET,
            limits=OtpLimits(**limits),
            render_limits=render.RenderLimits(),
            outbox=self.outbox,
            metrics=self.metrics,
            clock=self.clock,
            undecodable=lambda t, p, o: self.undecodable.get((t, p, o)),
        )
        self.offset = 0

    def record(self, value: bytes | None, topic: str, **kw: Any) -> Inbound:
        self.offset += 1
        return Inbound(
            topic=topic,
            partition=0,
            offset=kw.pop("offset", self.offset),
            key=kw.pop("key", None),
            value=value,
            headers=kw.pop("headers", HEADERS),
            timestamp=kw.pop("timestamp", self.clock.now - 0.01),
        )

    async def run(self, kind: str, request: Any, **kw: Any) -> Any:
        """Ingest one request and play every hop; the reply, or None (dead-lettered)."""
        value = request if request is None or isinstance(request, bytes) else codec.dumps(request)
        ingest = self.flows.ingest_generate if kind == GENERATE else self.flows.ingest_validate
        start = len(self.outbox.sent)
        await ingest.handle(self.record(value, "in", **kw))
        pending = self.outbox.sent[start:]
        while pending:
            route, key, value, headers = pending.pop(0)
            start = len(self.outbox.sent)
            record = Inbound("hop", 0, self.offset, key, value, headers, None)
            if route is Route.EVENTS:
                continue
            if route is Route.RECEIVER_COMMANDS:
                await self.flows.receivers.handle(record)
            elif route is Route.OTP_COMMANDS:
                await self.flows.processor.handle(record)
            else:
                return None if route is Route.DLQ else codec.loads(value)
            pending += self.outbox.sent[start:]
        raise AssertionError("no reply")

    async def generate(self, **fields: Any) -> dict[str, Any]:
        request = {
            "processInstanceId": 7,
            "templateName": "otpMail",
            "channel": "MAIL",
            "recipient": "ann@example.com",
            "clientId": "c1",
            **fields,
        }
        return await self.run(GENERATE, request)

    async def validate(self, code: str, **fields: Any) -> dict[str, Any]:
        request = {"processInstanceId": 8, "clientId": "c1", "channel": "MAIL", "otp": code}
        return await self.run(VALIDATE, {**request, **fields})

    def last_code(self, channel: FakeChannel | None = None) -> str:
        body = (channel or self.mail).sent[-1].body
        return re.search(r"(\d{6})", body).group(1)


@pytest.fixture
def svc() -> Service:
    return Service()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- generate ---------------------------------------------------------------------------------


def test_generate_sends_a_code_and_replies_with_the_request_headers(svc: Service):
    reply = run(svc.generate())
    assert reply == {
        "processInstanceId": 7,
        "clientId": "c1",
        "channel": "MAIL",
        "otpSent": True,
        "error": None,
        "expiresAt": "1970-01-12T13:47:40.000Z",
    }
    [(route, key, _, headers)] = [s for s in svc.outbox.sent if s[0] is Route.GENERATE_OUT]
    assert key == b"7" and headers == HEADERS
    [mail] = svc.mail.sent
    assert mail.recipient == "ann@example.com" and mail.subject == "otp"
    code = svc.last_code()
    assert code not in str(svc.otps) and code not in str(svc.outbox.sent)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"templateName": "nope"}, "template 'nope' not found"),
        (
            {"channel": "SMS", "recipient": "+40712345678"},
            "template 'otpMail' is a MAIL template, not SMS",
        ),
        ({"recipient": "not-an-address"}, "recipient must be an e-mail address"),
        (
            {"channel": "PUSH", "templateName": "otpPush", "recipient": "tok"},
            "channel PUSH is not configured on this service",
        ),
        (
            {"channel": "SMS", "templateName": "otpSMS", "recipient": "0712345678"},
            "recipient must be a phone number in E.164 format (+ and 8 to 15 digits)",
        ),
        (
            {"amount": 10, "payee": "ACME"},
            "template 'otpMail' does not show the amount and payee: a payment code must name "
            "the transaction it authorises",
        ),
    ],
)
def test_generate_refusals_store_nothing_and_send_nothing(svc: Service, fields, error):
    svc.templates.add("otpPush", "PUSH", "[(${otpValue})]")
    reply = run(svc.generate(**fields))
    assert reply["otpSent"] is False and reply["error"] == error
    assert not svc.mail.sent and not svc.sms.sent
    stored = codec.loads(svc.otps[b"c1"])
    assert stored["d"] == ""  # the refusal is remembered, no code is kept


def test_inactive_and_missing_parameters(svc: Service):
    svc.templates.add("off", "MAIL", "[(${otpValue})]", subject="s", active=False)
    svc.templates.add(
        "named",
        "MAIL",
        "[(${firstName})] [(${otpValue})]",
        subject="s",
        params=[{"key": "firstName", "mandatory": True}],
    )
    assert run(svc.generate(templateName="off"))["error"] == "template 'off' is inactive"
    assert (
        run(svc.generate(templateName="named", clientId="c2"))["error"]
        == "missing mandatory parameter(s): firstName"
    )
    assert run(svc.generate(templateName="named", clientId="c3", firstName="Ann"))["otpSent"]


def test_a_template_that_no_longer_compiles_is_refused(svc: Service):
    svc.templates.entries[("otpMail", "en")].compiled = None
    assert run(svc.generate())["error"] == "template 'otpMail' does not compile"


def test_language_falls_back_to_the_default(svc: Service):
    svc.templates.add("otpMail", "MAIL", "<p>ro [(${otpValue})]</p>", subject="s", language="ro")
    assert run(svc.generate(language="ro"))["otpSent"]
    assert svc.mail.sent[-1].body.startswith("<p>ro ")
    assert run(svc.generate(language="de", clientId="c2"))["otpSent"]
    assert not svc.mail.sent[-1].body.startswith("<p>ro ")


def test_send_limit_per_client(svc: Service):
    for i in range(3):
        assert run(svc.generate(processInstanceId=i))["otpSent"]
    reply = run(svc.generate(processInstanceId=9))
    assert reply["error"].startswith("too many codes requested: retry in ")


def test_provider_failure_is_the_error_and_keeps_no_code(svc: Service):
    svc.mail.fail = "550 mailbox unavailable"
    reply = run(svc.generate())
    assert reply["error"] == "fake delivery failed: 550 mailbox unavailable"
    assert run(svc.validate("123456"))["error"] == "no code was generated for this client"


def test_render_budget_is_an_error_reply(svc: Service):
    svc.templates.add(
        "loop",
        "MAIL",
        "{% for a in items %}{% for b in items %}x{% endfor %}{% endfor %}[(${otpValue})]",
        subject="s",
    )
    reply = run(svc.generate(templateName="loop", items=list(range(3000))))
    assert reply["otpSent"] is False and "could not be rendered" in reply["error"]


def test_sms_number_is_normalised_and_countries_are_enforced():
    svc = Service(sms_allowed_countries=frozenset({"RO"}))
    sms = {"templateName": "otpSMS", "channel": "SMS"}
    assert run(svc.generate(recipient="0040 712 345 678", **sms))["otpSent"]
    assert svc.sms.sent[-1].recipient == "+40712345678"
    reply = run(svc.generate(recipient="+14155550100", clientId="c2", **sms))
    assert reply["error"] == "SMS to US is not allowed on this service"
    reply = run(svc.generate(recipient="+999123456789", clientId="c3", **sms))
    assert reply["error"] == "recipient is not a phone number of any country"


def test_receiver_limit_holds_whatever_the_client_id(svc: Service):
    answers = [
        run(svc.generate(processInstanceId=i, clientId=f"c{i}", recipient=spelt))
        for i, spelt in enumerate(["ann@example.com", "ANN@example.com", "ann+x@example.com"] * 3)
    ]
    assert sum(a["otpSent"] for a in answers) == 5
    refused = [a["error"] for a in answers if not a["otpSent"]]
    assert all(e.startswith("too many codes sent to this receiver: retry in ") for e in refused)
    assert b"ann" not in b"".join([*svc.receiver_rows, *svc.receiver_rows.values()])


def test_receiver_limit_off():
    svc = Service(max_sends_per_receiver=0)
    for i in range(8):
        assert run(svc.generate(processInstanceId=i, clientId=f"c{i}"))["otpSent"]
    assert not svc.receiver_rows


GENERATE_REQUEST = {
    "processInstanceId": 7,
    "templateName": "otpMail",
    "channel": "MAIL",
    "recipient": "ann@example.com",
    "clientId": "c1",
}


def test_redelivered_generate_is_answered_as_the_first_time(svc: Service):
    request = codec.dumps(GENERATE_REQUEST)
    first = run(svc.run(GENERATE, request, offset=100))
    again = run(svc.run(GENERATE, request, offset=100))
    assert first == again and first["otpSent"] and len(svc.mail.sent) == 1
    refused = run(svc.run(GENERATE, request.replace(b"otpMail", b"nope"), offset=101))
    assert run(svc.run(GENERATE, request.replace(b"otpMail", b"nope"), offset=101)) == refused


def test_a_generate_redelivered_after_its_row_was_lost_sends_the_same_code(svc: Service):
    """The crash window: the mail went out, the row recording it never reached Kafka."""
    request = codec.dumps(GENERATE_REQUEST)
    before = dict(svc.otps)
    run(svc.run(GENERATE, request, offset=100, timestamp=5.0))
    written = dict(svc.otps)
    svc.otps.clear()
    svc.otps.update(before)
    run(svc.run(GENERATE, request, offset=100, timestamp=5.0))
    first, second = svc.mail.sent
    assert svc.last_code() == re.search(r"(\d{6})", first.body).group(1)
    assert first.message_key == second.message_key and first.message_key
    [(key, row)] = svc.otps.items()
    again, original = codec.loads(row), codec.loads(written[key])
    assert again["d"] == original["d"] and len(again["n"]) == len(original["n"]) == 1
    assert run(svc.validate(svc.last_code()))["otpValid"]


def test_each_request_gets_its_own_code(svc: Service):
    request = codec.dumps(GENERATE_REQUEST)
    codes = set()
    for offset in (100, 101, 102):
        run(svc.run(GENERATE, request, offset=offset, timestamp=5.0))
        codes.add(svc.last_code())
    assert len(codes) == 3
    assert len({m.message_key for m in svc.mail.sent}) == 3


def test_the_sweep_counts_the_rows_it_read(svc: Service):
    for client in ("c1", "c2"):
        run(svc.generate(clientId=client, recipient=f"{client}@example.com"))
    assert run(svc.flows.processor.expired_keys()) == []
    assert svc.metrics.otp_rows._value.get() == 2


def test_the_sweep_lets_the_streams_run_while_it_reads():
    """A sweep over many rows hands the loop back between chunks, so requests are answered
    meanwhile (read in one go, 100,000 rows held them for a second, ``bench/sweep.py``)."""
    rows = {f"c{i}".encode(): codec.dumps({"n": i}) for i in range(5 * SWEEP_ROWS_PER_TURN)}
    sweep = expired_keys(scan_of(rows), lambda row: row["n"], lambda n: n % 300 == 0)
    found, turns = run(turns_alongside(sweep))
    assert found == [f"c{i}".encode() for i in range(0, len(rows), 300)]
    assert turns >= 5


# -- bad input ----------------------------------------------------------------------------------


def dead_letters(svc: Service) -> list[tuple[Any, ...]]:
    return [s for s in svc.outbox.sent if s[0] is Route.DLQ]


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"templateName": "otpMail"}', None])
def test_unreadable_requests_are_dead_lettered_with_their_headers(svc: Service, raw):
    assert run(svc.run(GENERATE, raw)) is None
    [(_, _, value, headers)] = dead_letters(svc)
    assert headers[: len(HEADERS)] == HEADERS
    names = [name for name, _ in headers]
    assert "x-dlq-reason" in names and "x-dlq-source" in names


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"channel": "FAX"}, "channel: must be one of MAIL, SMS, PUSH"),
        ({"clientId": " c1"}, "clientId: has leading or trailing whitespace"),
        (
            {"data": {"clientId": "c2"}},
            "data.clientId: differs from clientId: give the clientId once",
        ),
        ({"otpValue": "123456"}, "otpValue: is reserved: the service generates the code"),
        ({"language": "not a tag"}, "language: must be a language tag such as 'en' or 'pt-BR'"),
        ({"amount": 5}, "payee: is required when amount or payee is given"),
        ({"recipient": ""}, "recipient: is required (a non-empty string)"),
    ],
)
def test_malformed_requests_with_a_process_instance_id_get_an_error_reply(svc, fields, error):
    reply = run(svc.generate(**fields))
    assert reply["otpSent"] is False and reply["error"] == error


def test_oversized_request_is_answered():
    svc = Service(max_request_bytes=1024)
    reply = run(svc.generate(pad="x" * 2000))
    assert reply["otpSent"] is False and "over the 1024-byte limit" in reply["error"]


def test_undecodable_record_is_dead_lettered(svc: Service):
    svc.undecodable[("in", 0, 1)] = "header 0 name '\\xff' is not valid UTF-8"
    request = {
        "processInstanceId": 7,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": "a@example.com",
        "clientId": "c1",
    }
    assert run(svc.run(GENERATE, request)) is None
    [(_, _, _, headers)] = dead_letters(svc)
    assert dict(headers)["x-dlq-reason"].startswith(b"undecodable record: header 0")


def test_a_dead_letter_too_large_to_copy_is_a_stub(svc: Service):
    huge = b"x" * 1_000_000
    run(svc.run(GENERATE, huge))
    [(_, key, value, headers)] = dead_letters(svc)
    stub = codec.loads(value)
    assert key is None and stub["dlqStub"] is True and stub["size"] > 1_000_000
    assert dict(headers)["x-dlq-size"] == str(stub["size"]).encode()


# -- validate -----------------------------------------------------------------------------------


def test_validate_right_code_once(svc: Service):
    run(svc.generate())
    code = svc.last_code()
    assert run(svc.validate(code)) == {
        "processInstanceId": 8,
        "clientId": "c1",
        "channel": "MAIL",
        "otpValid": True,
        "error": None,
        "attemptsRemaining": 0,  # consumed: no tries left, the code no longer lives
        "expiresAt": None,
    }
    assert run(svc.validate(code))["error"] == "code already used"


def test_replies_say_when_the_code_expires_and_how_many_tries_are_left(svc: Service):
    generated = run(svc.generate())
    assert generated["expiresAt"] == "1970-01-12T13:47:40.000Z"  # clock + 60 s ttl
    code = svc.last_code()
    wrong = run(svc.validate("000000" if code != "000000" else "111111"))
    assert wrong["attemptsRemaining"] == 2 and wrong["expiresAt"] == generated["expiresAt"]
    svc.clock.now += 61
    expired = run(svc.validate(code))
    assert expired["error"] == "code expired" and expired["expiresAt"] is None
    assert run(svc.validate("1", clientId="nobody"))["attemptsRemaining"] is None


def test_a_redelivered_validate_reports_the_facts_of_its_first_reply(svc: Service):
    run(svc.generate())
    code = svc.last_code()
    wrong = "000000" if code != "000000" else "111111"
    request = {"processInstanceId": 8, "clientId": "c1", "channel": "MAIL", "otp": wrong}
    first = run(svc.run(VALIDATE, request, offset=900))
    run(svc.validate(wrong))  # a later wrong try changes the count
    assert run(svc.run(VALIDATE, request, offset=900)) == first
    assert first["attemptsRemaining"] == 2


def test_validate_refusals(svc: Service):
    assert run(svc.validate("123456"))["error"] == "no code was generated for this client"
    run(svc.generate())
    code = svc.last_code()
    wrong = "000000" if code != "000000" else "111111"
    assert run(svc.validate(wrong))["error"] == "invalid code"
    assert run(svc.validate(code, channel="SMS"))["error"] == "invalid code"
    assert run(svc.validate(wrong))["error"] == (
        "too many failed attempts: the code is locked, generate a new one"
    )
    assert run(svc.validate(code))["otpValid"] is False


def test_validate_expired(svc: Service):
    run(svc.generate())
    code = svc.last_code()
    svc.clock.now += 61
    assert run(svc.validate(code))["error"] == "code expired"


def test_validate_payment_code(svc: Service):
    svc.templates.add(
        "pay", "MAIL", "<p>[(${amount})] [(${payee})] [(${otpValue})]</p>", subject="s"
    )
    run(svc.generate(templateName="pay", amount="12.50", payee="ACME"))
    code = svc.last_code()
    assert "12.5 ACME" in svc.mail.sent[-1].body
    assert run(svc.validate(code, amount="12.51", payee="ACME"))["error"] == (
        "code does not match the transaction"
    )
    assert run(svc.validate(code))["error"] == "code does not match the transaction"
    assert run(svc.validate(code, amount=12.5, payee="ACME"))["otpValid"] is True


def test_malformed_validate(svc: Service):
    reply = run(svc.validate(""))
    assert reply["otpValid"] is False and reply["error"] == "otp: is required (a string)"


def test_expire_deletes_only_after_the_window(svc: Service):
    run(svc.generate())
    processor = svc.flows.processor
    assert run(processor.expired_keys()) == []
    svc.clock.now += 60 + 600
    assert run(processor.expired_keys()) == [b"c1"]
    run(processor.expire(b"c1"))
    assert b"c1" not in svc.otps


def test_latency_is_observed_in_seconds(svc: Service):
    run(svc.generate())
    samples = svc.metrics.registry.get_sample_value(
        "otp_processing_seconds_sum", {"kind": "generate"}
    )
    assert samples is not None and 0 <= samples < 1


def test_receiver_rows_are_swept_after_the_window(svc: Service):
    run(svc.generate())
    counter = svc.flows.receivers
    [key] = list(svc.receiver_rows)
    assert run(counter.expired_keys()) == []
    svc.receiver_rows[b"broken"] = b"not json"  # left alone, never a crash
    svc.receiver_rows[b"odd"] = b'{"n": ["soon"]}'  # JSON, but not a quota: left alone too
    svc.clock.now += 601
    assert run(counter.expired_keys()) == [key]
    run(counter.handle(Inbound("hop", 0, 1, key, b'{"k": "x"}', [], None)))
    assert key not in svc.receiver_rows


# -- operator commands (the HTTP API's status and cancel) -----------------------------------


def operator(svc: Service, kind: str, client: str = "c1") -> dict[str, Any]:
    start = len(svc.outbox.sent)
    command = codec.dumps({"k": kind, "id": "req-1"})
    run(svc.flows.processor.handle(Inbound("otp-commands", 0, 1, client.encode(), command, [])))
    [(route, _, value, _)] = svc.outbox.sent[start:]
    assert route is Route.TEMPLATE_RESULTS
    return codec.loads(value)


def test_status_shows_the_code_without_the_code(svc: Service):
    assert operator(svc, "s") == {"id": "req-1", "status": 404, "body": None}
    run(svc.generate())
    result = operator(svc, "s")
    assert result["status"] == 200
    body = result["body"]
    assert body["status"] == "pending" and body["receiver"] == "a***@example.com"
    assert body["attempts"] == 0 and body["attemptsRemaining"] == 3 and body["sendsInWindow"] == 1
    assert body["expiresAt"] == "1970-01-12T13:47:40.000Z" and body["clientId"] == "c1"
    assert svc.last_code() not in str(result) and "ann@" not in str(result)


def test_cancel_makes_later_validates_answer_code_canceled(svc: Service):
    run(svc.generate())
    code = svc.last_code()
    assert operator(svc, "c")["body"]["status"] == "canceled"
    reply = run(svc.validate(code))
    assert reply["otpValid"] is False and reply["error"] == "code canceled"
    again = operator(svc, "c")
    assert again["status"] == 409 and again["body"]["status"] == "canceled"
    svc.clock.now += 61
    assert operator(svc, "s")["body"]["status"] == "canceled"


def test_status_names_each_end_of_a_code(svc: Service):
    run(svc.generate())
    run(svc.validate(svc.last_code()))
    assert operator(svc, "s")["body"]["status"] == "approved"
    run(svc.generate())
    for _ in range(3):
        run(svc.validate("000000" if svc.last_code() != "000000" else "111111"))
    assert operator(svc, "s")["body"]["status"] == "max_attempts_reached"
    run(svc.generate(clientId="c2"))
    svc.clock.now += 61
    assert operator(svc, "s", "c2")["body"]["status"] == "expired"
    assert operator(svc, "c", "c2")["status"] == 409


def test_a_parameter_of_the_wrong_type_is_refused_naming_it(svc: Service):
    svc.templates.add(
        "typed",
        "MAIL",
        "[(${age})] [(${otpValue})]",
        subject="s",
        params=[{"key": "age", "mandatory": True, "type": "NUMBER"}],
    )
    reply = run(svc.generate(templateName="typed", clientId="c4", age="ten"))
    assert reply["otpSent"] is False
    assert reply["error"] == "parameter 'age' must be a NUMBER"
    assert not svc.mail.sent
    assert run(svc.generate(templateName="typed", clientId="c5", age=10))["otpSent"]


NOT_OBJECTS = [b"[]", b"null", b"1", b'"x"', b'{"k":"g","r":[1]}', b'{"k":"v","r":"x"}']


@pytest.mark.parametrize("value", NOT_OBJECTS)
@pytest.mark.parametrize("hop", ["receivers", "processor"])
def test_an_internal_command_that_is_not_ours_is_dead_lettered(svc: Service, hop, value):
    """Anyone who can write to the internal topics can write this; the handler must answer it
    (here: a dead letter, as it names no request) and return, so its offset moves on."""
    handler = getattr(svc.flows, hop)
    run(handler.handle(svc.record(value, "hop", key=b"c1")))
    assert [s[0] for s in svc.outbox.sent] == [Route.DLQ]
    assert svc.otps == {} and svc.receiver_rows == {}


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        # unanswerable: no reply can carry a processInstanceId this long
        (codec.dumps({"processInstanceId": "p" * 201, "clientId": "c1", "otp": "709960"}), "***"),
        (b'{"otp": "709960", "clientId": ', None),  # not JSON: withheld, not copied
    ],
)
def test_a_dead_lettered_validate_request_never_carries_its_code(svc: Service, value, kept):
    """The DLQ is kept long and read by people; the code in it may still be right."""
    run(svc.flows.ingest_validate.handle(svc.record(value, "validate-in")))
    [(_, _, copied, _)] = dead_letters(svc)
    assert b"709960" not in copied
    letter = codec.loads(copied)
    if kept is None:
        assert letter["dlqStub"] is True and letter["size"] == len(value)
    else:
        assert letter["otp"] == kept and letter["clientId"] == "c1"


def test_a_validate_command_that_fails_is_dead_lettered_without_its_code(svc: Service):
    command = {"k": "v", "r": {"client_id": "c1", "otp": "709960"}}  # no reply possible
    run(svc.flows.processor.handle(svc.record(codec.dumps(command), "otp-commands", key=b"c1")))
    [(_, _, copied, _)] = dead_letters(svc)
    assert b"709960" not in copied and codec.loads(copied)["r"]["otp"] == "***"


def test_a_command_of_an_unknown_kind_is_dead_lettered(svc: Service):
    run(svc.flows.processor.handle(svc.record(b'{"k": "zz"}', "otp-commands", key=b"c1")))
    [(_, _, _, headers)] = dead_letters(svc)
    assert dict(headers)["x-dlq-reason"] == b"unknown command kind 'zz'"


def test_the_code_the_user_typed_does_not_travel_on_the_internal_topic(svc: Service):
    """otp-commands is kept for the broker's retention and readable by whoever reads the
    topic: a validate crosses it as the code's digest, which needs the HMAC key to check."""
    run(svc.generate())
    code = svc.last_code()
    reply = run(svc.validate(code))
    assert reply["otpValid"] is True
    commands = [v for r, _, v, _ in svc.outbox.sent if r is Route.OTP_COMMANDS]
    validate = codec.loads(commands[-1])
    assert validate["k"] == "v" and code.encode() not in commands[-1]
    assert validate["r"]["otp"] == "" and len(validate["r"]["otp_digest"]) == 64


def test_a_validate_command_of_an_earlier_version_with_the_code_in_clear_still_validates(
    svc: Service,
):
    """Commands written before an upgrade, still on the topic, carry the code itself."""
    run(svc.generate())
    code = svc.last_code()
    request = {"process_instance_id": 8, "client_id": "c1", "channel": "MAIL", "otp": code}
    command = {"k": "v", "r": request, "src": ["in", 0, 999], "ts": None}
    run(svc.flows.processor.handle(svc.record(codec.dumps(command), "otp-commands", key=b"c1")))
    (reply,) = svc.outbox.on(Route.VALIDATE_OUT)[-1:]
    assert reply["otpValid"] is True


@pytest.mark.parametrize("ts", ["x", [1], True, -5, 1e30])
def test_a_command_whose_receive_time_is_not_a_time_is_answered_once(svc: Service, ts: Any):
    """``ts`` on otp-commands is the ingest's, but anyone who can produce there can write it:
    a value of another type used to fail the reply after the mail was sent, and the engine got
    ``otpSent: true`` and then ``otpSent: false``."""
    request = {
        "process_instance_id": 7,
        "template_name": "otpMail",
        "channel": "MAIL",
        "recipient": "ann@example.com",
        "language": None,
        "client_id": "c1",
        "params": {"clientId": "c1"},
        "transaction": None,
    }
    command = codec.dumps({"k": "g", "r": request, "src": ["in", 0, 1], "ts": ts})
    run(svc.flows.processor.handle(svc.record(command, "otp-commands", key=b"c1")))
    replies = [codec.loads(v) for r, _, v, _ in svc.outbox.sent if r is Route.GENERATE_OUT]
    assert len(svc.mail.sent) == 1
    assert [r["otpSent"] for r in replies] == [True]
    assert not dead_letters(svc)
