"""The template read model: the changelog in order, and this worker's own writes ahead of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest

from app import codec
from app.core import render
from app.core.templates import is_html, template_key
from app.render_pool import RenderCrashed, RenderPool, RenderPoolUnavailable, RenderTimeout
from tables.template_cache import Compiler, TemplateCache

KEY = template_key("otpMail", "en")


async def compile_here(data: Mapping[str, Any]) -> render.CompiledTemplate:
    """The compile the render pool's children run, run in this process (the rules tested
    here are about order, not where the compiling happens)."""
    return render.compile_template(data["subject"], data["body"], html=is_html(data["type"]))


def cache(compile: Compiler = compile_here) -> TemplateCache:
    return TemplateCache("127.0.0.1:1", "templates-changelog", 4, "en", "template-results", compile)


def template(version: int, subject: str = "s") -> dict:
    return {
        "name": "otpMail",
        "language": "en",
        "type": "MAIL",
        "subject": subject,
        "body": "<p th:text='${otpValue}'></p>",
        "params": [],
        "version": version,
    }


def record(version: int, subject: str = "s") -> bytes:
    return codec.dumps({**template(version, subject), "_requestId": "r"})


def versions(c: TemplateCache) -> list[int]:
    return [t["version"] for t in c.all()]


async def test_changelog_in_order_and_private_fields_dropped() -> None:
    c = cache()
    await c.apply(KEY, record(1))
    await c.apply(KEY, record(2, "new"))
    [stored] = c.all()
    assert stored["version"] == 2 and stored["subject"] == "new"
    assert "_requestId" not in stored
    await c.apply(KEY, None)
    assert c.all() == []


async def test_own_write_is_not_undone_by_the_changelog_catching_up() -> None:
    c = cache()
    await c.apply(KEY, record(1))
    await c.apply_own(KEY, template(2, "mine"))
    await c.apply(KEY, record(1))  # still in flight when the view applied v2
    assert versions(c) == [2]
    await c.apply(KEY, record(2, "mine"))
    assert c.get("otpMail", "en").data["subject"] == "mine"


async def test_own_delete_is_not_undone_by_an_older_record_in_flight() -> None:
    c = cache()
    await c.apply(KEY, record(1))
    await c.apply_own(KEY, template(2))
    await c.apply_own(KEY, None)  # the view deleted v2 before the changelog delivered it
    await c.apply(KEY, record(2))  # the changelog catches up: v2, then the tombstone
    assert c.all() == []
    await c.apply(KEY, None)
    assert c.all() == []


async def test_recreate_after_delete() -> None:
    c = cache()
    await c.apply(KEY, record(1))
    await c.apply(KEY, record(2))
    await c.apply_own(KEY, None)
    await c.apply_own(KEY, template(1, "again"))  # a new template starts at version 1
    assert c.get("otpMail", "en").data["subject"] == "again"
    await c.apply(KEY, None)  # the delete's tombstone: of the template before this one
    assert c.get("otpMail", "en").data["subject"] == "again"
    await c.apply(KEY, record(1, "again"))  # the re-create's record, after the tombstone
    assert c.get("otpMail", "en").data["subject"] == "again"
    await c.apply(KEY, None)  # a later delete, by another worker
    assert versions(c) == []


async def test_delete_before_the_map_caught_up_skips_everything_until_the_tombstone() -> None:
    c = cache()
    await c.apply_own(KEY, None)
    await c.apply(KEY, record(7))
    assert c.all() == []
    await c.apply(KEY, None)
    await c.apply(KEY, record(1, "new"))
    assert versions(c) == [1]


async def test_sends_use_the_published_version_while_a_draft_waits() -> None:
    c = cache()
    await c.apply(KEY, record(1))
    published = c.resolve("otpMail", "en")
    draft = {**template(1, "draft subject"), "savedBy": "editor", "baseVersion": 1}
    await c.apply(KEY, codec.dumps({**template(1), "_draft": draft}))
    entry = c.resolve("otpMail", "en")
    assert entry is not None and published is not None
    assert entry.data["subject"] == "s" and entry.compiled is published.compiled
    assert entry.draft is not None and entry.draft["subject"] == "draft subject"
    assert "_draft" not in entry.data
    await c.apply_own(KEY, {**template(2, "draft subject")}, None)  # published
    entry = c.resolve("otpMail", "en")
    assert entry is not None and entry.data["subject"] == "draft subject" and entry.draft is None


async def test_an_older_draft_record_does_not_replace_a_newer_one() -> None:
    """Two workers save drafts one after the other: whichever order this worker learns of them
    in (its own answer, the changelog), it keeps the newer."""
    c = cache()
    newer = {**template(1, "second"), "savedBy": "b"}
    await c.apply(KEY, codec.dumps({**template(1), "_draft": newer, "_rev": 3}))
    await c.apply_own(KEY, template(1), {**template(1, "first"), "savedBy": "a"}, 2)
    entry = c.resolve("otpMail", "en")
    assert entry is not None and entry.draft is not None and entry.draft["subject"] == "second"
    await c.apply(KEY, codec.dumps({**template(1), "_rev": 4}))  # then discarded
    entry = c.resolve("otpMail", "en")
    assert entry is not None and entry.draft is None


async def test_a_newer_version_wins_whatever_its_revision() -> None:
    """Rows written before revisions were counted (a rolling upgrade) have none."""
    c = cache()
    await c.apply(KEY, codec.dumps({**template(5), "_rev": 5}))
    await c.apply(KEY, codec.dumps(template(6)))
    await c.apply(KEY, codec.dumps({**template(7), "_rev": 1}))
    assert versions(c) == [7]


#: About a second of compiling (Jinja's code generator and Python's ``compile``, which no
#: budget can interrupt), all of it valid.
SLOW_BODY = "{{ a.b.c.d.e.f.g.h }}" * 2000


async def test_a_version_compiles_in_a_renderer_while_the_event_loop_goes_on() -> None:
    pool = RenderPool(render.RenderLimits(timeout_ms=2000), size=1)
    try:
        c = cache(pool.compile)
        await c.apply(KEY, record(1))  # the renderer has started
        lags: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            while not done.is_set():
                started = time.monotonic()
                await asyncio.sleep(0.005)
                lags.append(time.monotonic() - started)

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        await c.apply(KEY, codec.dumps({**template(2), "type": "SMS", "body": SLOW_BODY}))
        took = time.monotonic() - started
        done.set()
        await ticker
        entry = c.get("otpMail", "en")
        assert entry is not None and entry.version == 2 and entry.compiled is not None
        assert entry.compiled.variables == {"a"}
        data: dict[str, Any] = {"h": "x"}
        for name in "gfedcb":
            data = {name: data}
        assert render.render(entry.compiled, {"a": data}).body == "x" * 2000
        assert took > 0.3, took  # the compile was slow enough to show a stall
        assert max(lags) < took / 2, (max(lags), took)
    finally:
        await pool.close()


async def test_a_version_over_the_compile_limit_is_kept_without_its_compiled_form() -> None:
    """A body no save accepted (a forged changelog or command record) is stopped at the
    renderer's limit: the template is listed, and sends using it are refused."""
    # 0.4 s to compile a stored version: seconds short for this body, ample for a small one.
    pool = RenderPool(render.RenderLimits(timeout_ms=50), size=1, ipc_allowance=0.0)
    try:
        c = cache(pool.compile)
        await c.apply(KEY, codec.dumps({**template(1), "body": SLOW_BODY * 5}))
        entry = c.get("otpMail", "en")
        assert entry is not None and entry.version == 1 and entry.compiled is None
        await c.apply(KEY, record(2))  # a fresh renderer for the next version
        entry = c.get("otpMail", "en")
        assert entry is not None and entry.compiled is not None
        await c.apply(KEY, codec.dumps({**template(3), "body": "{{ }"}))
        entry = c.get("otpMail", "en")
        assert entry is not None and entry.version == 3 and entry.compiled is None
    finally:
        await pool.close()


