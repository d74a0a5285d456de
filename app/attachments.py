"""Mail attachments from an S3-compatible object store (FlowX's file storage), via aiobotocore.

A send-notification request names each attachment as ``{"filename", "path": "<bucket>/<key>"}``;
the store is the one FlowX's own services write to (``APPLICATION_FILE_STORAGE_S3_*``). What
comes back is ready for MIME: base64, folded into 76-character CRLF lines, so the mail builder
only concatenates and never holds a second copy of the raw bytes.

Memory is the risk: a worker builds many mails at once, and an object in the store can be any
size. So the size is checked against the message's remaining budget before the body is read
(``ContentLength`` of the response), the body is streamed and encoded chunk by chunk, and the
read stops as soon as it passes the budget, whatever the headers claimed. A mail's attachments
are read at once and share one :class:`ByteBudget`.

Every failure is one :class:`AttachmentError` with a short reason the engine's reply can carry
(``not found``, ``access denied``, ``storage unreachable``, ``timed out``, ``larger than N
bytes``); nothing in it comes from botocore's own messages, which may quote the endpoint URL, so
no credential can travel into a reply or a log line through it.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import re
import unicodedata
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

# base64 turns 57 raw bytes into exactly one 76-character line, so a chunk that is a multiple of
# 57 bytes encodes into whole lines and only the last chunk of a body ends in a short one.
LINE_BYTES = 57
CHUNK_BYTES = LINE_BYTES * 1024
# What botocore accepts as a bucket name in a path-style URL (its VALID_BUCKET), checked here
# so a bad path is refused with our reason instead of a ParamValidationError.
_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")
# A type/subtype with optional parameters, printable ASCII only: the stored type goes into a
# MIME header, and whoever uploaded the object chose it.
# (``[ -~]``, never ``\s``, which takes CR, LF and U+2028 too.) A container type (``multipart``,
# ``message``) would make the part's body parsed as structure of the mail, so it is not taken.
_MIME_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?: *;[ -~]*)?")
_CONTAINER_TYPES = ("multipart/", "message/")
# Bucket names botocore sends to another host, named after the bucket, even path-style:
# S3 Express directory buckets (a CreateSession first) and Object Lambda access points.
_ROUTED_SUFFIXES = ("--x-s3", "--ol-s3")
_GENERIC_TYPES = frozenset({"binary/octet-stream", "application/octet-stream"})
_FALLBACK_TYPE = "application/octet-stream"
# mimetypes reports ``x.tar.gz`` as (application/x-tar, gzip): the file *is* gzip data.
_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}
# Only Python's built-in table: the host's /etc/mime.types would make the guess differ
# between a developer's machine and the container.
_TYPES = mimetypes.MimeTypes()
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_DENIED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "403"}
)


@dataclass(frozen=True)
class Attachment:
    """One attachment ready for MIME: ``encoded`` is the whole base64 body, CRLF line ends."""

    filename: str
    content_type: str
    size: int
    encoded: bytes


class AttachmentError(Exception):
    """An attachment that cannot be sent; the message is safe for a reply and a log line.

    ``over_budget``: refused for the bytes it would add to its mail's budget, which depends on
    the mail's other attachments as much as on this one."""

    def __init__(self, filename: str, path: str, reason: str, over_budget: bool = False) -> None:
        super().__init__(f"attachment {filename!r} ({path!r}): {reason}")
        self.filename = filename
        self.path = path
        self.reason = reason
        self.over_budget = over_budget


class ByteBudget:
    """The raw bytes one mail's attachments may still take, shared by their reads.

    The reads of one mail run at once, each taking its object's length from the same budget
    when the store answers (or its chunks as they come, for an answer without a length), so
    together they never hold more than ``limit``, however they interleave.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 0)
        self.left = self.limit

    def take(self, size: int) -> bool:
        """Spend ``size`` bytes if they are left; False (nothing spent) if not."""
        if size > self.left:
            return False
        self.left -= size
        return True


# Connections to the store: enough for every read the notification flow runs at once
# (app.flows.notify), so none waits for a connection inside its timeout.
POOL_CONNECTIONS = 16


class _LongerThanDeclared(Exception):
    """A body that brought more bytes than its answer's ``Content-Length`` said."""


class _TooLarge(Exception):
    """Over the budget; ``alone``: the object by itself is larger than the whole budget."""

    def __init__(self, alone: bool) -> None:
        super().__init__()
        self.alone = alone


