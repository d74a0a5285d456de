"""The OTP flows: ingest and re-key requests, count receivers, generate / validate / expire.

:class:`Ingest` reads the engine's topics (keyed however the engine likes), refuses what
cannot be parsed (error reply if a ``processInstanceId`` is readable, else dead-letter) and
forwards the rest: generates that can end in a send to ``receiver-commands`` (keyed by the
receiver's HMAC, :class:`ReceiverCounter`), everything else to ``otp-commands`` keyed by
``clientId`` (:class:`OtpProcessor`, which owns the ``otps`` rows: generate and validate for one
identifier arrive on one partition, in order, next to that identifier's row).

No handler may let an exception out: an agent that raises stops consuming, and every request
after it would wait forever. Each ``handle`` answers the unexpected with an error reply (or a
dead letter) and returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from app import codec, records
from app.channels.base import Channel, DeliveryError, Notification
from app.core import keys, otp, receivers, render
from app.core import templates as template_model
from app.core.otp import OtpPolicy, OtpRecord, Outcome, RateLimited
from app.core.receivers import ReceiverQuota
from app.flows import (
    INTERNAL_ERROR,
    BoundedRows,
    Clock,
    DeadLetters,
    Headers,
    Inbound,
    Outbox,
    Route,
    Rows,
    Scan,
    command_received_at,
    command_source,
    expired_keys,
)
from app.flows import events as ev
from app.flows.events import Events
from app.flows.receipts import Receipts
from app.logs import mask_recipient, request_context
from app.metrics import Metrics
from app.records import GenerateRequest, RequestError, ValidateRequest

log = logging.getLogger(__name__)

GENERATE, VALIDATE, EXPIRE = "g", "v", "x"
# Operator commands from the HTTP API (web/otp.py), answered on the API results topic.
STATUS, CANCEL = "s", "c"
KIND_NAMES = {GENERATE: "generate", VALIDATE: "validate"}
Undecodable = Callable[[str, int, int], "str | None"]


class TemplateEntry(Protocol):
    """A stored template with its compiled form (``tables.template_cache.CachedTemplate``)."""

    data: dict[str, Any]
    compiled: render.CompiledTemplate | None


class Templates(Protocol):
    def resolve(self, name: str, language: str | None) -> TemplateEntry | None: ...


@dataclass(frozen=True)
class OtpLimits:
    """The settings the flows read (a slice of ``Settings``, so tests need not build one)."""

    max_request_bytes: int = 65536
    max_sends_per_receiver: int = 5
    send_window_seconds: float = 600
    sms_allowed_countries: frozenset[str] | None = None
    generate_in: str = "generate-in"
    validate_in: str = "validate-in"
    otp_commands: str = "otp-commands"


class Replies:
    """Answers to the engine: keyed by ``processInstanceId`` with every header of the request.

    The latency histogram runs from the request's Kafka timestamp (seconds) to the reply, so it
    covers the whole path through the service, the re-keying hops included.
    """

    def __init__(self, outbox: Outbox, metrics: Metrics, limits: OtpLimits, clock: Clock) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self.clock = clock
        self.source_topic = {GENERATE: limits.generate_in, VALIDATE: limits.validate_in}

    async def send(
        self,
        kind: str,
        body: dict[str, Any],
        headers: Headers,
        received_at: float | None,
        outcome: str | None = None,
    ) -> None:
        route = Route.GENERATE_OUT if kind == GENERATE else Route.VALIDATE_OUT
        key = str(body["processInstanceId"]).encode()
        await self.outbox.send(route, key, codec.dumps(body), headers)
        ok = body["otpSent"] if kind == GENERATE else body["otpValid"]
        if outcome is None:
            outcome = {
                (GENERATE, True): "sent",
                (GENERATE, False): "not_sent",
                (VALIDATE, True): "valid",
                (VALIDATE, False): "invalid",
            }[(kind, bool(ok))]
        self.metrics.requests.labels(self.source_topic[kind], outcome).inc()
        if received_at:
            elapsed = max(0.0, self.clock() - received_at)
            self.metrics.latency.labels(KIND_NAMES[kind]).observe(elapsed)
        log.info(
            "%s %s%s",
            KIND_NAMES[kind],
            "ok" if ok else "refused: ",
            body["error"] or "",
            extra=request_context(
                body["processInstanceId"], body["clientId"], channel=body["channel"]
            ),
        )

    async def error(
        self,
        kind: str,
        fields: tuple[Any, Any, Any],
        error: str,
        headers: Headers,
        received_at: float | None,
        outcome: str,
    ) -> None:
        """An ``otpSent``/``otpValid: false`` reply; ``fields`` = (pid, clientId, channel)."""
        make = records.generate_reply if kind == GENERATE else records.validate_reply
        pid, client, channel = fields
        await self.send(
            kind, make(pid, client, channel, False, error), headers, received_at, outcome
        )


class GenerateChecks:
    """Everything that can refuse a generate before a code exists: nothing stored, nothing sent.

    Used twice: by :class:`Ingest`, to let only requests that can end in a send spend a
    receiver's quota, and by :class:`OtpProcessor`, which answers (and remembers) the refusal.
    """

    def __init__(
        self,
        templates: Templates,
        channels: Mapping[str, Channel],
        limits: OtpLimits,
        secret: bytes,
    ) -> None:
        self.templates = templates
        self.channels = channels
        self.limits = limits
        self.secret = secret

    def refusal(self, req: GenerateRequest) -> str | None:
        entry = self.templates.resolve(req.template_name, req.language)
        if entry is None:
            return f"template '{req.template_name}' not found"
        return self._template_refusal(req, entry) or self._recipient_refusal(req)

    def _template_refusal(self, req: GenerateRequest, entry: TemplateEntry) -> str | None:
        data, name = entry.data, req.template_name
        if not data.get("active", True):
            return f"template '{name}' is inactive"
        if data.get("type") != req.channel:
            return f"template '{name}' is a {data.get('type')} template, not {req.channel}"
        if entry.compiled is None:
            return f"template '{name}' does not compile"
        missing = render.missing_mandatory(data.get("params", []), {**req.params, "otpValue": "0"})
        if missing:
            return f"missing mandatory parameter(s): {', '.join(missing)}"
        mistyped = template_model.mistyped(data.get("params", []), {**req.params, "otpValue": "0"})
        if mistyped:
            return "; ".join(f"parameter '{key}' {why}" for key, why in mistyped)
        if req.transaction is not None and not {"amount", "payee"} <= entry.compiled.variables:
            return (
                f"template '{name}' does not show the amount and payee: a payment code must "
                "name the transaction it authorises"
            )
        return None

    def _recipient_refusal(self, req: GenerateRequest) -> str | None:
        refusal = self.channels[req.channel].check_recipient(req.recipient)
        if refusal is not None or req.channel != "SMS":
            return refusal
        try:
            receivers.phone_number(req.recipient)
        except receivers.AddressError as exc:
            return str(exc)
        return self.country_refusal(req)

    def country_refusal(self, req: GenerateRequest) -> str | None:
        return receivers.country_refusal(req.recipient, self.limits.sms_allowed_countries)

    def counts_receiver(self, req: GenerateRequest) -> bool:
        """Only requests that can end in a send spend the receiver's quota; the others go
        straight to the processor, which refuses them (and remembers it) as before."""
        return self.limits.max_sends_per_receiver > 0 and self.refusal(req) is None

    def receiver_key(self, req: GenerateRequest) -> bytes:
        return receivers.receiver_key(self.secret, req.channel, req.recipient).encode()


def _command_request(command: dict[str, Any]) -> dict[str, Any]:
    """A request's fields as read back from JSON, where the transaction pair became a list."""
    fields = command["r"]
    transaction = fields.get("transaction")
    return {**fields, "transaction": tuple(transaction) if transaction else None}


