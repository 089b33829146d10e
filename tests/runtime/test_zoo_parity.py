"""Engine parity for the model zoo (test_model_zoo's tiny configs, plus dynamic rope): greedy
tokens identical to transformers' float32 `generate`, output logprobs within 1e-4 of its
per-step logits, prompt logprobs within 1e-4 of its forward, through 4-token prefill chunks,
a batch on a cold cache and each prompt again on the warm radix cache."""
from __future__ import annotations

import pytest
import torch
import transformers as tf
from sgl.runtime.engine import Engine

from tests.runtime.test_model_zoo import CONFIGS, TINY, make_hf_model

NEW_TOKENS = 12
PROMPTS = [[5, 17, 99, 3, 42, 8], [7] * 3 + list(range(10, 40)), [1, 2], list(range(60, 110))]
ARCHS = {
    **CONFIGS,
    # Trained on 16 positions, generating to 62: every decode step past 16 rescales the base.
    "llama_dynamic": lambda: tf.LlamaConfig(**{**TINY, "max_position_embeddings": 16},
                                            rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
}
CONTEXT = {"llama_dynamic": 128}  # --context-length past the trained length


def prompts_for(name: str) -> list[list[int]]:
    # Dynamic rope: transformers rotates a prompt longer than the trained length with that
    # prompt's length, a per-forward rule no chunked engine can follow (kernels/rope_scaling.py).
    return [p for p in PROMPTS if len(p) <= 16] if name == "llama_dynamic" else PROMPTS


def hf_generate(model: torch.nn.Module, prompt: list[int]) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and the log-softmax of each step's logits (NEW_TOKENS, vocab)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    logprobs = torch.log_softmax(torch.cat(out.logits).float(), dim=-1)
    return out.sequences[0, len(prompt):].tolist(), logprobs


@pytest.fixture(scope="module", params=sorted(ARCHS))
def tiny(request, tmp_path_factory):
    model = make_hf_model(ARCHS[request.param]())
    path = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(path)
    return request.param, path, model, [hf_generate(model, p) for p in prompts_for(request.param)]


def _greedy(engine: Engine, prompts: list[list[int]], logprob_start_len: int) -> list[dict]:
    params = {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
    return engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True,
                           logprob_start_len=logprob_start_len)


def _max_error(got: list[float], want: list[float]) -> float:
    assert len(got) == len(want)
    return max((abs(a - b) for a, b in zip(got, want)), default=0.0)


def test_engine_matches_transformers_generate(tiny):
    name, path, hf_model, expected = tiny
    prompts = prompts_for(name)
    with Engine(path, skip_tokenizer_init=True, chunked_prefill_size=4,
                context_length=CONTEXT.get(name)) as engine:
        cold = _greedy(engine, prompts, logprob_start_len=0)  # prompt logprobs: no prefix reuse
        warm = [_greedy(engine, [p], logprob_start_len=-1)[0] for p in prompts]
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
    assert [o["output_ids"] for o in cold] == [tokens for tokens, _ in expected]
    assert [o["output_ids"] for o in warm] == [tokens for tokens, _ in expected]
    assert sum(o["meta_info"]["cached_tokens"] for o in warm) >= sum(len(p) - 1 for p in prompts) // 2
    for cold_out, warm_out, prompt, (tokens, step_logprobs) in zip(cold, warm, prompts, expected):
        want = step_logprobs[torch.arange(NEW_TOKENS), tokens].tolist()
        for out in (cold_out, warm_out):
            got = [lp for lp, _, _ in out["meta_info"]["output_token_logprobs"]]
            assert _max_error(got, want) < 1e-4
        with torch.no_grad():
            ref = torch.log_softmax(hf_model(torch.tensor([prompt])).logits[0].float(), dim=-1)
        got = [lp for lp, _, _ in cold_out["meta_info"]["input_token_logprobs"][1:]]
        assert _max_error(got, ref[torch.arange(len(prompt) - 1), prompt[1:]].tolist()) < 1e-4
