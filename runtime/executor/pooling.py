"""Embedding models (`--is-embedding`): how a prompt's final hidden states become one vector.

The pooling mode and normalization come from the model folder's sentence-transformers files, as
Qwen3-Embedding ships them: `modules.json` lists a `Pooling` module (its folder's `config.json`
sets `pooling_mode_lasttoken` / `_mean_tokens` / `_cls_token`) and, for unit vectors, a
`Normalize` module. A folder without them pools the last token and normalizes (SGLang's rule for
causal LMs served as embedding models).

A prompt may run in several chunks (chunked prefill) and start after a cached prefix. The
scheduler asks the runner for the sum of the final hidden states over the rows that belong to
the pool in each chunk (`chunk_span`) and adds them up; `finish` divides and normalizes.

A Matryoshka-trained model (its config.json says `is_matryoshka: true` or lists
`matryoshka_dimensions`) may be asked for a shorter vector (`dimensions`, OpenAI's field): the
pooled vector keeps its first `dimensions` values and is normalized again when the model
normalizes, as SGLang's Pooler does."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Optional

import torch

POOLING_MODES = ("last", "mean", "cls")
_ST_FIELDS = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean",
              "pooling_mode_cls_token": "cls"}


@dataclass(frozen=True)
class PoolingConfig:
    mode: str = "last"
    normalize: bool = True
    dimensions: Optional[int] = None  # one request's Matryoshka truncation (runtime/matryoshka.py)

    def with_dimensions(self, dimensions: Optional[int]) -> "PoolingConfig":
        return self if dimensions is None else replace(self, dimensions=dimensions)

    def max_prefix_len(self, seq_len: int) -> int:
        """How much of a prompt the radix cache may supply: the pooled rows must run."""
        return seq_len - 1 if self.mode == "last" else 0

    def chunk_span(self, start: int, num_new: int, seq_len: int) -> Optional[tuple[int, int]]:
        """Rows [lo, hi) of a chunk covering positions [start, start + num_new) that the pool
        sums, or None when the chunk holds none of them."""
        end = start + num_new
        if self.mode == "last":
            return (num_new - 1, num_new) if end == seq_len else None
        if self.mode == "cls":
            return (0, 1) if start == 0 else None
        return (0, num_new)

    def finish(self, total: torch.Tensor, seq_len: int) -> list[float]:
        """The embedding from the summed rows (float32, CPU)."""
        vec = total / seq_len if self.mode == "mean" else total
        if self.dimensions is not None:
            vec = vec[..., :self.dimensions]  # truncate first: the short vector is the unit one
        if self.normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
        return vec.tolist()


def read_pooling_config(model_path: str) -> PoolingConfig:
    """The sentence-transformers pooling of `model_path` (a folder), or the default."""
    modules_file = os.path.join(model_path, "modules.json")
    if not os.path.isfile(modules_file):
        return PoolingConfig()
    with open(modules_file) as f:
        modules = json.load(f)
    types = {m.get("type", "").rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    mode = "last"
    if "Pooling" in types:
        with open(os.path.join(model_path, types["Pooling"], "config.json")) as f:
            fields = json.load(f)
        chosen = [m for key, m in _ST_FIELDS.items() if fields.get(key)]
        unknown = [k for k, v in fields.items() if k.startswith("pooling_mode") and v and k not in _ST_FIELDS]
        if unknown or len(chosen) != 1:
            raise ValueError(f"{model_path}: unsupported sentence-transformers pooling {fields}; "
                             f"supported: exactly one of {sorted(_ST_FIELDS)}")
        mode = chosen[0]
    return PoolingConfig(mode=mode, normalize="Normalize" in types)
