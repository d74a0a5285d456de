"""The plain-text alternative of an HTML body (the text/plain part of a multipart mail).

The body is rendered HTML whose parameters come from end users (up to about
1 MB), so the tokenizer here is written to be linear in its input: CPython's
``html.parser`` re-scans the rest of the input from every unclosed ``<a ``
(quadratic: 48 KB stalled the event loop for 13 s).  It follows the HTML5
tokenizer closely enough for mail bodies, and where a construct is never
terminated it ends the input the way HTML5 does instead of searching again.
"""

from __future__ import annotations

import re
import string
from html import unescape

_SKIP_TEXT = frozenset({"script", "style", "title", "template"})
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "pre", "hr"}
)
_LINE = frozenset({"div", "tr", "section", "article", "header", "footer", "dl", "dt", "dd"})
_WS_RE = re.compile(r"[ \t\r\n\f\v\u00a0]+")
_INNER_WS_RE = re.compile(r"[ \t\r\f\v\u00a0]+")  # _WS_RE without the line break
_BLANK_LINES_RE = re.compile(r"\n{3,}")

# What the extractor does with a tag, looked up once per tag: a 1 MB body can
# hold 300,000 tags, so the per-tag work is kept to a dict lookup for the many
# tags (b, span, font...) that change nothing.
_HIDE, _BR, _LI, _PARA, _BLOCK, _CELL, _LINK = range(7)
_ACTION: dict[str, int] = {
    **dict.fromkeys(_SKIP_TEXT, _HIDE),
    **dict.fromkeys(_PARAGRAPH, _PARA),
    **dict.fromkeys(_LINE, _BLOCK),
    "br": _BR,
    "li": _LI,
    "td": _CELL,
    "th": _CELL,
    "a": _LINK,
}

