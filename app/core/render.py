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
from html.parser import HTMLParser
from typing import Any, NoReturn

from jinja2 import Template, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from markupsafe import Markup

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

# --------------------------------------------------------------------------- errors


class _LocatedError(ValueError):
    """Shared shape of template errors: which field, which line, what went wrong.

    The API layer turns these into 400 responses, so the text must be meaningful
    to the template author and must never contain data values or Python internals.
    """

    def __init__(self, field: str, line: int | None, message: str) -> None:
        self.field = field
        self.line = line
        self.message = message
        where = f"{field} line {line}" if line is not None else field
        super().__init__(f"{where}: {message}")


class TemplateError(_LocatedError):
    """Compile/validation problem.

    Attributes: ``field`` ('subject'|'body'), ``line`` (int|None), ``message`` (str).
    ``str(e)`` is human readable, e.g. ``"body line 3: unexpected '}'"``.
    """


class RenderError(_LocatedError):
    """Render-time problem (sandbox violation, undefined nested value...).

    Same attributes as :class:`TemplateError`.  The message never leaks Python
    internals or data values (data may hold OTPs or personal data and these
    errors end up in logs and in FlowX error replies); the original exception is
    deliberately not chained for the same reason.
    """


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

# --------------------------------------------------------------------------- Thymeleaf -> Jinja

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_EXPR_RE = re.compile(r"\s*\$\{(?P<expr>.*)\}\s*", re.S)
_INLINE_RE = re.compile(
    r"\[\(\s*\$\{(?P<u>[^\n]*?)\}\s*\)\]"  # [(${x})]  unescaped
    r"|\[\[\s*\$\{(?P<e>[^\n]*?)\}\s*\]\]"  # [[${x}]]  escaped
)
_INLINE_LEFTOVER_RE = re.compile(r"\[[(\[]\s*\$\{")
#: Words Jinja parses as operators/constants: ``${none}`` would silently print
#: nothing and ``${not}`` would be a confusing syntax error.
_JINJA_RESERVED = frozenset(
    {"and", "or", "not", "in", "is", "if", "else", "true", "false", "none"}
    | {"True", "False", "None"}
)

_ATTR_NAME = r"[^\s\"'<>/=]+"
_ATTR_VALUE = r"\"[^\"]*\"|'[^']*'|[^\s\"'=<>`]+"
_MARKUP_RE = re.compile(
    r"<!--.*?-->"
    r"|<!\[CDATA\[.*?\]\]>"
    r"|<[!?][^>]*>"
    r"|</(?P<end>[A-Za-z][^\s/>]*)\s*>"
    rf"|<(?P<start>[A-Za-z][^\s/<>]*)(?P<attrs>(?:\s+{_ATTR_NAME}(?:\s*=\s*(?:{_ATTR_VALUE}))?)*)"
    r"\s*(?P<selfclose>/?)>",
    re.S,
)
_ATTR_RE = re.compile(rf"(?P<ws>\s+)(?P<name>{_ATTR_NAME})(?:\s*=\s*(?P<value>{_ATTR_VALUE}))?")
_RAW_TEXT_ELEMENTS = frozenset({"script", "style", "textarea", "title"})
_VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link"}
    | {"meta", "param", "source", "track", "wbr"}
)
_SUPPORTED_TH = ("th:text", "th:utext", "th:if", "th:unless")
_DROPPED_ATTRS = frozenset({"xmlns:th"})


@dataclass(frozen=True)
class _Tag:
    kind: str  # "start" | "end"
    name: str  # lower-cased
    start: int
    end: int
    self_closing: bool = False
    attrs_start: int = 0
    attrs_end: int = 0