def _reply_fields(command: dict[str, Any]) -> tuple[Any, Any, Any] | None:
    request = command.get("r")
    if not isinstance(request, dict):
        return None
    pid = request.get("process_instance_id")
    if pid is None or command.get("k") not in (GENERATE, VALIDATE):
        return None
    return pid, request.get("client_id"), request.get("channel")


class Ingest:
    """Parse an engine request, refuse it or forward it re-keyed (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        outbox: Outbox,
        replies: Replies,
        dead_letters: DeadLetters,
        checks: GenerateChecks,
        limits: OtpLimits,
        undecodable: Undecodable,
    ) -> None:
        self.kind = kind
        self.parse = records.parse_generate if kind == GENERATE else records.parse_validate
        self.outbox = outbox
        self.replies = replies
        self.dead_letters = dead_letters
        self.checks = checks
        self.limits = limits
        self.undecodable = undecodable

    async def handle(self, record: Inbound) -> None:
        try:
            await self._handle(record)
        except Exception:  # the stream must go on, see the module docstring
            log.exception("unexpected failure ingesting %s", record.source)
            await self.dead_letters.send(record, INTERNAL_ERROR)

    async def _handle(self, record: Inbound) -> None:
        problem = self.undecodable(record.topic, record.partition, record.offset)
        if problem is not None:
            await self.dead_letters.send(record, f"undecodable record: {problem}", "undecodable")
            return
        size = records.record_size(record.key, record.value, record.headers)
        try:
            if size > self.limits.max_request_bytes:
                raise records.oversized(record.value, size, self.limits.max_request_bytes)
            request = self.parse(record.value, self.limits.max_request_bytes)
        except RequestError as exc:
            await self.refuse(record, exc)
            return
        if isinstance(request, ValidateRequest):  # the code the user typed stays here
            guess = otp.digest(
                self.checks.secret, request.key, request.channel, request.otp, request.transaction
            )
            request = replace(request, otp="", otp_digest=guess)
        command = {
            "k": self.kind,
            # orjson writes a dataclass as asdict would, without its deep copy (20x faster).
            "r": request,
            "src": [record.topic, record.partition, record.offset],
            "ts": record.timestamp,
        }
        route, key = Route.OTP_COMMANDS, request.key.encode()
        if isinstance(request, GenerateRequest) and self.checks.counts_receiver(request):
            route, key = Route.RECEIVER_COMMANDS, self.checks.receiver_key(request)
        await self.outbox.send(route, key, codec.dumps(command), record.headers)

    async def refuse(self, record: Inbound, exc: RequestError) -> None:
        """Answer the engine if we can tell whom, else dead-letter the record.

        The reply carries the request's headers; headers too large for a reply of their own
        make the request one that cannot be answered.
        """
        headers_size = records.record_size(None, None, record.headers)
        if exc.process_instance_id is None or headers_size > self.limits.max_request_bytes:
            await self.dead_letters.send(record, str(exc), "malformed")
            return
        salvaged: dict[str, Any] = {}
        if len(record.value or b"") <= records.MAX_SALVAGE_BYTES:
            salvaged = records.salvage_reply_fields(record.value)
        fields = (exc.process_instance_id, salvaged.get("clientId"), salvaged.get("channel"))
        await self.replies.error(
            self.kind, fields, str(exc), record.headers, record.timestamp, "malformed"
        )


class ReceiverCounter:
    """Spends a receiver's quota for a generate, or refuses it; owns the ``receivers`` rows."""

    def __init__(
        self,
        rows: Rows,
        scan: Scan,
        outbox: Outbox,
        replies: Replies,
        dead_letters: DeadLetters,
        limits: OtpLimits,
        metrics: Metrics,
        clock: Clock,
        events: Events,
    ) -> None:
        self.rows = BoundedRows(rows)
        self.scan = scan
        self.outbox = outbox
        self.replies = replies
        self.dead_letters = dead_letters
        self.limits = limits
        self.metrics = metrics
        self.clock = clock
        self.events = events

    def load(self, key: bytes) -> ReceiverQuota | None:
        raw = self.rows.get(key)
        return ReceiverQuota.from_dict(codec.loads(raw)) if raw is not None else None

    async def handle(self, record: Inbound) -> None:
        command: dict[str, Any] = {}
        try:
            command = codec.loads_object(record.value or b"")
            await self._handle(record, command)
        except Exception:  # the stream must go on, see the module docstring
            log.exception("unexpected failure counting %s", record.source)
            await internal_error(self.replies, self.dead_letters, record, command)

    async def _handle(self, record: Inbound, command: dict[str, Any]) -> None:
        key = record.key or b""
        quota = self.load(key)
        if command.get("k") == EXPIRE:
            if quota is not None and self.expired(quota.sends):
                del self.rows[key]
            return
        request = GenerateRequest(**_command_request(command))  # before the quota is spent
        updated, refusal = receivers.admit(
            quota,
            command_source(command),
            now=self.clock(),
            max_sends=self.limits.max_sends_per_receiver,
            window_seconds=self.limits.send_window_seconds,
        )
        if updated != quota:
            self.rows[key] = codec.dumps(updated.to_dict())
        if refusal is None:
            await self.outbox.send(
                Route.OTP_COMMANDS, request.key.encode(), record.value, record.headers
            )
            return
        self.metrics.fraud_refusals.labels("receiver_limit").inc()
        if updated != quota:  # the first refusal; a redelivery's event was written then
            source = command_source(command)
            await self.events.emit(
                ev.OTP_SEND_REFUSED,
                source,
                request.recipient,
                entryId=ev.entry_id("otp", request.key, source),
                processInstanceId=request.process_instance_id,
                clientId=request.client_id,
                templateName=request.template_name,
                language=request.language,
                channel=request.channel,
                status="refused",
                error=refusal,
            )
        fields = (request.process_instance_id, request.client_id, request.channel)
        await self.replies.error(
            GENERATE, fields, refusal, record.headers, command_received_at(command), "not_sent"
        )

    def expired(self, sends: Iterable[float]) -> bool:
        return receivers.expired(sends, self.clock(), self.limits.send_window_seconds)

    async def expired_keys(self) -> list[bytes]:
        """Rows with nothing left to count (the sweep sends them an expire command)."""
        return await expired_keys(self.scan, ReceiverQuota.sends_of, self.expired)