# ---- tokenizer patterns (HTML5 whitespace is tab, LF, FF, CR and space)
#
# Applied with ``match``/``search`` from the current position; quantifiers are
# possessive over disjoint classes, so a pattern reads each character once and
# the scan never goes back over what a pattern read.
_SEP = r"[\t\n\f\r /]*+"  # between attributes; a "/" not before ">" is a separator too
_ATTR = (
    r"[^\t\n\f\r />][^\t\n\f\r />=]*+[\t\n\f\r ]*+"  # name (may start with "=")
    r"(?:=[\t\n\f\r ]*+(?:\"[^\"]*+(?:\"|\Z)|'[^']*+(?:'|\Z)|[^\t\n\f\r >]*+))?+"
)
#: The next token at or after a position: a whole start or end tag, as the
#: HTML5 tag states read it, or the start of other markup (``<!``, ``<?``, ``</``
#: before a non-letter).  In a tag every character is a separator, the ``>``
#: or part of an attribute (an unclosed quote takes the rest of the input), so
#: a tag always matches: either with its ``>`` or, without one, up to the end
#: of the input, where HTML5 drops it.  A ``<`` that starts none of these is
#: text and skipped inside the regex engine (so is a ``</`` ending the input).
_TOKEN_RE = re.compile(
    rf"<(?:(?P<slash>/?)(?P<name>[A-Za-z][^\t\n\f\r />]*+)(?:{_SEP}{_ATTR})*+"
    rf"(?P<sep>{_SEP})(?P<gt>>?)|(?P<markup>[!?]|/(?=.)))",
    re.S,
)
#: The first ``href`` attribute of a complete tag (HTML5 keeps the first of
#: duplicates): other attributes are skipped inside the regex engine, so a tag
#: with a million attributes costs one call, not a Python loop.
_HREF_RE = re.compile(
    rf"(?:{_SEP}(?!(?i:href)(?:[\t\n\f\r />=]|\Z)){_ATTR})*+{_SEP}(?i:href)[\t\n\f\r ]*+"
    r"(?:=[\t\n\f\r ]*+(?:\"(?P<dq>[^\"]*+)\"|'(?P<sq>[^']*+)'|(?P<bare>[^\t\n\f\r >]*+)))?+",
    re.A,
)
_COMMENT_END_RE = re.compile(r"--!?>")
#: Elements whose content is raw text (no tags inside) and never shown; title is
#: RCDATA in HTML5, which makes no difference when its text is dropped anyway.
_RAW_TEXT_END_RE = {
    name: re.compile(rf"</{name}(?=[\t\n\f\r />])", re.I | re.A)
    for name in ("script", "style", "title")
}
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _tokenize(html: str, sink: _TextExtractor) -> None:
    """Feed ``html`` to ``sink`` as HTML5 would tokenize it, in one pass.

    Each step is one regex call that consumes what it read, and a construct
    that is never terminated (tag, quoted value, comment, ``<script>``...)
    ends the input, as in HTML5, rather than being searched for again.

    Simplifications (harmless for a text alternative): character references in
    text runs and attribute values are decoded with :func:`html.unescape`;
    ``<![CDATA[`` and ``<!DOCTYPE`` are bogus comments up to the next ``>``;
    the script-data escape states (``<!--`` inside ``<script>``) are not
    modelled; only ``href`` of ``<a>`` is extracted.  Like ``html.parser`` (and
    unlike HTML5), a self-closing ``<script/>`` does not start raw text, so no
    text after it is lost.
    """
    text_start = 0
    while (token := _TOKEN_RE.search(html, text_start)) is not None:
        lt, end = token.span()
        if text_start < lt:
            chunk = html[text_start:lt]
            sink.data(unescape(chunk) if "&" in chunk else chunk)
        slash, name, sep, gt, _ = token.groups()  # one call: this loop runs per tag
        if name is None:
            text_start = _skip_markup(html, lt)
            continue
        if not gt:
            return  # EOF inside the tag: HTML5 drops it, and nothing follows
        text_start = end
        name = name.lower() if name.isascii() else name.translate(_ASCII_LOWER)
        action = _ACTION.get(name)
        if action is None:
            continue
        if slash:
            sink.end(action)
        elif action != _HIDE:
            href = None
            if action == _LINK and end - lt > len(name) + len(sep) + 2:  # it has attributes
                href = _first_href(html, token.end("name"), token.start("sep"))
            sink.start(action, href)
        elif not sep.endswith("/"):  # <script/> etc. start nothing (as html.parser reads it)
            sink.start(action, None)
            text_start = _raw_text_end(html, name, end)
    chunk = html[text_start:]  # empty if the input ends in markup: data() ignores it
    sink.data(unescape(chunk) if "&" in chunk else chunk)


def _skip_markup(html: str, lt: int) -> int:
    """End of the comment, ``<!...>``, ``<?...>`` or ``</...>`` at ``lt``.

    Unterminated, it takes the rest of the input, as in HTML5: the end of the
    input is returned and the scan ends there.
    """
    if html.startswith("<!--", lt):
        if html.startswith(">", lt + 4):  # "<!-->" is an (empty) comment in HTML5
            return lt + 5
        if html.startswith("->", lt + 4):  # and so is "<!--->"
            return lt + 6
        end = _COMMENT_END_RE.search(html, lt + 4)
        return len(html) if end is None else end.end()
    if html.startswith("</>", lt):  # ignored entirely
        return lt + 3
    gt = html.find(">", lt + 2)
    return len(html) if gt < 0 else gt + 1


def _raw_text_end(html: str, name: str, pos: int) -> int:
    """Where the text resumes after the start tag of hidden element ``name`` ending at ``pos``.

    Script, style and title hold raw text, skipped unread up to their end tag
    (unclosed, the rest of the input is theirs); ``<template>`` holds markup,
    tokenized as usual and hidden by the sink.
    """
    raw_end = _RAW_TEXT_END_RE.get(name)
    if raw_end is None:
        return pos
    close = raw_end.search(html, pos)
    return len(html) if close is None else close.start()


