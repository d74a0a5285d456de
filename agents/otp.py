"""The OTP flows: ingest and re-key requests, then generate / validate / expire per identifier.

``ingest_generate`` and ``ingest_validate`` read the engine's topics (keyed however the engine
likes), refuse what cannot be parsed (error reply if a ``processInstanceId`` is readable, else
dead-letter), and forward the rest to ``otp-commands`` keyed by ``clientId``. ``process_otp``
owns the ``otps`` table: generate and validate for one identifier arrive on one partition, in
order, next to that identifier's row, so the table is only ever changed by its owner.

No handler may crash its agent: an agent that raises stops consuming, and every request after
it would wait forever. Each event is handled inside its own ``try``; the unexpected becomes an
error reply (or a dead-letter record) and the stream goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from agents import KeyedDispatcher, for_each_event
from app import codec, records
from app.channels.base import DeliveryError, Notification
from app.core import otp, receivers, render
from app.core.otp import OtpRecord, Outcome, RateLimited
from app.core.receivers import ReceiverQuota
from app.logs import request_context
from app.records import GenerateRequest, RequestError, ValidateRequest
from app.runtime import fetch
from app.settings import PRODUCER_MAX_REQUEST_BYTES

log = logging.getLogger(__name__)

GENERATE, VALIDATE, EXPIRE = "g", "v", "x"
INTERNAL_ERROR = "internal error while handling the request"
# Requests handled at once by one worker (across identifiers); bounds memory and open sends.
MAX_IN_FLIGHT = 512
# Room left in a producer request for what a dead letter adds around the original record.
DLQ_HEADROOM = 4096


def _source(event: Any) -> list[Any]:
    message = event.message
    return [message.topic, message.partition, message.offset]


def register(ctx: Any) -> dict[str, Any]:
    app, settings, topics, otps = ctx.app, ctx.settings, ctx.topics, ctx.tables.otps
    metrics = ctx.metrics
    source_topic = {GENERATE: settings.topic_generate_in, VALIDATE: settings.topic_validate_in}
    kind_name = {GENERATE: "generate", VALIDATE: "validate"}

    # -- replies and dead letters ------------------------------------------------------------
    async def send_reply(
        kind: str,
        body: dict[str, Any],
        headers: Any,
        received_ms: int | None,
        outcome: str | None = None,
    ) -> None:
        """Keyed by processInstanceId (per-instance order) with every header of the request.

        ``received_ms`` is the request's Kafka timestamp: the latency histogram covers the
        whole path through the service, re-keying hop included.
        """
        topic = topics.generate_out if kind == GENERATE else topics.validate_out
        await topic.send(
            key=str(body["processInstanceId"]).encode(), value=codec.dumps(body), headers=headers
        )
        ok = body["otpSent"] if kind == GENERATE else body["otpValid"]
        if outcome is None:
            outcome = (
                ("sent" if ok else "not_sent")
                if kind == GENERATE
                else ("valid" if ok else "invalid")
            )
        metrics.requests.labels(source_topic[kind], outcome).inc()
        if received_ms:
            metrics.latency.labels(kind_name[kind]).observe(
                max(0.0, time.time() - received_ms / 1000)
            )
        log.info(
            "%s %s%s",
            "generate" if kind == GENERATE else "validate",
            "ok" if ok else "refused: ",
            body["error"] or "",
            extra=request_context(
                body["processInstanceId"], body["clientId"], channel=body["channel"]
            ),
        )

    async def error_reply(
        kind: str,
        pid: Any,
        client: Any,
        channel: Any,
        error: str,
        headers: Any,
        received_ms: int | None,
        outcome: str,
    ) -> None:
        make = records.generate_reply if kind == GENERATE else records.validate_reply
        await send_reply(
            kind, make(pid, client, channel, False, error), headers, received_ms, outcome
        )

    async def dead_letter(event: Any, reason: str, category: str = "internal") -> None:
        """Copy the record as it came (key, value, every header) with why and from where.

        Never raises: a record too large to copy (or refused by the broker) becomes a stub that
        names its source and size, and if even that fails the loss is logged and counted. The
        caller's offset moves on either way; a dead letter that stops its partition would be
        the poison it was meant to remove.
        """
        message = event.message
        source = f"{message.topic}/{message.partition}/{message.offset}"
        marks = [("x-dlq-reason", reason.encode()), ("x-dlq-source", source.encode())]
        headers = [*records.header_list(message.headers), *marks]
        size = records.record_size(event.key, event.value, headers)
        copied = False
        if size <= PRODUCER_MAX_REQUEST_BYTES - DLQ_HEADROOM:
            try:
                await topics.dlq.send(key=event.key, value=event.value, headers=headers)
                copied = True
            except Exception as exc:  # the broker may refuse what the producer took
                log.warning("could not copy %s to the DLQ (%s)", source, exc.__class__.__name__)
        if not copied:
            stub = {"dlqStub": True, "source": source, "size": size, "reason": reason}
            try:
                await topics.dlq.send(
                    key=None,
                    value=codec.dumps(stub),
                    headers=[*marks, ("x-dlq-size", str(size).encode())],
                )
            except Exception:
                metrics.dead_letters.labels(message.topic, "lost").inc()
                log.error("could not dead-letter %s, not even as a stub", source, exc_info=True)
                return
        metrics.requests.labels(message.topic, "dead_letter").inc()
        metrics.dead_letters.labels(message.topic, category if copied else "stub").inc()
        log.warning("dead-lettered: %s", reason, extra={"source": source})

    async def refuse(event: Any, exc: RequestError, kind: str) -> None:
        """An unparseable request: answer the engine if we can tell whom, else dead-letter it.

        The reply carries the request's headers; headers too large for a reply of their own
        make the request one that cannot be answered.
        """
        unanswerable = records.record_size(None, None, event.headers) > settings.max_request_bytes
        if exc.process_instance_id is None or unanswerable:
            await dead_letter(event, str(exc), "malformed")
            return
        salvaged = records.salvage_reply_fields(event.value)
        if len(event.value or b"") > records.MAX_SALVAGE_BYTES:
            salvaged = {}
        await error_reply(
            kind,
            exc.process_instance_id,
            salvaged.get("clientId"),
            salvaged.get("channel"),
            str(exc),
            event.headers,
            event.message.timestamp,
            "malformed",
        )

    # -- ingest: parse, check, re-key by clientId --------------------------------------------
    def ingest(kind: str, parse: Any) -> Any:
        async def forward(event: Any) -> None:
            message = event.message
            try:
                problem = fetch.undecodable(message.topic, message.partition, message.offset)
                if problem is not None:
                    await dead_letter(event, f"undecodable record: {problem}", "undecodable")
                    return
                size = records.record_size(event.key, event.value, event.headers)
                try:
                    if size > settings.max_request_bytes:
                        raise records.oversized(event.value, size, settings.max_request_bytes)
                    request = parse(event.value, settings.max_request_bytes)
                except RequestError as exc:
                    await refuse(event, exc, kind)
                    return
                command = {
                    "k": kind,
                    "r": asdict(request),
                    "src": _source(event),
                    "ts": message.timestamp,
                }
                topic, key = topics.otp_commands, request.key.encode()
                if isinstance(request, GenerateRequest) and counts_receiver(request):
                    topic = topics.receiver_commands
                    key = receiver_key(request).encode()
                await topic.send(key=key, value=codec.dumps(command), headers=event.headers)
            except Exception:  # the stream must go on, see module docstring
                log.exception("unexpected failure ingesting %s", _source(event))
                await dead_letter(event, INTERNAL_ERROR)

        async def ingest_agent(stream: Any) -> None:
            await ctx.cache.ready.wait()  # the receiver check below reads templates
            await for_each_event(stream, app.consumer.admit, forward)

        return ingest_agent

    ingest_generate = app.agent(topics.generate_in, name="ingest_generate")(
        ingest(GENERATE, records.parse_generate)
    )
    ingest_validate = app.agent(topics.validate_in, name="ingest_validate")(
        ingest(VALIDATE, records.parse_validate)
    )

    # -- receivers: one send quota per address or number, whatever the clientId --------------
    receiver_rows = ctx.tables.receivers

    def counts_receiver(req: GenerateRequest) -> bool:
        """Only requests that can end in a send spend the receiver's quota; the others go
        straight to ``process_otp``, which refuses them (and remembers it) as before."""
        return settings.otp_max_sends_per_receiver > 0 and check_generate(req) is None

    def receiver_key(req: GenerateRequest) -> str:
        return receivers.receiver_key(ctx.secret, req.channel, req.recipient)

    async def count_receiver(event: Any) -> None:
        command: dict[str, Any] = {}
        try:
            command = codec.loads(event.value)
            key = event.key
            raw = receiver_rows.get(key)
            quota = ReceiverQuota.from_dict(codec.loads(raw)) if raw is not None else None
            if command.get("k") == EXPIRE:
                if quota is not None and receivers.expired(
                    quota, time.time(), settings.otp_send_window_seconds
                ):
                    del receiver_rows[key]
                return
            source = "/".join(map(str, command.get("src", ())))
            updated, refusal = receivers.admit(
                quota,
                source,
                now=time.time(),
                max_sends=settings.otp_max_sends_per_receiver,
                window_seconds=settings.otp_send_window_seconds,
            )
            if updated != quota:
                receiver_rows[key] = codec.dumps(updated.to_dict())
            request = GenerateRequest(**command["r"])
            if refusal is not None:
                metrics.fraud_refusals.labels("receiver_limit").inc()
                await error_reply(
                    GENERATE,
                    request.process_instance_id,
                    request.client_id,
                    request.channel,
                    refusal,
                    event.headers,
                    command.get("ts"),
                    "not_sent",
                )
                return
            await topics.otp_commands.send(
                key=request.key.encode(), value=event.value, headers=event.headers
            )
        except Exception:  # the stream must go on, see module docstring
            log.exception("unexpected failure counting %s", _source(event))
            await internal_error(event, command)

    @app.agent(topics.receiver_commands, name="count_receivers")
    async def count_receivers(stream: Any) -> None:
        await for_each_event(stream, app.consumer.admit, count_receiver)

    @app.timer(interval=settings.otp_sweep_interval_seconds, name="sweep_receivers")
    async def sweep_receivers() -> None:
        now = time.time()
        for key, raw in list(receiver_rows.items()):
            try:
                quota = ReceiverQuota.from_dict(codec.loads(raw))
            except (ValueError, KeyError, TypeError):
                continue
            if receivers.expired(quota, now, settings.otp_send_window_seconds):
                await topics.receiver_commands.send(key=key, value=codec.dumps({"k": EXPIRE}))

    # -- process: the state machine per identifier --------------------------------------------
    def load(key: bytes) -> OtpRecord | None:
        raw = otps.get(key)
        return OtpRecord.from_dict(codec.loads(raw)) if raw is not None else None

    async def generate(
        key: bytes, req: GenerateRequest, source: str, headers: Any, received_ms: int | None
    ) -> None:
        async def answer(sent: bool, error: str | None) -> None:
            body = records.generate_reply(
                req.process_instance_id, req.client_id, req.channel, sent, error
            )
            await send_reply(GENERATE, body, headers, received_ms)

        async def refuse(error: str) -> None:
            """No code kept, nothing sent; the refusal is remembered for a redelivery."""
            otps[key] = codec.dumps(
                otp.remember(previous, source, otp.REFUSED + error, now).to_dict()
            )
            await answer(False, error)

        previous = load(key)
        earlier = otp.replayed(previous, source)
        if earlier is not None:
            # Redelivered (a crash, a rebalance): answer exactly as the first time.
            await answer(earlier == otp.SENT, otp.refused(earlier))
            return
        now = time.time()
        error = check_generate(req)
        if error is not None:
            allowed = settings.sms_allowed_countries
            if req.channel == "SMS" and error == receivers.country_refusal(req.recipient, allowed):
                metrics.fraud_refusals.labels("country").inc()
            await refuse(error)
            return
        entry = ctx.cache.resolve(req.template_name, req.language)
        channel = ctx.channels[req.channel]
        try:
            code, record = otp.issue(
                ctx.policy,
                ctx.secret,
                previous,
                identifier=req.key,
                channel=req.channel,
                process_instance_id=req.process_instance_id,
                now=now,
                source=source,
                transaction=req.transaction,
            )
        except RateLimited as exc:
            await refuse(str(exc))
            return
        try:
            rendered = render.render(entry.compiled, {**req.params, "otpValue": code})
        except render.RenderError as exc:
            await refuse(f"template '{req.template_name}' could not be rendered: {exc}")
            return
        notification = Notification(
            channel=req.channel,
            recipient=req.recipient,
            subject=rendered.subject,
            body=rendered.body,
            text=rendered.text,
            template_name=req.template_name,
            process_instance_id=req.process_instance_id,
            headers=dict(headers or {}),
        )
        try:
            await channel.send(notification)
        except DeliveryError as exc:
            metrics.sends.labels(req.channel, "failed").inc()
            await refuse(str(exc))
            return
        metrics.sends.labels(req.channel, "delivered").inc()
        otps[key] = codec.dumps(record.to_dict())
        await answer(True, None)

    def check_generate(req: GenerateRequest) -> str | None:
        """Everything that can be refused before a code exists: nothing stored, nothing sent."""
        entry = ctx.cache.resolve(req.template_name, req.language)
        if entry is None:
            return f"template '{req.template_name}' not found"
        data = entry.data
        if not data.get("active", True):
            return f"template '{req.template_name}' is inactive"
        if data.get("type") != req.channel:
            kind = data.get("type")
            return f"template '{req.template_name}' is a {kind} template, not {req.channel}"
        if entry.compiled is None:
            return f"template '{req.template_name}' does not compile"
        missing = render.missing_mandatory(data.get("params", []), {**req.params, "otpValue": "0"})
        if missing:
            return f"missing mandatory parameter(s): {', '.join(missing)}"
        if req.transaction is not None and not {"amount", "payee"} <= entry.compiled.variables:
            return (
                f"template '{req.template_name}' does not show the amount and payee: a payment "
                "code must name the transaction it authorises"
            )
        refusal = ctx.channels[req.channel].check_recipient(req.recipient)
        if refusal is None and req.channel == "SMS":
            try:
                receivers.phone_number(req.recipient)
            except receivers.AddressError as exc:
                return str(exc)
            refusal = receivers.country_refusal(req.recipient, settings.sms_allowed_countries)
        return refusal

    async def validate(
        key: bytes, req: ValidateRequest, source: str, headers: Any, received_ms: int | None
    ) -> None:
        record = load(key)
        outcome, updated = otp.verify(
            ctx.policy,
            ctx.secret,
            record,
            identifier=req.key,
            channel=req.channel,
            code=req.otp,
            now=time.time(),
            source=source,
            transaction=req.transaction,
        )
        if updated is not None and updated != record:
            otps[key] = codec.dumps(updated.to_dict())
        body = records.validate_reply(
            req.process_instance_id,
            req.client_id,
            req.channel,
            outcome is Outcome.VALID,
            outcome.error,
        )
        metrics.validations.labels(outcome.value).inc()
        await send_reply(VALIDATE, body, headers, received_ms)

    def expire(key: bytes) -> None:
        record = load(key)
        if record is not None and otp.deletable(record, ctx.policy, time.time()):
            del otps[key]

    async def process(event: Any) -> None:
        command: dict[str, Any] = {}
        try:
            command = codec.loads(event.value)
            kind = command["k"]
            source = "/".join(map(str, command.get("src", ())))
            received_ms = command.get("ts")
            if kind == GENERATE:
                request = GenerateRequest(**_with_transaction(command["r"]))
                await generate(event.key, request, source, event.headers, received_ms)
            elif kind == VALIDATE:
                request = ValidateRequest(**_with_transaction(command["r"]))
                await validate(event.key, request, source, event.headers, received_ms)
            elif kind == EXPIRE:
                expire(event.key)
        except Exception:  # the stream must go on, see module docstring
            log.exception("unexpected failure processing %s", _source(event))
            await internal_error(event, command)

    dispatcher = KeyedDispatcher(MAX_IN_FLIGHT)
    ctx.dispatcher = dispatcher

    @app.agent(topics.otp_commands, name="process_otp")
    async def process_otp(stream: Any) -> None:
        await ctx.cache.ready.wait()
        stream.enable_acks = False  # each event is acked by its task once handled
        admit = app.consumer.admit
        async for event in stream.events():
            await dispatcher.dispatch(stream, admit, event, process)

    async def internal_error(event: Any, command: dict[str, Any]) -> None:
        request = command.get("r") or {}
        pid = request.get("process_instance_id")
        if pid is None or command.get("k") not in (GENERATE, VALIDATE):
            await dead_letter(event, INTERNAL_ERROR)
            return
        await error_reply(
            command["k"],
            pid,
            request.get("client_id"),
            request.get("channel"),
            INTERNAL_ERROR,
            event.headers,
            command.get("ts"),
            "error",
        )

    # -- expiry: find on the owner's partitions, delete through the stream -------------------
    @app.timer(interval=settings.otp_sweep_interval_seconds, name="sweep_expired_otps")
    async def sweep_expired_otps() -> None:
        """Tables change only inside their stream, so the sweep sends "expire" commands."""
        now = time.time()
        for key, raw in list(otps.items()):
            try:
                record = OtpRecord.from_dict(codec.loads(raw))
            except (ValueError, KeyError, TypeError):
                continue
            if otp.deletable(record, ctx.policy, now):
                await topics.otp_commands.send(key=key, value=codec.dumps({"k": EXPIRE}))

    return {
        "ingest_generate": ingest_generate,
        "ingest_validate": ingest_validate,
        "process_otp": process_otp,
        "count_receivers": count_receivers,
    }


def _with_transaction(fields: dict[str, Any]) -> dict[str, Any]:
    """A request's fields as read back from JSON, where the transaction pair became a list."""
    transaction = fields.get("transaction")
    return {**fields, "transaction": tuple(transaction) if transaction else None}
