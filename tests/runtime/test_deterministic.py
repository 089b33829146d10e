"""--enable-deterministic-inference (batch-invariant kernels): a request's prompt and output
logprobs are bit for bit the same whether it runs alone on an empty cache or among other
requests, with its shared prefix cached and its prompt chunked at other places.

The Triton attention kernels carry the invariance, so the engine test runs them: on the GPU
(`gpu` marker, bf16) and on the CPU under the Triton interpreter (a subprocess with
TRITON_INTERPRET=1, float32, in CI)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers

from sgl.kernels.linear import batch_invariant, invariant_linear
from sgl.runtime.config import ServerArgs
from sgl.runtime.engine import Engine
from tests.runtime.test_tensor_parallel import tiny

PREFIX = [(7 * i + 3) % 200 + 5 for i in range(45)]  # shared by every prompt, 45 tokens
PROMPTS = [PREFIX + [(11 * i + 5 * j) % 200 + 5 for j in range(n)]
           for i, n in enumerate([3, 40, 17, 26, 1, 33, 12, 9])]
PARAMS = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
INTERPRETED = 4  # prompts under the interpreter (slow): 48 to 85 tokens, key tiles of 64


def tiny_llama(path: str, dtype: torch.dtype = torch.float32, **overrides) -> str:
    return tiny(path, transformers.LlamaConfig, dtype,
                **{"num_attention_heads": 4, "num_key_value_heads": 2, **overrides})


def _logprobs(out: dict) -> dict:
    meta = out["meta_info"]
    return {"ids": out["output_ids"],
            "prompt": [lp for lp, _, _ in meta["input_token_logprobs"]][1:],  # the first is None
            "output": [lp for lp, _, _ in meta["output_token_logprobs"]]}


def alone_and_together(path: str, num_prompts: int = len(PROMPTS), max_new_tokens: int = 6,
                       **engine_kw) -> tuple[list[dict], list[dict]]:
    """Each prompt alone on an empty cache (its prompt chunked from position 0), then all of them
    in one batch after the shared prefix was cached (chunked from the prefix's end, beside the
    others' rows, decoded together)."""
    kw = dict(skip_tokenizer_init=True, chunked_prefill_size=32, **engine_kw)
    prompts = PROMPTS[:num_prompts]
    args = dict(sampling_params={**PARAMS, "max_new_tokens": max_new_tokens}, return_logprob=True,
                logprob_start_len=0)
    with Engine(path, **kw) as engine:
        alone = []
        for prompt in prompts:
            engine.flush_cache()
            alone.append(_logprobs(engine.generate(input_ids=[prompt], **args)[0]))
        engine.flush_cache()
        engine.generate(input_ids=[PREFIX], sampling_params={"max_new_tokens": 1})
        together = [_logprobs(o) for o in engine.generate(input_ids=prompts, **args)]
    return alone, together


# -- the CPU: what CI runs ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(576, 576), (1536, 576), (211, 64)])
def test_invariant_linear_rows_do_not_depend_on_the_batch(shape):
    """Every row of invariant_linear equals that row computed alone, at any batch size and any
    place in the batch, and stays within float32 rounding of F.linear."""
    n, k = shape
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    x = torch.randn(300, k, generator=g)
    alone = torch.cat([invariant_linear(x[i:i + 1], weight, bias) for i in range(40)])
    for m in (2, 3, 7, 16, 17, 40, 100, 300):
        order = torch.randperm(m, generator=g)
        got = invariant_linear(x[order], weight, bias)
        for place, row in enumerate(order.tolist()):
            if row < 40:
                assert torch.equal(got[place], alone[row]), (m, place, row)
    torch.testing.assert_close(invariant_linear(x, weight, bias), F.linear(x, weight, bias),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("conflict", [dict(tp_size=2), dict(quantization="fp8"),
                                      dict(speculative_algorithm="NGRAM"),
                                      dict(attention_backend="torch_native")])
def test_conflicting_flags_are_refused(conflict):
    with pytest.raises(ValueError, match=f"enable_deterministic_inference does not go with "
                                         f"{next(iter(conflict))}"):
        ServerArgs(enable_deterministic_inference=True, **conflict)


def test_the_cpu_reference_attention_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs attention_backend triton"):
        Engine(tiny_llama(str(tmp_path)), skip_tokenizer_init=True, enable_deterministic_inference=True)
    assert not batch_invariant()  # the refused engine left the process's linears as they were


def test_logprobs_do_not_depend_on_the_batch_under_the_triton_interpreter(tmp_path):
    """The engine on the Triton attention kernels, run by the interpreter on the CPU (float32):
    alone and together give identical logprobs with the flag (without it, every prompt of this
    test differs in some logprob, by up to ~1e-5)."""
    path = tiny_llama(str(tmp_path / "model"))
    code = ("import json, sys; from tests.runtime.test_deterministic import INTERPRETED, alone_and_together; "
            "print(json.dumps(alone_and_together(sys.argv[1], INTERPRETED, 3, device='cpu', "
            "attention_backend='triton', enable_deterministic_inference=True, disable_overlap_schedule=True)))")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", code, path], env=env, cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    alone, together = json.loads(res.stdout.strip().splitlines()[-1])
    assert [len(a["prompt"]) for a in alone] == [len(p) - 1 for p in PROMPTS[:INTERPRETED]]
    assert all(len(a["output"]) == 3 for a in alone)
    for i, (a, t) in enumerate(zip(alone, together)):
        assert a == t, i


# -- the GPU ---------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_logprobs_do_not_depend_on_the_batch(tmp_path):
    """bf16 on the GPU, a model wide enough that cuBLAS picks different kernels for different
    row counts: identical logprobs alone and together with the flag, CUDA graphs on."""
    path = tiny_llama(str(tmp_path / "model"), torch.bfloat16, hidden_size=1024,
                      intermediate_size=2816, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=32000, initializer_range=0.05)
    alone, together = alone_and_together(path, device="cuda", dtype="bfloat16",
                                         enable_deterministic_inference=True)
    for i, (a, t) in enumerate(zip(alone, together)):
        assert a == t, i
