"""Checkpoint names -> our parameters. HF checkpoints keep q/k/v, gate/up and every expert as
separate tensors; our layers fuse them, so each checkpoint tensor maps to (parameter, shard id)
and the parameter's weight_loader copies it into its slice."""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

import torch
from sgl.runtime.layers.linear import default_weight_loader
from torch import nn

logger = logging.getLogger(__name__)

# HF name piece -> (our fused parameter piece, shard id)
STACKED_PARAMS = [
    (".q_proj.", ".qkv_proj.", "q"),
    (".k_proj.", ".qkv_proj.", "k"),
    (".v_proj.", ".qkv_proj.", "v"),
    (".gate_proj.", ".gate_up_proj.", 0),
    (".up_proj.", ".gate_up_proj.", 1),
]
# One expert's projection (Qwen-MoE names; Mixtral's w1 / w3 / w2) -> FusedMoE parameter + kind.
_EXPERT_RE = re.compile(r"\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$")
_EXPERT_KINDS = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up",
                 "down_proj": "down", "w2": "down"}
# All experts stacked: gate|up (transformers 5's parameter) or one projection (transformers 5's
# down_proj; GGUF's ffn_{gate,up,down}_exps) -> FusedMoE parameter + shard (None: all of it).
_STACKED_EXPERT_RE = re.compile(r"\.experts\.(gate_up_proj|gate_proj|up_proj|down_proj)(\.weight)?$")


def to_param_name(name: str) -> tuple[str, object]:
    """(our parameter name, shard id) of a checkpoint tensor; shard id None = the whole tensor."""
    match = _EXPERT_RE.search(name)
    if match:
        expert, proj = int(match.group(1)), match.group(2)
        kind = _EXPERT_KINDS[proj]
        target = ".experts.w2_weight" if kind == "down" else ".experts.w13_weight"
        return name[:match.start()] + target, (expert, kind)
    match = _STACKED_EXPERT_RE.search(name)
    if match:
        proj = match.group(1)
        if proj == "gate_up_proj":
            return name[:match.start()] + ".experts.w13_weight", None
        kind = _EXPERT_KINDS[proj]
        target = ".experts.w2_weight" if kind == "down" else ".experts.w13_weight"
        return name[:match.start()] + target, (None, kind)
    for hf_piece, our_piece, shard_id in STACKED_PARAMS:
        if hf_piece in name:
            return name.replace(hf_piece, our_piece), shard_id
    return name, None


def checkpoint_shards(module_name: str) -> list[tuple[str, object]]:
    """The checkpoint's modules fused into one of ours (q/k/v, gate/up) with their shard ids, or
    the module itself: "model.layers.0.mlp.gate_up_proj" -> [(...gate_proj, 0), (...up_proj, 1)]."""
    dotted = module_name + "."
    pieces = [(dotted.replace(ours, hf)[:-1], shard) for hf, ours, shard in STACKED_PARAMS
              if ours in dotted]
    return pieces or [(module_name, None)]


def _expected_shards(name: str, param: nn.Parameter) -> list[object]:
    shards = getattr(param, "expected_shards", None)  # FusedMoE's per-expert pieces
    if shards is not None:
        return shards
    return [shard for _, piece, shard in STACKED_PARAMS if piece in name] or [None]


def load_params(params: dict[str, nn.Parameter], weights: Iterable[tuple[str, torch.Tensor]],
                what: str = "checkpoint", optional: Callable[[str], bool] = lambda name: False) -> None:
    """Load HF-named tensors into `params`, fusing q/k/v, gate/up and experts into the merged
    parameters (each parameter's weight_loader picks its slice). Raises if a parameter is left
    (partly) unloaded, unless `optional(name)` says it may be (asked once all weights are read)."""
    loaded: dict[str, set[object]] = {}  # parameter -> shards loaded (fused ones load in pieces)
    for name, tensor in weights:
        name, shard_id = to_param_name(name)
        if name not in params:
            logger.warning("ignoring %s tensor %s: no such parameter", what, name)
            continue
        param = params[name]
        getattr(param, "weight_loader", default_weight_loader)(param, tensor, shard_id)
        loaded.setdefault(name, set()).add(shard_id)
    missing = [name for name, param in params.items()
               if not _is_complete(loaded.get(name, set()), _expected_shards(name, param))
               and not (name not in loaded and optional(name))]
    if missing:
        raise ValueError(f"{what} lacks (parts of) {len(missing)} parameters, e.g. {missing[:5]}")


def _is_complete(loaded: set[object], expected: list[object]) -> bool:
    # Shard None fills a fused parameter whole; (None, kind) one projection of every expert.
    return None in loaded or all(
        shard in loaded or (isinstance(shard, tuple) and (None, shard[1]) in loaded)
        for shard in expected)
