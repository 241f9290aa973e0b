"""Validate payloads against OpenAI's published schemas (extracted into tests/data).

The spec says OpenAPI 3.1 but marks nullable fields the 3.0 way (`nullable: true`); a JSON
Schema validator has to be taught that this admits null.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

_DATA = Path(__file__).parents[1] / "data" / "openai_schemas.json"


def _nullable(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@cache
def _document() -> dict[str, Any]:
    doc = json.loads(_DATA.read_text())
    return {"components": _nullable(copy.deepcopy(doc["components"]))}


def validator(schema_name: str) -> Draft202012Validator:
    root = dict(_document())
    root["$ref"] = f"#/components/schemas/{schema_name}"
    return Draft202012Validator(root)


def assert_conforms(payload: Any, schema_name: str) -> None:
    errors = sorted(validator(schema_name).iter_errors(payload), key=lambda e: list(e.path))
    if errors:
        lines = [f"- {'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:10]]
        raise AssertionError(f"payload does not conform to {schema_name}:\n" + "\n".join(lines))