async def test_a_version_that_does_not_compile_is_kept_without_its_compiled_form() -> None:
    c = cache()
    await c.apply(KEY, codec.dumps({**template(1), "body": "{{ }"}))
    entry = c.get("otpMail", "en")
    assert entry is not None and entry.compiled is None


def gated_compiler() -> tuple[asyncio.Event, Compiler]:
    """A compiler that holds every compile until the event is set."""
    gate = asyncio.Event()

    async def gated(data: Mapping[str, Any]) -> render.CompiledTemplate:
        await gate.wait()
        return await compile_here(data)

    return gate, gated


async def test_a_newer_version_applied_while_an_older_one_compiles_is_kept() -> None:
    gate, gated = gated_compiler()
    c = cache(gated)
    older = asyncio.create_task(c.apply(KEY, record(1)))
    await asyncio.sleep(0)
    mine = asyncio.create_task(c.apply_own(KEY, template(2, "mine")))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(older, mine)
    assert versions(c) == [2]
    assert c.get("otpMail", "en").compiled is not None


async def test_a_delete_applied_while_an_older_version_compiles_holds() -> None:
    """This worker deletes while the changelog's record of the template compiles."""
    gate, gated = gated_compiler()
    c = cache(gated)
    older = asyncio.create_task(c.apply(KEY, record(1)))
    await asyncio.sleep(0)
    delete = asyncio.create_task(c.apply_own(KEY, None))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(older, delete)
    assert versions(c) == []
    await c.apply(KEY, None)  # the delete's tombstone
    assert versions(c) == []


