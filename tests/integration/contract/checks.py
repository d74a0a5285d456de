"""Schemathesis hooks for the API contract test (``schemathesis.toml`` beside this file loads it).

Two answers to a request the schemas admit are not failures of the document by themselves, and
``positive_data_acceptance`` is configured there to take them; :func:`refused_only_beyond_schema`
decides instead whether each is honest:

- ``400``: the operation's ``400`` answer lists, under ``x-beyond-schema``, the rules no JSON
  Schema can state (web/openapi.py); every ``details`` entry of the refusal must be one of them.
  A refusal for anything else (a pattern, a limit, a required field the document does not
  state) fails the run.
- ``413``: the request body must be larger than the operation's ``x-max-bytes``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis


def _unexplained(details: list[dict[str, Any]], rules: list[dict[str, str]]) -> list[Any]:
    return [
        detail
        for detail in details
        if not any(
            re.fullmatch(rule["field"], str(detail.get("field")), re.DOTALL)
            and re.fullmatch(rule["message"], str(detail.get("message")), re.DOTALL)
            for rule in rules
        )
    ]


def _details(body: Any) -> list[dict[str, Any]]:
    """What a refusal names: an Error's details, or those of the templates an import refused
    (its 400 is an ImportRefused, the reasons per template)."""
    if isinstance(body, dict) and isinstance(body.get("results"), list):
        refused = [r for r in body["results"] if r.get("action") == "refused"]
        return [d for r in refused for d in r.get("details", [])]
    return body["details"]


def _check_400(operation: dict[str, Any], response: Any) -> None:
    rules = operation.get("responses", {}).get("400", {}).get("x-beyond-schema", [])
    try:
        details = _details(json.loads(response.content))
    except (ValueError, KeyError, TypeError):
        raise AssertionError("a 400 without the details of an Error") from None
    unexplained = _unexplained(details, rules) if details else ["(no details)"]
    if unexplained:
        documented = [r["rule"] for r in rules] or ["none"]
        raise AssertionError(
            "Schema-valid request refused for a rule the document does not state: "
            f"{unexplained}. Rules documented beyond the schema: {documented}"
        )


def _check_413(operation: dict[str, Any], response: Any) -> None:
    limit = operation.get("requestBody", {}).get("x-max-bytes")
    body = response.request.body or b""
    size = len(body.encode() if isinstance(body, str) else body)
    if limit is None or size <= limit:
        raise AssertionError(
            f"Schema-valid request of {size} bytes refused as too large; the document's "
            f"limit (requestBody x-max-bytes): {limit}"
        )


@schemathesis.check
def refused_only_beyond_schema(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 400 or 413 to schema-valid data is one the operation documents beyond its schemas."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    methods = case.operation.schema[case.operation.path]
    if case.method.lower() not in methods:
        return None  # an undeclared method: the unsupported-method check's business
    operation = case.operation.definition.raw
    if response.status_code == 400:
        _check_400(operation, response)
    elif response.status_code == 413:
        _check_413(operation, response)
    return None
