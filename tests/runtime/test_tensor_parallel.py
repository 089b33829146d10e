"""Tensor parallelism over gloo on CPU: N ranks (spawned processes, rank 0 schedules) give the
same greedy tokens as one rank, with query/KV heads split, KV heads replicated when there are
fewer than ranks, and the vocab-parallel embedding and LM head."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
import transformers

from sgl.runtime.engine import Engine
from sgl.runtime.loader.bundled import bundled_model_path

PROMPTS = [[5, 17, 99, 3, 42, 8], list(range(10, 40)), [7, 7, 7]]
GREEDY = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}


def greedy(path: str, prompts: list, max_new_tokens: int = 16, **kw) -> list[list[int]]:
    params = {**GREEDY, "max_new_tokens": max_new_tokens}
    with Engine(path, skip_tokenizer_init=True, chunked_prefill_size=16, **kw) as e:
        out = [o["output_ids"] for o in e.generate(input_ids=prompts, sampling_params=params)]
        e.call_in_scheduler(lambda s: s.check_pool_invariant())
        return out


def tiny(tmp_path, cls: type, dtype: torch.dtype = torch.float32, **cfg) -> str:
    """A tiny random model of config class `cls` saved at tmp_path; `cfg` overrides any field."""
    torch.manual_seed(0)
    config = cls(**{**dict(vocab_size=211, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           max_position_embeddings=512, initializer_range=0.3), **cfg})
    transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize("cls,cfg", [
    (transformers.LlamaConfig, {"num_attention_heads": 8, "num_key_value_heads": 2}),
    (transformers.LlamaConfig, {"num_attention_heads": 4, "num_key_value_heads": 1}),  # KV replicated
    (transformers.Qwen3Config, {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                                "tie_word_embeddings": False}),
    # Experts split by intermediate columns across the ranks, the router replicated.
    (transformers.Qwen3MoeConfig, {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                                   "moe_intermediate_size": 32, "num_experts": 8,
                                   "num_experts_per_tok": 2, "norm_topk_prob": True}),
    (transformers.Qwen2MoeConfig, {"num_attention_heads": 4, "num_key_value_heads": 2,
                                   "moe_intermediate_size": 32, "num_experts": 4,
                                   "num_experts_per_tok": 2, "shared_expert_intermediate_size": 48}),
], ids=["llama-gqa", "llama-kv-replicated", "qwen3", "qwen3-moe", "qwen2-moe-shared-expert"])
def test_tp2_matches_tp1_on_tiny_models(tmp_path, cls, cfg):
    path = tiny(tmp_path, cls, **cfg)
    assert greedy(path, PROMPTS, tp_size=2) == greedy(path, PROMPTS)


def test_tp3_matches_tp1_on_the_bundled_model():
    # SmolLM2-135M has 9 query and 3 KV heads: 3 ranks is its tensor-parallel degree (2 does not divide 9).
    prompts = [[504, 3575, 282, 4649, 314], [1604, 3987, 46477, 24, 94, 727]]
    path = bundled_model_path()
    assert greedy(path, prompts, 8, tp_size=3) == greedy(path, prompts, 8)


def test_tp_size_that_does_not_divide_the_heads_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="9 is not divisible by 2"):
        Engine(bundled_model_path(), skip_tokenizer_init=True, tp_size=2)
    path = tiny(tmp_path, transformers.LlamaConfig, num_attention_heads=4, num_key_value_heads=2)
    assert greedy(path, PROMPTS[:1], tp_size=2) == greedy(path, PROMPTS[:1])  # the process recovered


def test_dummy_weights_are_the_same_model_at_every_tp_size(tmp_path):
    # load_format="dummy" draws the whole checkpoint and each rank loads its slices, so random-weight
    # benchmarks at TP 1/2/4 (the 8B shape on GPUs) run one model: greedy tokens agree.
    config = transformers.LlamaConfig(vocab_size=211, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512)
    config.save_pretrained(tmp_path)
    one = greedy(str(tmp_path), PROMPTS, load_format="dummy")
    assert greedy(str(tmp_path), PROMPTS, load_format="dummy", tp_size=2) == one
    assert len(set(one[1])) > 1  # not a degenerate model that repeats one token


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("one_shot", [True, False], ids=["custom-all-reduce", "nccl-only"])
def test_tp2_over_nccl_with_cuda_graphs_matches_tp1(tmp_path, one_shot):
    # float32 so that the split matmuls' rounding cannot flip a greedy choice; the all-reduces
    # (NCCL, or one-shot over peer memory for decode-sized tensors when enabled) and the logits
    # all-gather are captured inside the decode CUDA graphs.
    path = tiny(tmp_path, transformers.LlamaConfig, num_attention_heads=8, num_key_value_heads=2)
    kw = dict(device="cuda", dtype="float32")
    assert greedy(path, PROMPTS, tp_size=2, enable_custom_all_reduce=one_shot, **kw) == \
        greedy(path, PROMPTS, **kw)


def hidden_states(path: str, **kw) -> list[dict]:
    """Outputs of a batch asking for every position's, none and the last hidden state, then of
    a batch asking for none (on a GPU: decode under the CUDA graphs again)."""
    with Engine(path, skip_tokenizer_init=True, chunked_prefill_size=16,
                enable_return_hidden_states=True, **kw) as e:
        outs = e.generate(input_ids=PROMPTS, sampling_params=GREEDY,
                          return_hidden_states=[True, False, "last"])
        plain = e.generate(input_ids=PROMPTS, sampling_params=GREEDY)
        assert [o["output_ids"] for o in plain] == [o["output_ids"] for o in outs]
        return outs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")])])
def test_tp2_hidden_states_match_tp1(tmp_path, device):
    """Rank 0 returns the full hidden states; a step that returns them runs eagerly on every
    rank (followers too, or their graph's padded collectives would not match rank 0's)."""
    path = tiny(tmp_path, transformers.LlamaConfig, num_attention_heads=8, num_key_value_heads=2)
    kw = dict(device=device, dtype="float32")
    one, two = hidden_states(path, **kw), hidden_states(path, tp_size=2, **kw)
    assert [o["output_ids"] for o in one] == [o["output_ids"] for o in two]
    (full1, _, last1), (full2, none2, last2) = ([o["meta_info"].get("hidden_states") for o in outs]
                                                for outs in (one, two))
    assert none2 is None and len(full2) == GREEDY["max_new_tokens"]
    flat = [torch.tensor(h[0] + h[1:]) for h in (full2, full1)]  # [prompt rows, then vectors]
    torch.testing.assert_close(*flat, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(last2), torch.tensor(last1), rtol=1e-4, atol=1e-4)


def test_followers_outlast_an_idle_spell_longer_than_the_collective_timeout(tmp_path):
    # Ranks 1.. wait for the next step in a broadcast; an idle server must not time them out. The
    # collective timeout is shortened (--dist-timeout, which the spawned ranks get with the other
    # server arguments) and the engine idles longer. The timeout also bounds the rendezvous, which
    # waits for rank 1 to start (importing torch takes ~4 s on a loaded 2-core machine).
    timeout_s = 10
    path = tiny(tmp_path, transformers.LlamaConfig, num_attention_heads=4, num_key_value_heads=2)
    with Engine(path, skip_tokenizer_init=True, tp_size=2, dist_timeout=timeout_s) as e:
        # rank 0 is this process: its default group (rendezvous, tensor collectives) took the flag
        group = torch.distributed.distributed_c10d._get_default_group()
        assert group._get_backend(torch.device("cpu")).options._timeout == timedelta(seconds=timeout_s)
        first = e.generate(input_ids=PROMPTS[:1], sampling_params=GREEDY)[0]["output_ids"]
        time.sleep(timeout_s + 1)
        assert e.generate(input_ids=PROMPTS[:1], sampling_params=GREEDY)[0]["output_ids"] == first


def test_leaving_resets_the_graphs_before_destroying_the_groups(monkeypatch):
    """CUDA graphs that captured NCCL collectives make destroy_process_group block forever
    (pytorch/pytorch#115388): the graphs are reset first; a destroy that still blocks is given up
    after the deadline instead of hanging the process."""
    import threading

    from sgl.runtime.executor import tensor_parallel

    events = []

    class Runner:
        def release_cuda_graphs(self):
            events.append("graphs released")

    monkeypatch.setattr(tensor_parallel.dist, "destroy_process_group", lambda: events.append("destroyed"))
    assert tensor_parallel.leave_tensor_parallel(Runner(), timeout_s=5)
    assert events == ["graphs released", "destroyed"]

    stuck = threading.Event()
    monkeypatch.setattr(tensor_parallel.dist, "destroy_process_group", lambda: stuck.wait(30))
    start = time.monotonic()
    assert not tensor_parallel.leave_tensor_parallel(Runner(), timeout_s=0.5)
    assert time.monotonic() - start < 5
    stuck.set()


def test_tp2_with_overlap_scheduling_matches_tp1(tmp_path):
    # Overlapped steps name the tokens of the step in flight (future_src); the follower rank gets
    # them from rank 0's broadcast of each step's sampled ids (on unless --disable-overlap-schedule).
    # Overlap is forced on in the scheduler (CPU default off); greedy tokens must equal TP=1's,
    # with most decode steps overlapped.
    path = tiny(tmp_path, transformers.LlamaConfig, num_attention_heads=4, num_key_value_heads=2)
    expected = greedy(path, PROMPTS)
    with Engine(path, skip_tokenizer_init=True, chunked_prefill_size=16, tp_size=2) as e:
        e.call_in_scheduler(lambda s: setattr(s, "overlap", True))
        got = [o["output_ids"] for o in e.generate(input_ids=PROMPTS, sampling_params=GREEDY)]
        assert e.scheduler.stats.num_overlapped >= 10
        e.call_in_scheduler(lambda s: s.check_pool_invariant())
    assert got == expected


@pytest.mark.parametrize("algorithm", ["NGRAM", "STANDALONE", "EAGLE"])
def test_tp2_speculative_decoding_gives_tp1_greedy_tokens(tmp_path, algorithm):
    """Speculation under tensor parallelism: rank 0 drafts alone (a STANDALONE model loaded
    whole; an EAGLE head over whole copies of the target's vocab-split embedding and LM head,
    gathered once at start-up), the verify forwards run on both ranks. Greedy tokens equal TP=1
    without speculation, and drafts were really verified and accepted."""
    from sgl.runtime.loader.draft import write_random_eagle_head
    path = tiny(tmp_path / "target", transformers.LlamaConfig, num_attention_heads=4, num_key_value_heads=2)
    prompts = PROMPTS + [[5, 17, 99, 3, 42, 8, 5, 17, 99, 3, 42, 8, 5, 17]]  # repeats: NGRAM drafts
    expected = greedy(path, prompts, 24)
    spec = {"speculative_algorithm": algorithm, "speculative_num_steps": 3}
    if algorithm == "STANDALONE":
        spec["speculative_draft_model_path"] = path  # drafting for itself: long accepted chains
    elif algorithm == "EAGLE":
        head = str(tmp_path / "head")
        write_random_eagle_head(transformers.AutoConfig.from_pretrained(path), head, "EAGLE", seed=1)
        spec["speculative_draft_model_path"] = head
    params = {**GREEDY, "max_new_tokens": 24}
    with Engine(path, skip_tokenizer_init=True, chunked_prefill_size=16, tp_size=2, **spec) as e:
        outs = e.generate(input_ids=prompts, sampling_params=params)
        e.call_in_scheduler(lambda s: s.check_pool_invariant())
        verified = e.call_in_scheduler(lambda s: s.spec.num_verify)
    assert [o["output_ids"] for o in outs] == expected
    assert verified > 0
    if algorithm != "EAGLE":  # a random head's drafts may all be rejected
        assert sum(o["meta_info"]["spec_accepted_tokens"] for o in outs) > 0


def test_parity_script_reports_teacher_forced_agreement(tmp_path):
    """sgl/bench_tp_parity.py (the GPU parity report) on a tiny float32 model over gloo: TP=2 gives
    TP=1's tokens, and scoring TP=1's outputs teacher-forced agrees to float32 rounding."""
    path = tiny(tmp_path / "model", transformers.LlamaConfig, num_attention_heads=8, num_key_value_heads=2)
    out = tmp_path / "parity.json"
    subprocess.run([sys.executable, "-m", "sgl.bench_tp_parity", "--model-path", path, "--tp-sizes", "1", "2",
                    "--num-prompts", "3", "--input-len", "12", "--output-len", "6",
                    "--vocab-size", "200", "--out", str(out)], check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())["by_tp_size"]["2"]
    assert report["identical_requests"] == 1.0
    forced = report["teacher_forced"]
    assert forced["positions"] == 3 * 6 and forced["top1_agreement"] == 1.0
    assert forced["max_abs_logprob_diff"] < 1e-4 and forced["decisive_positions"] > 0