async def test_a_tombstone_read_while_an_own_write_compiles_holds() -> None:
    """Another worker deletes the template this worker's view just wrote: the tombstone is
    read while the view's write compiles, and the template stays deleted."""
    gate, gated = gated_compiler()
    c = cache(gated)
    mine = asyncio.create_task(c.apply_own(KEY, template(1, "mine")))
    await asyncio.sleep(0)
    tombstone = asyncio.create_task(c.apply(KEY, None))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(mine, tombstone)
    assert versions(c) == []


async def test_a_version_whose_compile_failed_compiles_with_its_next_record() -> None:
    """A renderer that failed for a moment (killed, a busy machine) leaves the version
    without its compiled form only until the row's next record, a draft saved for one."""
    failures = [RenderCrashed("gone"), RenderCrashed("gone again")]

    async def flaky(data: Mapping[str, Any]) -> render.CompiledTemplate:
        if failures:
            raise failures.pop(0)
        return await compile_here(data)

    c = cache(flaky)
    await c.apply(KEY, record(1))  # failed twice: tried once more, then given up
    assert c.get("otpMail", "en").compiled is None
    await c.apply(KEY, codec.dumps({**template(1), "_draft": template(1, "d"), "_rev": 2}))
    entry = c.get("otpMail", "en")
    assert entry.compiled is not None and entry.draft is not None
    failures.append(RenderTimeout("slow"))
    await c.apply(KEY, record(2))  # one failure, then compiled on the second try
    assert c.get("otpMail", "en").compiled is not None


async def test_a_renderer_gone_on_the_second_try_never_compiles_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body that overran a renderer's limit, or killed it, is never compiled in the worker
    (no limit there), even when the renderers are gone by the second try (a shutdown)."""
    failures: list[Exception] = [RenderCrashed("killed"), RenderPoolUnavailable("shutting down")]

    async def failing(data: Mapping[str, Any]) -> render.CompiledTemplate:
        raise failures.pop(0)

    def here(*args: Any, **kwargs: Any) -> render.CompiledTemplate:
        raise AssertionError("compiled in the worker")

    monkeypatch.setattr(render, "compile_template", here)
    c = cache(failing)
    await c.apply(KEY, record(1))
    assert c.get("otpMail", "en").compiled is None and failures == []
