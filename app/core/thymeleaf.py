"""Translate the Thymeleaf subset of FlowX templates to Jinja2 source (see :mod:`app.core.render`).

Pure and standalone: the translator rewrites text, it never evaluates anything.
"""

from __future__ import annotations

import heapq
import re
from typing import NamedTuple, NoReturn

from app.core.errors import TemplateError

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*+"
_PATH_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*+")
_INLINE_OPEN_RE = re.compile(r"\[(?P<kind>[(\[])\s*+\$\{")
#: Words Jinja parses as operators/constants: ``${none}`` would silently print
#: nothing and ``${not}`` would be a confusing syntax error.
_JINJA_RESERVED = frozenset(
    {"and", "or", "not", "in", "is", "if", "else", "true", "false", "none"}
    | {"True", "False", "None"}
)

# Every pattern below is applied with ``match`` at a known position (or searched
# through a :class:`_NextMatch`) and uses possessive quantifiers over disjoint
# character classes, so no text is ever re-read by backtracking.  Templates are
# untrusted and up to 100,000 characters: one super-linear path stalls the event
# loop for seconds.
_ATTR_NAME = r"[^\s\"'<>/=]++"
_ATTR_VALUE = r"\"[^\"]*+\"|'[^']*+'|[^\s\"'=<>`]++"
_ATTR_RE = re.compile(rf"(?P<ws>\s++)(?P<name>{_ATTR_NAME})(?:\s*+=\s*+(?P<value>{_ATTR_VALUE}))?+")
_START_NAME = r"<(?P<start>[A-Za-z][^\s/<>]*+)"
_START_CLOSE = r"\s*+(?P<selfclose>/?)>"
_START_TAG_RE = re.compile(
    rf"{_START_NAME}(?P<attrs>(?:\s++{_ATTR_NAME}(?:\s*+=\s*+(?:{_ATTR_VALUE}))?+)*+){_START_CLOSE}"
)
_START_NAME_RE = re.compile(_START_NAME)
_START_CLOSE_RE = re.compile(_START_CLOSE)
_END_TAG_RE = re.compile(r"</(?P<end>[A-Za-z][^\s/>]*+)\s*+>")
_CDATA_CLOSE_RE = re.compile(r"\]\]>")
_INLINE_CLOSE_RE = {
    "(": re.compile(r"\}\s*+\)\]"),  # [(${x})]  unescaped
    "[": re.compile(r"\}\s*+\]\]"),  # [[${x}]]  escaped
}
_NEWLINE_RE = re.compile(r"\n")
_RAW_TEXT_ELEMENTS = frozenset({"script", "style", "textarea", "title"})
_VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link"}
    | {"meta", "param", "source", "track", "wbr"}
)
_SUPPORTED_TH = ("th:text", "th:utext", "th:if", "th:unless")
_DROPPED_ATTRS = frozenset({"xmlns:th"})
_RAW_TEXT_CLOSE_RE = {
    name: re.compile(rf"</{re.escape(name)}\s*+>", re.I) for name in _RAW_TEXT_ELEMENTS
}


class _Tag(NamedTuple):
    """A start or end tag with its source offsets (a tuple: one per tag, built fast)."""

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


class _NextMatch:
    """The next match of a pattern at or after a position, remembered between calls.

    The scanners ask "where is the next ``]]>`` / ``</script>`` / ``})]``?" from
    ever-increasing positions, once per opener.  Calling ``re.search`` each time
    re-reads the same text for every opener, which is quadratic exactly when the
    terminator is missing (``<script>`` repeated).  A remembered answer stays
    right for every later position up to the match (and for ever when there was
    none), so each character is searched about once per pattern.
    """

    __slots__ = ("_match", "_origin", "_pattern", "_text")

    def __init__(self, pattern: re.Pattern[str], text: str) -> None:
        self._pattern = pattern
        self._text = text
        self._origin = len(text) + 1  # nothing remembered yet
        self._match: re.Match[str] | None = None

    def search(self, pos: int) -> re.Match[str] | None:
        match = self._match
        if self._origin <= pos and (match is None or pos <= match.start()):
            return match
        self._origin = pos
        self._match = match = self._pattern.search(self._text, pos)
        return match


