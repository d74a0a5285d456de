"""The soak's look inside its worker: is a growing RSS Python's heap or native memory?

``bench/soak.py`` puts this directory on the worker's ``PYTHONPATH`` with ``HEAP_PROBE_FILE``
set; Python imports ``sitecustomize`` at start-up, and in that process a daemon thread appends
one JSON line every ``HEAP_PROBE_SECONDS``: pymalloc's allocated blocks and the objects the
garbage collector tracks, with its pid. Both flat while the RSS grows means the growth is
outside Python's heap (RocksDB, the C allocator). The worker's own children (the render pool)
inherit the environment and write lines too; the pid tells them apart. A process without
``HEAP_PROBE_FILE`` ignores this file.
"""

import gc
import json
import os
import sys
import threading
import time


def _probe(path: str, every: float) -> None:
    while True:
        time.sleep(every)
        line = {
            "t": time.time(),
            "pid": os.getpid(),
            "pymalloc_blocks": sys.getallocatedblocks(),
            "gc_objects": len(gc.get_objects()),
        }
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")


if os.environ.get("HEAP_PROBE_FILE"):
    every = float(os.environ.get("HEAP_PROBE_SECONDS", "10"))
    threading.Thread(
        target=_probe, args=(os.environ["HEAP_PROBE_FILE"], every), daemon=True
    ).start()
