"""The model drafter's tree steps as decode batches on branch rows, and under CUDA graphs.

CPU (float32; the bundled model drafting for itself, a tiny random Llama drafting for itself or
with random EAGLE / EAGLE-3 heads): the graph runner's static padded batch, run eagerly
(use_graphs=False), proposes the eager drafter's trees node for node, for chains and trees; a
tree's branch rows propose what its masked extends do. GPU (`pytest -m gpu`): the drafter's
steps replay CUDA graphs, and greedy outputs equal eager speculation's and plain decoding's,
for STANDALONE and random EAGLE heads (chains and trees) and a random EAGLE-3 head."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Optional

import pytest
import torch

from sgl.runtime.engine import Engine
from sgl.runtime.executor.draft_graph_runner import DraftGraphRunner, draft_batch_sizes
from sgl.runtime.loader.bundled import bundled_model_path

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
_KEEP = object()


@contextlib.contextmanager
def _trees(engine: Engine, graph_runner: Any = _KEEP, max_branch_rows: Optional[int] = None):
    """Record every tree the drafter proposes (tokens, parents) for requests run inside, the
    drafter's graph runner swapped for `graph_runner` and the radix cache flushed first (so
    that every run starts from the same state)."""
    drafter, trees = engine.runner.drafter, []

    def setup(sched):
        if graph_runner is not _KEEP:
            drafter.graph_runner = graph_runner
        if max_branch_rows is not None:
            drafter.max_rows = max_branch_rows
        sched.flush_cache()

    def spy(requests):
        out = type(drafter).propose(drafter, requests)
        trees.append([(t.tokens, t.parents) for t in out])
        return out
    engine.call_in_scheduler(setup)
    drafter.propose = spy
    try:
        yield trees
    finally:
        del drafter.propose


def _spy_rows(graph_runner: DraftGraphRunner) -> list[int]:
    """Record the row count of every step the graph runner serves."""
    rows, replay = [], graph_runner.replay

    def spy(batch, hidden_in):
        rows.append(batch.batch_size)
        return replay(batch, hidden_in)
    graph_runner.replay = spy
    return rows


def _greedy(engine: Engine, prompts: list, n: int) -> list[dict]:
    """Greedy outputs of text prompts, or of token-id prompts."""
    params = {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}
    if isinstance(prompts[0], str):
        return engine.generate(prompts, params)
    return engine.generate(input_ids=prompts, sampling_params=params)


def _ids(outs: list[dict]) -> list[list[int]]:
    return [o["output_ids"] for o in outs]


def test_draft_batch_sizes_are_topk_rows_per_decode_size():
    assert draft_batch_sizes([1, 2, 4, 8, 12, 16, 24], 1, max_rows=16) == [1, 2, 4, 8, 12, 16]
    assert draft_batch_sizes([1, 2, 4, 8, 12, 16, 24], 2, max_rows=32) == [2, 4, 8, 16, 24, 32]


CPU_CASES = {  # (target and STANDALONE draft, or the EAGLE head's kind; topk)
    "bundled-chain": ("bundled", 1),
    "tiny-tree": ("tiny", 2),
    "tiny-eagle-tree": ("EAGLE", 2),
    "tiny-eagle3-chain": ("EAGLE3", 1),
}
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON = [pytest.mark.gpu, pytest.mark.skipif(not INTERPRET, reason="TRITON_INTERPRET=1 (GPU: "
                                              "test_draft_cuda_graphs_keep_greedy_outputs)")]


def _cpu_engine(case: str, tmp_path, backend: str) -> tuple[Engine, list]:
    """Float32 on the CPU: the bundled model drafting for itself, or a tiny random Llama (sharp
    logits: no near-ties for float noise to flip) drafting for itself or with a random head."""
    import transformers

    from sgl.runtime.loader.draft import write_random_eagle_head
    from tests.runtime.test_speculative import MIXED_PROMPTS, _tiny_llama
    model, topk = CPU_CASES[case]
    spec = {"speculative_algorithm": "STANDALONE", "speculative_num_steps": 3,
            "speculative_eagle_topk": topk, "speculative_num_draft_tokens": 4 if topk == 1 else 6}
    kw = {"device": "cpu", "dtype": "float32", "max_total_tokens": 1024,
          "attention_backend": backend}
    if model == "bundled":
        spec["speculative_draft_model_path"] = bundled_model_path()
        return Engine(**kw, **spec), PROMPTS
    path = _tiny_llama(tmp_path / "target", num_layers=4)  # EAGLE-3 captures 3 layers
    spec["speculative_draft_model_path"] = path
    if model != "tiny":
        head = str(tmp_path / "head")
        write_random_eagle_head(transformers.AutoConfig.from_pretrained(path), head, model, seed=1,
                                draft_vocab_size=100 if model == "EAGLE3" else None)
        spec.update(speculative_algorithm=model, speculative_draft_model_path=head)
    return Engine(path, skip_tokenizer_init=True, **kw, **spec), MIXED_PROMPTS


@pytest.mark.parametrize("case,backend", [(case, "torch_native") for case in CPU_CASES] + [
    pytest.param(case, "triton", marks=TRITON)
    for case in ("tiny-eagle-tree", "tiny-eagle3-chain")])
def test_draft_static_batch_proposes_the_eager_trees(case, backend, tmp_path):
    """Drafting with the graph runner's static padded decode batch (rows padded up to a
    captured size: dummy table row, padding slot 0; EAGLE hidden states copied in), run eagerly
    on the CPU, gives the eager drafter's trees node for node and the same outputs; a tree's
    branch rows give the trees of the masked extends they replace. With TRITON_INTERPRET=1 also
    on the Triton backend (decode kernel over branch rows and padding)."""
    engine, prompts = _cpu_engine(case, tmp_path, backend)
    with engine:
        assert engine.runner.draft_graph_runner is None  # no graphs on the CPU
        drafter = engine.runner.drafter
        static = DraftGraphRunner(drafter, draft_batch_sizes([1, 2, 4, 8], drafter.topk),
                                  use_graphs=False)
        rows = _spy_rows(static)
        with _trees(engine, None) as eager_trees:
            expected = _ids(_greedy(engine, prompts, 12))
        with _trees(engine, static) as static_trees:
            got = _ids(_greedy(engine, prompts, 12))
        if drafter.topk > 1:
            with _trees(engine, None, max_branch_rows=0) as masked_trees:
                assert _ids(_greedy(engine, prompts, 12)) == expected
            assert masked_trees == eager_trees
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
    assert got == expected
    assert static_trees == eager_trees
    assert max(len(t[0]) for ts in eager_trees for t in ts) >= 3  # trees go past the catch-up
    assert static.num_replays == len(rows) > 0
    assert any(r not in static.batch_sizes for r in rows), rows  # padded up to a captured size


# -- on the GPU -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eagle_heads(tmp_path_factory) -> dict[str, str]:
    from tests.runtime.test_speculative import random_heads
    return random_heads(tmp_path_factory)


GPU_CASES = {
    "standalone-chain": dict(speculative_algorithm="STANDALONE", speculative_num_steps=4),
    "standalone-tree": dict(speculative_algorithm="STANDALONE", speculative_num_steps=3,
                            speculative_eagle_topk=2, speculative_num_draft_tokens=6),
    "eagle-chain": dict(speculative_algorithm="EAGLE", speculative_num_steps=3),
    "eagle-tree": dict(speculative_algorithm="EAGLE", speculative_num_steps=3,
                       speculative_eagle_topk=2, speculative_num_draft_tokens=5),
    "eagle3-chain": dict(speculative_algorithm="EAGLE3", speculative_num_steps=4),
}
GPU_PROMPTS = PROMPTS + ["List three colors:", "Repeat exactly: one two three, one two three,"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_draft_cuda_graphs_keep_greedy_outputs(case, eagle_heads):
    """Float32 on the bundled model, 5 requests (padded to 8 rows a step, or 10 to 16 for the
    tree): speculation whose draft tree steps replay CUDA graphs gives the greedy tokens of
    eager speculation (--disable-cuda-graph) and of plain decoding; the graphs were replayed,
    propose the eager drafter's trees (same engine, drafter graphs detached), and are released
    at shutdown. The bundled model drafting for itself has its drafts accepted: a chain's
    every step (nearly always), a tree's as often as the eager drafter's (a tree of fewer
    nodes than steps x topk keeps the best-scored ones, which can cut the top-1 chain short)."""
    spec = dict(GPU_CASES[case])
    algo = spec["speculative_algorithm"]
    spec["speculative_draft_model_path"] = (bundled_model_path() if algo == "STANDALONE"
                                            else eagle_heads[algo])
    kw = dict(device="cuda", dtype="float32", attention_backend="triton", cuda_graph_max_bs=16,
              max_total_tokens=4096)
    with Engine(**kw) as e:
        plain = _ids(_greedy(e, GPU_PROMPTS, 32))
    with Engine(disable_cuda_graph=True, **kw, **spec) as e:
        assert e.runner.draft_graph_runner is None and e.runner.drafter.graph_runner is None
        eager_outs = _greedy(e, GPU_PROMPTS, 32)
        eager = _ids(eager_outs)
    with Engine(**kw, **spec) as e:
        runner, drafter = e.runner, e.runner.drafter
        graphs = runner.draft_graph_runner  # shutdown releases it from the runner
        assert graphs is not None and drafter.graph_runner is graphs and graphs.graphs
        decode_sizes = runner.graph_runner.batch_sizes
        assert graphs.batch_sizes == draft_batch_sizes(decode_sizes, drafter.topk)
        rows = _spy_rows(graphs)
        outs = _greedy(e, GPU_PROMPTS, 32)
        e.call_in_scheduler(lambda s: s.check_pool_invariant())
        with _trees(e, None) as eager_trees:
            detached = _ids(_greedy(e, GPU_PROMPTS, 32))
        with _trees(e, graphs) as graph_trees:
            attached = _ids(_greedy(e, GPU_PROMPTS, 32))
    assert _ids(outs) == eager == plain == detached == attached
    assert graphs.num_replays == len(rows) > 0
    assert any(r not in graphs.batch_sizes for r in rows), rows  # padded up to a captured size
    assert eager_trees and graph_trees
    same = (sum(a == b for a, b in zip(graph_trees, eager_trees))
            / max(len(graph_trees), len(eager_trees)))
    assert same >= 0.95, f"{same:.3f} of the proposals identical"
    assert runner.draft_graph_runner is None and not graphs.graphs  # released at shutdown
    if algo == "STANDALONE":  # its own draft
        verified = sum(o["meta_info"]["spec_verify_ct"] for o in outs)
        accepted = sum(o["meta_info"]["spec_accepted_tokens"] for o in outs)
        if spec.get("speculative_eagle_topk", 1) == 1:  # every drafted token, but at the ends
            assert accepted >= 0.9 * spec["speculative_num_steps"] * verified, (accepted, verified)
        eager_accepted = sum(o["meta_info"]["spec_accepted_tokens"] for o in eager_outs)
        eager_verified = sum(o["meta_info"]["spec_verify_ct"] for o in eager_outs)
        assert accepted / verified >= 0.95 * eager_accepted / eager_verified > 2
