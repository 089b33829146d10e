"""Bounded step memory (issue #26): logits materialised a chunk of rows at a time give exactly
what all rows at once give; a step that runs out of memory is retried in parts; the profile step
that sizes the pool runs (on CPU it measures nothing)."""
from __future__ import annotations

import json

import pytest
import torch

from sgl.runtime.config import ServerArgs
from sgl.runtime.engine import Engine
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.executor.logit_rows import LogitRows
from sgl.runtime.executor.memory_profile import profile_steps
from sgl.runtime.executor.model_runner import ModelRunner
from sgl.runtime.executor.step_results import step_outputs
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.sampling.sampler import Sampler
from sgl.runtime.scheduler.contract import SamplingInputs, StepInputs, StepOutOfMemory

VOCAB, HIDDEN = 300, 32
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 1024,
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05, "vocab_size": 256, "torch_dtype": "float32"}


def _step(num_rows: int, sample_rows: list[int], lp_rows: list[int]) -> StepInputs:
    """Logit rows some of which sample (varied processors, a grammar mask) and some of which
    score a prompt token, interleaved as a batch of prompts and decodes has them."""
    g = torch.Generator().manual_seed(0)
    params = [SamplingParams(temperature=0.0 if i % 3 == 0 else 0.8, top_k=[-1, 20, 5][i % 3],
                             top_p=[1.0, 0.9][i % 2], frequency_penalty=0.2 * (i % 2))
              for i in range(len(sample_rows))]
    n = len(sample_rows)
    sampling = SamplingInputs(params=params, seeds=list(range(n)), steps=[3] * n,
                              prompt_ids=[[1, 2, 3]] * n, output_ids=[[4, 5, 4]] * n,
                              min_tokens_ids=[set()] * n)
    mask = torch.randint(-2**31, 2**31 - 1, (n, (VOCAB + 31) // 32), generator=g, dtype=torch.int64)
    batch = ForwardBatch.build([0] * num_rows, list(range(num_rows)), list(range(1, num_rows + 1)),
                               [0], [0], [num_rows], list(range(num_rows)))
    return StepInputs(batch=batch, sample_rows=sample_rows, sampling=sampling, lp_rows=lp_rows,
                      lp_targets=[(7 * r) % VOCAB for r in lp_rows], top_logprobs_num=5,
                      need_logprobs=True, vocab_mask=mask.to(torch.int32))


@pytest.mark.parametrize("max_rows", [1, 3, 7, 64])
def test_chunked_logit_rows_equal_all_rows_at_once(max_rows):
    g = torch.Generator().manual_seed(1)
    hidden, head = torch.randn(23, HIDDEN, generator=g), torch.randn(VOCAB, HIDDEN, generator=g)
    lm_head = lambda h: h @ head.T  # noqa: E731
    step = _step(23, sample_rows=[2, 3, 9, 10, 11, 15, 22], lp_rows=[0, 1, 4, 5, 6, 7, 8, 12, 20, 21])
    whole = LogitRows(23, 1000, logits=lm_head(hidden))
    chunked = LogitRows.of_hidden(hidden, lm_head, max_rows)
    sampler, cpu = Sampler(), torch.device("cpu")
    (s_ref, lp_ref), (s_out, lp_out) = (step_outputs(r, step, sampler, VOCAB, cpu) for r in (whole, chunked))
    assert torch.equal(s_out.next_token_ids, s_ref.next_token_ids)
    for a, b in ((s_out.logprobs, s_ref.logprobs), (s_out.top_logprobs_vals, s_ref.top_logprobs_vals),
                 (lp_out[0], lp_ref[0]), (lp_out[1][0], lp_ref[1][0])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(s_out.top_logprobs_ids, s_ref.top_logprobs_ids)
    assert torch.equal(lp_out[1][1], lp_ref[1][1])
    # and the reference itself: the chosen prompt logprobs are log_softmax of those rows
    full = torch.log_softmax(lm_head(hidden), -1)
    torch.testing.assert_close(lp_ref[0], full[step.lp_rows, step.lp_targets])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "config.json").write_text(json.dumps(TINY))
    return str(folder)


def test_profile_step_runs_on_cpu_and_leaves_the_runner_whole(tiny_dir):
    runner = ModelRunner(ServerArgs(model_path=tiny_dir, load_format="dummy", skip_tokenizer_init=True,
                                    max_total_tokens=128, logits_chunk_size=16))
    pools = runner.kv_pool, runner.req_to_token_pool
    reserve = profile_steps(runner, num_tokens=96, num_rows=20)
    assert reserve.bytes == 0 and (reserve.num_tokens, reserve.num_rows) == (96, 20)  # CPU: nothing measured
    assert (runner.kv_pool, runner.req_to_token_pool) == pools


def test_embedding_profile_step_pools_without_logits(tiny_dir):
    """An embedding model's profile step is its pooled prefill: no logit rows (a headless
    checkpoint has no LM head to compute them), the sum of every row's hidden state."""
    runner = ModelRunner(ServerArgs(model_path=tiny_dir, load_format="dummy", skip_tokenizer_init=True,
                                    max_total_tokens=128, is_embedding=True))
    runner.model.compute_logits = None  # a headless model: calling it would fail the test
    reserve = profile_steps(runner, num_tokens=96, num_rows=20)
    assert reserve.bytes == 0 and reserve.num_tokens == 96
    assert runner.pooled.shape == (1, TINY["hidden_size"]) and bool(runner.pooled.abs().sum() > 0)


def test_runner_out_of_memory_is_a_step_error(tiny_dir):
    runner = ModelRunner(ServerArgs(model_path=tiny_dir, load_format="dummy", skip_tokenizer_init=True,
                                    max_total_tokens=128))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.70 GiB")
    runner.model.forward = oom
    step = StepInputs(batch=ForwardBatch.build([1, 2], [0, 1], [1, 2], [0], [0], [2], [1]),
                      sample_rows=[0], sampling=SamplingInputs([SamplingParams()], [0], [0], [[1]], [[]], [set()]))
    with pytest.raises(StepOutOfMemory, match="3.70 GiB"):
        runner.launch_batch(step)


@pytest.fixture(scope="module")
def reference_engine():
    with Engine(random_seed=3) as e:
        yield e


def _prompt_logprobs(engine: Engine, ids: list[int]) -> list:
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 3, "temperature": 0},
                          return_logprob=True, logprob_start_len=0, top_logprobs_num=5)
    return out["output_ids"], out["meta_info"]


