"""Template validation and previews in child processes, under a hard wall-clock limit.

The render budget (:mod:`app.core.render`) is cooperative: it checks its deadline between steps,
and a single step that Python cannot interrupt (Jinja's lexer on a pathological body, one large
C-level operation) is bounded only by its size. Saves and previews take templates straight
from an API client, so they run here instead, in a few long-lived child processes
(``python -m app.render_pool``), each job under a timeout: a child that overruns is killed and
replaced, and the worker's event loop, which also answers ``/health`` and consumes Kafka, never
waits on a template.

Children are spawned, not forked (the worker has threads), start lazily, are replaced after a
crash or a kill, and speak length-prefixed JSON (:mod:`app.codec`) over their stdin and stdout:
a 4-byte big-endian length, then the document. A job waits for a free child; past
``max_waiting`` waiting jobs the pool answers :class:`RenderPoolBusy` at once, so a flood of
hostile saves costs a bounded amount of memory.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import os
import signal
import struct
import sys
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, BinaryIO

from app import codec
from app.core import render
from app.core import templates as model

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
#: Largest frame either side accepts: a preview carries the body and its text alternative.
MAX_FRAME_BYTES = 256 * 1024 * 1024
#: Extra seconds a job may take over its render budget: process switch, JSON, pipes.
IPC_ALLOWANCE_SECONDS = 0.25
#: A child has this long to import the renderer and say it is ready.
START_TIMEOUT_SECONDS = 30.0
#: A stored template compiled, with its trial render, within one job's limit when it was saved;
#: compiling it again gets this many times that, room for a busy machine that still stops a
#: body no save would have accepted.
STORED_COMPILE_FACTOR = 4


class RenderPoolError(Exception):
    """The pool could not give an answer about the template; ``str()`` is safe to show."""


class RenderTimeout(RenderPoolError):
    """The job ran over its hard limit; the child was killed."""


class RenderCrashed(RenderPoolError):
    """The child died on the job (most likely out of memory: the template's doing)."""


class RenderJobInvalid(RenderPoolError):
    """The job cannot be sent to a renderer (data nested deeper than JSON encoders go)."""


class RenderPoolBusy(RenderPoolError):
    """Too many jobs are waiting for a child; retry later."""


class RenderPoolUnavailable(RenderPoolError):
    """No child could be started, or the pool is closed."""


def _memory_limit(limits: render.RenderLimits) -> int:
    """Address space of a child: the interpreter and Jinja, plus room for one render's text."""
    return 1024 * 1024 * 1024 + 64 * limits.max_output


#: What a renderer's environment keeps of the worker's: how to find Python and the package,
#: and the locale. Never the rest (OTP_HMAC_SECRET, tokens, provider keys): a child runs
#: templates from API clients, and a way out of Jinja's sandbox must find no secret there.
_CHILD_ENV = frozenset({"PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV"})


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in environ.items()
        if name in _CHILD_ENV or name.startswith(("PYTHON", "LC_"))
    }


class _Child:
    """One renderer process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def read(self) -> Any:
        assert self.proc.stdout is not None
        (size,) = _HEADER.unpack(await self.proc.stdout.readexactly(_HEADER.size))
        if size > MAX_FRAME_BYTES:
            raise RenderCrashed("the template renderer sent an oversized answer")
        return codec.loads(await self.proc.stdout.readexactly(size))

    async def ask(self, frame: bytes) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(_HEADER.pack(len(frame)) + frame)
        await self.proc.stdin.drain()
        return await self.read()

    def kill(self) -> None:
        """SIGKILL, without waiting: asyncio's child watcher reaps the process."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


