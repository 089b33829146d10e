"""FP8 weights and FP8 KV cache on a CUDA GPU (`pytest -m gpu` on the device): the Triton /
torch._scaled_mm paths against the CPU reference engine, CUDA-graph decode against eager with an
FP8 pool, speculative verification reading an FP8 pool, and the bundled model's teacher-forced
agreement with bf16."""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from sgl.runtime.engine import Engine
from tests.runtime.test_gpu_engine import PROMPTS, greedy, prompt_logprobs

TINY_FP8 = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "tiny-llama-fp8")
FP8 = {"quantization": "fp8", "kv_cache_dtype": "fp8_e4m3"}


def _windows(n: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(n)]


def test_gpu_fp8_engine_matches_the_cpu_reference():
    """The shipped FP8 checkpoint with an FP8 KV cache, float32 activations: GPU kernels
    (GEMV at one row, _scaled_mm otherwise, FP8 pool through Triton attention) against the
    CPU reference paths, prompt logprobs of random windows."""
    kw = {"skip_tokenizer_init": True, "kv_cache_dtype": "fp8_e4m3", "dtype": "float32"}
    ids = _windows(1, 200, 256)[0]
    with Engine(TINY_FP8, device="cpu", **kw) as cpu:
        ref = prompt_logprobs(cpu, ids)
    with Engine(TINY_FP8, device="cuda", **kw) as gpu:
        assert gpu.runner.kv_pool.dtype == torch.float8_e4m3fn
        got = prompt_logprobs(gpu, ids)
    err = (got - ref).abs()
    # _scaled_mm writes bf16: more than float32's rounding, far less than FP8's own error (~0.14)
    assert err.mean() < 0.02 and err.max() < 0.2, (err.mean(), err.max())


def test_fp8_kv_pool_doubles_the_auto_sized_pool():
    with Engine(dtype="bfloat16", max_running_requests=8) as bf16:
        tokens, bytes_per_token = bf16.runner.max_total_tokens, bf16.runner.kv_pool.bytes_per_token()
    with Engine(dtype="bfloat16", max_running_requests=8, **FP8) as fp8:
        assert 2 * fp8.runner.kv_pool.bytes_per_token() == bytes_per_token
        assert fp8.runner.max_total_tokens > 1.9 * tokens  # the same memory, half the bytes


def test_fp8_cuda_graph_decode_equals_eager():
    with Engine(device="cuda", dtype="bfloat16", disable_cuda_graph=True, **FP8) as e:
        eager = greedy(e, PROMPTS, 48)
    with Engine(device="cuda", dtype="bfloat16", cuda_graph_max_bs=8, **FP8) as e:
        graph = greedy(e, PROMPTS, 48)
        assert e.scheduler.stats.cuda_graph_used and e.runner.graph_runner is not None
        e.call_in_scheduler(lambda s: s.check_pool_invariant())
    assert graph == eager


def test_fp8_kv_speculative_verify_equals_plain_decoding(tmp_path):
    """NGRAM verification (the extend kernel's tree-mask layout, under verify CUDA graphs)
    reading an FP8 pool gives the greedy tokens of plain decoding over the same pool."""
    from tests.runtime.test_speculative import MIXED_PARAMS, MIXED_PROMPTS, _tiny_llama
    path = _tiny_llama(tmp_path / "target", num_layers=4)
    kw = {"skip_tokenizer_init": True, "max_total_tokens": 1024, "device": "cuda",
          "dtype": "float32", "kv_cache_dtype": "fp8_e4m3", "cuda_graph_max_bs": 16}

    def run(engine: Engine) -> list[list[int]]:
        return [o["output_ids"] for o in engine.generate(input_ids=MIXED_PROMPTS,
                                                         sampling_params=MIXED_PARAMS)]

    with Engine(path, **kw) as e:
        plain = run(e)
    with Engine(path, speculative_algorithm="NGRAM", speculative_num_draft_tokens=6, **kw) as e:
        spec = run(e)
        assert e.scheduler.spec.num_verify > 0 and e.runner.verify_graph_runner is not None
    assert spec == plain


def test_bundled_fp8_teacher_forced_agreement_with_bf16():
    """The accuracy script on the GPU: FP8 weights + FP8 KV against bf16 on the docs' text
    (CPU float32 reference figures in docs/benchmarks.md)."""
    from sgl.bench_fp8_accuracy import main
    rows = main(["--device", "cuda", "--dtype", "bfloat16", "--num-windows", "8",
                 "--variants", "fp8_weights,fp8_kv,fp8_both"])
    got = {r["variant"]: r["top1_agreement"] for r in rows}
    assert got["fp8_kv"] > 0.85 and got["fp8_weights"] > 0.8 and got["fp8_both"] > 0.8, got