class OtpProcessor:
    """The state machine per identifier: generate, validate and expire on its ``otps`` row."""

    def __init__(
        self,
        rows: Rows,
        scan: Scan,
        checks: GenerateChecks,
        channels: Mapping[str, Channel],
        policy: OtpPolicy,
        secret: bytes,
        replies: Replies,
        dead_letters: DeadLetters,
        metrics: Metrics,
        clock: Clock,
        render_limits: render.RenderLimits,
        events: Events,
        outbox: Outbox,
        receipts: Receipts,
    ) -> None:
        self.rows = BoundedRows(rows)
        self.scan = scan
        self.events = events
        self.outbox = outbox
        self.receipts = receipts
        self.checks = checks
        self.channels = channels
        self.policy = policy
        self.secret = secret
        self.replies = replies
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.clock = clock
        self.render_limits = render_limits
        self.code_key = keys.subkey(secret, keys.CODE)
        self.message_ids = keys.subkey(secret, keys.MESSAGE_ID)

    def load(self, key: bytes) -> OtpRecord | None:
        raw = self.rows.get(key)
        return OtpRecord.from_dict(codec.loads(raw)) if raw is not None else None

    async def handle(self, record: Inbound) -> None:
        command: dict[str, Any] = {}
        try:
            command = codec.loads_object(record.value or b"")
            await self._dispatch(record, command)
        except Exception:  # the stream must go on, see the module docstring
            log.exception("unexpected failure processing %s", record.source)
            await internal_error(self.replies, self.dead_letters, record, command)

    async def _dispatch(self, record: Inbound, command: dict[str, Any]) -> None:
        kind, key = command["k"], record.key or b""
        if kind == EXPIRE:
            await self.expire(key)
            return
        if kind in (STATUS, CANCEL):
            await self.operator(key, kind, str(command.get("id", "")))
            return
        call = Call(key, command_source(command), record.headers, command_received_at(command))
        if kind == GENERATE:
            await self.generate(call, GenerateRequest(**_command_request(command)))
        elif kind == VALIDATE:
            await self.validate(call, ValidateRequest(**_command_request(command)))
        else:  # not ours: kept, not lost
            await self.dead_letters.send(record, f"unknown command kind {str(kind)[:40]!r}")

    # -- generate -----------------------------------------------------------------------------
    async def generate(self, call: Call, req: GenerateRequest) -> None:
        previous = self.load(call.key)
        earlier = otp.replayed(previous, call.source)
        if earlier is not None:
            # Redelivered (a crash, a rebalance): answer exactly as the first time.
            expiry = otp.sent_expiry(previous, call.source)
            await self._answer(call, req, earlier == otp.SENT, otp.refused(earlier), expiry)
            return
        now = self.clock()
        refusal = self.checks.refusal(req)
        if refusal is not None:
            if req.channel == "SMS" and refusal == self.checks.country_refusal(req):
                self.metrics.fraud_refusals.labels("country").inc()
            await self._refuse(call, req, previous, refusal, now)
            return
        try:
            code, issued = otp.issue(
                self.policy,
                self.secret,
                previous,
                identifier=req.key,
                channel=req.channel,
                process_instance_id=req.process_instance_id,
                now=now,
                code=self._code(call, req),
                source=call.source,
                transaction=req.transaction,
                receiver=req.recipient,
            )
        except RateLimited as exc:
            await self._refuse(call, req, previous, str(exc), now)
            return
        failure, message_id = await self._deliver(call, req, code)
        if failure is not None:
            await self._refuse(call, req, previous, failure, now)
            return
        self.rows[call.key] = codec.dumps(issued.to_dict())
        entry = ev.entry_id("otp", req.key, issued.issued_at)
        await self._event(ev.OTP_SENT, call, req, message_id=message_id, entry=entry)
        channel = self.channels[req.channel]
        if message_id and getattr(channel, "reports_status", False):
            context = {
                "entryId": entry,
                "processInstanceId": req.process_instance_id,
                "clientId": req.client_id,
                "templateName": req.template_name,
                "language": req.language,
                "channel": req.channel,
            }
            await self.receipts.register(channel.provider, message_id, req.recipient, context)
        await self._answer(call, req, True, None, issued.expires_at)

    def _code(self, call: Call, req: GenerateRequest) -> str | None:
        """The request's own code, derived from its source record (see ``otp.derive_code``):
        None, so a random one, for a command that names no source."""
        if not call.source:
            return None
        request = (call.source, call.received_at, req.key, req.channel)
        return otp.derive_code(self.code_key, self.policy, request)

    def _message_key(self, call: Call, req: GenerateRequest) -> str:
        """The mail's Message-ID, made from the same source record: empty, so a random one,
        for a command that names no source."""
        if not call.source:
            return ""
        return keys.message_key(self.message_ids, call.source, call.received_at, req.key)

    async def _deliver(
        self, call: Call, req: GenerateRequest, code: str
    ) -> tuple[str | None, str | None]:
        """Render and send the code: (the refusal if either failed, the provider's message id)."""
        entry = self.checks.templates.resolve(req.template_name, req.language)
        assert entry is not None and entry.compiled is not None  # checked by ``refusal``
        try:
            rendered = render.render(
                entry.compiled, {**req.params, "otpValue": code}, limits=self.render_limits
            )
        except render.RenderError as exc:
            return f"template '{req.template_name}' could not be rendered: {exc}", None
        notification = Notification(
            channel=req.channel,
            recipient=req.recipient,
            subject=rendered.subject,
            body=rendered.body,
            text=rendered.text,
            template_name=req.template_name,
            process_instance_id=req.process_instance_id,
            headers={name: value for name, value in call.headers if value is not None},
            message_key=self._message_key(call, req),
        )
        try:
            message_id = await self.channels[req.channel].send(notification)
        except DeliveryError as exc:
            self.metrics.sends.labels(req.channel, "failed").inc()
            return _without_code(str(exc), code), None
        self.metrics.sends.labels(req.channel, "delivered").inc()
        return None, _without_code(message_id, code) if message_id else message_id

    async def _refuse(
        self, call: Call, req: GenerateRequest, previous: OtpRecord | None, error: str, now: float
    ) -> None:
        """No code kept, nothing sent; the refusal is remembered for a redelivery."""
        remembered = otp.remember(previous, call.source, otp.REFUSED + error, now)
        self.rows[call.key] = codec.dumps(remembered.to_dict())
        entry = ev.entry_id("otp", req.key, call.source)
        await self._event(ev.OTP_SEND_REFUSED, call, req, error=error, entry=entry)
        await self._answer(call, req, False, error)

    async def _event(
        self,
        event_type: str,
        call: Call,
        req: GenerateRequest,
        error: str | None = None,
        message_id: str | None = None,
        entry: str | None = None,
    ) -> None:
        await self.events.emit(
            event_type,
            call.source,
            req.recipient,
            entryId=entry,
            processInstanceId=req.process_instance_id,
            clientId=req.client_id,
            templateName=req.template_name,
            language=req.language,
            channel=req.channel,
            provider=getattr(self.channels.get(req.channel), "provider", None),
            providerMessageId=message_id,
            status="sent" if error is None else "refused",
            error=error,
        )

    async def _answer(
        self,
        call: Call,
        req: GenerateRequest,
        sent: bool,
        error: str | None,
        expires_at: float | None = None,
    ) -> None:
        body = records.generate_reply(
            req.process_instance_id, req.client_id, req.channel, sent, error, expires_at
        )
        await self.replies.send(GENERATE, body, call.headers, call.received_at)

    # -- validate and expire --------------------------------------------------------------
    async def validate(self, call: Call, req: ValidateRequest) -> None:
        stored = self.load(call.key)
        replay = otp.replayed(stored, call.source) is not None
        outcome, updated = otp.verify(
            self.policy,
            self.secret,
            stored,
            identifier=req.key,
            channel=req.channel,
            code=req.otp,
            guess=req.otp_digest,
            now=self.clock(),
            source=call.source,
            transaction=req.transaction,
        )
        if updated is not None and updated != stored:
            self.rows[call.key] = codec.dumps(updated.to_dict())
        facts = otp.validate_facts(updated, call.source)
        body = records.validate_reply(
            req.process_instance_id,
            req.client_id,
            req.channel,
            outcome is Outcome.VALID,
            outcome.error,
            facts.attempts_remaining,
            facts.expires_at,
        )
        self.metrics.validations.labels(outcome.value).inc()
        if not replay:  # a redelivery's events were written the first time
            await self._validate_events(call, req, stored, outcome)
        await self.replies.send(VALIDATE, body, call.headers, call.received_at)

    async def _validate_events(
        self, call: Call, req: ValidateRequest, stored: OtpRecord | None, outcome: Outcome
    ) -> None:
        has_code = stored is not None and bool(stored.digest)
        fields = {
            "entryId": ev.entry_id("otp", req.key, stored.issued_at) if has_code else None,
            "processInstanceId": req.process_instance_id,
            "clientId": req.client_id,
            "channel": req.channel,
            "status": outcome.value,
            "error": outcome.error,
        }
        receiver = stored.receiver if stored is not None else ""
        if outcome is Outcome.VALID:
            await self.events.emit(ev.OTP_VALIDATED, call.source, receiver, **fields)
            return
        await self.events.emit(ev.OTP_ATTEMPT_FAILED, call.source, receiver, **fields)
        if outcome is Outcome.LOCKED and stored is not None and stored.status is otp.Status.PENDING:
            await self.events.emit(ev.OTP_LOCKED, call.source, receiver, **fields)

    async def operator(self, key: bytes, kind: str, request_id: str) -> None:
        """Show (or cancel, then show) the identifier's current code, for the HTTP API."""
        stored, now = self.load(key), self.clock()
        status, body = 200, None
        if stored is None or not stored.digest:
            status = 404
        elif kind == CANCEL:
            canceled = otp.cancel(stored, now)
            if canceled is None:
                status = 409  # nothing live to cancel: the body says what the code is
            else:
                self.rows[key] = codec.dumps(canceled.to_dict())
                stored = canceled
        if stored is not None and stored.digest:
            body = {
                "clientId": key.decode("utf-8", "replace"),
                **otp.describe(stored, self.policy, now),
                "receiver": mask_recipient(stored.receiver) if stored.receiver else None,
            }
            for field in ("issuedAt", "expiresAt"):
                body[field] = records.iso_utc(body[field])
        result = {"id": request_id, "status": status, "body": body}
        await self.outbox.send(Route.TEMPLATE_RESULTS, None, codec.dumps(result), [])

    async def expire(self, key: bytes) -> None:
        stored = self.load(key)
        if stored is not None and otp.deletable(stored.expires_at, self.policy, self.clock()):
            del self.rows[key]
            if stored.digest and stored.status is otp.Status.PENDING:  # never validated
                await self.events.emit(
                    ev.OTP_EXPIRED,
                    f"expire/{key.decode('utf-8', 'replace')}/{stored.issued_at}",
                    stored.receiver,
                    entryId=ev.entry_id("otp", key.decode("utf-8", "replace"), stored.issued_at),
                    processInstanceId=stored.process_instance_id,
                    clientId=key.decode("utf-8", "replace"),
                    channel=stored.channel,
                    status="expired",
                )

    async def expired_keys(self) -> list[bytes]:
        """Rows the sweep should delete; tables change only inside their stream, so the sweep
        sends "expire" commands instead of deleting."""
        now = self.clock()
        return await expired_keys(
            self.scan,
            OtpRecord.expiry,
            lambda expires_at: otp.deletable(expires_at, self.policy, now),
            counted=self.metrics.otp_rows.set,
        )


