"""The engine on a CUDA GPU (run with `pytest -m gpu` on the device): the bundled model's bf16
logprobs against the CPU float32 reference, CUDA-graph decode against eager, and radix reuse /
chunking / retraction giving the same greedy tokens as running alone, and speculative verify
under CUDA graphs against eager verification."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from sgl.runtime.engine import Engine  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "List three colors:"]


def greedy(engine: Engine, prompts: list, n: int = 32) -> list[list[int]]:
    outs = engine.generate(prompts, {"max_new_tokens": n, "temperature": 0, "ignore_eos": True})
    return [o["output_ids"] for o in outs]


def prompt_logprobs(engine: Engine, ids: list[int]) -> torch.Tensor:
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 0}, return_logprob=True,
                          logprob_start_len=0)
    return torch.tensor([lp for lp, _, _ in out["meta_info"]["input_token_logprobs"][1:]])


def test_bundled_bf16_logprobs_close_to_cpu_fp32():
    with Engine(device="cpu") as cpu:
        ids = cpu.tokenizer.encode(" ".join(PROMPTS) * 4)
        ref = prompt_logprobs(cpu, ids)
    with Engine(device="cuda", dtype="bfloat16") as gpu:
        got = prompt_logprobs(gpu, ids)
    err = (got - ref).abs()
    assert err.mean() < 0.05 and err.max() < 0.5, (err.mean(), err.max())


@pytest.mark.parametrize("backend", ["torch_native", "triton"])
def test_radix_chunking_and_retraction_keep_greedy_tokens(backend):
    with Engine(device="cuda", dtype="float32", attention_backend=backend, disable_cuda_graph=True) as e:
        alone = [greedy(e, [p])[0] for p in PROMPTS]
        e.flush_cache()
    with Engine(device="cuda", dtype="float32", attention_backend=backend, chunked_prefill_size=8,
                max_total_tokens=96, disable_cuda_graph=True) as e:
        assert greedy(e, PROMPTS) == alone
        assert e.scheduler.stats.num_retracted > 0
        assert greedy(e, PROMPTS[:1]) == alone[:1]
        e.call_in_scheduler(lambda s: s.check_pool_invariant())


def test_cuda_graph_decode_equals_eager():
    with Engine(device="cuda", dtype="bfloat16", attention_backend="triton", disable_cuda_graph=True) as e:
        eager = greedy(e, PROMPTS, 48)
    with Engine(device="cuda", dtype="bfloat16", attention_backend="triton", cuda_graph_max_bs=8) as e:
        graph = greedy(e, PROMPTS, 48)
        assert e.scheduler.stats.cuda_graph_used
    same = sum(a == b for x, y in zip(eager, graph) for a, b in zip(x, y)) / sum(map(len, eager))
    assert same == 1.0, f"{same:.3f} of tokens identical"


def test_overlap_schedule_on_gpu_gives_the_synchronous_results():
    """Overlap scheduling (the GPU default) with CUDA graphs: the mixed batch, logprobs, n > 1,
    streaming and grammars (with and without jump-forward) of tests/runtime/test_overlap.py give
    the synchronous loop's results, and no KV is held once idle."""
    from tests.runtime.test_overlap import _run, _structured
    kw = dict(device="cuda", dtype="float32", max_total_tokens=4096)
    with Engine(disable_overlap_schedule=True, **kw) as e:
        assert not e.scheduler.overlap
        expected = _run(e), [_structured(e, True), _structured(e, False)]
    with Engine(**kw) as e:
        assert e.scheduler.overlap
        got = _run(e), [_structured(e, True), _structured(e, False)]
        assert e.scheduler.stats.num_overlapped > 20 and e.runner.graph_runner is not None
        e.call_in_scheduler(lambda s: s.check_pool_invariant())
    (texts, reasons, logprobs, many, streamed), structured = got
    assert (texts, reasons, many, streamed) == expected[0][:2] + expected[0][3:]
    assert [(t, top) for _, t, top in logprobs] == [(t, top) for _, t, top in expected[0][2]]
    assert [lp for lp, _, _ in logprobs] == pytest.approx([lp for lp, _, _ in expected[0][2]], abs=1e-4)
    assert structured == expected[1]


@pytest.mark.parametrize("algo", ["NGRAM", "EAGLE", "EAGLE3"])
def test_speculative_verify_cuda_graph_equals_eager(algo, tmp_path):
    """Greedy tokens with speculation whose verify forwards replay CUDA graphs equal eager
    verification's (disable_cuda_graph) and decoding's without speculation, float32 on a tiny
    random Llama; verify batches mix drafted and undrafted requests. EAGLE keeps hidden states
    through the graphs; EAGLE-3 recaptures them with its layers once its drafter sets them."""
    import transformers

    from sgl.runtime.loader.draft import write_random_eagle_head
    from tests.runtime.test_speculative import (
        MIXED_PARAMS,
        MIXED_PROMPTS,
        _spy_replays,
        _tiny_llama,
    )
    path = _tiny_llama(tmp_path / "target", num_layers=4)
    kw = {"skip_tokenizer_init": True, "max_total_tokens": 1024, "device": "cuda",
          "dtype": "float32", "attention_backend": "triton", "cuda_graph_max_bs": 16}
    spec = {"speculative_algorithm": algo, "speculative_num_draft_tokens": 6}
    if algo != "NGRAM":
        head = str(tmp_path / "head")
        write_random_eagle_head(transformers.AutoConfig.from_pretrained(path), head, algo, seed=1,
                                draft_vocab_size=100 if algo == "EAGLE3" else None)
        spec.update({"speculative_draft_model_path": head, "speculative_num_steps": 3,
                     "speculative_eagle_topk": 2})

    def run(engine: Engine) -> list[list[int]]:
        outs = engine.generate(input_ids=MIXED_PROMPTS, sampling_params=MIXED_PARAMS)
        return [o["output_ids"] for o in outs]

    with Engine(path, **kw) as e:
        plain = run(e)
    with Engine(path, disable_cuda_graph=True, **kw, **spec) as e:
        assert e.runner.verify_graph_runner is None
        eager = run(e)
        assert e.scheduler.spec.num_verify > 0
    with Engine(path, **kw, **spec) as e:
        runner = e.runner
        seen = _spy_replays(runner)
        verify_graphs = runner.verify_graph_runner  # shutdown releases it from the runner
        graph = run(e)
        e.call_in_scheduler(lambda s: s.check_pool_invariant())
        num_verify = e.scheduler.spec.num_verify
        layers = tuple(runner.model.model.layers_to_capture)
    assert graph == eager == plain
    assert num_verify > 0 and verify_graphs.num_replays == len(seen) > 0
    assert any(1 in lens and max(lens) > 1 for lens in seen), seen  # drafted beside undrafted
    assert verify_graphs.layers_captured == layers
    if algo == "EAGLE3":
        assert layers, "EAGLE-3 sets the target's capture layers"
