"""Notification template compilation and rendering.

Templates are authored by API users in the Thymeleaf subset used by FlowX.AI
notification templates.  Instead of embedding a Thymeleaf engine we translate
that subset to Jinja2 source *once per template version* and compile it with
Jinja2's sandbox, because the bodies are untrusted input: they must not reach
Python internals, the file system or other templates.

Supported syntax (everything else inside ``${...}`` is a compile error, which
also closes the door on expression-injection such as ``${T(java.lang.Runtime)}``):

* ``[(${x})]`` inline, unescaped; ``[[${x}]]`` inline, escaped (HTML templates).
* ``th:text`` / ``th:utext`` (also ``data-th-*``): replace the element content.
* ``th:if`` / ``th:unless``: keep or drop the whole element, tag included,
  using Thymeleaf truthiness (see :func:`_thymeleaf_truthy`).
* ``${name.path}``: a dotted path of identifiers looked up in nested mappings.
* Plain Jinja2 (``{{ x }}``, ``{% if %}`` ...) passes through unchanged.

The translation keeps the line count of the source intact (removed text that
contained newlines is replaced by Jinja comments holding the same newlines),
so Jinja's line numbers in errors point at the user's original line.

**The render budget.**  Jinja's sandbox keeps templates away from Python
internals but not away from the CPU or the memory: renders run on the worker's
event loop, so one template looping ``100000 * 100000`` times, or printing
``'x'|center(10**9)``, would silence the worker.  Every render therefore runs
under a :class:`RenderLimits` budget enforced *inside* the sandbox:

* a wall-clock deadline (``RENDER_TIMEOUT_MS``), checked at every loop
  iteration, call, filter, intercepted operator and output chunk;
* at most :data:`MAX_LOOP_ITERATIONS` loop iterations and as many calls
  (every ``{% for %}`` iterable is wrapped at compile time by a counting
  generator);
* at most ``RENDER_MAX_OUTPUT_BYTES`` of output, and no single string or
  container larger than that: every primitive whose result size the template
  controls (``+ * ** % ~``, ``center``/``indent``/``format``/``join``/...,
  the allowed ``str`` methods) checks the size *before* computing it, and
  every value the template builds is measured (shared references counted as
  often as they would print, so ``[a, a]`` nested 40 times is refused rather
  than compared or printed in exponential time);
* at most :data:`ALLOCATION_FACTOR` times that in text built along the way;
* methods of builtin values only from an allowlist.

Over budget is a :class:`RenderBudgetError` (a :class:`RenderError`) whose
message names the limit.  The budget is cooperative: a single C-level step
cannot be interrupted, so each one is bounded in size instead; the HTTP API
additionally renders in child processes with a hard timeout
(:mod:`app.render_pool`).

This module is deliberately pure (stdlib + jinja2 + markupsafe): it is used by
the stream agents, the HTTP API (save-time validation) and tests alike.
"""

from __future__ import annotations

import functools
import marshal
import re
import string
import time
import traceback
import types
from collections import abc, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from jinja2 import Template, TemplateSyntaxError, nodes
from jinja2 import filters as jinja_filters
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import FilterArgumentError, SecurityError, UndefinedError
from jinja2.runtime import Context, LoopContext, Undefined, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Cycler, Joiner, Namespace, _PassArg, missing, pass_context
from markupsafe import EscapeFormatter, Markup, escape, soft_str

from app.core.errors import RenderError, TemplateError
from app.core.text import html_to_text
from app.core.thymeleaf import translate

__all__ = [
    "ALLOCATION_FACTOR",
    "DEFAULT_LIMITS",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "MAX_LOOP_ITERATIONS",
    "CompiledCode",
    "CompiledTemplate",
    "RenderBudgetError",
    "RenderError",
    "RenderLimits",
    "Rendered",
    "TemplateError",
    "compile_cached",
    "compile_code",
    "compile_template",
    "html_to_text",
    "load_compiled",
    "missing_mandatory",
    "render",
    "unused_mandatory",
]

# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CompiledTemplate:
    """A template version compiled once and rendered many times."""

    subject: Template | None
    body: Template
    html: bool
    #: top-level data names the subject+body reference (Jinja globals excluded)
    variables: frozenset[str]


@dataclass(frozen=True)
class Rendered:
    """Output of :func:`render`."""

    subject: str | None
    body: str
    #: plain-text alternative of an HTML body (for multipart mail); None for text templates
    text: str | None


# --------------------------------------------------------------------------- limits

#: Loop iterations one render may run (all loops together), and as many calls. A notification
#: that needs more is not a notification; Jinja's sandbox already caps one ``range()`` there.
MAX_LOOP_ITERATIONS = 100_000
#: Items in one list, tuple or dict a template builds (``[x] * n``, ``s|list``, ``s.split()``).
MAX_ITEMS = 100_000
#: Filters that run Python code per item of their input (sort, groupby, min, xmlattr...) take at
#: most this many items, so that one filter call stays far below the time budget.
MAX_SLOW_ITEMS = 10_000
#: ... and the ones that run Python code per word or character (wordwrap, urlize, title,
#: pprint, tojson with indent) at most this many characters.
MAX_SLOW_TEXT = 65_536
#: Integers a template computes (``9**1024**1024``, ``x*x`` in a loop): Python prints at most
#: 4300 digits (14,284 bits) anyway, so anything much larger is only a way to burn CPU.
MAX_INT_BITS = 65_536
#: Text built along the way (intermediate strings, ``~`` in a loop, macro output) may total
#: this many times ``RENDER_MAX_OUTPUT_BYTES`` before the render is stopped.
ALLOCATION_FACTOR = 16
#: Digits of ``round(x, n)``: ``10**n`` is computed, so ``n`` must stay small.
MAX_ROUND_DIGITS = 1000


@dataclass(frozen=True)
class RenderLimits:
    """The budget of one render (subject and body together), and of one compile's folding.

    ``timeout_ms`` and ``max_output`` are ``RENDER_TIMEOUT_MS`` and
    ``RENDER_MAX_OUTPUT_BYTES``; ``max_output`` is also the largest string or
    container a template may build on the way.
    """

    timeout_ms: int = 200
    max_output: int = 1024 * 1024
    max_iterations: int = MAX_LOOP_ITERATIONS

    def __post_init__(self) -> None:
        if self.timeout_ms <= 0 or self.max_output <= 0 or self.max_iterations <= 0:
            raise ValueError("render limits must be positive")


DEFAULT_LIMITS = RenderLimits()


class RenderBudgetError(RenderError):
    """A render stopped by the budget or by a sandbox rule (see the module docstring).

    Unlike other render errors these do not depend on the data's shape, so the
    API refuses a template whose trial render raises one.  ``rule`` names the
    limit, e.g. ``RENDER_TIMEOUT_MS``.
    """

    def __init__(self, field: str, line: int | None, message: str, rule: str) -> None:
        super().__init__(field, line, message)
        self.rule = rule


class _Refused(SecurityError):
    """Raised inside the sandbox when a budget or rule is hit.

    A ``SecurityError`` so that Jinja treats it like its own sandbox refusals;
    the message is shown to the template author, so it never holds data.
    """

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message)
        self.reason = message
        self.rule = rule