class _StartTags:
    """Start tags of one source, found in time linear in the source overall.

    The grammar is ``<name (\\s+attr(\\s*=\\s*value)?)* \\s* /? >``.  Its
    quantifiers are possessive over disjoint character classes, which accepts
    the same tags as backtracking would (no shorter name or value can be
    followed by what must come next), so one anchored match reads a tag once.

    What remains is retrying: after a failed tag the scan resumes at the next
    ``<``, and that ``<`` may sit in a quoted value of the failed one
    (``<a b="<a" b="<a" ...`` with no ``>``), so every attempt would walk the
    same attributes to the same dead end.  The outcome from an attribute
    boundary depends on nothing but the position, so after the first failure,
    tags starting before the furthest boundary walked are parsed attribute by
    attribute through a memo of boundary outcomes; each boundary is then
    walked once.  Tags further on get the one-shot match again.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        #: attribute boundary -> (attributes end, tag end, self-closing) or None
        self.memo: dict[int, tuple[int, int, bool] | None] = {}
        self.walked_until = 0

    def match(self, lt: int) -> _Tag | None:
        """The start tag at ``lt`` (``source[lt] == "<"``), or None if there is none."""
        if lt >= self.walked_until:
            tag = _START_TAG_RE.match(self.source, lt)
            if tag is not None:  # the common case: one call per detail
                name, _, slash = tag.groups()
                attrs_start, attrs_end = tag.span("attrs")
                return _Tag(
                    "start", name.lower(), lt, tag.end(), slash == "/", attrs_start, attrs_end
                )
        return self.walk(lt)

    def walk(self, lt: int) -> _Tag | None:
        """:meth:`match` attribute by attribute, sharing boundaries with earlier walks."""
        source = self.source
        name = _START_NAME_RE.match(source, lt)
        if name is None:
            return None
        run = self.attributes(name.end())
        if run is None:
            return None
        attrs_end, end, self_closing = run
        return _Tag("start", name["start"].lower(), lt, end, self_closing, name.end(), attrs_end)

    def attributes(self, pos: int) -> tuple[int, int, bool] | None:
        """Walk the attributes from boundary ``pos``: same outcome as the one-shot match."""
        memo, source = self.memo, self.source
        walked: list[int] = []
        result: tuple[int, int, bool] | None
        while True:
            if pos in memo:
                result = memo[pos]
                break
            walked.append(pos)
            attr = _ATTR_RE.match(source, pos)
            if attr is None:
                close = _START_CLOSE_RE.match(source, pos)
                result = None if close is None else (pos, close.end(), bool(close["selfclose"]))
                break
            pos = attr.end()
        for boundary in walked:
            memo[boundary] = result
        self.walked_until = max(self.walked_until, pos)
        return result


def _scan_tags(source: str) -> list[_Tag]:
    """Tokenize the tag stream (start/end tags only; comments etc. are skipped).

    A hand-written tokenizer rather than ``html.parser`` because we need exact
    source offsets to rewrite the template in place, and because the text between
    tags may contain Jinja syntax that must survive untouched.  Contents of
    raw-text elements (``<script>``, ``<style>``...) are skipped so ``a<b`` in a
    script is not mistaken for a tag.

    It accepts exactly what the former single regex accepted (comment, CDATA,
    ``<!...>``/``<?...>``, end tag, start tag, tried in that order at each
    ``<``) but in time linear in the source: every construct ends with ``>``,
    so nothing after the last ``>`` can be markup; an unterminated ``<!--`` runs
    to the end of the input as in HTML; terminators that may be missing are
    looked up through :class:`_NextMatch`; start tags through :class:`_StartTags`.
    """
    tags: list[_Tag] = []
    last_gt = source.rfind(">")
    cdata_close = _NextMatch(_CDATA_CLOSE_RE, source)
    raw_close: dict[str, _NextMatch] = {}
    start_tags = _StartTags(source)
    pos = 0
    while (lt := source.find("<", pos)) != -1 and lt < last_gt:
        pos = lt + 1  # unless markup is found below, this "<" is text
        kind = source[lt + 1]  # exists: a ">" follows
        if kind in "!?":
            pos = _skip_declaration(source, lt, cdata_close)
            if pos < 0:
                break  # an unterminated comment hides the rest, as in HTML
        elif kind == "/":
            end_tag = _END_TAG_RE.match(source, lt)
            if end_tag is not None:
                tags.append(_Tag("end", end_tag[1].lower(), lt, end_tag.end(), False, 0, 0))
                pos = end_tag.end()
        elif (tag := start_tags.match(lt)) is not None:
            tags.append(tag)
            pos = tag.end
            if tag.name in _RAW_TEXT_ELEMENTS and not tag.self_closing:
                close_tag = _raw_text_close(source, tag, raw_close)
                if close_tag is not None:
                    tags.append(close_tag)
                    pos = close_tag.end
    return tags


def _skip_declaration(source: str, lt: int, cdata_close: _NextMatch) -> int:
    """Where the text resumes after the ``<!``/``<?`` markup at ``lt``; -1: it never ends.

    An unterminated comment runs to the end of the input (as in HTML); an
    unterminated CDATA section is read as a ``<!...>`` declaration instead,
    which ends at the next ``>`` (there is one: the caller stops at the last).
    """
    if source.startswith("<!--", lt):
        close = source.find("-->", lt + 4)
        return -1 if close == -1 else close + 3
    if source.startswith("<![CDATA[", lt):
        cdata = cdata_close.search(lt + 9)
        if cdata is not None:
            return cdata.end()
    return source.find(">", lt + 2) + 1


def _raw_text_close(source: str, tag: _Tag, finders: dict[str, _NextMatch]) -> _Tag | None:
    """The end tag closing the raw-text element ``tag`` (``<script>``...), or None.

    One :class:`_NextMatch` per element name, made on first use and kept in
    ``finders``, so a missing ``</script>`` is searched for once, not once per
    ``<script>``.
    """
    name = tag.name
    finder = finders.get(name)
    if finder is None:
        finder = finders[name] = _NextMatch(_RAW_TEXT_CLOSE_RE[name], source)
    close = finder.search(tag.end)
    if close is None:
        return None
    return _Tag("end", name, close.start(), close.end(), False, 0, 0)


def _matching_ends(tags: list[_Tag]) -> list[int]:
    """Index of the end tag closing each start tag (-1: never closed), in one pass.

    Same rule as counting nested same-name tags forward from each start tag
    (self-closing ones excluded, stray end tags ignored), but with one stack per
    tag name instead of one forward scan per ``th:*`` element, which was
    quadratic in the number of tags.
    """
    ends = [-1] * len(tags)
    open_by_name: dict[str, list[int]] = {}
    for index, tag in enumerate(tags):
        if tag.kind == "start":
            if not tag.self_closing:
                open_by_name.setdefault(tag.name, []).append(index)
        elif stack := open_by_name.get(tag.name):
            ends[stack.pop()] = index
    return ends


class _Translator:
    """Rewrites one template source from the Thymeleaf subset to Jinja2 source."""

    def __init__(self, field: str, source: str, *, html: bool) -> None:
        self.field = field
        self.source = source
        self.html = html
        #: stripped expression / raw th:* value -> Jinja source: templates repeat
        #: the same few names, and a 100 KB template may hold 5,000 elements
        self.translated: dict[str, str] = {}
        self.attr_values: dict[str, str] = {}

    def fail(self, offset: int, message: str) -> NoReturn:
        raise TemplateError(self.field, _line_of(self.source, offset), message)

    # ---- expressions

    def expression(self, raw: str, offset: int) -> str:
        """``client.firstName`` -> ``client['firstName']``.

        Subscripts (not attribute access) because Jinja's ``.items`` on a dict
        would find the *method* ``dict.items`` before the key ``"items"``.
        """
        expr = raw.strip()
        known = self.translated.get(expr)
        if known is not None:
            return known
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
        translated = self.translated[expr] = head + "".join(f"[{part!r}]" for part in rest)
        return translated

    def attr_expression(self, attr: str, value: str | None, offset: int) -> str:
        """``"${a.b}"`` -> ``a['b']``, with an error naming the attribute otherwise.

        Plain string tests instead of a ``\\s*\\$\\{(.*)\\}\\s*`` regex: same
        acceptance (``str.strip`` and ``\\s`` agree on what whitespace is), no
        backtracking over the value.
        """
        if value is None:
            self.fail(offset, f'{attr} needs a value such as "${{name}}"')
        known = self.attr_values.get(value)
        if known is not None:
            return known
        raw = value
        if value[:1] in ("'", '"'):
            value = value[1:-1]
        inner = value.strip()
        if len(inner) < 3 or not inner.startswith("${") or not inner.endswith("}"):
            shown = value if len(value) <= 40 else value[:37] + "..."
            self.fail(offset, f'{attr}="{shown}" is not supported: use {attr}="${{name}}"')
        translated = self.attr_values[raw] = self.expression(inner[2:-1], offset)
        return translated

    def output(self, expr: str, *, escaped: bool) -> str:
        if escaped or not self.html:
            return "{{ " + expr + " }}"
        return "{{ " + expr + "|utext }}"

    # ---- elements

    def elements(self) -> str:
        """Apply ``th:text/utext/if/unless`` (and drop ``xmlns:th``)."""
        src = self.source
        if "th" not in src.lower():  # fast path: nothing to do for most SMS bodies
            return src
        return _ElementPass(self, src).run()

    def th_attributes(self, tag: _Tag) -> tuple[dict[str, str], str] | None:
        """Parse a start tag; return its th:* directives and the tag without them."""
        src = self.source
        attrs_start = tag.attrs_start
        attrs = src[attrs_start : tag.attrs_end]
        if "th" not in attrs.lower():
            return None
        th: dict[str, str] = {}
        kept: list[str] = []
        last = pos = 0
        # ``attrs`` was accepted by _StartTags as a run of _ATTR_RE matches, so
        # anchored matches walk exactly those attributes, once each.
        while (m := _ATTR_RE.match(attrs, pos)) is not None:
            start, pos = m.span()
            ws, raw_name, value = m.groups()
            name = raw_name.lower()
            if name.startswith("data-th-"):
                name = "th:" + name[len("data-th-") :]
            if name.startswith("th:"):
                offset = attrs_start + start + len(ws)
                if name not in _SUPPORTED_TH:
                    self.fail(
                        offset,
                        f"unsupported attribute {raw_name}: only "
                        + ", ".join(_SUPPORTED_TH)
                        + " are supported",
                    )
                if name in th:
                    self.fail(offset, f"duplicate attribute {name}")
                th[name] = self.attr_expression(name, value, offset)
            elif name not in _DROPPED_ATTRS:
                continue
            kept.append(attrs[last:start])
            kept.append(_newlines_kept(attrs[start:pos]))
            last = pos
        if not kept:
            return None
        kept.append(attrs[last:])
        new_tag = src[tag.start : attrs_start] + "".join(kept) + src[tag.attrs_end : tag.end]
        return th, new_tag

    # ---- inline

    def inline(self, text: str) -> str:
        """``[(${x})]`` / ``[[${x}]]`` -> ``{{ ... }}`` (single line, so offsets stay valid).

        Same matches as the former ``\\[\\(\\s*\\$\\{([^\\n]*?)\\}\\s*\\)\\]`` regex
        (the first ``}`` followed by the closer, with no line break before it),
        found without re-reading the line from every opener: the next closer and
        the next line break are remembered (:class:`_NextMatch`), so an opener
        whose line has no closer (``[(${`` repeated) fails in O(1).  Those openers
        are left in the text and reported as unterminated below, after the
        complete expressions were checked, in the same order as before.
        """
        if "[" not in text:
            return text
        # Offsets below index `text`/`result`, which have the same line
        # structure as the original source, so line numbers stay correct.
        self.source = text
        closers = {kind: _NextMatch(pattern, text) for kind, pattern in _INLINE_CLOSE_RE.items()}
        line_break = _NextMatch(_NEWLINE_RE, text)
        out: list[str] = []
        cursor = pos = 0
        while (opener := _INLINE_OPEN_RE.search(text, pos)) is not None:
            start, expr_start = opener.span()
            pos = start + 1  # if this opener has no closer, the next one may
            kind = opener["kind"]
            close = closers[kind].search(expr_start)
            if close is None:
                continue
            newline = line_break.search(expr_start)
            if newline is not None and newline.start() < close.start():
                continue
            expr = self.expression(text[expr_start : close.start()], start)
            out.append(text[cursor:start])
            out.append(self.output(expr, escaped=kind == "["))
            cursor = pos = close.end()
        out.append(text[cursor:])
        result = "".join(out)
        leftover = _INLINE_OPEN_RE.search(result)
        if leftover is not None:
            self.source = result
            self.fail(
                leftover.start(),
                "unterminated inline expression: expected [(${name})] or [[${name}]]",
            )
        return result

    def translate(self) -> str:
        return self.inline(self.elements())


class _ElementPass:
    """One pass of :meth:`_Translator.elements` over the tags of one source, in order.

    The source is copied to ``out`` up to ``cursor``, and each element with
    ``th:*`` attributes is rewritten on the way.  The ``{% endif %}`` of a
    ``th:if`` whose content is kept belongs after the element's end tag, which
    the pass has not reached yet: it waits in ``pending`` (end-tag index ->
    text to emit after it).

    ``pending_keys`` is a min-heap over pending's keys (entries of emitted
    keys are dropped lazily).  Every pending key is after the current tag:
    keys before it were emitted when the pass went by them, and skipping over
    one is the nesting error of :meth:`replace_content`.  So "some pending key
    within (i, end]" is "smallest key <= end", asked in O(log n) rather than by
    scanning all keys for every element.
    """

    __slots__ = ("cursor", "ends", "out", "pending", "pending_keys", "source", "tags", "translator")

    def __init__(self, translator: _Translator, source: str) -> None:
        self.translator = translator
        self.source = source
        self.tags = _scan_tags(source)
        self.ends = _matching_ends(self.tags)
        self.out: list[str] = []
        self.cursor = 0
        self.pending: dict[int, list[str]] = {}
        self.pending_keys: list[int] = []

    def run(self) -> str:
        """The rewritten source; the common tags (end tags, no attributes) cost no call."""
        tags, pending, out, src = self.tags, self.pending, self.out, self.source
        th_attributes = self.translator.th_attributes
        i = 0
        while i < len(tags):
            tag = tags[i]
            if tag.kind == "end":
                if i in pending:  # the {% endif %}s waiting for this end tag
                    out.append(src[self.cursor : tag.end])
                    out.extend(pending.pop(i))
                    self.cursor = tag.end
            elif tag.attrs_start != tag.attrs_end and (found := th_attributes(tag)) is not None:
                i = self.element(i, tag, found)
                continue
            i += 1
        if pending:  # defensive: every pending index is an existing end tag
            self.translator.fail(len(src), "internal error: unbalanced th:if/th:unless")
        out.append(src[self.cursor :])
        return "".join(out)

    def element(self, index: int, tag: _Tag, found: tuple[dict[str, str], str]) -> int:
        """Rewrite the element opened by ``tags[index]``; returns the next tag index to read.

        ``found`` is what :meth:`_Translator.th_attributes` read in its tag.
        ``th:if``/``th:unless`` wrap the whole element, tag included, so a
        false condition drops it as Thymeleaf does.  Checks run in the source
        order of what they report, so the first problem in the template is the
        one the author sees.
        """
        th, new_tag = found
        if "th:text" in th and "th:utext" in th:
            self.translator.fail(
                tag.start, "th:text and th:utext cannot be used on the same element"
            )
        prefix = suffix = ""
        if "th:if" in th:
            prefix += "{% if " + th["th:if"] + " is thymeleaf_true %}"
            suffix += "{% endif %}"
        if "th:unless" in th:
            prefix += "{% if " + th["th:unless"] + " is not thymeleaf_true %}"
            suffix += "{% endif %}"
        content = th.get("th:text") or th.get("th:utext")
        has_content = not (tag.self_closing or tag.name in _VOID_ELEMENTS)
        if content is not None and not has_content:
            self.translator.fail(
                tag.start, f"th:text/th:utext on <{tag.name}>, which has no content"
            )
        out = self.out
        out.append(self.source[self.cursor : tag.start])
        out.append(prefix)
        out.append(new_tag)
        self.cursor = tag.end
        if not has_content:
            out.append(suffix)
        elif content is not None:
            return self.replace_content(index, tag, content, "th:text" in th, suffix)
        elif suffix:
            self.close_after(index, suffix)
        return index + 1

    def close_after(self, index: int, suffix: str) -> None:
        """Emit ``suffix`` right after the end tag of ``tags[index]``, when the pass gets there.

        The element's content stays and may hold other th:* elements, so it is
        not skipped: the pass goes on inside it.
        """
        end = self.ends[index]
        if end < 0:
            self.never_closed(index)
        if end not in self.pending:
            heapq.heappush(self.pending_keys, end)
        self.pending.setdefault(end, []).append(suffix)

    def replace_content(
        self, index: int, tag: _Tag, content: str, escaped: bool, suffix: str
    ) -> int:
        """Replace the content of ``tags[index]`` by ``content``; returns the tag after its end.

        The content is skipped, so a ``{% endif %}`` waiting for an end tag
        inside it would never be written: that is the nesting error.
        """
        end = self.ends[index]
        if end < 0:
            self.never_closed(index)
        pending_keys = self.pending_keys
        while pending_keys and pending_keys[0] not in self.pending:
            heapq.heappop(pending_keys)
        if pending_keys and pending_keys[0] <= end:
            self.translator.fail(tag.start, f"<{tag.name}> is not properly nested")
        closing = self.tags[end]
        src, out = self.source, self.out
        out.append(self.translator.output(content, escaped=escaped))
        out.append(_newlines_kept(src[tag.end : closing.start]))
        out.append(src[closing.start : closing.end])
        out.append(suffix)
        self.cursor = closing.end
        return end + 1

    def never_closed(self, index: int) -> NoReturn:
        """Refuse ``tags[index]``, which :func:`_matching_ends` found no end tag for.

        Raised when the element is reached, not when the tags are matched, so
        the first problem in source order is the one reported.
        """
        opening = self.tags[index]
        self.translator.fail(
            opening.start, f"<{opening.name}> with th:* attributes is never closed"
        )


def translate(field: str, source: str, *, html: bool) -> str:
    """Jinja2 source for one template field; raises :class:`TemplateError` if unsupported."""
    return _Translator(field, source, html=html).translate()
