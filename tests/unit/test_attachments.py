"""Attachment paths, content types and the streaming encoder, without a store."""

from __future__ import annotations

import base64
import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.attachments import (
    CHUNK_BYTES,
    AttachmentError,
    AttachmentStore,
    ByteBudget,
    _TooLarge,
    content_type,
    encode_stream,
    split_path,
)

# -- split_path ------------------------------------------------------------------------------


def test_split_path_bucket_and_key():
    assert split_path("docs/contract.pdf") == ("docs", "contract.pdf")
    assert split_path("docs/2026/11/contract v2.pdf") == ("docs", "2026/11/contract v2.pdf")
    assert split_path("docs/a/b", "qdev-preview-") == ("qdev-preview-docs", "a/b")


@pytest.mark.parametrize(
    "path",
    [
        "",
        "docs",
        "docs/",
        "/docs/key",
        "/key",
        "docs/../other/key",
        "docs/..",
        "docs/./key",
        "../key",
        "./key",
        "docs/ke\ny",
        "docs/key\r",
        "docs/key\x00",
        "do\tcs/key",
        "docs/key\x7f",
        "do?cs/key",
        "do cs/key",
        "b" * 256 + "/key",
        "docs/" + "k" * 1025,
    ],
)
def test_split_path_refuses(path: str):
    with pytest.raises(ValueError):
        split_path(path)


def test_split_path_checks_the_prefixed_bucket():
    with pytest.raises(ValueError):
        split_path("docs/key", "bad prefix/")
    with pytest.raises(ValueError):
        split_path("../key", ".")
    # botocore would send these to a host named after the bucket, even with path-style URLs
    for routed in ("tenantx--use1-az1--x-s3/contract.pdf", "ap--ol-s3/k", "a--X-S3/k"):
        with pytest.raises(ValueError, match="general purpose"):
            split_path(routed)


@given(st.text(), st.sampled_from(["", "qdev-", "x."]))
def test_split_path_raises_only_value_error_and_never_yields_empty_parts(path: str, prefix: str):
    try:
        bucket, key = split_path(path, prefix)
    except ValueError:
        return
    assert bucket and key
    assert bucket == prefix + path.split("/", 1)[0] and key == path.split("/", 1)[1]
    assert ".." not in key.split("/") and not path.startswith("/")
    assert all(ch.isprintable() or ch == " " or not ch.isascii() for ch in path)


@given(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{1,40}", fullmatch=True),
    st.lists(st.from_regex(r"[A-Za-z0-9 _()-]{1,20}", fullmatch=True), min_size=1, max_size=5),
)
def test_split_path_accepts_ordinary_paths(bucket: str, segments: list[str]):
    key = "/".join(segments)
    if bucket.strip("."):
        assert split_path(f"{bucket}/{key}") == (bucket, key)


# -- content_type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "stored", "expected"),
    [
        ("contract.pdf", "application/pdf", "application/pdf"),
        ("contract.bin", "application/pdf", "application/pdf"),
        ("notes.txt", "text/plain; charset=utf-8", "text/plain; charset=utf-8"),
        ("contract.pdf", None, "application/pdf"),
        ("contract.pdf", "", "application/pdf"),
        ("contract.pdf", "binary/octet-stream", "application/pdf"),
        ("contract.pdf", "application/octet-stream", "application/pdf"),
        ("contract.PDF", "Application/Octet-Stream", "application/pdf"),
        ("photo.jpg", None, "image/jpeg"),
        ("sheet.csv", None, "text/csv"),
        ("archive.tar.gz", None, "application/gzip"),
        ("README", None, "application/octet-stream"),
        ("weird.unknownext", "binary/octet-stream", "application/octet-stream"),
        # A stored type that could break the MIME header is ignored, not copied.
        ("contract.pdf", "text/html\r\nBcc: x@example.com", "application/pdf"),
        ("contract.pdf", "not a type", "application/pdf"),
        ("contract.pdf", 'text/plain; name="é"', "application/pdf"),
        # Python's \s takes these too: a blank line ended the part's header, the rest its body.
        ("contract.pdf", "text/html\r\n\r\n;<script>x</script>", "application/pdf"),
        ("contract.pdf", "text/html\u2028;x", "application/pdf"),
        ("contract.pdf", "text/csv\t; a=b", "application/pdf"),
        # A container type would make the attachment's bytes part of the mail's structure.
        ("contract.pdf", "multipart/mixed; boundary=x", "application/pdf"),
        ("contract.pdf", "Message/RFC822", "application/pdf"),
    ],
)
def test_content_type(filename: str, stored: str | None, expected: str):
    assert content_type(filename, stored) == expected


