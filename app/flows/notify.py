"""The send-notification flow: a rendered template to a list of receivers, or to an adapter.

:class:`NotifyIngest` reads the engine's requests (keyed however the engine likes), refuses
what cannot be parsed (an error reply when the request names its ``processInstanceId``, in the
body or the Kafka header, or an ``identifier``; else a dead letter) and forwards the rest to
``notify-commands``, keyed by the request's own ``topic/partition/offset``.

:class:`NotifySender` owns the ``notifications`` rows, keyed the same way: one row per request,
holding what became of each receiver. A redelivered command (a crash, a rebalance) finds the
row: receivers already handled get nothing again, and a finished request gets its first reply
again. The crash window is the OTP flow's: a mail handed to the server in the moment before its
row reached the changelog is sent again.

The rules (which template, which channel, who may be a sender, what the reply says) are plain
methods tested with a dict and fakes (``tests/unit/test_flows_notify.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from app import codec, records
from app.attachments import AttachmentError, ByteBudget
from app.channels.base import Channel, DeliveryError, Notification
from app.channels.smtp import check_address
from app.core import keys, receivers, render
from app.core import templates as template_model
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
    expired_keys,
)
from app.flows import events as ev
from app.flows.events import Events
from app.flows.otp import Templates, Undecodable
from app.flows.receipts import Receipts
from app.logs import request_context
from app.metrics import Metrics
from app.records import NotifyRequest, RequestError

log = logging.getLogger(__name__)

EXPIRE = "x"
# Requests whose attachments are in memory at once: each may hold ATTACHMENT_MAX_BYTES (base64).
ATTACHMENT_REQUESTS_IN_FLIGHT = 4
# Attachments of one request read at once. With the requests above, every read has a
# connection of the store's pool (app.attachments.POOL_CONNECTIONS) while its timeout runs.
ATTACHMENT_READS_PER_REQUEST = 4
# Receivers of one request sent to at once: a request to 50 must not take every provider slot
# (whose waits count against each send's DELIVERY_TIMEOUT_SECONDS) from the other requests.
RECEIVERS_IN_FLIGHT = 4


class AttachmentSource(Protocol):
    """Reads one attachment (``app.attachments.AttachmentStore``); raises ``AttachmentError``."""

    async def fetch(self, filename: str, path: str, budget: ByteBudget) -> Any: ...


class Forwarder(Protocol):
    """Hands a rendered notification to an external adapter (``KafkaForwarder``)."""

    topic: str

    async def publish(
        self, key: bytes, record: dict[str, Any], headers: dict[str, Any]
    ) -> str | None: ...


@dataclass(frozen=True)
class NotifyLimits:
    """The settings the flow reads (a slice of ``Settings``, so tests need not build one)."""

    max_request_bytes: int = 65536
    max_receivers: int = 50
    default_language: str = "en"
    sender_allowlist: tuple[str, ...] = ("@localhost",)
    attachment_max_bytes: int = 10 * 1024 * 1024
    replay_seconds: float = 86400
    sms_allowed_countries: frozenset[str] | None = None
    notify_in: str = "notify-in"


@dataclass(frozen=True)
class Plan:
    """What a request resolved to: the template to render and where it goes."""

    entry: Any
    channel: str
    language: str
    receivers: list[str]
    forward: bool


@dataclass
class State:
    """A request's row: what became of each receiver, and the reply once it is finished."""

    created: float
    channel: str | None = None
    language: str | None = None
    results: dict[str, list[Any]] = field(default_factory=dict)  # receiver -> [sent, error]
    error: str | None = None
    forwarded: bool = False
    done: bool = False
    digest: str = ""  # of the request, so a reused offset is not taken for a redelivery

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        return cls(**data)


