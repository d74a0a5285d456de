"""The service's one JSON codec (orjson), used for Kafka values, table values and HTTP bodies."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(obj: Any) -> bytes:
    """Serialize to compact UTF-8 JSON; non-str dict keys are allowed for convenience."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises :data:`JSONDecodeError` (a ``ValueError``) on bad input."""
    return orjson.loads(data)


def loads_object(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Parse a JSON object. Every command and event of ours is one; anything else on a topic
    (``[]``, ``null``, ``1``) raises :data:`JSONDecodeError` as bad JSON does, so a handler
    answers it as unreadable instead of failing on its first ``.get``."""
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise orjson.JSONDecodeError(f"expected a JSON object, not {type(value).__name__}", "", 0)
    return value


def depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0, ``[]`` is 1), without recursion.

    orjson writes at most 254 levels; callers bound what they accept well below that.
    """
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest
