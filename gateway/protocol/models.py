"""`GET /v1/models` and `GET /v1/models/{id}`."""

from __future__ import annotations

from typing import Literal

import msgspec


class Model(msgspec.Struct, omit_defaults=True):
    id: str
    created: int
    owned_by: str
    object: Literal["model"]
    parent: str | None = None
    """For an adapter: the base model it runs on (as vLLM reports LoRA modules)."""
    root: str | None = None


class ModelList(msgspec.Struct):
    data: list[Model]
    object: Literal["list"] = "list"