@given(
    st.text(max_size=60),
    st.one_of(st.none(), st.text(max_size=60), st.from_regex(r"[a-z]+/[a-z]+\s*;.*")),
)
def test_content_type_is_always_one_header_safe_value(filename: str, stored: str | None):
    value = content_type(filename, stored)
    assert "/" in value and value.isascii() and value.isprintable()


# -- encode_stream ---------------------------------------------------------------------------


def reader(data: bytes, piece_sizes: list[int]):
    """A read(n) that returns short reads, like a socket does."""
    pos = 0
    sizes = iter(piece_sizes)

    async def read(n: int) -> bytes:
        nonlocal pos
        take = min(n, next(sizes, n))
        chunk = data[pos : pos + take]
        pos += len(chunk)
        return chunk

    return read


def check_mime_body(encoded: bytes, data: bytes) -> None:
    lines = encoded.split(b"\r\n")
    assert lines[-1] == b""  # ends with CRLF
    assert all(len(line) == 76 for line in lines[:-2])
    assert 0 < len(lines[-2]) <= 76
    assert b"\n" not in encoded.replace(b"\r\n", b"")
    assert base64.b64decode(b"".join(lines), validate=True) == data


@pytest.mark.parametrize("length", [1, 56, 57, 58, 76, 1000, CHUNK_BYTES, CHUNK_BYTES + 1])
async def test_encode_stream_folds_at_76_with_crlf(length: int):
    data = os.urandom(length)
    size, encoded = await encode_stream(reader(data, []), budget=ByteBudget(length))
    assert size == length
    check_mime_body(encoded, data)


async def test_encode_stream_short_reads():
    data = os.urandom(200_000)
    rng = random.Random(7)
    sizes = [rng.randint(1, 5000) for _ in range(400)]
    size, encoded = await encode_stream(reader(data, sizes), budget=ByteBudget(len(data)))
    assert size == len(data)
    check_mime_body(encoded, data)


async def test_encode_stream_empty():
    assert await encode_stream(reader(b"", []), budget=ByteBudget(0)) == (0, b"")


async def test_encode_stream_stops_past_the_budget():
    asked: list[int] = []
    inner = reader(b"x" * (10 * CHUNK_BYTES), [])

    async def read(n: int) -> bytes:
        asked.append(n)
        return await inner(n)

    with pytest.raises(_TooLarge):
        await encode_stream(read, budget=ByteBudget(CHUNK_BYTES + 10))
    assert len(asked) == 2  # the second chunk crossed the budget; nothing more was read


# -- errors ----------------------------------------------------------------------------------


def test_error_names_the_attachment_and_the_reason():
    exc = AttachmentError("contract.pdf", "docs/contract.pdf", "not found")
    assert str(exc) == "attachment 'contract.pdf' ('docs/contract.pdf'): not found"
    assert (exc.filename, exc.path, exc.reason) == (
        "contract.pdf",
        "docs/contract.pdf",
        "not found",
    )


async def test_bad_path_is_refused_without_a_client():
    store = AttachmentStore(url="http://127.0.0.1:1", access_key="ak", secret_key="sk-secret")
    with pytest.raises(AttachmentError, match="leading"):
        await store.fetch("a.pdf", "/docs/a.pdf", budget=100)
    assert store._client is None
    assert "sk-secret" not in repr(store)
    await store.close()


class _Body:
    """An S3 answer's body that brings ``data`` whatever its answer declared."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    async def read(self, n: int) -> bytes:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    def close(self) -> None:
        self.closed = True


class _Client:
    def __init__(self, declared: int | None, data: bytes) -> None:
        self.answer = {"ContentLength": declared, "Body": _Body(data), "ContentType": None}

    async def get_object(self, Bucket: str, Key: str) -> dict:
        return self.answer


async def test_a_body_longer_than_its_declared_length_is_refused_as_such():
    store = AttachmentStore(url="http://127.0.0.1:1", access_key="ak", secret_key="sk")
    store._client = _Client(declared=10, data=b"x" * 20)
    budget = ByteBudget(1000)
    with pytest.raises(AttachmentError) as info:
        await store.fetch("a.pdf", "docs/a.pdf", budget)
    assert info.value.reason == "the store sent more than the object's length"
    assert not info.value.over_budget and budget.left == 990  # its declared length, taken


async def test_a_length_over_the_whole_budget_is_refused_by_itself_and_unread():
    store = AttachmentStore(url="http://127.0.0.1:1", access_key="ak", secret_key="sk")
    client = store._client = _Client(declared=2000, data=b"x" * 2000)
    budget = ByteBudget(1000)
    with pytest.raises(AttachmentError) as info:
        await store.fetch("a.pdf", "docs/a.pdf", budget)
    assert info.value.reason == "larger than 1000 bytes" and not info.value.over_budget
    assert budget.left == 1000 and client.answer["Body"].closed
