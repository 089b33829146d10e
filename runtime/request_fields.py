"""SGLang's /generate fields beyond the ones sgl acts on. A client (the published sglang
frontend, an OpenAI-style proxy, a router) may send any of them: a field of a feature sgl lacks
is accepted at its default (null, false, 0, empty) and refused with an error naming the feature
otherwise; fields that only label or trace a request are checked for type and ignored."""
from __future__ import annotations

from typing import Any

_MULTIMODAL = "multimodal input (images, video, audio)"
_DISAGGREGATION = "prefill/decode disaggregation"
_LOGPROB_EXTRAS = "raw or masked logprob outputs"

# field -> the feature it asks for
UNSUPPORTED: dict[str, str] = {
    "session_id": "sessions", "session_params": "sessions",
    "input_embeds": "input embeddings",
    "image_data": _MULTIMODAL, "video_data": _MULTIMODAL, "audio_data": _MULTIMODAL,
    "modalities": _MULTIMODAL, "mm_hashes": _MULTIMODAL, "mm_content_hashes": _MULTIMODAL,
    "use_audio_in_video": _MULTIMODAL, "video_config": _MULTIMODAL,
    "max_dynamic_patch": _MULTIMODAL, "min_dynamic_patch": _MULTIMODAL,
    "image_max_dynamic_patch": _MULTIMODAL, "video_max_dynamic_patch": _MULTIMODAL,
    "images_config": _MULTIMODAL, "mm_processor_kwargs": _MULTIMODAL,
    "need_wait_for_mm_inputs": _MULTIMODAL, "num_items_assigned": _MULTIMODAL,
    "encoder_urls": _MULTIMODAL,
    "lora_path": "LoRA adapters", "lora_id": "LoRA adapters",
    "custom_logit_processor": "custom logit processors",
    "return_routed_experts": "MoE expert routing output", "routed_experts_start_len": "MoE expert routing output",
    "return_indexer_topk": "sparse-attention indexer output",
    "token_ids_logprob": "logprobs of given token ids",
    "return_sampling_mask": _LOGPROB_EXTRAS, "sampling_logprobs_mode": _LOGPROB_EXTRAS,
    "return_flat_raw_top_logprobs": _LOGPROB_EXTRAS,
    "return_flat_raw_output_top_logprobs": _LOGPROB_EXTRAS,
    "return_flat_raw_top_logprobs_b64": _LOGPROB_EXTRAS,
    "return_bytes": "byte outputs", "return_entropy": "entropy outputs",
    "return_prompt_token_ids": "prompt token ids in the output",
    "bootstrap_pair_key": _DISAGGREGATION,  # bootstrap_host/port/room: runtime/disaggregation
    "decode_tp_size": _DISAGGREGATION, "disagg_prefill_dp_rank": _DISAGGREGATION,
    "routed_dp_rank": "routing to a chosen data-parallel rank",
    "data_parallel_rank": "routing to a chosen data-parallel rank",
    "background": "background requests",
    "require_reasoning": "thinking budgets", "max_thinking_tokens": "thinking budgets",
    "positional_embed_overrides": "positional embedding overrides",
    "multi_item_delimiter_indices": "multi-item scoring", "token_indices_to_pool": "pooling",
    "watermark": "watermarking",
    "cache_salt": "prefix-cache isolation", "extra_key": "prefix-cache isolation",
    "kv_hints": "KV storage hints", "http_worker_ipc": "multi-worker HTTP front ends",
}

# Labels and tracing: checked for type, otherwise ignored.
IGNORED: dict[str, tuple[type, ...]] = {
    "log_metrics": (bool,), "no_logs": (bool,), "custom_labels": (dict,),
    "external_trace_header": (dict,), "received_time": (int, float), "routing_key": (str,),
    "conversation_id": (str,),
}

KNOWN = set(UNSUPPORTED) | set(IGNORED)


def check_extra_fields(obj: dict[str, Any]) -> None:
    """ValueError naming the first field that asks for a feature sgl lacks, or has a bad type."""
    for name, feature in UNSUPPORTED.items():
        if name in obj and not is_neutral(obj[name]):
            raise ValueError(f"{name}: {feature} is not supported by sgl; omit the field or send "
                             "null (or its default)")
    for name, kinds in IGNORED.items():
        value = obj.get(name)
        if value is not None and (not isinstance(value, kinds) or
                                  (bool not in kinds and isinstance(value, bool))):
            names = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"{name} must be of type {names}, got {value!r}")


def is_neutral(value: Any) -> bool:
    """Null, false, zero, empty, or a list of those (a batch where no prompt asks)."""
    if isinstance(value, list):
        return all(is_neutral(v) for v in value)
    if value is None or value is False or value in ("", {}):
        return True
    return isinstance(value, (int, float)) and value == 0
