"""The plain-text alternative of an HTML body (the text/plain part of a multipart mail)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

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
