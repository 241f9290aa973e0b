"""Extract the OpenAI response schemas the conformance tests use from OpenAI's published
OpenAPI description (MIT licence, openai/openai-openapi; see ../shared/openai/SOURCE), with
every schema they reference, into `openai_schemas.json`. Run again when the spec moves:

    python tests/data/extract_openai_schemas.py ../shared/openai/openapi.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
]


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for v in node.values():
            found |= _refs(v)
    elif isinstance(node, list):
        for v in node:
            found |= _refs(v)
    return found


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    schemas = spec["components"]["schemas"]
    keep: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        todo.extend(_refs(schemas[name]) - keep.keys())
    out = {
        "source": "openai/openai-openapi "
        + (Path(spec_path).parent / "SOURCE").read_text().split()[0],
        "licence": "MIT (c) OpenAI",
        "components": {"schemas": dict(sorted(keep.items()))},
    }
    Path(__file__).with_name("openai_schemas.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/openai/openapi.json")