def split_path(path: str, bucket_prefix: str = "") -> tuple[str, str]:
    """``"<bucket>/<key>"`` -> ``(bucket_prefix + bucket, key)``; ValueError says what is wrong.

    The path comes from the request, i.e. from whoever drives the process: it must name one
    object of one bucket and nothing else. A ``..`` segment or a leading ``/`` means nothing to
    S3 but could be resolved by a proxy in front of it; control characters have no business in a
    key and would end up in log lines.
    """
    if any(unicodedata.category(ch) == "Cc" for ch in path):
        raise ValueError("path must not contain control characters")
    if path.startswith("/"):
        raise ValueError("path must be <bucket>/<key>, without a leading '/'")
    bucket, sep, key = path.partition("/")
    if not bucket or not sep or not key:
        raise ValueError("path must be <bucket>/<key>, both non-empty")
    full = bucket_prefix + bucket
    if not _BUCKET.fullmatch(full) or not full.strip("."):
        raise ValueError("bucket must be letters, digits, '.', '-' or '_' (at most 255)")
    if full.lower().endswith(_ROUTED_SUFFIXES):
        raise ValueError("bucket must be a general purpose bucket (no --x-s3 or --ol-s3)")
    if any(part in (".", "..") for part in key.split("/")):
        raise ValueError("key must not contain '.' or '..' segments")
    if len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise ValueError("key is longer than 1024 bytes")
    return full, key


def content_type(filename: str, stored: str | None) -> str:
    """The type the uploader stored, unless it says nothing (octet-stream); else the file name's.

    Many uploaders (and S3's own default) store ``binary/octet-stream`` for everything, which
    mail clients show as an unopenable blob, while the name (``contract.pdf``) is usually right.
    """
    if stored:
        stored = stored.strip()
        base = stored.partition(";")[0].strip().lower()
        taken = base not in _GENERIC_TYPES and not base.startswith(_CONTAINER_TYPES)
        if taken and len(stored) <= 200 and _MIME_TYPE.fullmatch(stored):
            return stored
    guessed, encoding = _TYPES.guess_type(filename, strict=False)
    if encoding:
        return _ENCODING_TYPES.get(encoding, _FALLBACK_TYPE)
    return guessed or _FALLBACK_TYPE


async def encode_stream(
    read: Callable[[int], Awaitable[bytes]], budget: ByteBudget
) -> tuple[int, bytes]:
    """(raw size, base64 body) of a stream, read ``CHUNK_BYTES`` at a time.

    Raises ``_TooLarge`` as soon as a chunk does not fit in what ``budget`` has left: the
    length an answer declares is taken before its body is read (``_download``), but a chunked
    answer declares none, and the mail's other attachments take from the same budget meanwhile.
    ``read`` may return fewer bytes than asked (it returns what the socket has), so up to 56
    bytes wait in ``carry`` for the next chunk to complete their line.
    """
    lines: list[bytes] = []
    carry = b""
    size = 0
    while True:
        chunk = await read(CHUNK_BYTES)
        if not chunk:
            break
        size += len(chunk)
        if not budget.take(len(chunk)):
            raise _TooLarge(alone=size > budget.limit)
        data = carry + chunk if carry else chunk
        whole = len(data) - len(data) % LINE_BYTES
        if whole:
            lines.append(base64.encodebytes(data[:whole]))
        carry = data[whole:]
    if carry:
        lines.append(base64.encodebytes(carry))
    return size, b"".join(lines).replace(b"\n", b"\r\n")


