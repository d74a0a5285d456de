"""Translate the Thymeleaf subset of FlowX templates to Jinja2 source (see :mod:`app.core.render`).

Pure and standalone: the translator rewrites text, it never evaluates anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from app.core.errors import TemplateError

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


def translate(field: str, source: str, *, html: bool) -> str:
    """Jinja2 source for one template field; raises :class:`TemplateError` if unsupported."""
    return _Translator(field, source, html=html).translate()