def _first_href(html: str, pos: int, end: int) -> str | None:
    """Raw value of the first ``href`` among the attributes in ``html[pos:end]``."""
    attr = _HREF_RE.match(html, pos, end)
    if attr is None:
        return None
    for group in ("dq", "sq", "bare"):
        if (value := attr[group]) is not None:
            return value
    return ""  # HTML5: an attribute without "=" has the empty value


class _TextExtractor:
    """Collects readable text: blocks become line breaks, links keep their target.

    Block boundaries are recorded as a *pending* break (1 = new line, 2 = blank
    line) that is only written before the next visible text, so nested
    ``<div><div>`` or ``</p><p>`` do not pile up empty lines; ``<br>`` is an
    explicit break and is written immediately.

    Inside ``<template>`` nothing is written, not even the breaks of
    ``<br>``/``<li>``: that content is not displayed.
    At most one link is open, as in HTML5, where ``<a>`` inside ``<a>`` closes
    the outer one first; that also keeps label joins linear.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.skip = 0
        self.pending = 0
        self.link: tuple[str | None, int] | None = None

    def write(self, text: str) -> None:
        if self.pending:
            self.parts.append("\n" * self.pending)
            self.pending = 0
        self.parts.append(text)

    def start(self, action: int, href: str | None) -> None:
        if self.skip:
            if action == _HIDE:
                self.skip += 1
        elif action == _LINK:
            if self.link is not None:
                self.close_link()
            self.link = (unescape(href) if href else href, len(self.parts))
        elif action == _PARA:
            self.pending = 2
        elif action == _BLOCK:
            self.pending = max(self.pending, 1)
        elif action == _BR:
            self.write("\n")
        elif action == _LI:
            self.pending = max(self.pending, 1)
            self.write("- ")
        elif action == _CELL:
            self.parts.append(" ")
        else:  # _HIDE
            self.skip = 1

    def end(self, action: int) -> None:
        if action == _HIDE:
            self.skip = max(0, self.skip - 1)
        elif self.skip:
            return
        elif action == _LINK:
            if self.link is not None:
                self.close_link()
        elif action == _PARA:
            self.pending = 2
        elif action == _BLOCK or action == _LI:  # </br>, </td> change nothing
            self.pending = max(self.pending, 1)

    def close_link(self) -> None:
        href, start = self.link or (None, 0)
        self.link = None
        if not href or not href.startswith(("http://", "https://")):
            return
        label = _WS_RE.sub(" ", "".join(self.parts[start:])).strip()
        if href != label:
            self.write(f" ({href})" if label else href)

    def data(self, data: str) -> None:
        """Write visible text; its line breaks are spaces (only markup breaks lines).

        Other whitespace is tidied once, in :meth:`text`, not per text run.
        """
        if self.skip or not data:
            return
        if not data.isspace():
            self.write(data.replace("\n", " "))
        else:
            self.parts.append(" ")

    def text(self) -> str:
        """The collected text with runs of blanks as one space, each line stripped.

        One substitution over the whole text rather than one per line (runs of
        blanks never cross a line break, so the result is the same).
        """
        text = _INNER_WS_RE.sub(" ", "".join(self.parts))
        text = "\n".join([line.strip() for line in text.split("\n")])
        return _BLANK_LINES_RE.sub("\n\n", text).strip()


def html_to_text(html: str) -> str:
    """Readable plain-text alternative of an HTML body (multipart/alternative part).

    Tags are stripped, ``<br>``/``<p>``/``<li>``/blocks become line breaks,
    entities are unescaped, whitespace is tidied; head/script/style are dropped.
    Linear time in ``html`` (it holds end-user parameters) and it never raises:
    a text alternative must never fail a send.
    """
    extractor = _TextExtractor()
    try:
        _tokenize(html, extractor)
        return extractor.text()
    except Exception:  # a bug here must not fail a send: strip tags crudely instead
        stripped = re.sub(r"<[^<>]*+>", " ", html) if isinstance(html, str) else ""
        return _WS_RE.sub(" ", stripped).strip()