def sender_refusal(email: str, allowlist: tuple[str, ...]) -> str | None:
    """Why ``email`` may not be a notification's sender: it would impersonate someone.

    The address checked is the one the mail will carry, as it is: a check of a normalised copy
    passed ``ok@bank.example\r\n\r\n`` (which ended the mail's header) and ``o\u212a@...``
    (the Kelvin sign, which lowers to ``k``). Only the allowlist lookup ignores case."""
    if check_address(email) is not None:
        return "senderEmail: must be one e-mail address (user@domain)"
    address = email.lower()
    domain = "@" + address.rpartition("@")[2]
    if address in allowlist or domain in allowlist:
        return None
    return "senderEmail: is not allowed to send (MAIL_SENDER_ALLOWLIST)"


class NotifyReplies:
    """Answers on ``_OUT``: keyed by processInstanceId (else identifier), every header kept."""

    def __init__(self, outbox: Outbox, metrics: Metrics, limits: NotifyLimits, clock: Clock):
        self.outbox = outbox
        self.metrics = metrics
        self.limits = limits
        self.clock = clock

    async def send(
        self,
        body: dict[str, Any],
        key: str,
        headers: Headers,
        received_at: float | None,
        outcome: str,
    ) -> None:
        await self.outbox.send(Route.NOTIFY_OUT, key.encode(), codec.dumps(body), headers)
        self.metrics.requests.labels(self.limits.notify_in, outcome).inc()
        if received_at is not None:
            self.metrics.latency.labels("notify").observe(max(0.0, self.clock() - received_at))
        results = body["results"]
        if outcome in ("partial", "failed"):  # the summary names receivers: counts only
            detail = f": {sum(not r['sent'] for r in results)} of {len(results)} not reached"
        else:
            detail = f": {body['error']}" if body["error"] else ""
        log.info(
            "notification %s%s",
            outcome,
            detail,
            extra=request_context(body["processInstanceId"], body["identifier"]),
        )


