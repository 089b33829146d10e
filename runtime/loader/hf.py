"""HF checkpoint folders: config.json plus *.safetensors (sharded with model.safetensors.index.json),
or pytorch_model*.bin as a fallback. With lazy=True safetensors tensors are yielded unread
(LazyTensor), so each tensor-parallel rank's weight loaders read only the rank's shard."""
from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from sgl.runtime.layers.lazy_tensor import Loaded, LazyTensor

SAFETENSORS_INDEX = "model.safetensors.index.json"


def load_hf_config(model_dir: str, trust_remote_code: bool = False) -> PretrainedConfig:
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir} has no config.json")
    return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def safetensors_files(model_dir: str) -> list[str]:
    """The checkpoint's safetensors files: those the index names if there is one (a folder may
    also hold stray consolidated files that duplicate the shards), else every one present."""
    index_path = os.path.join(model_dir, SAFETENSORS_INDEX)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(model_dir, name) for name in sorted(set(weight_map.values()))]
    return sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))


def count_hf_tensors(model_dir: str) -> int:
    total = 0
    for path in safetensors_files(model_dir):
        with safe_open(path, framework="pt", device="cpu") as f:
            total += len(f.keys())
    return total


def iterate_hf_weights(model_dir: str, lazy: bool = False) -> Iterator[tuple[str, Loaded]]:
    """(HF name, CPU tensor) for every tensor of the checkpoint, one at a time. lazy: from
    safetensors, a LazyTensor instead (read on use; valid until the next item is drawn), for
    consumers whose weight loaders take one (the layers in runtime/layers do)."""
    files = safetensors_files(model_dir)
    if files:
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    yield name, LazyTensor(f.get_slice(name)) if lazy else f.get_tensor(name)
        return
    bin_files = sorted(glob.glob(os.path.join(model_dir, "pytorch_model*.bin")))
    if not bin_files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors or pytorch_model*.bin weights")
    for path in bin_files:
        yield from torch.load(path, map_location="cpu", weights_only=True).items()


def read_generation_eos(model_dir: str) -> list[int]:
    """eos_token_id of generation_config.json (Llama 3 instruct lists its end-of-turn ids there)."""
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        eos = json.load(f).get("eos_token_id")
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
