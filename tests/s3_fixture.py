"""The ``s3_store`` fixture: a real S3 server (scripts/s3-local, SeaweedFS) for the attachment tests.

Like the Kafka broker, the store for tests has its own port (``TEST_S3_PORT``, default 18333)
and data dir (``.local/s3-test``), so tests never touch a developer's store. If one is already
running there (``make test`` started it, or a developer did), it is reused and left running;
otherwise it is started on a wiped data dir, which makes it writable in seconds (a restart on
old data waits out SeaweedFS's 15 s warm-up), and stopped at the end of the session.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from devtools.support import ROOT

S3_LOCAL = ROOT / "scripts" / "s3-local"
TEST_ACCESS_KEY = "faust-otp-test"
TEST_SECRET_KEY = "faust-otp-test-secret-0123456789"


def _xdist_index() -> int:
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def s3_env() -> dict[str, str]:
    """The environment scripts/s3-local runs the test store with."""
    return {
        **os.environ,
        # One store per pytest-xdist process (gw0, gw1, ...), each on ports of its own (a store
        # uses S3_PORT..S3_PORT+15): each starts and stops its own.
        "S3_PORT": str(int(os.environ.get("TEST_S3_PORT", "18333")) + 20 * _xdist_index()),
        "S3_DATA_DIR": os.environ.get("TEST_S3_DATA_DIR", str(ROOT / ".local" / "s3-test"))
        + (f"-{_xdist_index()}" if _xdist_index() else ""),
        "S3_ACCESS_KEY": TEST_ACCESS_KEY,
        "S3_SECRET_KEY": TEST_SECRET_KEY,
    }


@dataclass
class S3Store:
    """A running store and a sync client with full rights, to put what a test reads back."""

    url: str
    access_key: str
    secret_key: str
    _client: Any = field(default=None, repr=False)
    _buckets: set[str] = field(default_factory=set, repr=False)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = botocore.session.get_session().create_client(
                "s3",
                endpoint_url=self.url,
                region_name="us-east-1",
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                config=Config(
                    s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"total_max_attempts": 3, "mode": "standard"},
                ),
            )
        return self._client

    def put(self, bucket: str, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store ``data`` at ``bucket/key``, creating the bucket first if needed."""
        if bucket not in self._buckets:
            try:
                self.client.create_bucket(Bucket=bucket)
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    raise
            self._buckets.add(bucket)
        extra = {"ContentType": content_type} if content_type else {}
        self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)

    @staticmethod
    def bucket_name(prefix: str = "test") -> str:
        """A bucket name no other test uses (S3's rules: 3-63 lower-case letters, digits, -)."""
        return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def s3_store() -> Iterator[S3Store]:
    """A real S3 store on loopback; started here only if nobody else did."""
    env = s3_env()
    running = subprocess.run([S3_LOCAL, "status"], env=env, capture_output=True).returncode == 0
    if not running:
        subprocess.run([S3_LOCAL, "start"], env={**env, "S3_FRESH": "1"}, check=True)
    store = S3Store(
        url=f"http://127.0.0.1:{env['S3_PORT']}",
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
    )
    if running:
        try:
            store.client.list_buckets()
        except ClientError as exc:  # started by hand with the script's default keys, say
            raise RuntimeError(
                f"the S3 store on port {env['S3_PORT']} refuses the test keys; stop it with "
                f"S3_PORT={env['S3_PORT']} S3_DATA_DIR={env['S3_DATA_DIR']} scripts/s3-local stop"
            ) from exc
    yield store
    if store._client is not None:
        store._client.close()
    if not running:
        subprocess.run([S3_LOCAL, "stop"], env=env, check=False)
