"""A checkpoint tensor that has not been read yet. The safetensors loader yields these so that a
tensor-parallel weight loader reads only its rank's shard from disk (`narrow`), never the whole
tensor; a replicated parameter reads it all (`materialize`). Loaders of other formats yield plain
tensors; both have `.shape` and `.narrow(dim, start, length)`, and `full_weight` reads either
whole."""
from __future__ import annotations

from typing import Any, Union

import torch


class LazyTensor:
    """Wraps a safetensors slice (`safe_open(...).get_slice(name)`): shape known, data read on
    demand. Valid while its file is open, i.e. until the loader yields the next tensor."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self.shape = torch.Size(source.get_shape())

    def dim(self) -> int:
        return len(self.shape)

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        """Read [start, start + length) along `dim` (clipped to the tensor, like slicing)."""
        index = [slice(None)] * self.dim()
        index[dim] = slice(start, start + length)
        return self._source[tuple(index)]

    def materialize(self) -> torch.Tensor:
        return self._source[...]

    def __repr__(self) -> str:
        return f"LazyTensor(shape={tuple(self.shape)})"


Loaded = Union[torch.Tensor, LazyTensor]  # what a weight loader receives


def full_weight(loaded: Loaded) -> torch.Tensor:
    return loaded.materialize() if isinstance(loaded, LazyTensor) else loaded
