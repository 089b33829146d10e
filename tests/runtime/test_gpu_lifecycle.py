"""On a CUDA GPU (run with `pytest -m gpu` on the device), issue #26: `Engine.shutdown()` gives
the memory back while the engine is still referenced, so a second engine of the process gets a
full-size pool; the profile step's reserve covers the largest step the flags allow. On the
issue's shape: Llama-3.1-8B with dummy weights (seeded, so two engines compute the same)."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

import sgl  # noqa: E402
from sgl.runtime.engine import Engine  # noqa: E402

GREEDY = {"max_new_tokens": 8, "temperature": 0}
EIGHT_B = {"model_path": "llama-3.1-8b-dummy", "load_format": "dummy", "skip_tokenizer_init": True, "device": "cuda"}
PROMPT = [128000, 791, 6864, 315, 9822, 374]


def test_a_second_engine_gets_a_full_pool_while_the_first_is_still_referenced():
    first = Engine(**EIGHT_B)
    first_pool = first.runner.max_total_tokens
    expected = first.generate(input_ids=PROMPT, sampling_params=GREEDY)["output_ids"]
    sgl.set_default_backend(first)  # the default backend keeps the engine object alive
    try:
        first.shutdown()
        assert torch.cuda.memory_allocated() < 256 << 20, torch.cuda.memory_allocated()
        with Engine(**EIGHT_B) as second:
            assert second.runner.max_total_tokens >= 0.98 * first_pool, (second.runner.max_total_tokens, first_pool)
            assert second.generate(input_ids=PROMPT, sampling_params=GREEDY)["output_ids"] == expected
        with pytest.raises(RuntimeError, match="shut down"):
            first.generate(input_ids=PROMPT, sampling_params=GREEDY)
    finally:
        sgl.set_default_backend(None)


def test_the_profiled_reserve_covers_the_largest_step():
    """A prefill of --chunked-prefill-size tokens, every row with its top 20 logprobs, stays
    within what the profile step reserved outside the pool."""
    with Engine(**EIGHT_B, chunked_prefill_size=4096) as engine:
        reserve = engine.runner.step_reserve
        assert reserve is not None and reserve.num_tokens == 4096 and reserve.bytes > 0
        ids = [(i * 7919) % 120000 + 100 for i in range(4096)]
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0},
                              return_logprob=True, logprob_start_len=0, top_logprobs_num=20)
        peak = torch.cuda.max_memory_allocated() - before
        assert len(out["meta_info"]["input_top_logprobs"]) == len(ids)
        assert all(len(t) == 20 for t in out["meta_info"]["input_top_logprobs"][1:])
        assert peak <= 1.1 * reserve.bytes, (peak / 1e9, reserve.bytes / 1e9)
