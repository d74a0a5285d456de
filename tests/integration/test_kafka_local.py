"""scripts/kafka-local: a second start is harmless, and stop/start recover from a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from devtools.support import free_port
from tests.conftest import KAFKA_LOCAL, _broker_env

pytestmark = pytest.mark.integration


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KAFKA_LOCAL, *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_second_start_is_harmless(kafka_bootstrap: str):
    env = _broker_env()
    started = time.monotonic()
    proc = run(env, "start")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already running" in proc.stdout + proc.stderr
    assert time.monotonic() - started < 10
    assert run(env, "status").returncode == 0


def test_stop_after_a_crash_cleans_up_and_start_works_again(tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_DATA_DIR": str(tmp_path / "kafka"),
    }
    # An id that starts with "-" (1 in 64 random draws) once broke formatting: it is replaced.
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "cluster-id").write_text("-FGoZ46HR4yQNfobkJVEfQ\n")
    try:
        first = run(env, "start")
        assert first.returncode == 0, first.stdout + first.stderr
        assert not (tmp_path / "kafka" / "cluster-id").read_text().startswith("-")
        pid = int((tmp_path / "kafka" / "kafka.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        assert run(env, "status").returncode != 0
        stop = run(env, "stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not (tmp_path / "kafka" / "kafka.pid").exists()
        again = run(env, "start")
        assert again.returncode == 0, again.stdout + again.stderr
        assert run(env, "status").returncode == 0
    finally:
        run(env, "stop")