class _Budget:
    """Counters and deadline of one render; held in :data:`_BUDGET`, one per render."""

    __slots__ = (
        "allocated",
        "calls",
        "cap",
        "deadline",
        "iterations",
        "limits",
        "max_allocated",
    )

    def __init__(self, limits: RenderLimits, *, timed: bool = True) -> None:
        self.limits = limits
        self.cap = limits.max_output
        self.max_allocated = limits.max_output * ALLOCATION_FACTOR
        self.deadline = time.monotonic() + limits.timeout_ms / 1000 if timed else float("inf")
        self.iterations = 0
        self.calls = 0
        self.allocated = 0

    # -- refusals: one place for every message, so each names its limit

    def over_time(self) -> _Refused:
        return _Refused(
            f"the template ran over its time budget (RENDER_TIMEOUT_MS={self.limits.timeout_ms})",
            "RENDER_TIMEOUT_MS",
        )

    def too_large(self) -> _Refused:
        return _Refused(
            f"the template built a value larger than RENDER_MAX_OUTPUT_BYTES={self.cap} characters",
            "RENDER_MAX_OUTPUT_BYTES",
        )

    def too_much_output(self, unit: str = "characters") -> _Refused:
        return _Refused(
            f"the template produced more than RENDER_MAX_OUTPUT_BYTES={self.cap} {unit}",
            "RENDER_MAX_OUTPUT_BYTES",
        )

    # -- checks

    def tick(self) -> None:
        """The deadline check every guarded step makes; ``monotonic`` is a vDSO call."""
        if time.monotonic() > self.deadline:
            raise self.over_time()

    def count_call(self) -> None:
        self.calls += 1
        if self.calls > self.limits.max_iterations:
            raise _Refused(
                f"the template made more than {self.limits.max_iterations} calls",
                "loop iterations",
            )
        self.tick()

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """What every ``{% for %}`` iterates: counts against the loop budget and the deadline."""
        limit = self.limits.max_iterations
        clock = time.monotonic
        for item in iterable:
            self.iterations += 1
            if self.iterations > limit:
                raise _Refused(
                    f"the template ran more than {limit} loop iterations", "loop iterations"
                )
            if clock() > self.deadline:
                raise self.over_time()
            yield item

    def ticking(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """Lazy filter results (``map``, ``select``...) consumed by C code check the deadline."""
        clock = time.monotonic
        for item in iterator:
            if clock() > self.deadline:
                raise self.over_time()
            yield item

    def charge(self, size: int) -> None:
        self.allocated += size
        if self.allocated > self.max_allocated:
            raise _Refused(
                f"the template built more than {self.max_allocated} characters of text in "
                f"total ({ALLOCATION_FACTOR} x RENDER_MAX_OUTPUT_BYTES={self.cap})",
                "RENDER_MAX_OUTPUT_BYTES",
            )

    def too_many_items(self) -> _Refused:
        return _Refused(
            f"the template built a collection of more than {MAX_ITEMS} items",
            "RENDER_MAX_OUTPUT_BYTES",
        )

    def too_big_number(self) -> _Refused:
        return _Refused(
            f"the template computed a number of more than {MAX_INT_BITS} bits",
            "RENDER_MAX_OUTPUT_BYTES",
        )

    def want(self, size: int) -> None:
        """Refuse before computing a result of ``size`` characters or items."""
        if size > self.cap:
            raise self.too_large()

    def stringable(self, value: Any, *, quoted: bool = False) -> int:
        """Refuse to ``str()`` (``repr()`` when quoted) a value that would print too large."""
        size = _size(value, self.cap, self, quoted=quoted)
        if size > self.cap:
            raise self.too_large()
        return size

    def checked(self, value: Any) -> Any:
        """Measure a value the template just built: a string, number or container."""
        if isinstance(value, str):
            size = len(value)
            if size > self.cap:
                raise self.too_large()
            self.charge(size)
            return value
        if isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                raise self.too_big_number()
            return value
        if isinstance(value, list | tuple | dict | set | frozenset):
            if len(value) > MAX_ITEMS:
                raise self.too_many_items()
            if _size(value, self.cap, self) > self.cap:
                raise self.too_large()
            self.charge(len(value))
            return value
        if isinstance(value, types.GeneratorType):
            return self.ticking(value)
        return value


_BUDGET: ContextVar[_Budget | None] = ContextVar("render_budget", default=None)


def _current() -> _Budget:
    """The active render's budget; outside a render (a direct ``Template.render``, a
    compile-time constant) a fresh untimed one, so the size rules still hold."""
    budget = _BUDGET.get()
    if budget is None:
        return _Budget(DEFAULT_LIMITS, timed=False)
    return budget


def _quoted_size(text: str) -> int:
    """Upper bound of ``len(repr(text))``: escapes cost up to 10 characters per character."""
    if text.isprintable():
        return len(text) + text.count("\\") + text.count("'") + text.count('"') + 2
    return 10 * len(text) + 2


#: Exact types whose printed size is known without looking inside (the common leaves).
_FIXED_SIZES: dict[type, int] = {bool: 5, type(None): 4, float: 24}
_SEQUENCES = (list, tuple, set, frozenset, deque, abc.MappingView)
_CONTAINERS = (Mapping, *_SEQUENCES, Namespace, types.MethodType)
_IN_PROGRESS = -1


def _leaf_size(item: Any) -> int | None:
    """Printed size of a value that holds no other values, or None for a container."""
    if isinstance(item, str):
        return _quoted_size(item)
    if isinstance(item, int):
        return (item.bit_length() * 77 >> 8) + 2
    if item is None or isinstance(item, float | complex | Undefined):
        return 24
    if isinstance(item, Decimal):
        return len(item.as_tuple().digits) + 32
    if isinstance(item, bytes | bytearray):
        return 4 * len(item) + 3
    if isinstance(item, _CONTAINERS):
        return None
    return 128  # ranges, generators, loops, macros...: a short fixed repr


def _expand(item: Any, per_item: int, cap: int) -> tuple[int, list[Any]]:
    """A container's own printed size with its leaves, and the containers it holds.

    A container whose item count alone passes ``cap`` is not looked into: its
    size is already known to be too large, whatever it holds.
    """
    children: Iterable[Any]
    if isinstance(item, Mapping):
        total = 2 + len(type(item).__name__) + len(item) * (4 + 2 * per_item)
        if total > cap:
            return total, []
        children = [part for pair in item.items() for part in pair]
    elif isinstance(item, _SEQUENCES):
        total = 2 + len(type(item).__name__) + len(item) * (2 + per_item)
        if total > cap:
            return total, []
        children = item
    elif isinstance(item, Namespace):
        total, children = 16, [object.__getattribute__(item, "_Namespace__attrs")]
    else:  # a bound method: its repr holds its object's repr
        total, children = 64, [item.__self__]
    return _add_leaves(total, children, cap)


def _add_leaves(total: int, children: Iterable[Any], cap: int) -> tuple[int, list[Any]]:
    """``total`` plus the leaves among ``children``, and the children that are containers.

    Leaves are summed inline, the commonest types tested by exact type first,
    so a 100,000-item list of numbers is one loop here rather than one
    :func:`_size` step per item.
    """
    containers: list[Any] = []
    for child in children:
        kind = type(child)
        if kind is str:
            total += _quoted_size(child)
        elif kind is int:
            total += (child.bit_length() * 77 >> 8) + 2
        elif kind in _FIXED_SIZES:
            total += _FIXED_SIZES[kind]
        else:
            leaf = _leaf_size(child)
            if leaf is None:
                containers.append(child)
            else:
                total += leaf
        if total > cap:
            break
    return total, containers


def _size(
    value: Any, cap: int, budget: _Budget | None = None, *, quoted: bool = False, indent: int = 0
) -> int:
    """An upper bound (up to small constants) of ``len(str(value))``, or of its ``repr()``.

    Counts a shared value each time it would be printed (``[a, a]`` nested 40
    deep prints 2**40 ``a``), but measures each shared value once, so the cost
    is that of the distinct values, and returns as soon as the bound passes
    ``cap``.  ``indent`` adds that many characters per nesting level per item
    (pprint, ``tojson(indent=...)``).  A namespace that holds itself counts as
    too large.
    """
    if not quoted:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return (value.bit_length() * 77 >> 8) + 2
    leaf = _leaf_size(value)
    if leaf is not None:
        return leaf
    total, kids = _expand(value, indent, cap)
    if total > cap or not kids:  # flat containers (the common case) need no walk
        return total
    return _nested_size((id(value), 0), total, kids, cap, budget, indent)


def _nested_size(
    root: tuple[int, int],
    total: int,
    kids: list[Any],
    cap: int,
    budget: _Budget | None,
    indent: int,
) -> int:
    """The walk behind :func:`_size` once the root is expanded: depth first, without recursion.

    Iterative because a template can nest containers deeper than Python's
    recursion limit.  Each frame is a list (mutated in place, it is the hot
    loop): [memo key, size so far, containers inside, next one to measure,
    depth].  The memo maps a container (and, with ``indent``, its depth, which
    changes its size) to its size, or to ``_IN_PROGRESS`` while it is on the
    stack: meeting one of those again is a cycle.
    """
    memo: dict[tuple[int, int], int] = {root: _IN_PROGRESS}
    stack: list[list[Any]] = [[root, total, kids, 0, 0]]
    tick = _no_tick if budget is None else budget.tick
    steps = 0
    while stack:
        frame = stack[-1]
        kids, index = frame[2], frame[3]
        if index == len(kids):  # measured: its size goes into its parent's
            stack.pop()
            memo[frame[0]] = frame[1]
            if not stack:
                return frame[1]
            parent = stack[-1]
            parent[1] += frame[1]
            if parent[1] > cap:
                return parent[1]
            continue
        frame[3] = index + 1
        steps += 1
        if not steps & 255:
            tick()
        child = kids[index]
        depth = frame[4] + 1
        child_key = (id(child), depth if indent else 0)
        known = memo.get(child_key)
        if known is not None:
            if known == _IN_PROGRESS:
                return cap + 1
            frame[1] += known
            if frame[1] > cap:
                return frame[1]
            continue
        child_size, child_kids = _expand(child, indent * (depth + 1), cap)
        if child_size > cap:
            return child_size
        memo[child_key] = _IN_PROGRESS
        stack.append([child_key, child_size, child_kids, 0, depth])
    return total


def _no_tick() -> None:
    """The deadline check of a measurement made outside any render: there is no deadline."""


# --------------------------------------------------------------------------- sandbox values


def _finalize(value: Any) -> Any:
    """Render JSON-ish values the way Thymeleaf/FlowX users expect.

    Data arrives as JSON: ``null`` must print as nothing (Thymeleaf prints ``""``
    for null, Jinja would print ``None``) and booleans as ``true``/``false``.
    Every ``{{ }}`` passes here just before ``str()``, which is why a value that
    would print too large (a list holding itself 40 levels deep) is refused here.
    """
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if not isinstance(value, str | int | float):
        _current().stringable(value)
    return value


def _unescaped(value: Any) -> Markup:
    """Filter behind ``[(${x})]`` / ``th:utext`` in HTML mode.

    ``|safe`` would turn ``None`` into the text ``"None"`` before finalize runs,
    so the JSON-friendly finalize step is applied first.
    """
    return Markup(str(_finalize(value)))


def _thymeleaf_truthy(value: Any) -> bool:
    """Thymeleaf's ``th:if`` truthiness (EvaluationUtils.evaluateAsBoolean).

    Used for ``th:if``/``th:unless`` so existing FlowX templates behave the same:
    null/missing, ``false``, numeric zero and the strings "false"/"off"/"no"
    (any case) are false; everything else -- including "" and empty
    collections -- is true.  Plain Jinja ``{% if %}`` keeps Python truthiness.
    """
    if value is None or isinstance(value, Undefined):
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return value != 0
    if isinstance(value, str):
        return value.lower() not in ("false", "off", "no")
    return True


class _LenientTopLevelUndefined(Undefined):
    """Undefined policy: missing top-level names render as ``""``; going deeper errors.

    This is Jinja's default ``Undefined`` (and exactly Thymeleaf/SpEL semantics):

    * ``${x}`` with ``x`` absent renders empty -- optional params may be omitted;
      mandatory ones are enforced beforehand by :func:`missing_mandatory`.
    * ``${client.name}`` with ``client`` present but without ``name`` renders empty.
    * ``${client.name}`` with ``client`` absent raises (SpEL: "cannot be found on
      null") and becomes a :class:`RenderError`, instead of silently sending a
      message with holes the way ``ChainableUndefined`` would.

    Only the message is overridden: the default one names Python types and, for
    dynamic subscripts, data values.
    """

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_obj is missing and isinstance(self._undefined_name, str):
            return f"{self._undefined_name!r} is undefined"
        return "a value used by the template is undefined"


# --------------------------------------------------------------------------- bounded primitives

#: printf conversions: ``%(key)-08.3f``; ``*`` widths are refused (the width would come from
#: the data), so every width and precision is written in the template and checked here.
_PRINTF_RE = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?[hlL]?"
    r"(?P<conversion>.?)",
    re.S,
)
_DIGITS_RE = re.compile(r"\d+")
#: what ``str.splitlines`` splits on (an upper bound of the number of lines is enough)
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def _number(text: str | None, budget: _Budget) -> int:
    """A width or precision written in a format; refused when over the string limit."""
    if not text:
        return 0
    if len(text) > 9 or int(text) > budget.cap:
        raise budget.too_large()
    return int(text)


