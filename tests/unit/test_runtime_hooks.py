"""Every private aiokafka/Faust hook ``app.runtime`` relies on, by name.

An upgrade that renames or removes one fails here, naming it, instead of changing what a
worker does in production without a word.
"""

import inspect

import mode.services
import mode.worker
import pytest
from aiohttp import web_protocol
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer import fetcher
from aiokafka.record import default_records
from faust.assignor import PartitionAssignor
from faust.stores import rocksdb as faust_rocksdb
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

HOOKS = [
    (fetcher, "PartitionRecords"),
    (fetcher, "MemoryRecords"),
    (fetcher, "READ_COMMITTED"),
    (fetcher.PartitionRecords, "_unpack_records"),
    (fetcher.PartitionRecords, "_consumer_record"),
    (fetcher.PartitionRecords, "_consume_aborted_up_to"),
    (fetcher.PartitionRecords, "_contains_abort_marker"),
    (default_records, "_DefaultRecordBatchPy"),
    (default_records._DefaultRecordBatchPy, "LOG_APPEND_TIME"),
    (default_records._DefaultRecordBatchPy, "_maybe_uncompress"),
    # app/runtime/consumer.py: what Faust commits, what it drops, how it fetches
    (faust_aiokafka.Consumer, "_wait_next_records"),
    (faust_aiokafka.Consumer, "_new_offset"),
    (faust_aiokafka.Consumer, "_add_gap"),
    (faust_aiokafka.Consumer, "_filter_tps_with_pending_acks"),
    (faust_aiokafka.Consumer, "seek_to_committed"),
    (faust_aiokafka.Consumer, "seek_wait"),
    (faust_aiokafka.Consumer, "earliest_offsets"),
    (faust_aiokafka.Consumer, "on_partitions_revoked"),
    (faust_aiokafka.Consumer, "on_partitions_assigned"),
    (faust_aiokafka.Consumer, "flow_active"),
    (faust_aiokafka.Consumer, "wait_first"),
    (faust_aiokafka.Transport, "Consumer"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer"),
    # app/runtime/worker.py
    (mode.worker.Worker, "_schedule_shutdown"),
    (mode.worker.Worker, "crash_reason"),
    # app/runtime/recovery.py
    (Recovery, "active_remaining"),
    (Recovery, "in_recovery"),
    # app/runtime/store.py
    (faust_rocksdb.Store, "offset_key"),
    (faust_rocksdb.Store, "_encode_key"),
    (faust_rocksdb.Store, "_decode_key"),
    (faust_rocksdb.Store, "_decode_value"),
    (PartitionAssignor, "assigned_actives"),
    (Collection, "changelog_topic_name"),
    # app/runtime/http.py
    (web_protocol.RequestHandler, "handle_error"),
]
INSTANCE_FIELDS = {
    "PartitionRecords.__init__": (
        fetcher.PartitionRecords.__init__,
        [
            "self._tp",
            "self._records",
            "self.next_fetch_offset",
            "self._isolation_level",
            "self._aborted_producers",
        ],
    ),
    "_DefaultRecordBatchPy": (
        default_records._DefaultRecordBatchPy,
        ["self._buffer", "self._pos", "self._num_records"],
    ),
    "faust Consumer.__init__": (
        faust_consumer.Consumer.__init__,
        ["self._acked", "self._acked_index", "self._read_offset", "self._committed_offset"],
    ),
    # LedgerConsumer.wait_first steps each delivery of Faust's fetch loop first
    "faust Consumer._drain_messages": (
        faust_consumer.Consumer._drain_messages,
        ["self.wait_first(", "callback(message), self.suspend_flow.wait()"],
    ),
    "mode Service.__init__": (mode.services.Service.__init__, ["self._stopped", "self._crashed"]),
    "faust Consumer (partition flow)": (
        faust_consumer.Consumer,
        ["self._active_partitions", "self._paused_partitions"],
    ),
    "Recovery.__init__": (
        Recovery.__init__,
        ["self.active_offsets", "self.active_highwaters", "self.completed"],
    ),
    "AIOKafkaConsumer.__init__": (AIOKafkaConsumer.__init__, ["self._subscription"]),
    "faust rocksdb Store.__init__": (faust_rocksdb.Store.__init__, ["self._dbs"]),
    "faust Collection.__init__": (Collection.__init__, ["self.is_global"]),
    # app/runtime/store.py iterates rocksdict's DBs by bytes keys
    "faust RocksDBOptions.as_options": (
        faust_rocksdb.RocksDBOptions.as_options,
        ["Options(raw_mode=True)"],
    ),
}


@pytest.mark.parametrize(("owner", "name"), HOOKS, ids=[f"{o.__name__}.{n}" for o, n in HOOKS])
def test_hook_exists(owner, name):
    assert hasattr(owner, name), f"aiokafka no longer has {owner.__name__}.{name}"


@pytest.mark.parametrize("where", list(INSTANCE_FIELDS))
def test_instance_fields_are_set(where):
    code, fields = INSTANCE_FIELDS[where]
    source = inspect.getsource(code)
    missing = [field for field in fields if field not in source]
    assert not missing, f"aiokafka's {where} no longer sets {missing}"


def test_the_fetcher_builds_partition_records_through_the_module_names():
    """``install`` swaps module globals: the fetcher must look them up at call time."""
    source = inspect.getsource(fetcher.Fetcher)
    for call in ("MemoryRecords(part_data[-1])", "PartitionRecords("):
        assert call in source, f"aiokafka's Fetcher no longer calls {call}"


def test_the_delivery_can_take_its_first_step_outside_a_task():
    """``LedgerConsumer.wait_first`` steps Faust's delivery in the fetch loop's task, and
    recognises the call by its ``asyncio.Event`` wait: neither may change unseen."""
    from faust.transport.conductor import ConductorCompiler

    delivery = inspect.getsource(ConductorCompiler.build)
    assert "current_task" not in delivery and "timeout(" not in delivery
    assert "from asyncio import Event" in inspect.getsource(faust_consumer)
