"""A worker whose TOPIC_PARTITIONS differs from the internal topics' refuses to start."""

from __future__ import annotations

import os

import pytest

from app.kafka_admin import ensure_topics, partition_counts, partitions_refusal
from app.settings import Settings
from devtools.support import config_refusal, unique, worker_env
from tables import topic_specs

pytestmark = pytest.mark.integration


def test_the_refusal_names_both_numbers_and_the_command():
    line = partitions_refusal(8, {"a-otp-commands": 4, "a-otps-changelog": 4})
    assert line is not None and "TOPIC_PARTITIONS=8" in line and "have 4 partitions" in line
    assert "`python -m app repartition --partitions 8`" in line
    fewer = partitions_refusal(4, {"a-otp-commands": 8})
    assert fewer is not None and "TOPIC_PARTITIONS=8" in fewer and "repartition" not in fewer
    assert partitions_refusal(4, {"a-otp-commands": 4}) is None
    assert partitions_refusal(4, {}) is None  # a fresh cluster: nothing to disagree with


def test_an_unfinished_repartition_is_named():
    line = partitions_refusal(8, {"a-otp-commands": 4, "a-otps-changelog": 8})
    assert line is not None and "4 (a-otp-commands) and 8 partitions" in line
    assert "not finished" in line and "--partitions 8` again" in line


async def test_a_mismatched_worker_refuses_to_start(kafka_bootstrap: str, tmp_path):
    env = worker_env(kafka_bootstrap, unique("parts"), 2525, TOPIC_PARTITIONS="4")
    settings = Settings.from_env(env)
    await ensure_topics(kafka_bootstrap, topic_specs(settings))
    line = config_refusal(
        {**os.environ, **env, "TOPIC_PARTITIONS": "8", "DATA_DIR": str(tmp_path)}, timeout=60
    )
    assert line.startswith("configuration error: TOPIC_PARTITIONS=8 but the internal topics have")
    assert "4 partitions" in line and "TOPIC_PARTITIONS=4" in line
    assert "python -m app repartition --partitions 8" in line


async def test_looking_creates_no_topic(kafka_bootstrap: str):
    """The broker auto-creates topics a metadata request names: the check must not name any
    that is missing, or they would exist with the broker's default partition count."""
    names = [f"{unique('absent')}-otp-commands"]
    assert await partition_counts(kafka_bootstrap, names) == {}
    assert await partition_counts(kafka_bootstrap, names) == {}
