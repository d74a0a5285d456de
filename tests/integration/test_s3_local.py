"""scripts/s3-local: status, and start/stop are idempotent and survive a crash, on their own port."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.s3_fixture import S3_LOCAL, S3Store

pytestmark = pytest.mark.integration

# Offsets from S3_PORT the store listens on (see the script's header).
OFFSETS = (0, 1, 2, 3, 4, 11, 12, 13, 14, 15)


def free_port_block() -> int:
    """An S3_PORT whose whole block of ports is free, below the ephemeral range."""
    for _ in range(50):
        base = random.randrange(21000, 32000)
        try:
            socks = []
            for offset in OFFSETS:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [S3_LOCAL, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def env(tmp_path: Path):
    env = {**os.environ, "S3_PORT": str(free_port_block()), "S3_DATA_DIR": str(tmp_path / "s3")}
    yield env
    run(env, "stop")


def test_status_when_stopped(env: dict[str, str]):
    proc = run(env, "status")
    assert proc.returncode == 1
    assert "not running" in proc.stdout
    stop = run(env, "stop")
    assert stop.returncode == 0 and "not running" in stop.stdout


def test_start_and_stop_are_idempotent_and_survive_a_crash(env: dict[str, str], tmp_path: Path):
    pid_file = tmp_path / "s3" / "seaweedfs.pid"
    first = run(env, "start")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "S3 ready" in first.stdout
    started = time.monotonic()
    again = run(env, "start")
    assert again.returncode == 0 and "already running" in again.stdout
    assert time.monotonic() - started < 10
    assert run(env, "status").returncode == 0
    # The script's default key, as env sets none.
    store = S3Store(
        f"http://127.0.0.1:{env['S3_PORT']}", "faust-otp-local", "faust-otp-local-secret"
    )
    store.put("kept", "before-the-crash.txt", b"still here")

    # kill -9: status notices, stop cleans up, start recovers on the same data (and waits out
    # the master's warm-up, so this start takes ~20 s).
    pid = int(pid_file.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    assert run(env, "status").returncode == 1
    assert run(env, "stop").returncode == 0
    assert not pid_file.exists()
    recovered = run(env, "start")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert run(env, "status").returncode == 0
    kept = store.client.get_object(Bucket="kept", Key="before-the-crash.txt")
    assert kept["Body"].read() == b"still here"
    store.client.close()

    stopped = run(env, "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not pid_file.exists()
    again = run(env, "stop")
    assert again.returncode == 0 and "not running" in again.stdout
    assert run(env, "status").returncode == 1


def test_start_refuses_a_port_someone_else_holds(env: dict[str, str]):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["S3_PORT"]) + 3))
        squatter.listen(1)
        proc = run(env, "start")
    assert proc.returncode != 0
    assert "already in use" in proc.stderr
