"""Every table's RocksDB is bounded by TABLE_MEMORY_MB, not by Faust's gigabyte defaults."""

from __future__ import annotations

from pathlib import Path

import faust

from app.settings import Settings
from tables import TABLES, define_tables


def test_each_table_partition_gets_the_configured_bounds(tmp_path: Path):
    settings = Settings.from_env(
        {
            "OTP_HMAC_SECRET": "unit-secret-0123456789",
            "NOTIFY_API_TOKEN": "unit-token-0123456789",
            "TABLE_MEMORY_MB": "32",
        }
    )
    app = faust.App("memory-test", store="rocksdb://", datadir=str(tmp_path), autodiscover=False)
    tables = define_tables(app, settings)
    for name in TABLES:
        options = getattr(tables, name).data.rocksdb_options
        buffers = options.write_buffer_size * options.max_write_buffer_number
        assert buffers + options.block_cache_size == 32 * 1024 * 1024, name
