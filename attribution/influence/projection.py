"""The seeded random projection of LoRA gradients: a CountSketch per parameter tensor.

Each coordinate j of a parameter tensor named `name` is sent to one of `dim` buckets h(j)
with a random sign s(j); the sketch of a gradient g is ``S g`` with ``(S g)[b] = sum over j
with h(j) = b of s(j) g[j]``. E[<Sx, Sy>] = <x, y> and the variance is at most
(|x|^2 |y|^2 + <x, y>^2) / dim (Charikar et al.; Weinberger et al.'s feature hashing), so inner
products, the only thing influence scores need, survive in expectation with error ~1/sqrt(dim).

Why CountSketch rather than TRAK's dense Gaussian: the LoRA gradient of an adapter has ~10^5
coordinates (demo: 81,920), so a dense (10^5 x 2048) Gaussian would be a 640 MiB matrix to
generate or store, and cost 10^5 x 2048 multiply-adds per gradient; the sketch needs one
index and one sign per coordinate (regenerated from the seed) and one scatter-add, O(D).
Hashing per tensor, from the seed and the tensor's name, makes the projection independent of
the order in which modules are visited: the index build and the scorer meet only through the
names, the seed and `dim`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class CountSketch:
    def __init__(self, shapes: Mapping[str, int], dim: int, seed: int) -> None:
        """`shapes`: tensor name -> number of coordinates."""
        import numpy as np
        import torch

        if dim <= 0:
            raise ValueError("projection dim must be positive")
        self.dim = dim
        self.seed = seed
        self.numels = dict(shapes)
        self._index: dict[str, torch.Tensor] = {}
        self._sign: dict[str, torch.Tensor] = {}
        for name, n in self.numels.items():
            name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
            rng = np.random.default_rng([seed, name_key])
            self._index[name] = torch.from_numpy(rng.integers(0, dim, size=n, dtype=np.int64))
            signs = rng.integers(0, 2, size=n, dtype=np.int8).astype(np.float32) * 2 - 1
            self._sign[name] = torch.from_numpy(signs)

    def project(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`grads`: name -> (batch, numel) per-sample gradients; returns (batch, dim)."""
        import torch

        out: torch.Tensor | None = None
        for name, g in grads.items():
            if g.shape[1] != self.numels[name]:
                raise ValueError(
                    f"{name}: {g.shape[1]} coordinates, sketch has {self.numels[name]}"
                )
            if out is None:
                out = torch.zeros(g.shape[0], self.dim, dtype=torch.float32)
            out.index_add_(1, self._index[name], g.float() * self._sign[name])
        if out is None:
            raise ValueError("no gradients to project")
        return out


__all__ = ["CountSketch"]