class NotifyIngest:
    """Parse an engine request, refuse it or forward it re-keyed (see the module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        replies: NotifyReplies,
        dead_letters: DeadLetters,
        limits: NotifyLimits,
        undecodable: Undecodable,
    ) -> None:
        self.outbox = outbox
        self.replies = replies
        self.dead_letters = dead_letters
        self.limits = limits
        self.undecodable = undecodable

    async def handle(self, record: Inbound) -> None:
        try:
            await self._handle(record)
        except Exception:  # the stream must go on (app.flows.otp's module docstring)
            log.exception("unexpected failure ingesting %s", record.source)
            await self.dead_letters.send(record, INTERNAL_ERROR)

    async def _handle(self, record: Inbound) -> None:
        problem = self.undecodable(record.topic, record.partition, record.offset)
        if problem is not None:
            await self.dead_letters.send(record, f"undecodable record: {problem}", "undecodable")
            return
        header_pid = records.header_process_instance_id(record.headers)
        size = records.record_size(record.key, record.value, record.headers)
        try:
            if size > self.limits.max_request_bytes:
                exc = records.oversized(record.value, size, self.limits.max_request_bytes)
                raise RequestError(None, exc.reason, exc.process_instance_id or header_pid)
            request = records.parse_notify(
                record.value,
                self.limits.max_request_bytes,
                header_pid=header_pid,
                max_receivers=self.limits.max_receivers,
            )
        except RequestError as exc:
            await self.refuse(record, exc)
            return
        command = {
            # orjson writes a dataclass as asdict would, without its deep copy (20x faster).
            "r": request,
            "src": [record.topic, record.partition, record.offset],
            "ts": record.timestamp,
        }
        key = record.source.encode()
        await self.outbox.send(Route.NOTIFY_COMMANDS, key, codec.dumps(command), record.headers)

    async def refuse(self, record: Inbound, exc: RequestError) -> None:
        """Answer the engine if the request can be told apart, else dead-letter it."""
        fields: dict[str, Any] = {}
        if len(record.value or b"") <= records.MAX_SALVAGE_BYTES:
            fields = salvage(record.value)
        pid = exc.process_instance_id
        if pid is None:
            pid = records.header_process_instance_id(record.headers)
        fields["processInstanceId"] = pid
        headers_size = records.record_size(None, None, record.headers)
        correlated = pid is not None or fields.get("identifier") is not None
        if not correlated or headers_size > self.limits.max_request_bytes:
            await self.dead_letters.send(record, str(exc), "malformed")
            return
        body = records.notify_reply(None, channel=None, results=[], error=str(exc), fallback=fields)
        key = str(pid if pid is not None else fields["identifier"])
        await self.replies.send(body, key, record.headers, record.timestamp, "malformed")


def salvage(raw: bytes | None) -> dict[str, Any]:
    """Best effort: the reply fields of a request that failed to parse, where well-typed."""
    try:
        data = codec.loads(raw) if raw else None
    except codec.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    for name in ("identifier", "templateName", "language"):
        value = data.get(name)
        if isinstance(value, int | str) and not isinstance(value, bool) and len(str(value)) <= 200:
            out[name] = value
    return out


class NotifySender:
    """Resolve, render and deliver one request to each receiver; owns ``notifications`` rows."""

    def __init__(
        self,
        rows: Rows,
        scan: Scan,
        templates: Templates,
        channels: Mapping[str, Channel],
        forwarder: Forwarder,
        store: AttachmentSource | None,
        replies: NotifyReplies,
        dead_letters: DeadLetters,
        limits: NotifyLimits,
        render_limits: render.RenderLimits,
        metrics: Metrics,
        clock: Clock,
        events: Events,
        receipts: Receipts,
        message_ids: bytes,
    ) -> None:
        self.rows = BoundedRows(rows)
        self.scan = scan
        self.events = events
        self.message_ids = message_ids
        self.receipts = receipts
        self.templates = templates
        self.channels = channels
        self.forwarder = forwarder
        self.store = store
        self.replies = replies
        self.dead_letters = dead_letters
        self.limits = limits
        self.render_limits = render_limits
        self.metrics = metrics
        self.clock = clock
        self._attachment_slots = asyncio.Semaphore(ATTACHMENT_REQUESTS_IN_FLIGHT)

    def load(self, key: bytes) -> State | None:
        raw = self.rows.get(key)
        return State.from_dict(codec.loads(raw)) if raw is not None else None

    def save(self, key: bytes, state: State) -> None:
        self.rows[key] = codec.dumps(asdict(state))

    async def handle(self, record: Inbound) -> None:
        command: dict[str, Any] = {}
        try:
            command = codec.loads_object(record.value or b"")
            await self._handle(record, command)
        except Exception:  # the stream must go on (app.flows.otp's module docstring)
            log.exception("unexpected failure sending %s", record.source)
            await self._internal_error(record, command)

    async def _handle(self, record: Inbound, command: dict[str, Any]) -> None:
        key = record.key or b""
        if command.get("k") == EXPIRE:
            state = self.load(key)
            if state is not None and self.expired(state):
                del self.rows[key]
            return
        req = NotifyRequest(**command["r"])
        if not isinstance(req.receivers, list) or len(req.receivers) > self.limits.max_receivers:
            # The ingest checked this; a command written by anyone else on the topic may not be.
            raise ValueError(f"receivers: not a list of at most {self.limits.max_receivers}")
        digest = request_digest(command["r"])
        state = self.load(key)
        if state is None or (state.digest and state.digest != digest):
            # No row, or one of another request at the same offset (a recreated topic): new.
            state = State(created=self.clock(), digest=digest)
        if not state.done:
            await self.run(key, req, state, record.headers)
        await self.reply(req, state, record.headers, command_received_at(command))

    # -- the steps ---------------------------------------------------------------------------
    async def run(self, key: bytes, req: NotifyRequest, state: State, headers: Headers) -> None:
        """Take ``state`` to done: refused, forwarded, or each receiver sent to (or failed)."""
        plan = self.plan(req)
        if isinstance(plan, str):
            await self._refuse_rest(key, req, state, plan)
            return
        state.channel, state.language = plan.channel, plan.language
        rendered = self.render(req, plan)
        if isinstance(rendered, str):
            await self._refuse_rest(key, req, state, rendered)
            return
        if plan.forward:
            state.error = await self.forward(req, plan, rendered, headers)
            state.forwarded = state.error is None
            state.done = True
        else:
            await self.deliver(key, req, plan, rendered, state, headers)
        self.save(key, state)
        if state.forwarded:
            for receiver in plan.receivers:
                await self._event(ev.NOTIFICATION_FORWARDED, key, req, state, receiver, None)
        elif state.error is not None and not state.results:
            await self._failed(key, req, state)

    async def _refuse_rest(
        self, key: bytes, req: NotifyRequest, state: State, refusal: str
    ) -> None:
        """Refuse what is left of a request. A fresh one is refused as a whole; one a crash cut
        short (some receivers already sent to, before a template was deactivated or an
        attachment removed) keeps what was done and fails only the receivers left."""
        if state.results:
            for receiver in req.receivers:
                if receiver not in state.results:
                    state.results[receiver] = [False, refusal]
                    await self._event(ev.NOTIFICATION_FAILED, key, req, state, receiver, refusal)
        else:
            state.error = refusal
        state.done = True
        self.save(key, state)
        if state.error is not None:
            await self._failed(key, req, state)

    async def _failed(self, key: bytes, req: NotifyRequest, state: State) -> None:
        """A request refused as a whole: every receiver's ``notification.failed``."""
        for receiver in req.receivers:
            await self._event(ev.NOTIFICATION_FAILED, key, req, state, receiver, state.error)

    async def _event(
        self,
        event_type: str,
        key: bytes,
        req: NotifyRequest,
        state: State,
        receiver: str,
        error: str | None,
        message_id: str | None = None,
    ) -> None:
        channel = state.channel or req.channel
        status = {
            ev.NOTIFICATION_SENT: "sent",
            ev.NOTIFICATION_FORWARDED: "forwarded",
        }.get(event_type, "failed")
        source = key.decode("utf-8", "replace")
        await self.events.emit(
            event_type,
            source,
            receiver,
            entryId=ev.entry_id("notify", source, receiver),
            processInstanceId=req.process_instance_id,
            identifier=req.identifier,
            templateName=req.template_name,
            language=state.language or req.language,
            channel=channel,
            provider=self._provider(channel, event_type),
            providerMessageId=message_id,
            status=status,
            error=error,
        )

    def _provider(self, channel: str | None, event_type: str) -> str | None:
        if event_type == ev.NOTIFICATION_FORWARDED:
            return "kafka"
        return getattr(self.channels.get(channel or ""), "provider", None)

    def plan(self, req: NotifyRequest) -> Plan | str:
        """The template, channel and receivers of a request, or why it cannot be sent."""
        entry = self.templates.resolve(req.template_name, req.language)
        if entry is None:
            return f"template '{req.template_name}' not found"
        data = entry.data
        channel = req.channel or data.get("type")
        refusal = self._template_refusal(req, entry, channel)
        if refusal is not None:
            return refusal
        normalized = self._receivers(req, channel)
        if isinstance(normalized, str):
            return normalized
        refusal = self._mail_refusal(req, channel)
        if refusal is not None:
            return refusal
        language = data.get("language") or self.limits.default_language
        forward = bool(data.get("forwardOnKafka"))
        return Plan(entry, channel, language, normalized, forward)

    def _template_refusal(self, req: NotifyRequest, entry: Any, channel: str) -> str | None:
        data, name = entry.data, req.template_name
        if not data.get("active", True):
            return f"template '{name}' is inactive"
        if data.get("type") != channel:
            return f"template '{name}' is a {data.get('type')} template, not {channel}"
        if entry.compiled is None:
            return f"template '{name}' does not compile"
        missing = render.missing_mandatory(data.get("params", []), req.params)
        if missing:
            return f"missing mandatory parameter(s): {', '.join(missing)}"
        mistyped = template_model.mistyped(data.get("params", []), req.params)
        if mistyped:
            return "; ".join(f"parameter '{key}' {why}" for key, why in mistyped)
        return None

    def _receivers(self, req: NotifyRequest, channel: str) -> list[str] | str:
        """Every receiver checked for the channel (SMS numbers in E.164), or the first refusal:
        nothing is sent unless every address is usable, so the engine fixes one request."""
        out: list[str] = []
        seen: set[str] = set()
        for i, receiver in enumerate(req.receivers):
            address = receiver
            if channel == "SMS":
                try:
                    address = receivers.phone_number(receiver)
                except receivers.AddressError as exc:
                    return f"receivers[{i}]: {exc}"
                refusal = receivers.country_refusal(address, self.limits.sms_allowed_countries)
            else:
                refusal = self.channels[channel].check_recipient(address)
            if refusal is not None:
                return f"receivers[{i}]: {refusal}"
            if address not in seen:
                seen.add(address)
                out.append(address)
        return out

    def _mail_refusal(self, req: NotifyRequest, channel: str) -> str | None:
        if req.attachments and channel != "MAIL":
            return f"attachments: only MAIL notifications carry attachments, not {channel}"
        if req.attachments and self.store is None:
            names = ", ".join(a["filename"] for a in req.attachments)
            return f"attachments: no file store is configured, cannot attach {names}"
        if channel == "MAIL" and req.sender_name and not req.sender_name.isprintable():
            return "senderName: must be a one-line string"  # the ingest's rule, for commands
        if channel == "MAIL" and req.sender_email:
            return sender_refusal(req.sender_email, self.limits.sender_allowlist)
        return None

    def render(self, req: NotifyRequest, plan: Plan) -> render.Rendered | str:
        try:
            return render.render(plan.entry.compiled, req.params, limits=self.render_limits)
        except render.RenderError as exc:
            return f"template '{req.template_name}' could not be rendered: {exc}"

    async def forward(
        self, req: NotifyRequest, plan: Plan, rendered: render.Rendered, headers: Headers
    ) -> str | None:
        record = {
            "templateName": req.template_name,
            "channel": plan.channel,
            "language": plan.language,
            "receivers": plan.receivers,
            "subject": rendered.subject,
            "body": rendered.body,
            "text": rendered.text,
            "attachments": req.attachments or [],
            "identifier": req.identifier,
            "processInstanceId": req.process_instance_id,
        }
        try:
            await self.forwarder.publish(req.reply_key.encode(), record, _header_map(headers))
        except DeliveryError as exc:
            self.metrics.sends.labels(plan.channel, "failed").inc()
            return str(exc)
        self.metrics.sends.labels(plan.channel, "forwarded").inc()
        return None

    async def deliver(
        self,
        key: bytes,
        req: NotifyRequest,
        plan: Plan,
        rendered: render.Rendered,
        state: State,
        headers: Headers,
    ) -> None:
        """Send to every receiver not yet handled, concurrently; record each as it finishes."""
        pending = [r for r in plan.receivers if r not in state.results]
        if not pending:
            state.done = True
            return
        slot = self._attachment_slots if req.attachments else contextlib.nullcontext()
        async with slot:
            attachments = await self.fetch_attachments(req)
            if isinstance(attachments, str):
                await self._refuse_rest(key, req, state, attachments)
                return
            notification = Notification(
                channel=plan.channel,
                recipient="",
                subject=rendered.subject,
                body=rendered.body,
                text=rendered.text,
                template_name=req.template_name,
                process_instance_id=req.process_instance_id,
                headers=_header_map(headers),
                attachments=attachments,
                from_email=req.sender_email if plan.channel == "MAIL" else None,
                from_name=req.sender_name if plan.channel == "MAIL" else None,
            )

            lanes = asyncio.Semaphore(RECEIVERS_IN_FLIGHT)

            async def one(receiver: str) -> None:
                # One id per (request, receiver): a receiver whose outcome a crash lost is
                # sent the same message again, with the same Message-ID.
                message = replace(
                    notification,
                    recipient=receiver,
                    message_key=keys.message_key(self.message_ids, key, state.digest, receiver),
                )
                async with lanes:
                    error, message_id = await self._send(message)
                state.results[receiver] = [error is None, error]
                self.save(key, state)
                event_type = ev.NOTIFICATION_SENT if error is None else ev.NOTIFICATION_FAILED
                await self._event(event_type, key, req, state, receiver, error, message_id)
                if message_id:
                    await self._track(key, req, plan.channel, receiver, message_id)

            await asyncio.gather(*(one(receiver) for receiver in pending))
        state.done = True

    async def _send(self, notification: Notification) -> tuple[str | None, str | None]:
        """(the failure, the provider's message id) of one receiver's send."""
        channel = self.channels[notification.channel]
        try:
            message_id = await channel.send(notification)
        except DeliveryError as exc:
            self.metrics.sends.labels(notification.channel, "failed").inc()
            return str(exc), None
        except Exception:  # a provider's client bug must fail this receiver, not the request
            log.exception("unexpected failure sending a %s notification", notification.channel)
            self.metrics.sends.labels(notification.channel, "failed").inc()
            return INTERNAL_ERROR, None
        self.metrics.sends.labels(notification.channel, "delivered").inc()
        return None, message_id

    async def _track(
        self, key: bytes, req: NotifyRequest, channel_name: str, receiver: str, message_id: str
    ) -> None:
        """Register the message for its provider's status reports, if it sends any."""
        channel = self.channels[channel_name]
        if not getattr(channel, "reports_status", False):
            return
        context = {
            "entryId": ev.entry_id("notify", key.decode("utf-8", "replace"), receiver),
            "processInstanceId": req.process_instance_id,
            "identifier": req.identifier,
            "templateName": req.template_name,
            "language": req.language,
            "channel": channel_name,
        }
        await self.receipts.register(channel.provider, message_id, receiver, context)

    async def fetch_attachments(self, req: NotifyRequest) -> tuple[Any, ...] | str:
        """Every attachment, within ``ATTACHMENT_MAX_BYTES`` together, or why not: no mail
        goes out with an attachment missing.

        The attachments are read at once, from one shared budget, and the first failure stops
        the reads still running (a request waits for no more than it needs to be refused). Of
        the reads that had failed by then, the reply names the first in the request's order
        whose failure is about the file itself (missing, unreadable, larger than the budget
        alone); failing that, with several that do not fit together, all of them. Which reads
        had failed by then depends on the store's timing.
        """
        if not req.attachments or self.store is None:
            return ()
        store, budget = self.store, ByteBudget(self.limits.attachment_max_bytes)
        lanes = asyncio.Semaphore(ATTACHMENT_READS_PER_REQUEST)

        async def read(item: dict[str, str]) -> Any:
            async with lanes:
                return await store.fetch(item["filename"], item["path"], budget)

        reads = [asyncio.ensure_future(read(item)) for item in req.attachments]
        try:
            done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in reads:
                task.cancel()  # nothing for those done; the rest close their bodies
            await asyncio.gather(*reads, return_exceptions=True)
        # What failed by the first failure: a read cancelled then may fail its own way after.
        errors: list[AttachmentError] = []
        for task in reads:
            exc = task.exception() if task in done else None
            if isinstance(exc, AttachmentError):
                errors.append(exc)
            elif exc is not None:
                raise exc
        if not errors:
            return tuple(task.result() for task in reads)
        first = next((e for e in errors if not e.over_budget), errors[0])
        if first.over_budget and len(req.attachments) > 1:
            names = ", ".join(a["filename"] for a in req.attachments)
            return f"attachments: together larger than {budget.limit} bytes ({names})"
        path = first.path if first.path.isprintable() else repr(first.path)  # internal topic
        return f"attachments: {first.filename} ({path}): {first.reason}"

    # -- the reply ---------------------------------------------------------------------------
    async def reply(self, req: NotifyRequest, state: State, headers: Headers, ts: Any) -> None:
        results = [
            {"receiver": receiver, "sent": sent, "error": error}
            for receiver, (sent, error) in state.results.items()
        ]
        error = state.error
        failed = [r for r in results if not r["sent"]]
        if error is None and failed:
            error = f"{len(failed)} of {len(results)} receivers not reached: " + "; ".join(
                f"{r['receiver']}: {r['error']}" for r in failed[:5]
            )
        body = records.notify_reply(
            req,
            channel=state.channel or req.channel,
            results=results,
            error=error,
            forwarded=state.forwarded,
        )
        body["language"] = state.language or req.language or self.limits.default_language
        outcome = _outcome(state, results, failed)
        await self.replies.send(body, req.reply_key, headers, ts, outcome)

    async def _internal_error(self, record: Inbound, command: dict[str, Any]) -> None:
        try:
            req = NotifyRequest(**command["r"])
        except Exception:
            await self.dead_letters.send(record, INTERNAL_ERROR)
            return
        body = records.notify_reply(req, channel=req.channel, results=[], error=INTERNAL_ERROR)
        try:
            await self.replies.send(
                body, req.reply_key, record.headers, command_received_at(command), "error"
            )
        except Exception:
            log.exception("could not answer %s", record.source)
            await self.dead_letters.send(record, INTERNAL_ERROR)

    # -- retention ---------------------------------------------------------------------------
    def expired(self, state: State) -> bool:
        return state.done and self.clock() - state.created > self.limits.replay_seconds

    async def expired_keys(self) -> list[bytes]:
        return await expired_keys(self.scan, State.from_dict, self.expired)


