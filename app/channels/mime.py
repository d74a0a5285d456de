"""Build the raw MIME bytes of a mail directly.

``email.message.EmailMessage`` with the default policy parses every header it is given and
re-serialises the whole tree on send; profiling showed it costing more CPU than everything
else in a generate request together. A mail here has one of a few fixed shapes (a plain-text
part, an HTML alternative, attachments already base64-encoded), so it is written out
directly; the result is standard MIME that ``email.message_from_bytes`` parses back to the
same headers and parts (tested).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from email.header import Header
from email.utils import encode_rfc2231, formataddr, formatdate, make_msgid
from typing import Protocol

# "From: " and CRLF leave this much of the 998 a header line may take.
MAX_FROM_CHARS = 990


def _header(value: str) -> str:
    """RFC 2047-encode non-ASCII text and fold long lines; never lets CR/LF through."""
    value = " ".join(value.split())
    if value.isascii() and len(value) < 900:
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def _mailbox(name: str, address: str) -> str:
    """``Name <address>``, the name quoted or encoded as RFC 5322 and 2047 need, and cut (with
    "…") until the line fits in 998 bytes: 200 emoji made a From line of 1,104. (One encoded
    word, not folded ones: parsers disagree on the space between words of a display name.)"""
    name = " ".join(name.split())
    line = formataddr((name, address), charset="utf-8")
    while len(line) > MAX_FROM_CHARS and name:
        name = name[: len(name) * 3 // 4 - 1].rstrip() + "\u2026"
        line = formataddr((name, address), charset="utf-8")
    return line


def _part(content_type: str, text: str) -> bytes:
    body = base64.encodebytes(text.encode("utf-8"))
    return (
        f'Content-Type: {content_type}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + body.replace(b"\n", b"\r\n")


class MailAttachment(Protocol):
    """An attachment ready for MIME (``app.attachments.Attachment``): already base64."""

    filename: str
    content_type: str
    encoded: bytes


def _attachment_part(attachment: MailAttachment) -> bytes:
    """Filenames go out RFC 2231-encoded when not plain ASCII, so no header can be injected."""
    name = attachment.filename
    if name.isascii() and name.isprintable() and '"' not in name:
        param = f'filename="{name}"'
        type_param = f'; name="{name}"'
    else:
        param = f"filename*={encode_rfc2231(name, 'utf-8')}"
        type_param = ""
    return (
        f"Content-Type: {attachment.content_type}{type_param}\r\n"
        f"Content-Disposition: attachment; {param}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + attachment.encoded


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    boundary = f"=_{subtype[:3]}_{secrets.token_hex(12)}"
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()]
    for part in parts:
        out += [f"--{boundary}\r\n".encode(), part]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def build_mail(
    *,
    from_name: str,
    from_email: str,
    to: str,
    subject: str | None,
    html: str | None,
    text: str,
    message_id_domain: str,
    attachments: Sequence[MailAttachment] = (),
    message_key: str = "",
) -> bytes:
    """One message: ``text`` alone, or ``text`` with an ``html`` alternative; with attachments,
    that body and the files in a ``multipart/mixed``. ``message_key`` (letters and digits)
    makes the Message-ID, else it is random."""
    message_id = (
        f"<{message_key}@{message_id_domain}>"
        if message_key
        else make_msgid(domain=message_id_domain)
    )
    headers = (
        f"From: {_mailbox(from_name, from_email)}\r\n"
        f"To: {to}\r\n"
        f"Subject: {_header(subject or '')}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()
    body = _part("text/plain", text)
    if html is not None:
        body = _multipart("alternative", [body, _part("text/html", html)])
    if attachments:
        body = _multipart("mixed", [body, *map(_attachment_part, attachments)])
    return headers + body
