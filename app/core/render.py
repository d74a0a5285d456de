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

This module is deliberately pure (stdlib + jinja2 + markupsafe): it is used by
the stream agents, the HTTP API (save-time validation) and tests alike.
"""

from __future__ import annotations

import functools
import re
import traceback
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from jinja2 import Template, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from markupsafe import Markup

from app.core.errors import RenderError, TemplateError
from app.core.text import html_to_text
from app.core.thymeleaf import translate

__all__ = [
    "CompiledTemplate",
    "RenderError",
    "Rendered",
    "TemplateError",
    "compile_cached",
    "compile_template",
    "html_to_text",
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


# --------------------------------------------------------------------------- sandbox

#: Bounds for the operators that can blow up memory/CPU from a one-line template
#: (``'x' * 10**9``).  Templates come from API users, so a typo must not take a
#: worker down.  This is a cheap guard, not a complete resource limiter.
_MAX_SEQUENCE_PRODUCT = 1_000_000
_MAX_EXPONENT = 1024


def _finalize(value: Any) -> Any:
    """Render JSON-ish values the way Thymeleaf/FlowX users expect.

    Data arrives as JSON: ``null`` must print as nothing (Thymeleaf prints ``""``
    for null, Jinja would print ``None``) and booleans as ``true``/``false``.
    """
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
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


class _Sandbox(ImmutableSandboxedEnvironment):
    """Sandbox used for all templates.

    Immutable flavour: templates cannot mutate the caller's data
    (``{{ data.update(...) }}``), which matters because the same payload may be
    rendered for several channels/recipients.
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Refuse operations whose result size is attacker-controlled."""
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
                raise SecurityError("exponent too large")
        elif operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(count, int)
                    and len(seq) * count > _MAX_SEQUENCE_PRODUCT
                ):
                    raise SecurityError("sequence repetition too large")
        return super().call_binop(context, operator, left, right)


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
    env.filters["utext"] = _unescaped
    env.tests["thymeleaf_true"] = _thymeleaf_truthy
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
        elif isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
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


def _compile_field(field: str, text: str, *, html: bool) -> tuple[Template, frozenset[str]]:
    if not isinstance(text, str):
        raise TemplateError(field, None, "template must be a string")
    source = translate(field, text, html=html)
    env = _HTML_ENV if html else _TEXT_ENV
    try:
        tree = env.parse(source)
        _check_ast(field, tree)
        names = meta.find_undeclared_variables(tree)
        template = env.from_string(tree)
    except TemplateSyntaxError as exc:  # includes TemplateAssertionError (unknown filter...)
        raise TemplateError(field, exc.lineno, exc.message or "syntax error") from None
    except RecursionError:  # Jinja's parser/codegen are recursive
        raise TemplateError(field, None, "template is nested too deeply") from None
    return template, frozenset(names - _GLOBAL_NAMES)


def compile_template(subject: str | None, body: str, *, html: bool) -> CompiledTemplate:
    """Translate and compile a template version; raise :class:`TemplateError` if invalid.

    The subject is always compiled as text (no HTML escaping): it is a mail
    header, not markup, even when the body is HTML.
    """
    subject_tpl: Template | None = None
    variables: frozenset[str] = frozenset()
    if subject is not None:
        subject_tpl, variables = _compile_field("subject", subject, html=False)
    body_tpl, body_vars = _compile_field("body", body, html=html)
    return CompiledTemplate(
        subject=subject_tpl, body=body_tpl, html=html, variables=variables | body_vars
    )


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


compile_cached.cache_clear = _compile_cached.cache_clear  # type: ignore[attr-defined]
compile_cached.cache_info = _compile_cached.cache_info  # type: ignore[attr-defined]

# --------------------------------------------------------------------------- render

_CRLF_RE = re.compile(r"\s*[\r\n]+\s*")


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


def _render_field(field: str, template: Template, data: Mapping[str, Any]) -> str:
    try:
        return template.render(data)
    except Exception as exc:  # never let a raw exception (possibly holding data) escape
        if isinstance(exc, SecurityError):
            message = "the template attempted a forbidden or unsafe operation"
        elif isinstance(exc, UndefinedError):
            message = exc.message or "undefined value"
        elif isinstance(exc, RecursionError):
            message = "the template recursed too deeply"
        else:
            message = "the template could not be rendered with the given data"
        line = _template_line(exc)
    raise RenderError(field, line, message) from None


def render(compiled: CompiledTemplate, data: Mapping[str, Any]) -> Rendered:
    """Render a compiled template; raise :class:`RenderError` on any failure.

    Line breaks in the rendered subject are folded into single spaces: a subject
    is a mail header and data values must not be able to inject headers.
    """
    if not isinstance(data, Mapping):
        raise RenderError("body", None, "template data must be a mapping")
    if not all(isinstance(key, str) for key in data):
        raise RenderError("body", None, "template data keys must be strings")
    subject: str | None = None
    if compiled.subject is not None:
        subject = _CRLF_RE.sub(" ", _render_field("subject", compiled.subject, data)).strip()
    body = _render_field("body", compiled.body, data)
    return Rendered(subject=subject, body=body, text=html_to_text(body) if compiled.html else None)


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