def request_digest(request: dict[str, Any]) -> str:
    return hashlib.sha256(codec.dumps(request)).hexdigest()[:16]


def _outcome(state: State, results: list[dict[str, Any]], failed: list[Any]) -> str:
    if state.forwarded:
        return "forwarded"
    if state.error is not None or not results:
        return "refused"
    if not failed:
        return "sent"
    return "partial" if len(failed) < len(results) else "failed"


def _header_map(headers: Headers) -> dict[str, bytes]:
    return {name: value for name, value in headers if value is not None}


@dataclass(frozen=True)
class NotifyFlows:
    """The handlers of the notification flow, wired to one outbox; built once per app."""

    ingest: NotifyIngest
    sender: NotifySender

    @classmethod
    def build(
        cls,
        *,
        rows: Rows,
        scan_of: Callable[[Rows], Scan],
        templates: Templates,
        channels: Mapping[str, Channel],
        forwarder: Forwarder,
        store: AttachmentSource | None,
        limits: NotifyLimits,
        render_limits: render.RenderLimits,
        outbox: Outbox,
        metrics: Metrics,
        clock: Clock,
        undecodable: Undecodable,
        secret: bytes,
    ) -> NotifyFlows:
        replies = NotifyReplies(outbox, metrics, limits, clock)
        dead_letters = DeadLetters(outbox, metrics)
        events = Events(outbox, metrics, clock)
        return cls(
            ingest=NotifyIngest(outbox, replies, dead_letters, limits, undecodable),
            sender=NotifySender(
                rows,
                scan_of(rows),
                templates,
                channels,
                forwarder,
                store,
                replies,
                dead_letters,
                limits,
                render_limits,
                metrics,
                clock,
                events,
                Receipts(outbox, clock),
                keys.subkey(secret, keys.MESSAGE_ID),
            ),
        )


EXPIRE_COMMAND = codec.dumps({"k": EXPIRE})
