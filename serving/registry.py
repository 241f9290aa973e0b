"""Which model names exist: base models and the LoRA adapters built on them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import NotFound


@dataclass(frozen=True, slots=True)
class BaseModel:
    name: str
    path: str
    created: int = field(default_factory=lambda: int(time.time()))
    owned_by: str = "royalty"


@dataclass(frozen=True, slots=True)
class Adapter:
    name: str
    base: str
    path: str
    created: int = field(default_factory=lambda: int(time.time()))
    owned_by: str = "royalty"
    example_prompt: str | None = None
    served_as: str | None = None
    """The engine-side LoRA name when it differs from `name`: a re-registered adapter gets a
    new one, so that engines never serve an old build's weights under the name."""

    @property
    def engine_name(self) -> str:
        return self.served_as or self.name


@dataclass(frozen=True, slots=True)
class Target:
    """What a request's `model` resolves to."""

    base: BaseModel
    adapter: Adapter | None

    @property
    def engine_model(self) -> str:
        """The name the engine knows: the adapter's (runtime LoRA) or the base's."""
        return self.adapter.engine_name if self.adapter else self.base.name


class UnknownModel(NotFound, LookupError):
    """No base model or adapter has this name (`args[0]`)."""


class ModelRegistry:
    """In-memory view of the servable models; adapters can be added while serving."""

    def __init__(self) -> None:
        self._bases: dict[str, BaseModel] = {}
        self._adapters: dict[str, Adapter] = {}

    def add_base(self, base: BaseModel) -> None:
        self._bases[base.name] = base

    def add_adapter(self, adapter: Adapter) -> None:
        if adapter.base not in self._bases:
            raise UnknownModel(adapter.base)
        if adapter.name in self._bases:
            raise ValueError(f"adapter name {adapter.name!r} is taken by a base model")
        self._adapters[adapter.name] = adapter

    def remove_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)

    def resolve(self, name: str) -> Target:
        base = self._bases.get(name)
        if base is not None:
            return Target(base, None)
        adapter = self._adapters.get(name)
        if adapter is None:
            raise UnknownModel(name)
        return Target(self._bases[adapter.base], adapter)

    @property
    def bases(self) -> list[BaseModel]:
        return list(self._bases.values())

    @property
    def adapters(self) -> list[Adapter]:
        return list(self._adapters.values())

    @classmethod
    def from_manifest(cls, models_dir: Path, base_name: str | None = None) -> ModelRegistry:
        """A registry for a model tree written by the model factory (manifest.json)."""
        manifest = json.loads((models_dir / "manifest.json").read_text())
        created = int(manifest.get("created", time.time()))
        name = base_name or manifest["base"]["name"]
        reg = cls()
        reg.add_base(BaseModel(name, str(models_dir / manifest["base"]["path"]), created))
        for aname, info in sorted(manifest["adapters"].items()):
            reg.add_adapter(Adapter(aname, name, str(models_dir / info["path"]), created))
        return reg