class _Slots:
    """A semaphore whose urgent waiters go first: the read model's compiles (every send of a
    template waits for one) before the API's checks and previews."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._urgent: collections.deque[asyncio.Future[None]] = collections.deque()
        self._normal: collections.deque[asyncio.Future[None]] = collections.deque()

    def locked(self) -> bool:
        return self.free == 0

    async def acquire(self, *, urgent: bool = False) -> None:
        if self.free > 0 and not (self._urgent or self._normal):
            self.free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._normal).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted, then cancelled before it could be used
            raise

    def release(self) -> None:
        for waiters in (self._urgent, self._normal):
            while waiters:
                granted = waiters.popleft()
                if not granted.done():
                    granted.set_result(None)
                    return
        self.free += 1


class RenderPool:
    """A few renderer processes shared by the template API (see the module docstring).

    Create it anywhere (nothing starts until the first job), use it from one event loop, and
    ``await close()`` when the worker stops.
    """

    def __init__(
        self,
        limits: render.RenderLimits,
        *,
        size: int = 2,
        max_waiting: int = 32,
        ipc_allowance: float = IPC_ALLOWANCE_SECONDS,
        start_timeout: float = START_TIMEOUT_SECONDS,
        memory_limit: int | None = None,
    ) -> None:
        if size < 1 or max_waiting < 0:
            raise ValueError("a render pool needs at least one child")
        self.limits = limits
        self.size = size
        self.max_waiting = max_waiting
        self.ipc_allowance = ipc_allowance
        self.start_timeout = start_timeout
        self.memory_limit = _memory_limit(limits) if memory_limit is None else memory_limit
        self._slots = _Slots(size)
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._waiting = 0
        self._closed = False

    @property
    def job_timeout(self) -> float:
        """Hard limit of one job: a compile and a render, each with the render budget."""
        return 2 * self.limits.timeout_ms / 1000 + self.ipc_allowance

    @property
    def compile_timeout(self) -> float:
        """Hard limit of compiling a stored template (:meth:`compile`)."""
        return STORED_COMPILE_FACTOR * self.job_timeout

    def timeout_message(self) -> str:
        return (
            "the template ran over its time budget "
            f"(RENDER_TIMEOUT_MS={self.limits.timeout_ms}); the renderer was stopped"
        )

    # ------------------------------------------------------------------ jobs

    async def validate(
        self, payload: Any, *, default_language: str, max_body_chars: int, otp_length: int
    ) -> dict[str, Any]:
        """:func:`app.core.templates.validate` plus a trial render; the template as stored.

        The cheap field checks run here, so what goes to the child is the normalized template
        (plain, bounded JSON) rather than whatever the client sent. Raises
        :class:`~app.core.templates.TemplateInvalid` (the template's problems) or
        :class:`RenderPoolError`.
        """
        template = model.check_fields(
            payload, default_language=default_language, max_body_chars=max_body_chars
        )
        reply = await self._run(
            {
                "op": "validate",
                "payload": template,
                "default_language": default_language,
                "max_body_chars": max_body_chars,
                "otp_length": otp_length,
                "limits": asdict(self.limits),
            }
        )
        if reply.get("ok"):
            return reply["template"]
        problems = reply.get("problems") or [{"field": "body", "message": "invalid template"}]
        raise model.TemplateInvalid([model.Problem(p["field"], p["message"]) for p in problems])

    async def preview(
        self, template: Mapping[str, Any], data: Mapping[str, Any]
    ) -> render.Rendered:
        """Compile (cached per version in the child) and render a stored template.

        Raises :class:`~app.core.render.TemplateError`, :class:`~app.core.render.RenderError`
        or :class:`RenderPoolError`.
        """
        reply = await self._run(
            {
                "op": "preview",
                "key": [template.get("name"), template.get("language"), template.get("version")],
                "subject": template.get("subject"),
                "body": template.get("body"),
                "html": model.is_html(str(template.get("type"))),
                "data": data,
                "limits": asdict(self.limits),
            }
        )
        if reply.get("ok"):
            return render.Rendered(subject=reply["subject"], body=reply["body"], text=reply["text"])
        field, line, message = reply.get("field", "body"), reply.get("line"), reply["message"]
        if reply.get("error") == "template":
            raise render.TemplateError(field, line, message)
        raise render.RenderError(field, line, message)

    async def compile(self, template: Mapping[str, Any]) -> render.CompiledTemplate:
        """A stored template compiled in a child and loaded here, where rendering happens.

        What every worker's read model calls for each template version it reads: compiling
        costs up to seconds of steps Python cannot interrupt (the size of a body bounds it,
        not the render budget), which here would hold the event loop. It goes before the API's
        jobs, and is never refused for their number: its callers are few (the read model,
        one job at a time, and a view applying the write it made). Raises
        :class:`~app.core.render.TemplateError` or :class:`RenderPoolError`.
        """
        reply = await self._run(
            {
                "op": "compile",
                "subject": template.get("subject"),
                "body": template.get("body"),
                "html": model.is_html(str(template.get("type"))),
                "limits": asdict(self.limits),
            },
            timeout=self.compile_timeout,
            urgent=True,
        )
        if not reply.get("ok"):
            field, line, message = reply.get("field", "body"), reply.get("line"), reply["message"]
            raise render.TemplateError(field, line, message)
        try:
            subject = reply["subject"]
            code = render.CompiledCode(
                subject=base64.b64decode(subject) if subject is not None else None,
                body=base64.b64decode(reply["body"]),
                html=bool(reply["html"]),
                variables=frozenset(reply["variables"]),
            )
            return render.load_compiled(code)
        except (KeyError, TypeError, ValueError, EOFError):
            raise RenderCrashed("the template renderer sent a malformed answer") from None

    async def start(self) -> None:
        """Start every child now rather than on first use: every worker's read model compiles
        each template version it reads here, and a template saved on one worker must be
        usable on the others within moments, not after a child's start (a second or more on
        a busy machine). A child that cannot start is logged; jobs start one later."""
        if self._closed:
            return
        held = 0
        try:
            for _ in range(self.size):  # every slot: no job spawns a child meanwhile
                await self._slots.acquire(urgent=True)
                held += 1
            started = await asyncio.gather(
                *(self._spawn() for _ in range(self.size - len(self._idle))),
                return_exceptions=True,
            )
        finally:
            for _ in range(held):
                self._slots.release()
        for child in started:
            if isinstance(child, _Child):
                self._idle.append(child)
            elif isinstance(child, asyncio.CancelledError):
                raise child

    # ------------------------------------------------------------------ machinery

    async def _run(
        self, job: Mapping[str, Any], *, timeout: float | None = None, urgent: bool = False
    ) -> dict[str, Any]:
        if self._closed:
            raise RenderPoolUnavailable("the template renderer is shutting down")
        try:
            frame = codec.dumps(job)
        except TypeError:  # orjson: nested deeper than 254 levels, an integer over 64 bits
            raise RenderJobInvalid(
                "the request is nested too deeply or holds a number out of range"
            ) from None
        if self._slots.locked() and self._waiting >= self.max_waiting and not urgent:
            raise RenderPoolBusy("too many templates are being checked at once; retry")
        if urgent:
            await self._slots.acquire(urgent=True)
        else:
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        try:
            child = await self._child()
            self._busy.add(child)
            try:
                reply = await asyncio.wait_for(child.ask(frame), timeout or self.job_timeout)
            except TimeoutError:
                log.warning("template renderer %s over its time limit: killed", child.proc.pid)
                child.kill()
                raise RenderTimeout(self.timeout_message()) from None
            except (asyncio.IncompleteReadError, ConnectionError, RenderCrashed, ValueError):
                log.warning("template renderer %s failed on a template", child.proc.pid)
                child.kill()
                raise RenderCrashed(
                    "the template renderer failed on this template "
                    "(it may have needed too much memory)"
                ) from None
            except BaseException:  # cancelled mid-job: the child's state is unknown
                child.kill()
                raise
            finally:
                self._busy.discard(child)
            if self._closed:
                child.kill()
            else:
                self._idle.append(child)
            if not isinstance(reply, dict):
                raise RenderCrashed("the template renderer sent a malformed answer")
            return reply
        finally:
            self._slots.release()

    async def _child(self) -> _Child:
        """An idle child that is still alive (one may have died between jobs), or a new one."""
        while self._idle:
            child = self._idle.pop()
            if child.proc.returncode is None:
                return child
            log.warning("template renderer %s exited while idle", child.proc.pid)
        return await self._spawn()

    async def _spawn(self) -> _Child:
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app.render_pool",
                str(self.memory_limit),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=child_environment(os.environ),
            )
        except OSError as exc:
            log.error("cannot start a template renderer: %s", exc)
            raise RenderPoolUnavailable("the template renderer could not be started") from None
        child = _Child(proc)
        try:
            hello = await asyncio.wait_for(child.read(), self.start_timeout)
            if hello != {"ready": True}:
                raise ValueError("unexpected greeting")
        except BaseException as exc:
            child.kill()
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.error("template renderer %s did not start: %r", proc.pid, exc)
            raise RenderPoolUnavailable("the template renderer could not be started") from None
        log.info("template renderer started (pid %s)", proc.pid)
        return child

    async def close(self, grace: float = 2.0) -> None:
        """Stop every child: idle ones get EOF and exit, the rest are killed after ``grace``."""
        self._closed = True
        children = [*self._idle, *self._busy]
        self._idle.clear()
        for child in children:
            if child.proc.stdin is not None and not child.proc.stdin.is_closing():
                child.proc.stdin.close()
        for child in children:
            try:
                await asyncio.wait_for(child.proc.wait(), grace)
            except TimeoutError:
                child.kill()


# ---------------------------------------------------------------------- child process


def _safe(text: str) -> str:
    """Error text as JSON can carry it (a lone surrogate from a template cannot be)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _located(kind: str, exc: render.RenderError | render.TemplateError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": kind,
        "field": exc.field,
        "line": exc.line,
        "message": _safe(exc.message),
    }


