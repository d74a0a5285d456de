"""AttachmentStore against a real S3 server (SeaweedFS from scripts/s3-local).

Each test uses its own bucket, so the tests do not depend on each other's order; the store
(``s3_store``) is shared by the session.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from app.attachments import (
    CHUNK_BYTES,
    AttachmentError,
    AttachmentStore,
    ByteBudget,
    _TooLarge,
    encode_stream,
)
from devtools.support import free_port
from tests.s3_fixture import S3Store

pytestmark = pytest.mark.integration


def decode(encoded: bytes) -> bytes:
    lines = encoded.split(b"\r\n")
    assert lines[-1] == b"" and all(0 < len(line) <= 76 for line in lines[:-1])
    assert all(len(line) == 76 for line in lines[:-2])
    return base64.b64decode(b"".join(lines), validate=True)


@pytest.fixture
async def store(s3_store: S3Store) -> AsyncIterator[AttachmentStore]:
    attachments = AttachmentStore(
        url=s3_store.url,
        access_key=s3_store.access_key,
        secret_key=s3_store.secret_key,
        timeout=5.0,
    )
    yield attachments
    await attachments.close()


@pytest.fixture
def bucket(s3_store: S3Store) -> str:
    return s3_store.bucket_name()


def assert_safe(exc: AttachmentError, s3_store: S3Store) -> None:
    """An error names the attachment, never a credential."""
    text = f"{exc} {exc!r} {exc.reason}"
    assert s3_store.secret_key not in text and s3_store.access_key not in text


# -- bytes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3 * 1024 * 1024 + 7, 1, 0])
async def test_bytes_round_trip_exactly(
    store: AttachmentStore, s3_store: S3Store, bucket: str, size: int
):
    data = os.urandom(size)
    s3_store.put(bucket, f"docs/blob-{size}.bin", data, "application/x-test")
    att = await store.fetch("blob.bin", f"{bucket}/docs/blob-{size}.bin", budget=size)
    assert (att.filename, att.size, att.content_type) == ("blob.bin", size, "application/x-test")
    assert decode(att.encoded) == data if size else att.encoded == b""


async def test_key_with_spaces_and_unicode(store: AttachmentStore, s3_store: S3Store, bucket: str):
    s3_store.put(bucket, "2026/11/Vertrag März v2.pdf", b"%PDF-1.7\n")
    att = await store.fetch("Vertrag.pdf", f"{bucket}/2026/11/Vertrag März v2.pdf", budget=100)
    assert decode(att.encoded) == b"%PDF-1.7\n"


async def test_bucket_prefix_is_put_before_the_bucket(s3_store: S3Store):
    bucket = s3_store.bucket_name("pfx")
    s3_store.put(bucket, "a.txt", b"hello")
    prefix, _, rest = bucket.partition("-")
    attachments = AttachmentStore(
        url=s3_store.url,
        access_key=s3_store.access_key,
        secret_key=s3_store.secret_key,
        bucket_prefix=prefix + "-",
    )
    try:
        att = await attachments.fetch("a.txt", f"{rest}/a.txt", budget=5)
    finally:
        await attachments.close()
    assert decode(att.encoded) == b"hello"


# -- content type ----------------------------------------------------------------------------


async def test_content_type_from_the_stored_metadata(
    store: AttachmentStore, s3_store: S3Store, bucket: str
):
    s3_store.put(bucket, "scan", b"%PDF-1.7\n", "application/pdf")
    att = await store.fetch("scan.bin", f"{bucket}/scan", budget=100)
    assert att.content_type == "application/pdf"


@pytest.mark.parametrize("stored", [None, "binary/octet-stream", "application/octet-stream"])
async def test_content_type_from_the_filename_when_the_store_says_nothing(
    store: AttachmentStore, s3_store: S3Store, bucket: str, stored: str | None
):
    # Not "%PDF": without a type, SeaweedFS stores what it sniffs from the first bytes.
    s3_store.put(bucket, "upload-1234", b"\x00\x01\x02 no magic here", stored)
    att = await store.fetch("contract.pdf", f"{bucket}/upload-1234", budget=100)
    assert att.content_type == "application/pdf"
    att = await store.fetch("README", f"{bucket}/upload-1234", budget=100)
    assert att.content_type == "application/octet-stream"


# -- missing ---------------------------------------------------------------------------------


async def test_missing_key(store: AttachmentStore, s3_store: S3Store, bucket: str):
    s3_store.put(bucket, "present.txt", b"x")
    with pytest.raises(AttachmentError) as info:
        await store.fetch("gone.pdf", f"{bucket}/absent.pdf", budget=100)
    assert info.value.reason == "not found"
    assert "gone.pdf" in str(info.value) and f"{bucket}/absent.pdf" in str(info.value)
    assert_safe(info.value, s3_store)


async def test_missing_bucket(store: AttachmentStore, s3_store: S3Store):
    with pytest.raises(AttachmentError) as info:
        await store.fetch("a.pdf", "no-such-bucket-7f3a/a.pdf", budget=100)
    assert info.value.reason == "not found (no such bucket)"
    assert_safe(info.value, s3_store)


# -- size budget -----------------------------------------------------------------------------


async def test_object_larger_than_the_budget_is_refused_by_its_length(
    store: AttachmentStore, s3_store: S3Store, bucket: str
):
    s3_store.put(bucket, "big.bin", os.urandom(1000))
    with pytest.raises(AttachmentError) as info:
        await store.fetch("big.bin", f"{bucket}/big.bin", budget=999)
    assert info.value.reason == "larger than 999 bytes"
    assert_safe(info.value, s3_store)
    att = await store.fetch("big.bin", f"{bucket}/big.bin", budget=1000)  # exactly fits
    assert att.size == 1000


async def test_reads_at_once_share_one_budget_and_never_hold_more(
    store: AttachmentStore, s3_store: S3Store, bucket: str
):
    """Two objects that fit alone but not together: each takes its whole length when the
    store's answer arrives, so the second answer is refused unread and the first reads in full;
    nothing past the budget is ever spent."""
    size = 3 * CHUNK_BYTES
    for key in ("a.bin", "b.bin"):
        s3_store.put(bucket, key, os.urandom(size))
    budget = ByteBudget(size + CHUNK_BYTES)
    got = await asyncio.gather(
        *(store.fetch(k, f"{bucket}/{k}", budget) for k in ("a.bin", "b.bin")),
        return_exceptions=True,
    )
    refused = [g for g in got if isinstance(g, AttachmentError)]
    assert len(refused) == 1 and refused[0].over_budget, got
    assert refused[0].reason == f"larger than {size + CHUNK_BYTES} bytes"
    assert budget.left == CHUNK_BYTES
    alone = ByteBudget(size - 1)
    with pytest.raises(AttachmentError) as info:
        await store.fetch("a.bin", f"{bucket}/a.bin", alone)
    assert not info.value.over_budget and alone.left == size - 1  # by itself, and unread


async def test_stream_longer_than_the_budget_stops_reading(
    store: AttachmentStore, s3_store: S3Store, bucket: str
):
    """The length check aside: the streaming guard on a real body stops early."""
    s3_store.put(bucket, "big.bin", os.urandom(4 * CHUNK_BYTES))
    client = await store._get_client()
    response = await client.get_object(Bucket=bucket, Key="big.bin")
    body = response["Body"]
    read = 0

    async def counting_read(n: int) -> bytes:
        nonlocal read
        chunk = await body.read(n)
        read += len(chunk)
        return chunk

    try:
        with pytest.raises(_TooLarge):
            await encode_stream(counting_read, budget=ByteBudget(CHUNK_BYTES + 1))
    finally:
        body.close()
    assert read <= 2 * CHUNK_BYTES


# -- store trouble ---------------------------------------------------------------------------


async def test_store_down_is_unreachable_quickly(s3_store: S3Store):
    port = free_port()  # nothing listens there
    attachments = AttachmentStore(
        url=f"http://127.0.0.1:{port}",
        access_key=s3_store.access_key,
        secret_key=s3_store.secret_key,
        timeout=5.0,
    )
    started = time.monotonic()
    try:
        with pytest.raises(AttachmentError) as info:
            await attachments.fetch("a.pdf", "docs/a.pdf", budget=100)
    finally:
        await attachments.close()
    assert time.monotonic() - started < 5.0
    assert info.value.reason == f"storage unreachable (127.0.0.1:{port})"
    assert_safe(info.value, s3_store)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung store."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def test_store_that_never_answers_times_out(s3_store: S3Store, silent_server: int):
    attachments = AttachmentStore(
        url=f"http://127.0.0.1:{silent_server}",
        access_key=s3_store.access_key,
        secret_key=s3_store.secret_key,
        timeout=1.0,
    )
    started = time.monotonic()
    try:
        with pytest.raises(AttachmentError) as info:
            await attachments.fetch("a.pdf", "docs/a.pdf", budget=100)
    finally:
        await attachments.close()
    assert time.monotonic() - started < 2.5
    assert info.value.reason == "timed out after 1s"


@pytest.mark.parametrize("wrong", ["secret", "access key"])
async def test_wrong_credentials_are_access_denied(s3_store: S3Store, bucket: str, wrong: str):
    s3_store.put(bucket, "a.txt", b"x")
    bad_secret = "not-the-secret-0123456789"
    attachments = AttachmentStore(
        url=s3_store.url,
        access_key="someone-else" if wrong == "access key" else s3_store.access_key,
        secret_key=bad_secret,
    )
    try:
        with pytest.raises(AttachmentError) as info:
            await attachments.fetch("a.txt", f"{bucket}/a.txt", budget=100)
    finally:
        await attachments.close()
    assert info.value.reason == "access denied"
    assert bad_secret not in str(info.value)
    assert_safe(info.value, s3_store)


async def test_bad_path_never_reaches_the_store(store: AttachmentStore):
    with pytest.raises(AttachmentError) as info:
        await store.fetch("a.pdf", "docs/../etc/passwd", budget=100)
    assert "'..'" in info.value.reason


# -- client ----------------------------------------------------------------------------------


async def test_one_client_for_concurrent_fetches_and_close_reopens(
    store: AttachmentStore, s3_store: S3Store, bucket: str
):
    blobs = {f"k{i}": os.urandom(10_000 + i) for i in range(8)}
    for key, data in blobs.items():
        s3_store.put(bucket, key, data)
    got = await asyncio.gather(*(store.fetch(k, f"{bucket}/{k}", 1 << 20) for k in blobs))
    assert [decode(a.encoded) for a in got] == list(blobs.values())
    client = store._client
    await store.fetch("k0", f"{bucket}/k0", 1 << 20)
    assert store._client is client  # reused, not made per fetch
    await store.close()
    assert store._client is None
    att = await store.fetch("k0", f"{bucket}/k0", 1 << 20)  # a new client after close
    assert decode(att.encoded) == blobs["k0"]


async def test_botocore_debug_logs_never_carry_the_secret(
    store: AttachmentStore, s3_store: S3Store, bucket: str, caplog: pytest.LogCaptureFixture
):
    """Even at DEBUG (the app runs library loggers at WARNING): signatures, never the key."""
    s3_store.put(bucket, "a.txt", b"x")
    # Each library logger's own level too: a test before this one in the same process may
    # have run the service's logging set-up, which puts them at LIBRARY_LOG_LEVEL.
    with (
        caplog.at_level(logging.DEBUG),
        caplog.at_level(logging.DEBUG, logger="botocore"),
        caplog.at_level(logging.DEBUG, logger="aiobotocore"),
    ):
        await store.fetch("a.txt", f"{bucket}/a.txt", budget=100)
        with pytest.raises(AttachmentError):
            await store.fetch("a.txt", f"{bucket}/missing.txt", budget=100)
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "botocore" in {r.name.split(".")[0] for r in caplog.records}
    assert s3_store.secret_key not in text