@dataclass(frozen=True)
class Call:
    """What every step of one command needs: its row key, source, headers and arrival time."""

    key: bytes
    source: str
    headers: Headers
    received_at: float | None


def _without_code(provider_text: str, code: str) -> str:
    """A provider's text with the code masked. The channels keep only a provider's error codes,
    but what a provider answers is its own: a server that quoted the subject back in its reply
    (``'709960 is your code'``) put a live code into the reply, the event and the row's
    history, which outlive the code. The text is shown, so it is masked, never dropped."""
    return provider_text.replace(code, "***") if code else provider_text


async def internal_error(
    replies: Replies, dead_letters: DeadLetters, record: Inbound, command: dict[str, Any]
) -> None:
    """The answer to a command whose handling failed unexpectedly."""
    fields = _reply_fields(command)
    if fields is not None:
        try:
            await replies.error(
                command["k"],
                fields,
                INTERNAL_ERROR,
                record.headers,
                command_received_at(command),
                "error",
            )
            return
        except Exception:  # e.g. headers too large for any reply: keep the record instead
            log.exception("could not answer %s", record.source)
    await dead_letters.send(record, INTERNAL_ERROR)


EXPIRE_COMMAND = codec.dumps({"k": EXPIRE})


@dataclass(frozen=True)
class OtpFlows:
    """The handlers of the OTP flows, wired to one outbox; built once per app."""

    ingest_generate: Ingest
    ingest_validate: Ingest
    receivers: ReceiverCounter
    processor: OtpProcessor

    @classmethod
    def build(
        cls,
        *,
        otps: Rows,
        receiver_rows: Rows,
        scan_of: Callable[[Rows], Scan],
        templates: Templates,
        channels: Mapping[str, Channel],
        policy: OtpPolicy,
        secret: bytes,
        limits: OtpLimits,
        render_limits: render.RenderLimits,
        outbox: Outbox,
        metrics: Metrics,
        clock: Clock,
        undecodable: Undecodable,
    ) -> OtpFlows:
        replies = Replies(outbox, metrics, limits, clock)
        # Validate requests carry the code the user typed; so do the commands made of them.
        dead_letters = DeadLetters(
            outbox, metrics, frozenset({limits.validate_in, limits.otp_commands})
        )
        checks = GenerateChecks(templates, channels, limits, secret)
        events = Events(outbox, metrics, clock)

        def ingest(kind: str) -> Ingest:
            return Ingest(kind, outbox, replies, dead_letters, checks, limits, undecodable)

        return cls(
            ingest_generate=ingest(GENERATE),
            ingest_validate=ingest(VALIDATE),
            receivers=ReceiverCounter(
                receiver_rows,
                scan_of(receiver_rows),
                outbox,
                replies,
                dead_letters,
                limits,
                metrics,
                clock,
                events,
            ),
            processor=OtpProcessor(
                otps,
                scan_of(otps),
                checks,
                channels,
                policy,
                secret,
                replies,
                dead_letters,
                metrics,
                clock,
                render_limits,
                events,
                outbox,
                Receipts(outbox, clock),
            ),
        )