def test_engine_with_tiny_chunks_and_pool_equals_the_default(reference_engine):
    """logits_chunk_size 4 and prefill chunks of 16 tokens on a 256-token pool: the prompt
    logprobs (top 5) of a 70-token prompt and the greedy tokens equal the default engine's."""
    ids = reference_engine.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 7)[:70]
    ref_ids, ref = _prompt_logprobs(reference_engine, ids)
    with Engine(random_seed=3, logits_chunk_size=4, chunked_prefill_size=16, max_total_tokens=256) as e:
        got_ids, got = _prompt_logprobs(e, ids)
        e.call_in_scheduler(lambda s: s.check_pool_invariant())
    assert got_ids == ref_ids
    assert len(got["input_token_logprobs"]) == len(ids) == len(got["input_top_logprobs"])
    for (a, ta, _), (b, tb, _) in zip(got["input_token_logprobs"][1:], ref["input_token_logprobs"][1:]):
        assert ta == tb and a == pytest.approx(b, abs=1e-4)
    for a, b in zip(got["input_top_logprobs"][1:], ref["input_top_logprobs"][1:]):
        assert [t for _, t, _ in a] == [t for _, t, _ in b]
        assert [v for v, _, _ in a] == pytest.approx([v for v, _, _ in b], abs=1e-4)


def test_engine_steps_out_of_memory_are_retried_in_parts(reference_engine):
    """Every step over 24 tokens runs out of memory: prompts are cut into smaller steps, the
    decode batch into fewer requests, and every answer equals the unfaulted engine's."""
    from tests.runtime.fault_runner import install, uninstall
    prompts = [f"Question {i}: what is {i} plus {i}? Answer with a number and a word." for i in range(6)]
    params = {"max_new_tokens": 6, "temperature": 0}
    ref = [o["output_ids"] for o in reference_engine.generate(prompts, params)]
    reference_engine.flush_cache()
    faulty = install(reference_engine, oom_above_tokens=24)
    try:
        got = [o["output_ids"] for o in reference_engine.generate(prompts, params)]
        failed_steps = reference_engine.call_in_scheduler(lambda s: s.recovery.num_failed_steps)
    finally:
        uninstall(reference_engine)
    assert got == ref
    assert faulty.num_oom > 0 and failed_steps >= faulty.num_oom