def _check_printf(fmt: str, args: Any, budget: _Budget) -> None:
    """Bound ``fmt % args`` before computing it (the ``%`` operator and ``|format``)."""
    positional, widest_value = _printf_operands(fmt, args, budget)
    total = len(fmt)
    index = 0
    for match in _PRINTF_RE.finditer(fmt):
        conversion = match["conversion"]
        if conversion == "%":
            continue
        if match["width"] == "*" or match["precision"] == "*":
            raise _Refused(
                "'%*' formats are not allowed in templates (write the width out)",
                "RENDER_MAX_OUTPUT_BYTES",
            )
        total += _number(match["width"], budget) + _number(match["precision"], budget)
        if widest_value is not None:
            total += widest_value
        elif index < len(positional):
            total += budget.stringable(positional[index], quoted=conversion in ("r", "a"))
            index += 1
        if total > budget.cap:
            raise budget.too_large()


def _printf_operands(fmt: str, args: Any, budget: _Budget) -> tuple[list[Any], int | None]:
    """What ``fmt % args`` substitutes: the positional values, or the widest mapped one.

    With ``%(key)s`` the keys are only known once the format is parsed, so
    every field is bounded by the largest value of the mapping instead (None
    when ``args`` is not used as a mapping).  ``%`` treats a mapping without
    ``%(`` in the format, and any other non-tuple, as one positional value.
    """
    if isinstance(args, tuple):
        return list(args), None
    if isinstance(args, Mapping) and "%(" in fmt:
        widest_value = 0
        for value in args.values():
            widest_value = max(widest_value, budget.stringable(value, quoted=True))
        return [], widest_value
    return [args], None


def _check_format_spec(spec: str, budget: _Budget) -> None:
    """``'{:>5000000}'``: every number in a format spec is at most the string limit."""
    for digits in _DIGITS_RE.findall(spec):
        _number(digits, budget)