def _line_of(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def _newlines_kept(removed: str) -> str:
    """Replacement for removed source text that keeps the line count stable."""
    n = removed.count("\n")
    return "{#" + "\n" * n + "#}" if n else ""


def _scan_tags(source: str) -> list[_Tag]:
    """Tokenize the tag stream (start/end tags only; comments etc. are skipped).

    A regex tokenizer rather than ``html.parser`` because we need exact source
    offsets to rewrite the template in place, and because the text between tags
    may contain Jinja syntax that must survive untouched.  Contents of raw-text
    elements (``<script>``, ``<style>``...) are skipped so ``a<b`` in a script
    is not mistaken for a tag.
    """
    tags: list[_Tag] = []
    pos = 0
    while (m := _MARKUP_RE.search(source, pos)) is not None:
        pos = m.end()
        if m.group("end") is not None:
            tags.append(_Tag("end", m.group("end").lower(), m.start(), m.end()))
        elif m.group("start") is not None:
            name = m.group("start").lower()
            tags.append(
                _Tag(
                    "start",
                    name,
                    m.start(),
                    m.end(),
                    self_closing=bool(m.group("selfclose")),
                    attrs_start=m.start("attrs"),
                    attrs_end=m.end("attrs"),
                )
            )
            if name in _RAW_TEXT_ELEMENTS and not m.group("selfclose"):
                close = re.compile(rf"</{re.escape(name)}\s*>", re.I).search(source, pos)
                if close is not None:
                    tags.append(_Tag("end", name, close.start(), close.end()))
                    pos = close.end()
    return tags


class _Translator:
    """Rewrites one template source from the Thymeleaf subset to Jinja2 source."""

    def __init__(self, field: str, source: str, *, html: bool) -> None:
        self.field = field
        self.source = source
        self.html = html

    def fail(self, offset: int, message: str) -> NoReturn:
        raise TemplateError(self.field, _line_of(self.source, offset), message)

    # ---- expressions

    def expression(self, raw: str, offset: int) -> str:
        """``client.firstName`` -> ``client['firstName']``.

        Subscripts (not attribute access) because Jinja's ``.items`` on a dict
        would find the *method* ``dict.items`` before the key ``"items"``.
        """
        expr = raw.strip()
        if not _PATH_RE.fullmatch(expr):
            shown = expr if len(expr) <= 40 else expr[:37] + "..."
            self.fail(
                offset,
                f"unsupported expression '${{{shown}}}': only ${{name}} or "
                "${name.path} (identifiers separated by dots) is allowed",
            )
        head, *rest = expr.split(".")
        if head in _JINJA_RESERVED:
            self.fail(offset, f"variable name '{head}' is a reserved word")
        return head + "".join(f"[{part!r}]" for part in rest)

    def attr_expression(self, attr: str, value: str | None, offset: int) -> str:
        if value is None:
            self.fail(offset, f'{attr} needs a value such as "${{name}}"')
        if value[:1] in ("'", '"'):
            value = value[1:-1]
        m = _EXPR_RE.fullmatch(value)
        if m is None:
            shown = value if len(value) <= 40 else value[:37] + "..."
            self.fail(offset, f'{attr}="{shown}" is not supported: use {attr}="${{name}}"')
        return self.expression(m.group("expr"), offset)

    def output(self, expr: str, *, escaped: bool) -> str:
        if escaped or not self.html:
            return "{{ " + expr + " }}"
        return "{{ " + expr + "|utext }}"

    # ---- elements

    def matching_end(self, tags: list[_Tag], index: int) -> int:
        """Index of the end tag closing ``tags[index]``, counting nested same-name tags."""
        opening = tags[index]
        depth = 1
        for j in range(index + 1, len(tags)):
            tag = tags[j]
            if tag.name != opening.name:
                continue
            if tag.kind == "start" and not tag.self_closing:
                depth += 1
            elif tag.kind == "end":
                depth -= 1
                if depth == 0:
                    return j
        self.fail(opening.start, f"<{opening.name}> with th:* attributes is never closed")

    def elements(self) -> str:
        """Apply ``th:text/utext/if/unless`` (and drop ``xmlns:th``)."""
        src = self.source
        if "th" not in src.lower():  # fast path: nothing to do for most SMS bodies
            return src
        tags = _scan_tags(src)
        out: list[str] = []
        cursor = 0
        pending: dict[int, list[str]] = {}  # end-tag index -> text to emit after it
        i = 0
        while i < len(tags):
            tag = tags[i]
            if tag.kind == "end":
                if i in pending:
                    out.append(src[cursor : tag.end])
                    out.extend(pending.pop(i))
                    cursor = tag.end
                i += 1
                continue
            found = self.th_attributes(tag)
            if found is None:
                i += 1
                continue
            th, new_tag = found
            if "th:text" in th and "th:utext" in th:
                self.fail(tag.start, "th:text and th:utext cannot be used on the same element")
            prefix, suffix = "", ""
            if "th:if" in th:
                prefix += "{% if " + th["th:if"] + " is thymeleaf_true %}"
                suffix += "{% endif %}"
            if "th:unless" in th:
                prefix += "{% if " + th["th:unless"] + " is not thymeleaf_true %}"
                suffix += "{% endif %}"
            content = th.get("th:text") or th.get("th:utext")
            has_content = not (tag.self_closing or tag.name in _VOID_ELEMENTS)
            if content is not None and not has_content:
                self.fail(tag.start, f"th:text/th:utext on <{tag.name}>, which has no content")
            out.append(src[cursor : tag.start])
            out.append(prefix)
            out.append(new_tag)
            cursor = tag.end
            if not has_content:
                out.append(suffix)
                i += 1
                continue
            if content is None:
                if suffix:
                    pending.setdefault(self.matching_end(tags, i), []).append(suffix)
                i += 1
                continue
            end = self.matching_end(tags, i)
            if any(i < k <= end for k in pending):
                self.fail(tag.start, f"<{tag.name}> is not properly nested")
            closing = tags[end]
            out.append(self.output(content, escaped="th:text" in th))
            out.append(_newlines_kept(src[tag.end : closing.start]))
            out.append(src[closing.start : closing.end])
            out.append(suffix)
            cursor = closing.end
            i = end + 1
        if pending:  # defensive: every pending index is an existing end tag
            self.fail(len(src), "internal error: unbalanced th:if/th:unless")
        out.append(src[cursor:])
        return "".join(out)

    def th_attributes(self, tag: _Tag) -> tuple[dict[str, str], str] | None:
        """Parse a start tag; return its th:* directives and the tag without them."""
        src = self.source
        attrs = src[tag.attrs_start : tag.attrs_end]
        if "th" not in attrs.lower():
            return None
        th: dict[str, str] = {}
        kept: list[str] = []
        last = 0
        touched = False
        for m in _ATTR_RE.finditer(attrs):
            name = m.group("name").lower()
            if name.startswith("data-th-"):
                name = "th:" + name[len("data-th-") :]
            offset = tag.attrs_start + m.start("name")
            if name in _DROPPED_ATTRS:
                pass
            elif name.startswith("th:"):
                if name not in _SUPPORTED_TH:
                    self.fail(
                        offset,
                        f"unsupported attribute {m.group('name')}: only "
                        + ", ".join(_SUPPORTED_TH)
                        + " are supported",
                    )
                if name in th:
                    self.fail(offset, f"duplicate attribute {name}")
                th[name] = self.attr_expression(name, m.group("value"), offset)
            else:
                continue
            touched = True
            kept.append(attrs[last : m.start()])
            kept.append(_newlines_kept(m.group(0)))
            last = m.end()
        if not touched:
            return None
        kept.append(attrs[last:])
        new_tag = src[tag.start : tag.attrs_start] + "".join(kept) + src[tag.attrs_end : tag.end]
        return th, new_tag

    # ---- inline

    def inline(self, text: str) -> str:
        """``[(${x})]`` / ``[[${x}]]`` -> ``{{ ... }}`` (single line, so offsets stay valid)."""

        def repl(m: re.Match[str]) -> str:
            if m.group("u") is not None:
                return self.output(self.expression(m.group("u"), m.start()), escaped=False)
            return self.output(self.expression(m.group("e"), m.start()), escaped=True)

        if "[" not in text:
            return text
        # Offsets below index `text`/`result`, which have the same line
        # structure as the original source, so line numbers stay correct.
        self.source = text
        result = _INLINE_RE.sub(repl, text)
        leftover = _INLINE_LEFTOVER_RE.search(result)
        if leftover is not None:
            self.source = result
            self.fail(
                leftover.start(),
                "unterminated inline expression: expected [(${name})] or [[${name}]]",
            )
        return result

    def translate(self) -> str:
        return self.inline(self.elements())


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
    source = _Translator(field, text, html=html).translate()
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


# --------------------------------------------------------------------------- html -> text

_SKIP_TEXT = frozenset({"script", "style", "title", "template"})
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "pre", "hr"}
)
_LINE = frozenset({"div", "tr", "section", "article", "header", "footer", "dl", "dt", "dd"})
_WS_RE = re.compile(r"[ \t\r\n\f\v\u00a0]+")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    """Collects readable text: blocks become line breaks, links keep their target.

    Block boundaries are recorded as a *pending* break (1 = new line, 2 = blank
    line) that is only written before the next visible text, so nested
    ``<div><div>`` or ``</p><p>`` do not pile up empty lines; ``<br>`` is an
    explicit break and is written immediately.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pending = 0
        self.links: list[tuple[str | None, int]] = []

    def block(self, size: int) -> None:
        self.pending = max(self.pending, size)

    def write(self, text: str) -> None:
        if self.pending:
            self.parts.append("\n" * self.pending)
            self.pending = 0
        self.parts.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TEXT:
            self.skip += 1
        elif tag == "br":
            self.write("\n")
        elif tag == "li":
            self.block(1)
            self.write("- ")
        elif tag in _PARAGRAPH:
            self.block(2)
        elif tag in _LINE:
            self.block(1)
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.parts)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SKIP_TEXT:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TEXT:
            self.skip = max(0, self.skip - 1)
        elif tag in _PARAGRAPH:
            self.block(2)
        elif tag in _LINE or tag == "li":
            self.block(1)
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.parts[start:]).strip()
            if href and href.startswith(("http://", "https://")) and href != label:
                self.write(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        text = _WS_RE.sub(" ", data)
        if text.strip():
            self.write(text)
        elif text:
            self.parts.append(" ")

    def text(self) -> str:
        lines = (_WS_RE.sub(" ", line).strip() for line in "".join(self.parts).split("\n"))
        return _BLANK_LINES_RE.sub("\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> str:
    """Readable plain-text alternative of an HTML body (multipart/alternative part).

    Tags are stripped, ``<br>``/``<p>``/``<li>``/blocks become line breaks,
    entities are unescaped, whitespace is tidied; head/script/style are dropped.
    """
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # a text alternative must never fail a send
        stripped = re.sub(r"<[^>]*>", " ", html)
        return _WS_RE.sub(" ", stripped).strip()
    return parser.text()