class AttachmentStore:
    """Reads attachments from one S3 endpoint with one long-lived client.

    The client is made on the first fetch (loading botocore's S3 model takes a moment and a
    worker without attachments never needs it) and reused, so its connection pool is too.
    ``timeout`` bounds one whole fetch, connecting, retrying and the body included: a mail
    waiting for a stalled store holds a delivery slot.
    """

    def __init__(
        self,
        *,
        url: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        bucket_prefix: str = "",
        timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._bucket_prefix = bucket_prefix
        self._timeout = timeout
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the store URL must be http(s)://host[:port]")
        # Where the store is, for "storage unreachable": host and port, never user:password@.
        self._where = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        self._session: AioSession | None = None
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"AttachmentStore(url={self._where!r}, bucket_prefix={self._bucket_prefix!r})"

    async def _get_client(self) -> Any:
        async with self._lock:
            if self._client is None:
                if self._session is None:
                    session = AioSession()
                    # Reading botocore's S3 model is ~0.4 s of CPU: in a thread, not the loop
                    # every agent of the worker shares. What is left for the loop: ~40 ms.
                    await asyncio.to_thread(_preload_models, session)
                    self._session = session
                config = AioConfig(
                    s3={"addressing_style": "path"},
                    connect_timeout=self._timeout,
                    read_timeout=self._timeout,
                    # One retry: a reset connection is worth another try, a down store is not
                    # worth several, and the deadline around the fetch bounds them anyway.
                    retries={"total_max_attempts": 2, "mode": "standard"},
                    # Checksums only where S3 demands them: compatible stores differ in which
                    # of the newer flexible checksums they return.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    max_pool_connections=POOL_CONNECTIONS,
                )
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    self._session.create_client(
                        "s3",
                        endpoint_url=self._url,
                        region_name=self._region,
                        aws_access_key_id=self._access_key,
                        aws_secret_access_key=self._secret_key,
                        config=config,
                    )
                )
                self._stack = stack
            return self._client

    async def fetch(self, filename: str, path: str, budget: int | ByteBudget) -> Attachment:
        """The attachment at ``path``, if it fits in ``budget`` (raw bytes, or what a budget
        shared with the mail's other attachments has left); else AttachmentError."""
        try:
            bucket, key = split_path(path, self._bucket_prefix)
        except ValueError as exc:
            raise AttachmentError(filename, path, str(exc)) from None
        shared = budget if isinstance(budget, ByteBudget) else ByteBudget(budget)
        client = await self._get_client()
        try:
            async with asyncio.timeout(self._timeout):
                size, encoded, stored = await self._download(client, bucket, key, shared)
        except _TooLarge as exc:
            reason = f"larger than {shared.limit} bytes"
            raise AttachmentError(filename, path, reason, over_budget=not exc.alone) from None
        except _LongerThanDeclared:
            reason = "the store sent more than the object's length"
            raise AttachmentError(filename, path, reason) from None
        except (TimeoutError, ConnectTimeoutError, ReadTimeoutError):
            raise AttachmentError(filename, path, f"timed out after {self._timeout:g}s") from None
        except ClientError as exc:
            raise AttachmentError(filename, path, _client_error_reason(exc)) from None
        except EndpointConnectionError:
            reason = f"storage unreachable ({self._where})"
            raise AttachmentError(filename, path, reason) from None
        except (
            ConnectionClosedError,
            IncompleteReadError,
            ResponseStreamingError,
            aiohttp.ClientError,
        ):
            reason = "storage connection lost while reading"
            raise AttachmentError(filename, path, reason) from None
        except BotoCoreError as exc:  # the class name only: botocore's text quotes the URL
            reason = f"storage error ({type(exc).__name__})"
            raise AttachmentError(filename, path, reason) from None
        return Attachment(filename, content_type(filename, stored), size, encoded)

    async def _download(
        self, client: Any, bucket: str, key: str, budget: ByteBudget
    ) -> tuple[int, bytes, str | None]:
        response = await client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            length = response.get("ContentLength")
            if length is None:
                size, encoded = await encode_stream(body.read, budget)
            else:
                # The whole length is taken before the body is read (closing an unread body
                # drops the connection), so of two objects that do not fit together the one
                # whose answer came second is refused unread.
                if length > budget.limit or not budget.take(length):
                    raise _TooLarge(alone=length > budget.limit)
                try:
                    size, encoded = await encode_stream(body.read, ByteBudget(length))
                except _TooLarge:
                    raise _LongerThanDeclared from None
        finally:
            body.close()
        return size, encoded, response.get("ContentType")

    async def close(self) -> None:
        """Closes the client and its connections; a later fetch makes a new one."""
        async with self._lock:
            stack, self._stack, self._client = self._stack, None, None
            if stack is not None:
                await stack.aclose()


def _preload_models(session: AioSession) -> None:
    """Fill the session's loader cache, so ``create_client`` finds the JSON already parsed."""
    loader = session.get_component("data_loader")
    try:
        for kind in ("service-2", "endpoint-rule-set-1"):
            loader.load_service_model("s3", kind)
        for name in ("partitions", "endpoints", "sdk-default-configuration"):
            loader.load_data(name)
    except Exception:  # only a warm-up: create_client loads whatever is missing itself
        pass


def _client_error_reason(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return "not found (no such bucket)"
    if code in _NOT_FOUND or status == 404:
        return "not found"
    if code in _DENIED or status == 403:
        return "access denied"
    # The code is S3's short identifier; its message may echo request details, so it stays out.
    return f"storage error {code or '?'} (HTTP {status})"