class _BoundedFormatterMixin:
    """``str.format`` that checks each field's width and the running total of the result."""

    _budget: _Budget
    _total: int

    def format_field(self, value: Any, format_spec: str) -> Any:
        budget = self._budget
        budget.tick()
        _check_format_spec(format_spec, budget)
        budget.stringable(value)
        out = super().format_field(value, format_spec)  # type: ignore[misc]
        self._total += len(out)
        if self._total > budget.cap:
            raise budget.too_large()
        return out

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        self._budget.stringable(value, quoted=conversion in ("r", "a"))
        return super().convert_field(value, conversion)  # type: ignore[misc]


class _BoundedFormatter(_BoundedFormatterMixin, SandboxedFormatter):
    def __init__(self, env: Any, budget: _Budget) -> None:
        super().__init__(env)
        self._budget, self._total = budget, 0


class _BoundedEscapeFormatter(_BoundedFormatterMixin, SandboxedFormatter, EscapeFormatter):
    def __init__(self, env: Any, budget: _Budget, escape: Callable[[Any], Markup]) -> None:
        super().__init__(env, escape=escape)
        self._budget, self._total = budget, 0


#: Methods of builtin values a template may call: none of them can grow its result beyond a
#: small factor of its inputs. ``_SIZED_STR_METHODS`` (below) are allowed after a size check; every
#: other method (``expandtabs``, ``translate``, ``encode``, ``int.to_bytes``, the class
#: methods such as ``dict.fromkeys``...) is refused.
_SAFE_METHODS: dict[type, frozenset[str]] = {
    str: frozenset(
        {"capitalize", "casefold", "count", "endswith", "find", "index", "isalnum"}
        | {"isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower"}
        | {"isnumeric", "isprintable", "isspace", "istitle", "isupper", "lower", "lstrip"}
        | {"partition", "removeprefix", "removesuffix", "rfind", "rindex", "rpartition"}
        | {"rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase"}
        | {"title", "upper", "striptags", "unescape"}
    ),
    int: frozenset({"bit_length", "bit_count", "conjugate", "as_integer_ratio", "is_integer"}),
    float: frozenset({"is_integer", "as_integer_ratio", "hex", "conjugate"}),
    list: frozenset({"index", "count", "copy"}),
    tuple: frozenset({"index", "count"}),
    dict: frozenset({"get", "keys", "values", "items", "copy"}),
    range: frozenset({"index", "count"}),
    frozenset: frozenset(
        {"isdisjoint", "issubset", "issuperset", "union", "intersection", "difference"}
        | {"symmetric_difference", "copy"}
    ),
    abc.MappingView: frozenset({"isdisjoint"}),
}
_SAFE_METHODS[set] = _SAFE_METHODS[frozenset]
_VALUE_TYPES = (str, int, float, complex, list, tuple, dict, set, frozenset, range, bytes)
_VALUE_TYPES += (bytearray, abc.MappingView)
#: Types a template may call: the ``dict``, ``namespace``, ``cycler`` and ``joiner`` globals.
_CALLABLE_TYPES = frozenset({dict, Namespace, Cycler, Joiner})
_BOUND_METHOD_TYPES = (types.BuiltinMethodType, types.MethodType, types.MethodWrapperType)
_UNBOUND_METHOD_TYPES = (
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.ClassMethodDescriptorType,
)


def _method_refused(owner: Any, name: str) -> _Refused:
    kind = "str" if isinstance(owner, str) else type(owner).__name__
    return _Refused(
        f"calling {kind}.{name}() is not allowed in templates (method allowlist)",
        "method allowlist",
    )


def _value_method(owner: Any, name: str) -> bool:
    """Whether ``owner.name()`` is on the allowlist (sized methods included)."""
    if isinstance(owner, str) and name in _SIZED_STR_METHODS:
        return True
    for base in type(owner).__mro__:
        allowed = _SAFE_METHODS.get(base)
        if allowed is not None:
            return name in allowed
    return isinstance(owner, abc.MappingView) and name in _SAFE_METHODS[abc.MappingView]


def _check_str_method(
    budget: _Budget, owner: str, name: str, args: tuple[Any, ...]
) -> tuple[Any, ...]:
    """Bound the sized ``str`` methods before they run; returns the arguments to use."""
    check = _STR_METHOD_CHECKS.get(name)
    return args if check is None else check(budget, owner, args)