def handle(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run one job in the child; every outcome is an answer, never an exception."""
    limits = render.RenderLimits(**job["limits"])
    if job.get("op") == "validate":
        try:
            template, compiled = model.validate(
                job["payload"],
                default_language=job["default_language"],
                max_body_chars=job["max_body_chars"],
                limits=limits,
            )
            model.trial_render(template, compiled, limits=limits, otp_length=job["otp_length"])
        except model.TemplateInvalid as exc:
            return {
                "ok": False,
                "problems": [{"field": p.field, "message": _safe(p.message)} for p in exc.problems],
            }
        return {"ok": True, "template": template}
    if job.get("op") == "preview":
        try:
            compiled = render.compile_cached(
                tuple(job["key"]), job["subject"], job["body"], html=bool(job["html"])
            )
        except render.TemplateError as exc:
            return _located("template", exc)
        try:
            rendered = render.render(compiled, job["data"], limits=limits)
        except render.RenderError as exc:
            return _located("render", exc)
        return {"ok": True, **asdict(rendered)}
    if job.get("op") == "compile":
        try:
            code = render.compile_code(
                job["subject"], job["body"], html=bool(job["html"]), limits=limits
            )
        except render.TemplateError as exc:
            return _located("template", exc)
        return {
            "ok": True,
            "subject": _b64(code.subject) if code.subject is not None else None,
            "body": _b64(code.body),
            "html": code.html,
            "variables": sorted(code.variables),
        }
    return _failure("unknown job")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _failure(message: str) -> dict[str, Any]:
    """An answer that fits both jobs: a validate reads ``problems``, a preview the rest."""
    return {
        "ok": False,
        "error": "render",
        "field": "body",
        "message": message,
        "problems": [{"field": "body", "message": message}],
    }


def _write(out: BinaryIO, document: Any) -> None:
    data = codec.dumps(document)
    out.write(_HEADER.pack(len(data)) + data)
    out.flush()


def _read_exactly(inp: BinaryIO, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = inp.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    """The child: answer jobs until stdin closes (the worker stopped or closed the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the worker, which stops us
    if argv:
        _limit_memory(argv[0])
    # Our stdout is the reply pipe: anything else that prints goes to stderr (the worker's log).
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # Jinja builds its lexer on first use: pay that before the first job's clock starts.
    for html in (True, False):
        render.render(render.compile_template("[[${a}]]", "[[${a}]]", html=html), {"a": 1})
    _write(out, {"ready": True})
    return _serve(sys.stdin.buffer, out)


def _limit_memory(limit: str) -> None:
    """Cap the child's address space, so a template that allocates wildly fails alone.

    Best effort: without ``resource`` (not POSIX) or a limit the system refuses,
    the child runs unlimited, still stopped by the job timeout.
    """
    try:
        import resource

        size = int(limit)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    except (ImportError, ValueError, OSError):
        pass


def _serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Answer framed jobs until the input closes (0) or a frame is too large to trust (2)."""
    while True:
        header = _read_exactly(inp, _HEADER.size)
        if header is None:
            return 0
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME_BYTES:
            return 2
        data = _read_exactly(inp, size)
        if data is None:
            return 0
        reply = _answer(data)
        try:
            _write(out, reply)
        except (TypeError, ValueError):  # not encodable: say so rather than die
            _write(out, _failure("the template produced text that cannot be sent"))


def _answer(data: bytes) -> dict[str, Any]:
    """The reply to one frame: whatever goes wrong becomes an answer, never a silent hang."""
    try:
        return handle(codec.loads(data))
    except MemoryError:
        return _failure("the template ran out of memory")
    except Exception as exc:  # a bug here must not become a silent hang in the worker
        print(f"template renderer: job failed: {type(exc).__name__}", file=sys.stderr)
        return _failure("the template could not be checked")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