def _check_padding(budget: _Budget, owner: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``center``/``ljust``/``rjust``/``zfill``: the result is as wide as the width asked."""
    if args and isinstance(args[0], int):
        budget.want(args[0])
    return args


def _check_replace(budget: _Budget, owner: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``replace``: each replacement grows the string by the difference of the two lengths.

    Counting the hits is linear and cheap next to building a result that may
    be ``len(owner)`` times larger (``('x' * 1000).replace('', 'yy')``).
    """
    if len(args) < 2:
        return args
    old, new = args[0], args[1]
    count = args[2] if len(args) > 2 else -1
    if isinstance(old, str) and isinstance(new, str) and isinstance(count, int):
        if isinstance(owner, Markup):  # markupsafe escapes both arguments first
            old, new = owner.escape(old), owner.escape(new)
        hits = len(owner) + 1 if old == "" else owner.count(old)
        if count >= 0:
            hits = min(hits, count)
        budget.want(len(owner) + hits * max(0, len(new) - len(old)))
    return args


def _check_join(budget: _Budget, owner: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``join``: its items are listed first, so a generator is measured and joined once."""
    if not args:
        return args
    items = _bounded_items(budget, args[0])
    _check_joined(budget, items, len(owner) * max(0, len(items) - 1))
    return (items, *args[1:])


def _bounded_items(budget: _Budget, iterable: Iterable[Any]) -> list[Any]:
    """The items of what a join consumes, listed under the deadline and the item limit."""
    items = list(budget.ticking(iter(iterable)))
    if len(items) > MAX_ITEMS:
        raise budget.too_many_items()
    return items


def _check_joined(budget: _Budget, items: list[Any], total: int) -> None:
    """Refuse a join of ``items`` whose separators alone take ``total`` characters."""
    for item in items:
        total += len(item) if isinstance(item, str) else budget.stringable(item)
        if total > budget.cap:
            raise budget.too_large()


#: The ``str`` methods whose result can outgrow their inputs, and the check each passes first.
_STR_METHOD_CHECKS: dict[str, Callable[[_Budget, str, tuple[Any, ...]], tuple[Any, ...]]] = {
    "center": _check_padding,
    "ljust": _check_padding,
    "rjust": _check_padding,
    "zfill": _check_padding,
    "replace": _check_replace,
    "join": _check_join,
}
_SIZED_STR_METHODS = frozenset(_STR_METHOD_CHECKS)


# --------------------------------------------------------------------------- bounded filters


def _f_center(value: Any, width: int = 80) -> str:
    if isinstance(width, int):
        _current().want(width)
    return jinja_filters.do_center(value, width)


def _f_indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    budget = _current()
    budget.want(max(step, 0))  # Jinja builds ' ' * width first, whatever ``s`` turns out to be
    if isinstance(s, str):
        lines = sum(map(s.count, _LINE_BREAKS)) + 2
        budget.want(len(s) + lines * max(step, 0))
    return jinja_filters.do_indent(s, width, first, blank)


def _f_wordwrap(
    environment: Any,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    """``textwrap`` costs ``L**2 / width`` per word of ``L`` characters (it re-slices the rest
    of a long word at every break), so long words are bounded as well as the output."""
    budget = _current()
    if isinstance(s, str) and isinstance(width, int) and width > 0:
        sep = environment.newline_sequence if wrapstring is None else wrapstring
        lines = sum(map(s.count, _LINE_BREAKS)) + 1
        budget.want(len(s) + (len(s) // width + lines) * len(str(sep)))
        longest = max(map(len, s.split()), default=0)
        if break_long_words and longest * longest // width > 4 * budget.cap:
            raise _Refused(
                f"wordwrap({width}) of a {longest}-character word is too slow for a template",
                "RENDER_TIMEOUT_MS",
            )
    return jinja_filters.do_wordwrap(
        environment, s, width, break_long_words, wrapstring, break_on_hyphens
    )


def _f_format(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise FilterArgumentError("can't handle positional and keyword arguments at the same time")
    budget = _current()
    fmt = soft_str(value)
    _check_printf(fmt, kwargs or args, budget)
    return fmt % (kwargs or args)


def _f_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    """Jinja's ``replace`` with the result's size checked before it is built."""
    budget = _current()
    for value in (s, old, new):
        budget.stringable(value)
    if count is None:
        count = -1
    if not eval_ctx.autoescape:
        s, old, new = str(s), str(old), str(new)
    else:
        if hasattr(old, "__html__") or hasattr(new, "__html__") and not hasattr(s, "__html__"):
            s = escape(s)
        else:
            s = soft_str(s)
        old, new = soft_str(old), soft_str(new)
    args = _check_str_method(budget, s, "replace", (old, new, count))
    return s.replace(*args)


def _f_join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    """Jinja's ``join`` with the result's size checked before it is built."""
    budget = _current()
    if attribute is not None:
        value = map(jinja_filters.make_attrgetter(eval_ctx.environment, attribute), value)
    items = _bounded_items(budget, value)
    _check_joined(budget, items, budget.stringable(d) * max(0, len(items) - 1))
    return jinja_filters.sync_do_join(eval_ctx, items, d)


def _f_tojson(eval_ctx: Any, value: Any, indent: int | str | None = None) -> Markup:
    """``json.dumps`` with ``indent`` is pure Python: bounded like the other slow filters."""
    budget = _current()
    step = len(indent) if isinstance(indent, str) else max(indent, 0) if indent else 0
    if step > min(budget.cap, MAX_SLOW_TEXT):  # json writes ' ' * indent first, even for 7
        raise budget.too_large()
    size = _size(value, budget.cap, budget, quoted=True, indent=step)
    if size > (budget.cap if indent is None else min(budget.cap, MAX_SLOW_TEXT)):
        raise budget.too_large()
    return jinja_filters.do_tojson(eval_ctx, value, indent)


def _f_pprint(value: Any) -> str:
    budget = _current()
    if _size(value, budget.cap, budget, quoted=True, indent=1) > min(budget.cap, MAX_SLOW_TEXT):
        raise budget.too_large()
    return jinja_filters.do_pprint(value)


def _fill_checked(count: Any, fill_with: Any) -> None:
    """``batch``/``slice`` loop ``count`` times and may repeat ``fill_with`` as often."""
    budget = _current()
    if isinstance(count, int):
        if count > MAX_ITEMS:
            raise budget.too_many_items()
        if fill_with is not None:
            budget.want(budget.stringable(fill_with) * max(count, 0))


def _f_batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _fill_checked(linecount, fill_with)
    return jinja_filters.do_batch(value, linecount, fill_with)


def _f_slice(
    eval_ctx: Any, value: Iterable[Any], slices: int, fill_with: Any = None
) -> Iterator[list[Any]]:
    _fill_checked(slices, fill_with)
    return jinja_filters.sync_do_slice(value, slices, fill_with)  # type: ignore[arg-type]


def _f_sum(environment: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    """Python's ``sum`` of lists is quadratic (``sum(xs, start=[])``): only numbers add up."""
    if not isinstance(start, int | float | Decimal):
        raise _Refused("sum() only adds numbers in templates", "RENDER_MAX_OUTPUT_BYTES")
    return jinja_filters.sync_do_sum(environment, iterable, attribute, start)


def _f_round(value: Any, precision: int = 0, method: str = "common") -> float:
    if isinstance(precision, int) and abs(precision) > MAX_ROUND_DIGITS:
        raise _Refused(
            f"round() to more than {MAX_ROUND_DIGITS} digits is not allowed in templates",
            "RENDER_MAX_OUTPUT_BYTES",
        )
    return jinja_filters.do_round(value, precision, method)  # type: ignore[arg-type]


_BOUNDED_FILTERS: dict[str, Callable[..., Any]] = {
    "center": _f_center,
    "indent": _f_indent,
    "wordwrap": jinja_filters.pass_environment(_f_wordwrap),
    "format": _f_format,
    "replace": jinja_filters.pass_eval_context(_f_replace),
    "join": jinja_filters.pass_eval_context(_f_join),
    "tojson": jinja_filters.pass_eval_context(_f_tojson),
    "pprint": _f_pprint,
    "batch": _f_batch,
    "slice": jinja_filters.pass_eval_context(_f_slice),
    "sum": jinja_filters.pass_environment(_f_sum),
    "round": _f_round,
    "utext": _unescaped,
}
#: Filters that ``str()`` their input: it is measured first (a list holding itself 40 levels
#: deep is small in memory and astronomically large in print).
_STRINGIFYING_FILTERS = frozenset(
    {"capitalize", "center", "e", "escape", "filesizeformat", "forceescape", "indent"}
    | {"lower", "safe", "string", "striptags", "title", "trim", "truncate", "upper"}
    | {"urlencode", "urlize", "utext", "wordcount", "wordwrap", "xmlattr"}
)
_SLOW_ITEM_FILTERS = frozenset(
    {"dictsort", "groupby", "max", "min", "sort", "sum", "unique", "xmlattr", "urlencode"}
)
_SLOW_TEXT_FILTERS = frozenset({"title", "urlize", "urlencode", "wordcount", "wordwrap"})


def _guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter with the budget: deadline, input bounds, and the result measured.

    Every wrapped filter takes the context, which also keeps Jinja from calling
    it at compile time on constant arguments: ``'x'|center(10**9)`` folded at
    save time would allocate outside any budget.
    """
    pass_arg = _PassArg.from_obj(func)
    slow_items = name in _SLOW_ITEM_FILTERS
    slow_text = name in _SLOW_TEXT_FILTERS
    stringifies = name in _STRINGIFYING_FILTERS

    @pass_context
    def guarded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.tick()
        if slow_items and isinstance(value, abc.Sized) and len(value) > MAX_SLOW_ITEMS:
            raise _Refused(
                f"the filter '{name}' accepts at most {MAX_SLOW_ITEMS} items", "RENDER_TIMEOUT_MS"
            )
        if stringifies:
            size = budget.stringable(value)
            for arg in (*args, *kwargs.values()):
                budget.stringable(arg)
            if slow_text and size > MAX_SLOW_TEXT:
                raise _Refused(
                    f"the filter '{name}' accepts at most {MAX_SLOW_TEXT} characters",
                    "RENDER_TIMEOUT_MS",
                )
        if pass_arg is _PassArg.context:
            result = func(context, value, *args, **kwargs)
        elif pass_arg is _PassArg.eval_context:
            result = func(context.eval_ctx, value, *args, **kwargs)
        elif pass_arg is _PassArg.environment:
            result = func(context.environment, value, *args, **kwargs)
        else:
            result = func(value, *args, **kwargs)
        return budget.checked(result)

    guarded.__name__ = f"guarded_{name}"
    return guarded


def _guarded_test(func: Callable[..., bool]) -> Callable[..., bool]:
    """The ``lower``/``upper`` tests ``str()`` any value."""

    def guarded(value: Any, *args: Any) -> bool:
        _current().stringable(value)
        return func(value, *args)

    return guarded


@pass_context
def _loop_budget(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    """Wraps every ``{% for %}`` iterable (inserted by :func:`_guard_loops`)."""
    return _current().iterate(iterable)


def _range(*args: int) -> range:
    """Jinja's sandboxed ``range``, refusing with a message that names the limit."""
    try:
        rng = range(*args)
        too_long = len(rng) > MAX_ITEMS
    except OverflowError:
        too_long = True
    if too_long:
        raise _Refused(f"range() of more than {MAX_ITEMS} items", "loop iterations")
    return rng


def _bounded_concat(parts: Iterable[str]) -> str:
    """``environment.concat``: joins every buffer (macro, ``{% set %}`` block, filter block)."""
    if not isinstance(parts, list):
        parts = list(parts)
    budget = _current()
    total = sum(map(len, parts))
    budget.want(total)
    budget.charge(total)
    return "".join(parts)


def _check_add(budget: _Budget, left: Any, right: Any) -> None:
    """``a + b`` of strings, lists or tuples is as long as both together."""
    if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
        budget.want(len(left) + len(right))


def _check_mul(budget: _Budget, left: Any, right: Any) -> None:
    """``seq * n`` (either way round) repeats ``seq``; a product of integers has both's bits."""
    _check_repeat(budget, left, right)
    _check_repeat(budget, right, left)
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise budget.too_big_number()


def _check_repeat(budget: _Budget, seq: Any, count: Any) -> None:
    """``seq * count``: a list is bounded by the printed size of its items, not only their
    number (``[big] * 1000`` is 1000 references, but prints 1000 times)."""
    if not isinstance(count, int):
        return
    if isinstance(seq, str):
        budget.want(len(seq) * count)
    elif isinstance(seq, list | tuple):
        if len(seq) * count > MAX_ITEMS:
            raise budget.too_many_items()
        budget.want(_size(seq, budget.cap, budget) * count)


def _check_pow(budget: _Budget, left: Any, right: Any) -> None:
    """``a ** b`` of integers has about ``bits(a) * b`` bits (``9**1024**1024``)."""
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if (left.bit_length() - 1) * right > MAX_INT_BITS:
            raise budget.too_big_number()


def _check_mod(budget: _Budget, left: Any, right: Any) -> None:
    """``fmt % args``: only string formatting can grow; modulo of numbers cannot."""
    if isinstance(left, str):
        _check_printf(left, right, budget)


#: The operators the sandbox intercepts (:attr:`_Sandbox.intercepted_binops`), and what bounds
#: each before it runs.
_BINOP_CHECKS: dict[str, Callable[[_Budget, Any, Any], None]] = {
    "+": _check_add,
    "*": _check_mul,
    "**": _check_pow,
    "%": _check_mod,
}

_LOOP_FILTER = "budget_loop"

# --------------------------------------------------------------------------- sandbox


class _GuardedCodeGenerator(CodeGenerator):
    """Routes what Jinja compiles to plain Python through the budget.

    ``~`` (``Concat``) would be ``str_join``; list, tuple and dict displays would
    be built unmeasured.  Both go through :class:`_Sandbox` methods instead.  It
    also records the template's undeclared names as it goes, the way
    ``jinja2.meta.find_undeclared_variables`` does with a second, full code
    generation (40% of the compile time of a large template).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.undeclared: set[str] = set()

    def enter_frame(self, frame: Frame) -> None:
        super().enter_frame(frame)
        for action, param in frame.symbols.loads.values():
            if action == "resolve" and param not in self.environment.globals:
                self.undeclared.add(param)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            mode = "context.eval_ctx.volatile"
        else:
            mode = "True" if frame.eval_ctx.autoescape else "False"
        self.write(f"environment.budget_concat({mode}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.budget_value(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.budget_value(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "store":  # a target: ``{% for a, b in ... %}``
            super().visit_Tuple(node, frame)
            return
        self.write("environment.budget_value(")
        super().visit_Tuple(node, frame)
        self.write(")")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Sandbox used for all templates.

    Immutable flavour: templates cannot mutate the caller's data
    (``{{ data.update(...) }}``), which matters because the same payload may be
    rendered for several channels/recipients.  On top of Jinja's sandbox it
    enforces the render budget (see the module docstring).
    """

    intercepted_binops = frozenset(_BINOP_CHECKS)
    code_generator_class = _GuardedCodeGenerator
    concat = staticmethod(_bounded_concat)  # type: ignore[assignment]

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Refuse operations whose result size is attacker-controlled, before computing them."""
        budget = _current()
        budget.tick()
        check = _BINOP_CHECKS.get(operator)
        if check is not None:
            check(budget, left, right)
        return budget.checked(self.binop_table[operator](left, right))

    def budget_concat(self, autoescape: bool, parts: tuple[Any, ...]) -> str:
        """``a ~ b ~ c``: every part measured before it is converted, the total before joining."""
        budget = _current()
        budget.tick()
        total = 0
        for part in parts:
            total += len(part) if isinstance(part, str) else budget.stringable(part)
        budget.want(total)
        return budget.checked(markup_join(parts) if autoescape else str_join(parts))

    def budget_value(self, value: Any) -> Any:
        """A list, tuple or dict display: ``[a, a]`` nested 40 deep is refused when built."""
        return _current().checked(value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` / ``format_map`` with each field's width and the total bounded."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or (
            value.__name__ not in ("format", "format_map")
        ):
            return None
        f_self: Any = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type: type[str] = type(f_self)
        is_format_map = value.__name__ == "format_map"
        env = self

        def wrapper(*args: Any, **kwargs: Any) -> str:
            budget = _current()
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            formatter: string.Formatter
            if isinstance(f_self, Markup):
                formatter = _BoundedEscapeFormatter(env, budget, f_self.escape)
            else:
                formatter = _BoundedFormatter(env, budget)
            return budget.checked(str_type(formatter.vformat(f_self, args, kwargs)))

        return functools.update_wrapper(wrapper, value)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call a template makes: counted, arguments and result measured, and methods
        of builtin values only from the allowlist."""
        budget = _current()
        budget.count_call()
        for arg in args:
            if not isinstance(arg, str | int | float):
                budget.stringable(arg)
        for key, arg in kwargs.items():
            if key not in ("_loop_vars", "_block_vars") and not isinstance(arg, str | int | float):
                budget.stringable(arg)
        args = _allowed_call(budget, __obj, args)
        return budget.checked(super().call(__context, __obj, *args, **kwargs))


def _allowed_call(budget: _Budget, obj: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Refuse a callee off the allowlist; returns the positional arguments to call it with.

    Jinja's sandbox only refuses what is unsafe (internals, mutation); what a
    builtin can *cost* is checked here: a method of a builtin value only from
    :data:`_SAFE_METHODS` (sized ones bounded first), no function of a class
    or module (``str.upper``, ``dict.fromkeys``), a type only if it is a
    template global.  A recursive loop's ``loop(children)`` has its iterable
    counted like any ``{% for %}``.
    """
    if isinstance(obj, _BOUND_METHOD_TYPES):
        return _allowed_method(budget, obj.__self__, obj.__name__, args)
    if isinstance(obj, _UNBOUND_METHOD_TYPES):
        raise _Refused(
            f"calling {obj.__objclass__.__name__}.{obj.__name__}() is not allowed in "
            "templates (method allowlist)",
            "method allowlist",
        )
    if isinstance(obj, type) and obj not in _CALLABLE_TYPES:
        raise _Refused(
            f"calling {obj.__name__}() is not allowed in templates (method allowlist)",
            "method allowlist",
        )
    if type(obj) is LoopContext and args:  # ``loop(children)`` of a recursive loop
        return (budget.iterate(args[0]), *args[1:])
    return args


def _allowed_method(
    budget: _Budget, owner: Any, name: str, args: tuple[Any, ...]
) -> tuple[Any, ...]:
    """A bound method: of a builtin value (allowlist), of a class or module (refused).

    Methods of other objects (``loop.cycle``, a ``cycler``'s ``next``...) are
    Jinja's own template helpers: they are left to its sandbox.
    """
    if isinstance(owner, _VALUE_TYPES):
        if not _value_method(owner, name):
            raise _method_refused(owner, name)
        if isinstance(owner, str) and name in _SIZED_STR_METHODS:
            return _check_str_method(budget, owner, name, args)
    elif owner is None or isinstance(owner, type | types.ModuleType):
        owner_name = getattr(owner, "__name__", "builtins")
        raise _Refused(
            f"calling {owner_name}.{name}() is not allowed in templates (method allowlist)",
            "method allowlist",
        )
    return args


def _make_env(*, autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        autoescape=autoescape,
        undefined=_LenientTopLevelUndefined,
        finalize=_finalize,
        keep_trailing_newline=True,  # a body must round-trip byte for byte
        loader=None,  # no include/import/extends target can ever resolve
        auto_reload=False,
    )
    env.globals.pop("lipsum", None)  # unbounded text generator, no use in notifications
    env.globals["range"] = _range
    filters = {**env.filters, **_BOUNDED_FILTERS}
    env.filters = {name: _guarded_filter(name, func) for name, func in filters.items()}
    env.filters[_LOOP_FILTER] = _loop_budget
    env.tests["thymeleaf_true"] = _thymeleaf_truthy
    for name in ("lower", "upper"):
        env.tests[name] = _guarded_test(env.tests[name])
    return env


_HTML_ENV = _make_env(autoescape=True)
_TEXT_ENV = _make_env(autoescape=False)
_GLOBAL_NAMES = frozenset(_HTML_ENV.globals)

# --------------------------------------------------------------------------- compile


def _check_ast(field: str, tree: nodes.Template) -> None:
    """Refuse private-name access and template loading before anything runs.

    The sandbox would also stop ``_``-attributes at render time, but refusing at
    save time gives the author a clear error with a line number instead of a
    failed notification later.
    """
    for node in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        keyword = {
            nodes.Include: "include",
            nodes.Import: "import",
            nodes.FromImport: "from",
            nodes.Extends: "extends",
        }[type(node)]
        raise TemplateError(field, node.lineno, f"{{% {keyword} %}} is not allowed")
    for node in tree.find_all(nodes.Node):
        private: str | None = None
        if isinstance(node, nodes.Name) and node.name.startswith("_"):
            private = node.name
        elif isinstance(node, nodes.Getattr | nodes.NSRef) and node.attr.startswith("_"):
            private = node.attr
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
            and node.arg.value.startswith("_")
        ):
            private = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            arg = node.args[0]
            if isinstance(arg, nodes.Const) and str(arg.value).startswith("_"):
                private = str(arg.value)
        elif (
            isinstance(node, nodes.Keyword)
            and node.key == "attribute"
            and isinstance(node.value, nodes.Const)
            and str(node.value.value).startswith("_")
        ):
            private = str(node.value.value)
        if private is not None:
            raise TemplateError(
                field, node.lineno, f"names starting with '_' are not allowed ({private!r})"
            )


def _guard_loops(tree: nodes.Template, env: _Sandbox) -> None:
    """Wrap every ``{% for %}`` iterable in the loop-budget filter (counted, deadline-checked).

    Done on the AST, so every loop form is covered (``if`` filters, ``else``
    branches, loops in macros and call blocks); the iterations of a recursive
    loop's ``loop(...)`` calls are wrapped in :meth:`_Sandbox.call`.
    """
    for loop in list(tree.find_all(nodes.For)):
        guard = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.iter.lineno)
        guard.set_environment(env)
        loop.iter = guard


_LONG_NUMBER_RE = re.compile(r"\d[\d_]{4000,}")


def _field_code(
    field: str, text: str, *, html: bool, limits: RenderLimits
) -> tuple[types.CodeType, frozenset[str]]:
    """One field compiled to Python bytecode, with the top-level data names it reads."""
    if not isinstance(text, str):
        raise TemplateError(field, None, "template must be a string")
    env = _HTML_ENV if html else _TEXT_ENV
    token = _BUDGET.set(_Budget(limits))
    try:
        source = translate(field, text, html=html)
        tree = env.parse(source)
        _check_ast(field, tree)
        _guard_loops(tree, env)
        # What ``env.from_string(tree)`` does, keeping the code generator for its names.
        generator = _GuardedCodeGenerator(env, None, "<template>")
        generator.visit(tree)
        code = env._compile(generator.stream.getvalue(), "<template>")
        names = generator.undeclared
    except TemplateError:
        raise
    except TemplateSyntaxError as exc:  # includes TemplateAssertionError (unknown filter...)
        raise TemplateError(field, exc.lineno, exc.message or "syntax error") from None
    except RecursionError:  # Jinja's parser/codegen are recursive
        raise TemplateError(field, None, "template is nested too deeply") from None
    except SyntaxError:  # Python's own limits on the generated code (20 nested loops...)
        raise TemplateError(field, None, "template is nested too deeply") from None
    except ValueError:  # Jinja's lexer: int() of a 5000-digit literal
        long_number = _LONG_NUMBER_RE.search(text)
        if long_number is not None:
            line = text.count("\n", 0, long_number.start()) + 1
            raise TemplateError(field, line, "a number literal is too long") from None
        raise TemplateError(field, None, "the template could not be compiled") from None
    except Exception:  # never a 500 for a template, whatever Jinja or Python trip over
        raise TemplateError(field, None, "the template could not be compiled") from None
    finally:
        _BUDGET.reset(token)
    return code, frozenset(names - _GLOBAL_NAMES)


def _template_of(code: types.CodeType, *, html: bool) -> Template:
    env = _HTML_ENV if html else _TEXT_ENV
    return env.template_class.from_code(env, code, env.make_globals(None), None)


@dataclass(frozen=True)
class CompiledCode:
    """A template version compiled to bytecode, in :mod:`marshal`'s format, so a child
    process can do the compiling (whose cost grows with the body, in steps Python cannot
    interrupt) and the process that renders only loads it (:func:`load_compiled`)."""

    subject: bytes | None
    body: bytes
    html: bool
    variables: frozenset[str]


def compile_code(
    subject: str | None, body: str, *, html: bool, limits: RenderLimits = DEFAULT_LIMITS
) -> CompiledCode:
    """:func:`compile_template`'s work, stopping at the bytecode."""
    subject_code: bytes | None = None
    variables: frozenset[str] = frozenset()
    if subject is not None:
        code, variables = _field_code("subject", subject, html=False, limits=limits)
        subject_code = marshal.dumps(code)
    code, body_vars = _field_code("body", body, html=html, limits=limits)
    return CompiledCode(subject_code, marshal.dumps(code), html, variables | body_vars)


def load_compiled(compiled: CompiledCode) -> CompiledTemplate:
    """The template :func:`compile_code` compiled, ready to render. Trusts its bytes: they
    must come from :func:`compile_code` run by this interpreter, never from a client."""
    subject = None
    if compiled.subject is not None:
        subject = _template_of(marshal.loads(compiled.subject), html=False)
    body = _template_of(marshal.loads(compiled.body), html=compiled.html)
    return CompiledTemplate(subject, body, compiled.html, compiled.variables)


def compile_template(
    subject: str | None, body: str, *, html: bool, limits: RenderLimits = DEFAULT_LIMITS
) -> CompiledTemplate:
    """Translate and compile a template version; raise :class:`TemplateError` if invalid.

    The subject is always compiled as text (no HTML escaping): it is a mail
    header, not markup, even when the body is HTML.  ``limits`` bounds whatever
    Jinja evaluates while compiling (constant folding).
    """
    return load_compiled(compile_code(subject, body, html=html, limits=limits))


@functools.lru_cache(maxsize=1024)
def _compile_cached(
    cache_key: Hashable, subject: str | None, body: str, html: bool
) -> CompiledTemplate:
    return compile_template(subject, body, html=html)


def compile_cached(
    cache_key: Hashable, subject: str | None, body: str, *, html: bool
) -> CompiledTemplate:
    """LRU-cached :func:`compile_template`.

    Keyed by ``cache_key`` (callers pass ``(name, language, version)``) *and*
    the source text, so a version is compiled once rather than per message, and
    an edited source can never be served from a stale entry even if a caller
    forgets to bump the version.  Failures are not cached.
    """
    return _compile_cached(cache_key, subject, body, html)


# --------------------------------------------------------------------------- render

#: Control characters (category Cc) that are not whitespace: dropped from subjects.
_SUBJECT_DROP_RE = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
#: Runs of whitespace, line breaks and U+2028/U+2029 included: folded to one space.
_SUBJECT_SPACE_RE = re.compile(r"\s+")


#: Characters a rendered subject keeps (RFC 5322's line length; a template's own subject has
#: the same bound). A parameter can make it longer, and encoding a header costs in proportion
#: (80 ms for 60 KB, per receiver, on the event loop), so the rest is cut, marked with "…".
MAX_SUBJECT_CHARS = 998


def _clean_subject(subject: str) -> str:
    """A subject is one mail header line: data values must not inject headers (CR/LF),
    terminal escapes (ESC) or truncate it (NUL), nor make it longer than a line."""
    if not (subject.isprintable() and "  " not in subject):  # the common case: nothing to do
        subject = _SUBJECT_SPACE_RE.sub(" ", _SUBJECT_DROP_RE.sub("", subject))
    subject = subject.strip(" ")
    if len(subject) > MAX_SUBJECT_CHARS:
        subject = subject[: MAX_SUBJECT_CHARS - 1].rstrip(" ") + "\u2026"
    return subject


def _template_line(exc: BaseException) -> int | None:
    """Line of the innermost template frame in ``exc``'s traceback.

    Jinja rewrites tracebacks so that template frames carry the filename
    ``<template>`` and the template's own line numbers.
    """
    line: int | None = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == "<template>":
            line = lineno
    return line


def _render_error(field: str, exc: Exception) -> RenderError:
    """The author-facing error for an exception out of a render (never its text: data)."""
    line = _template_line(exc)
    if isinstance(exc, _Refused):
        return RenderBudgetError(field, line, exc.reason, exc.rule)
    if isinstance(exc, MemoryError):
        return RenderBudgetError(
            field, line, "the template ran out of memory", "RENDER_MAX_OUTPUT_BYTES"
        )
    if isinstance(exc, SecurityError):
        message = "the template attempted a forbidden or unsafe operation"
    elif isinstance(exc, UndefinedError):
        message = exc.message or "undefined value"
    elif isinstance(exc, RecursionError):
        message = "the template recursed too deeply"
    else:
        message = "the template could not be rendered with the given data"
    return RenderError(field, line, message)


def _render_field(field: str, template: Template, data: Mapping[str, Any], budget: _Budget) -> str:
    """Render by chunks, so output over the limit stops the render instead of being joined.

    What ``Template.generate`` does, minus one generator layer on the hot path:
    the root render function's chunks, and Jinja's traceback rewriting on
    failure (it gives the template line of the error).
    """
    parts: list[str] = []
    total = 0
    cap = budget.cap
    try:
        chunks = template.root_render_func(template.new_context(dict(data)))
        try:
            for chunk in chunks:
                total += len(chunk)
                if total > cap:
                    break
                parts.append(chunk)
        finally:
            chunks.close()
    except Exception:  # never let a raw exception (possibly holding data) escape
        try:
            template.environment.handle_exception()  # rewrites the traceback: template lines
        except Exception as rewritten:
            raise _render_error(field, rewritten) from None
        raise RenderError(field, None, "the template could not be rendered") from None
    if total > cap:
        raise _render_error(field, budget.too_much_output())
    return "".join(parts)


def _encoded_size(field: str, text: str) -> int:
    """UTF-8 size of a rendered text; a lone surrogate (``{{ '\\ud800' }}``) cannot be sent."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise RenderBudgetError(
            field,
            None,
            "the template produced text that is not valid Unicode (a lone surrogate)",
            "unicode",
        ) from None


def render(
    compiled: CompiledTemplate, data: Mapping[str, Any], limits: RenderLimits = DEFAULT_LIMITS
) -> Rendered:
    """Render a compiled template; raise :class:`RenderError` on any failure.

    Subject and body share one budget (``limits``).  Whitespace in the rendered
    subject is folded into single spaces and other control characters are
    dropped: a subject is a mail header and data values must not be able to
    inject headers.
    """
    if not isinstance(data, Mapping):
        raise RenderError("body", None, "template data must be a mapping")
    if not all(isinstance(key, str) for key in data):
        raise RenderError("body", None, "template data keys must be strings")
    budget = _Budget(limits)
    token = _BUDGET.set(budget)
    try:
        subject: str | None = None
        if compiled.subject is not None:
            subject = _clean_subject(_render_field("subject", compiled.subject, data, budget))
        body = _render_field("body", compiled.body, data, budget)
    finally:
        _BUDGET.reset(token)
    size = _encoded_size("body", body)
    if subject is not None:
        size += _encoded_size("subject", subject)
    if size > limits.max_output:
        error = budget.too_much_output("bytes of UTF-8")
        raise RenderBudgetError("body", None, error.reason, error.rule)
    text = html_to_text(body) if compiled.html else None
    if text is not None:
        _encoded_size("body", text)
    return Rendered(subject=subject, body=body, text=text)


# --------------------------------------------------------------------------- params


def _is_mandatory(param: Mapping[str, Any]) -> bool:
    """FlowX sends booleans, but hand-written JSON sometimes carries "true"."""
    flag = param.get("mandatory", False)
    if isinstance(flag, str):
        return flag.strip().lower() == "true"
    return flag is True


def _mandatory_keys(params: Iterable[Mapping[str, Any]]) -> set[str]:
    keys: set[str] = set()
    for param in params or ():
        if isinstance(param, Mapping) and _is_mandatory(param):
            key = param.get("key")
            if isinstance(key, str) and key:
                keys.add(key)
    return keys


def missing_mandatory(params: Iterable[Mapping[str, Any]], data: Mapping[str, Any]) -> list[str]:
    """Mandatory keys absent from ``data`` or whose value is ``None``/``""`` (sorted).

    Checked before rendering because the renderer deliberately renders missing
    top-level names as empty (optional params).
    """
    return sorted(k for k in _mandatory_keys(params) if data.get(k) is None or data.get(k) == "")


def unused_mandatory(params: Iterable[Mapping[str, Any]], compiled: CompiledTemplate) -> list[str]:
    """Mandatory keys the template never references (sorted).

    FlowX refuses such templates at save time: a mandatory value that is never
    shown is almost always a typo in either the params or the template.
    """
    return sorted(_mandatory_keys(params) - compiled.variables)
