"""Speculative decoding on CPU in float32: the draft tree and its verification rule, NGRAM
drafting, losslessness of every algorithm against plain decoding on the bundled model (greedy,
seeded sampling with penalties, min_new_tokens, logprob and grammar requests in the same batch, a
pool small enough to force retraction), full acceptance when the draft is the target itself, and
the EAGLE drafter's incremental catch-up against a dense run of the same head."""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from sgl.runtime.cache.memory_pool import ReqTable
from sgl.runtime.config import ServerArgs
from sgl.runtime.engine import Engine
from sgl.runtime.executor.model_runner import ModelRunner
from sgl.runtime.io_struct import TokenizedGenerateReq
from sgl.runtime.loader import load_model
from sgl.runtime.loader.bundled import bundled_model_path
from sgl.runtime.loader.draft import write_random_eagle_head
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.scheduler import Scheduler
from sgl.runtime.speculative.ngram import NgramDrafter
from sgl.runtime.speculative.tree import DraftTree, verify

import transformers

from tests.runtime.pools import Pools
from tests.runtime.test_eagle_heads import _tiny_config

# -- the tree and the verification rule --------------------------------------------------------


def _tree(*nodes: tuple[int, int]) -> DraftTree:
    tree = DraftTree()
    for token, parent in nodes:
        tree.add(token, parent)
    return tree


def test_tree_mask_depths_and_paths():
    #        root
    #       /    \
    #     a(0)   b(1)
    #     |
    #     c(2)
    tree = _tree((10, -1), (11, -1), (12, 0))
    assert tree.depths() == [1, 1, 2]
    assert tree.paths() == [[], [10], [11], [10, 12]]
    expected = torch.tensor([[1, 0, 0, 0],
                             [1, 1, 0, 0],
                             [1, 0, 1, 0],
                             [1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(tree.tree_mask(), expected)


@pytest.mark.parametrize("target, emitted, accepted", [
    ([99, 0, 0, 0], [99], []),              # root's choice drafted nowhere: one token
    ([11, 0, 5, 0], [11, 5], [1]),          # takes branch b, b's choice has no child
    ([10, 12, 0, 7], [10, 12, 7], [0, 2]),  # the whole left path, then the target's own token
])
def test_verify_walks_the_targets_choices(target, emitted, accepted):
    tree = _tree((10, -1), (11, -1), (12, 0))
    assert verify(tree, target) == (emitted, accepted)


def _ngram(max_nodes: int = 7, breadth: int = 8) -> NgramDrafter:
    return NgramDrafter(ServerArgs(speculative_algorithm="NGRAM", speculative_num_draft_tokens=max_nodes + 1,
                                   speculative_ngram_max_bfs_breadth=breadth))


def test_ngram_drafts_what_followed_the_suffix():
    ids = [1, 2, 3, 4, 5, 6, 9, 9, 1, 2, 3]
    tree = _ngram().draft(ids, 4)
    assert tree.tokens == [4, 5, 6, 9] and tree.parents == [-1, 0, 1, 2]


def test_ngram_merges_several_matches_into_a_tree():
    ids = [7, 1, 2, 8, 7, 1, 3, 8, 7, 1]  # "7 1" was followed by "2 8" and by "3 8"
    tree = _ngram().draft(ids, 7)
    branches = {tuple(p) for p in tree.paths() if len(p) == 2}
    assert {(3, 8), (2, 8)} <= branches
    assert all(p < j for j, p in enumerate(tree.parents))  # parents first
    assert _ngram().draft(ids, 2).tokens in ([3, 2], [2, 3])  # the limit keeps the shallow nodes
    assert len(_ngram().draft([5, 6, 7], 7)) == 0  # nothing repeats


def test_ngram_lookup_matches_brute_force():
    """Continuations equal a plain-Python search: every earlier place the last token occurred,
    its backward match length capped at the window, longest then most recent first."""
    import random

    import numpy as np
    drafter = _ngram(max_nodes=5, breadth=3)
    rng = random.Random(0)
    for _ in range(500):
        seq = [rng.randrange(4) for _ in range(rng.randrange(2, 50))]
        n, found = len(seq), []
        for j in range(n - 1):
            length = 0
            while (length < drafter.max_window and j - length >= 0
                   and seq[j - length] == seq[n - 1 - length]):
                length += 1
            if length >= drafter.min_window:
                found.append((length, j))
        found.sort(key=lambda x: (-x[0], -x[1]))
        expected = [seq[j + 1:j + 6] for _, j in found[:3]]
        got = [c.tolist() for c in drafter._continuations(np.asarray(seq), 5)]
        assert got == expected, seq


# -- losslessness on the bundled model --------------------------------------------------------

PROMPTS = [
    "Repeat exactly: the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the lazy dog.",
    "List the numbers from 1 to 20 separated by commas:",
    "Tell me about Paris.",
    "What is 2+2? Explain.",
    "Copy this list: apple, banana, cherry, apple, banana, cherry, apple,",
    "Write a short poem about the sea.",
    "Repeat exactly: the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the lazy dog.",
]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def _params() -> list[dict]:
    # ignore_eos: every request runs its 24 tokens, so the pool runs short and some are retracted
    params = [{"temperature": 0, "max_new_tokens": 24, "ignore_eos": True} for _ in PROMPTS]
    params[2] = {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 24, "seed": 3, "ignore_eos": True}
    params[3] = {"temperature": 1.0, "top_k": 20, "frequency_penalty": 0.5, "max_new_tokens": 24,
                 "seed": 4, "ignore_eos": True}
    params[5] = {"temperature": 0, "max_new_tokens": 24, "min_new_tokens": 20}
    params[6] = {"temperature": 0, "max_new_tokens": 24, "stop": ["classic"]}  # stops mid-draft
    return params


def _run(engine: Engine) -> list[dict]:
    plain = engine.generate(PROMPTS, _params())
    logprob = engine.generate(PROMPTS[0], {"temperature": 0, "max_new_tokens": 12}, return_logprob=True,
                              top_logprobs_num=2)
    grammar = engine.generate("Give me a JSON object with a name:", {
        "temperature": 0, "max_new_tokens": 30, "json_schema": json.dumps(SCHEMA)})
    return plain + [logprob, grammar]


ENGINE_KW = dict(max_total_tokens=150, chunked_prefill_size=32, schedule_conservativeness=0.05,
                 random_seed=0)  # admits eagerly into a small pool: requests get retracted


@pytest.fixture(scope="module")
def reference() -> list[dict]:
    with Engine(**ENGINE_KW) as engine:
        return _run(engine)


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, str]:
    return random_heads(tmp_path_factory)


def random_heads(tmp_path_factory) -> dict[str, str]:
    """Random EAGLE and EAGLE-3 heads for the bundled model: {algorithm: path}."""
    config = load_model(bundled_model_path()).hf_config
    out = {}
    for kind in ("EAGLE", "EAGLE3"):
        path = str(tmp_path_factory.mktemp(kind.lower()))
        write_random_eagle_head(config, path, kind, seed=1,
                                draft_vocab_size=8000 if kind == "EAGLE3" else None)
        out[kind] = path
    return out


CASES = {
    "ngram": dict(speculative_algorithm="NGRAM"),
    "standalone-chain": dict(speculative_algorithm="STANDALONE", speculative_num_steps=3),
    "standalone-tree": dict(speculative_algorithm="STANDALONE", speculative_num_steps=3,
                            speculative_eagle_topk=2, speculative_num_draft_tokens=6),
    "eagle": dict(speculative_algorithm="EAGLE", speculative_num_steps=2, speculative_eagle_topk=2,
                  speculative_num_draft_tokens=4),
    "eagle3": dict(speculative_algorithm="EAGLE3", speculative_num_steps=3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_speculation_is_lossless(case, reference, heads, caplog):
    kwargs = dict(CASES[case])
    algo = kwargs["speculative_algorithm"]
    if algo == "STANDALONE":
        kwargs["speculative_draft_model_path"] = bundled_model_path()
    elif algo in heads:
        kwargs["speculative_draft_model_path"] = heads[algo]
    with caplog.at_level(logging.INFO, logger="sgl.scheduler"):
        with Engine(**ENGINE_KW, decode_log_interval=4, **kwargs) as engine:
            got = _run(engine)
            engine.call_in_scheduler(lambda s: s.check_pool_invariant())
            stats = engine.call_in_scheduler(lambda s: (s.spec.num_verify, s.spec.num_emitted, s.stats.num_retracted))
    for i, (want, have) in enumerate(zip(reference, got)):
        assert have["text"] == want["text"], (case, i)
        assert have["meta_info"]["completion_tokens"] == want["meta_info"]["completion_tokens"]
    assert reference[6]["meta_info"]["finish_reason"] == {"type": "stop", "matched": "classic"}
    # Speculation happened (the logprob request too; the grammar request when it drafts itself).
    assert stats[0] > 0 and got[0]["meta_info"]["spec_verify_ct"] > 0
    assert got[-2]["meta_info"]["spec_verify_ct"] > 0
    if algo == "STANDALONE":
        assert got[-1]["meta_info"]["spec_verify_ct"] > 0
    # Same tokens and top-2 ids; logprobs equal up to float32 batch-shape noise (verify rows run
    # as extend batches here, as decode batches there).
    lps, ref_lps = got[-2]["meta_info"], reference[-2]["meta_info"]
    assert len(lps["output_token_logprobs"]) == len(ref_lps["output_token_logprobs"]) == 12
    for (lp, tok, _), (ref_lp, ref_tok, _) in zip(lps["output_token_logprobs"], ref_lps["output_token_logprobs"]):
        assert tok == ref_tok and lp == pytest.approx(ref_lp, abs=1e-4)
    for top, ref_top in zip(lps["output_top_logprobs"], ref_lps["output_top_logprobs"]):
        assert [t for _, t, _ in top] == [t for _, t, _ in ref_top]
        assert [v for v, _, _ in top] == pytest.approx([v for v, _, _ in ref_top], abs=1e-4)
    assert stats[2] > 0, "the small pool was meant to force a retraction"
    assert any("accept len: " in r.getMessage() and "accept rate: " in r.getMessage() for r in caplog.records)
    if algo == "NGRAM":  # the copy prompt copies
        meta = got[0]["meta_info"]
        assert meta["completion_tokens"] / meta["spec_verify_ct"] > 1.5, meta


def test_self_draft_is_always_accepted():
    """STANDALONE with the target as its own draft: every drafted token is the target's choice,
    so each verification emits num_steps + 1 tokens (the first output token comes from prefill)."""
    with Engine(max_total_tokens=2000, speculative_algorithm="STANDALONE",
                speculative_draft_model_path=bundled_model_path(), speculative_num_steps=3) as engine:
        outs = engine.generate(PROMPTS[:3], {"temperature": 0, "max_new_tokens": 25, "ignore_eos": True})
    for out in outs:
        meta = out["meta_info"]
        assert meta["completion_tokens"] == 25
        assert meta["spec_verify_ct"] == 6  # 1 + 6 * 4 = 25
        assert meta["spec_accepted_tokens"] == 6 * 3


# -- the EAGLE drafter against a dense run of its head -------------------------------------------


@pytest.mark.parametrize("kind", ["EAGLE", "EAGLE3"])
def test_eagle_draft_matches_dense_head(kind, tmp_path):
    """After a prefill and a few verify steps (hidden states arrive in pieces, some rows
    rejected), the drafter's chain equals greedy decoding of the head run densely over the whole
    sequence with the target's hidden states recomputed from scratch."""
    target_dir, head_dir = tmp_path / "target", tmp_path / "head"
    torch.manual_seed(3)
    transformers.LlamaForCausalLM(_tiny_config()).save_pretrained(target_dir)
    write_random_eagle_head(_tiny_config(), str(head_dir), kind, seed=2,
                            draft_vocab_size=100 if kind == "EAGLE3" else None)
    args = ServerArgs(model_path=str(target_dir), speculative_algorithm=kind,
                      speculative_draft_model_path=str(head_dir), speculative_num_steps=3,
                      max_total_tokens=256, context_length=128)
    runner = ModelRunner(args)
    sched = Scheduler(args, runner, tokenizer=None, eos_token_ids=[])
    prompt = [5, 17, 3, 99, 42, 8, 8, 61, 23, 7, 77, 1]
    sched.add_request(TokenizedGenerateReq("r", prompt, SamplingParams(max_new_tokens=60, temperature=0)))
    req = sched.waiting[0]
    while len(req.output_ids) < 8:
        sched.step()
    drafter = runner.drafter
    sched.spec.propose(sched.running)
    tree = req.draft
    assert tree is not None and tree.parents == [-1, 0, 1]

    seq = req.all_ids  # the target holds K/V of seq[:-1]
    loaded = runner.loaded
    pools = Pools(loaded.num_kv_heads, loaded.head_dim, loaded.num_layers, num_slots=128)
    with torch.no_grad():
        batch = pools.batch({0: seq[:-1]})
        hidden = runner.model(batch.input_ids, batch.positions, batch)
        target_hidden = hidden if kind == "EAGLE" else batch.aux_hidden_states
        head = drafter.model
        dpools = Pools(drafter.num_kv_heads, drafter.head_dim, 1, num_slots=128)
        tokens, h_in, want = seq[1:], target_hidden, []
        for _ in range(3):
            b = dpools.batch({0: tokens})
            nxt, for_logits = head(b.input_ids, b.positions, b, h_in)
            best = int(head.compute_logits(for_logits[-1:]).argmax(-1))
            if head.draft_to_target is not None:
                best = int(head.draft_to_target[best])
            want.append(best)
            tokens, h_in = [best], nxt[-1:]
    assert tree.tokens == want


# -- the Triton path (GPU, or the Triton interpreter on CPU) ------------------------------------

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET), reason="needs a GPU or TRITON_INTERPRET=1")
def test_triton_backend_verifies_trees_like_torch(tmp_path):
    """Verify batches (tree masks in the Triton extend kernel) and draft tree steps on the Triton
    backend give the torch backend's greedy tokens, float32, on a tiny random Llama."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=211, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                      max_position_embeddings=512, initializer_range=0.3)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp_path)
    prompts = [[5, 17, 99, 3, 42, 8, 5, 17, 99, 3], list(range(10, 40)), [7, 7, 7, 7]]
    params = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def run(**kw):
        with Engine(str(tmp_path), skip_tokenizer_init=True, max_total_tokens=512, device=device,
                    dtype="float32", disable_cuda_graph=True, **kw) as engine:
            outs = engine.generate(input_ids=prompts, sampling_params=params)
            verified = engine.scheduler.spec.num_verify if engine.scheduler.spec else 0
        return [o["output_ids"] for o in outs], verified

    expected, _ = run(attention_backend="torch_native")
    for kw in (dict(speculative_algorithm="NGRAM"),
               dict(speculative_algorithm="STANDALONE", speculative_draft_model_path=str(tmp_path),
                    speculative_eagle_topk=2, speculative_num_draft_tokens=5)):
        got, verified = run(attention_backend="triton", **kw)
        assert got == expected, kw
        assert verified > 0


# -- the verify graphs' padded layout -----------------------------------------------------------


def _tiny_llama(path, num_layers: int = 2) -> str:
    """A tiny random Llama with sharp logits (init 0.3): greedy choices sit far from ties, so
    batch-shape float32 noise does not flip them."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=211, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=num_layers, num_attention_heads=8,
                                      num_key_value_heads=2, max_position_embeddings=512,
                                      initializer_range=0.3)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    return str(path)


# Copy-prone prompts (NGRAM drafts) beside ones with nothing to look up, and different lengths:
# verify batches mix drafted requests with one-row ones, and requests of unequal tree sizes.
MIXED_PROMPTS = [[5, 17, 99, 3, 42, 8, 5, 17, 99, 3], list(range(10, 40)), [7, 7, 7, 7],
                 [1, 2, 3, 1, 2, 3, 1, 2], list(range(100, 113))]
MIXED_PARAMS = [{"max_new_tokens": n, "temperature": 0, "ignore_eos": True} for n in (24, 20, 17, 9, 30)]


def _spy_replays(runner) -> list:
    """Record the extend lengths of every batch the verify graph runner serves."""
    seen, replay = [], runner.verify_graph_runner.replay

    def spy(batch, plan, keep_hidden=False):
        seen.append(list(batch.extend_lens_cpu))
        return replay(batch, plan, keep_hidden)
    runner.verify_graph_runner.replay = spy
    return seen


@pytest.mark.parametrize("backend", ["torch_native", pytest.param("triton", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not INTERPRET, reason="TRITON_INTERPRET=1 (GPU: test_gpu_engine)")])])
def test_verify_static_padded_batch_gives_eager_tokens(backend, tmp_path):
    """The verify graph runner's static padded batch (request i at rows i * N.., padding rows
    and padding requests, the compact tree mask copied in), run eagerly on the CPU, gives the
    greedy tokens of decoding without speculation, for drafted and undrafted requests mixed."""
    from sgl.runtime.executor.verify_graph_runner import VerifyGraphRunner
    path = _tiny_llama(tmp_path)
    kw = {"skip_tokenizer_init": True, "max_total_tokens": 512, "device": "cpu",
          "dtype": "float32", "attention_backend": backend}
    with Engine(path, **kw) as engine:
        expected = [o["output_ids"] for o in engine.generate(input_ids=MIXED_PROMPTS, sampling_params=MIXED_PARAMS)]
    with Engine(path, speculative_algorithm="NGRAM", speculative_num_draft_tokens=6, **kw) as engine:
        runner = engine.runner
        assert runner.verify_graph_runner is None  # no graphs on the CPU
        runner.verify_graph_runner = VerifyGraphRunner(runner, [1, 2, 4, 8], 6, use_graphs=False)
        seen = _spy_replays(runner)
        got = [o["output_ids"] for o in engine.generate(input_ids=MIXED_PROMPTS, sampling_params=MIXED_PARAMS)]
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
        replays = runner.verify_graph_runner.num_replays
    assert got == expected
    assert replays == len(seen) > 0
    assert any(1 in lens and max(lens) > 1 for lens in seen), seen  # drafted beside undrafted
    assert any(len(lens) in (3, 5, 6, 7) for lens in seen), seen  # padded up to a captured size


def _verify_both_ways(runner, graph_runner) -> tuple:
    """Prefill three requests, then run one verify batch (a branching tree, an undrafted
    request, a chain) eagerly and through `graph_runner`, keeping hidden states. Returns
    ((eager logits, hidden), (graph logits, hidden)), every row."""
    from sgl.runtime.executor.forward_batch import ForwardBatch
    from sgl.runtime.scheduler.batch import _attach_tree_masks
    pool, table = runner.req_to_token_pool, ReqTable(runner.req_to_token_pool.max_reqs, 64)
    prompts = [[5, 17, 99, 3, 42, 8, 5, 17, 99], list(range(10, 24)), [7, 7, 7, 7, 1, 2]]
    trees = [_tree((3, -1), (4, -1), (42, 0), (8, 2)), None, _tree((9, -1), (10, 0))]
    rows = [table.alloc() for _ in prompts]
    prefix = [len(p) - 1 for p in prompts]  # the root (last token) runs in the verify batch
    extend = [1 + (len(t) if t else 0) for t in trees]
    slots = (torch.arange(sum(prefix) + sum(extend)) + 1).split(prefix + extend)
    for row, s in zip(rows, slots[:3]):
        table.write(row, 0, s)
    for row, p, s in zip(rows, prefix, slots[3:]):
        table.write(row, p, s)
    pool.apply(table.flush())
    ids = [t for p in prompts for t in p[:-1]]
    runner.forward_logits(ForwardBatch.build(ids, [i for p in prefix for i in range(p)],
                                             torch.cat(slots[:3]).tolist(), rows, [0] * 3, prefix, [0]))

    def verify_batch() -> ForwardBatch:
        ids, pos = [], []
        for p, tree, start in zip(prompts, trees, prefix):
            ids += [p[-1]] + (tree.tokens if tree else [])
            pos += [start] + ([start + d for d in tree.depths()] if tree else [])
        batch = ForwardBatch.build(ids, pos, torch.cat(slots[3:]).tolist(), rows, prefix, extend,
                                   list(range(len(ids))))
        _attach_tree_masks(batch, [t.tree_mask() if t else None for t in trees], prefix, extend)
        return batch

    results = []
    for use in (None, graph_runner):
        runner.verify_graph_runner = use
        logits = runner.forward_logits(verify_batch(), keep_hidden=True)
        results.append((logits.cpu(), runner.captured_hidden.cpu()))
    return tuple(results)


def test_verify_static_batch_matches_eager_rows(tmp_path):
    """Row by row, the static padded verify batch (3 requests padded to 4, each to N = 5 rows)
    gives the eager forward's logits and hidden states."""
    from sgl.runtime.executor.verify_graph_runner import VerifyGraphRunner
    args = ServerArgs(model_path=_tiny_llama(tmp_path), device="cpu", dtype="float32", max_total_tokens=256,
                      speculative_algorithm="NGRAM", speculative_num_draft_tokens=5)
    runner = ModelRunner(args)
    graph_runner = VerifyGraphRunner(runner, [1, 4], 5, use_graphs=False)
    (eager, eager_hidden), (got, got_hidden) = _verify_both_ways(runner, graph_runner)
    assert graph_runner.num_replays == 1 and got.shape == eager.shape == (9, 211)
    torch.testing.assert_close(got, eager, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_hidden, eager_hidden, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_verify_cuda_graph_matches_eager_rows(tmp_path):
    """On the GPU: the runner captures verify graphs when speculation is on, and a replay (3
    requests padded to 4) gives the eager forward's logits and hidden states row by row."""
    args = ServerArgs(model_path=_tiny_llama(tmp_path), device="cuda", dtype="float32",
                      max_total_tokens=256, speculative_algorithm="NGRAM", speculative_num_draft_tokens=5,
                      cuda_graph_max_bs=8)
    runner = ModelRunner(args)
    graph_runner = runner.verify_graph_runner
    assert graph_runner is not None and graph_runner.batch_sizes == [1, 2, 4, 8] and graph_runner.graphs
    (eager, eager_hidden), (got, got_hidden) = _verify_both_ways(runner, graph_runner)
    assert graph_runner.num_replays == 1 and got.shape == eager.shape == (9, 211)
    # float32, but cuBLAS picks other kernels for 20 rows than for 9: compare up to that noise
    for a, b in ((got, eager), (got_hidden, eager_hidden)):
        assert ((a - b).norm() / b.norm()).item() < 1e-4, ((a - b).norm() / b.norm()).item()
    assert torch.equal(got.argmax(-1), eager.argmax(-1))


def test_verify_batch_uses_the_compact_mask_unless_a_chunk_rides_along():
    """build_step: verify batches carry the (bs, N, N) tree mask; a prompt chunk longer than the
    largest tree switches the batch to the full (extend x seq) layout, with the same trees."""
    from sgl.runtime.executor.forward_batch import ForwardBatch
    from sgl.runtime.scheduler.batch import _attach_tree_masks
    tree = _tree((10, -1), (11, -1), (12, 0))
    masks, prefix = [tree.tree_mask(), None], [5, 2]
    batch = ForwardBatch.build([0] * 6, list(range(6)), [1] * 6, [0, 1], prefix, [4, 2], [0])
    _attach_tree_masks(batch, masks, prefix, [4, 2])
    assert batch.custom_mask is None and batch.tree_mask.shape == (2, 4, 4)
    assert torch.equal(batch.tree_mask[0], tree.tree_mask())
    assert torch.equal(batch.tree_mask[1, :2, :2], torch.tensor([[1, 0], [1, 1]], dtype=torch.bool))
    long = ForwardBatch.build([0] * 13, list(range(13)), [1] * 13, [0, 1], prefix, [4, 9], [0])
    _attach_tree_masks(long, masks, prefix, [4, 9])
    assert long.tree_mask is None and long.mask_indptr.tolist() == [0, 4 * 9, 4 * 9 + 9 * 11]
    block = long.custom_mask[:36].view(4, 9)
    assert block[:, :5].all() and torch.equal(block[:, 5:], tree.tree_mask())


# -- constrained requests speculate -------------------------------------------------------------

LONG_KEYS = {"type": "object", "properties": {
    "customer_identification_number": {"type": "integer"},
    "requested_delivery_window": {"enum": ["morning", "afternoon", "evening"]},
    "name": {"type": "string", "maxLength": 12}},
    "required": ["customer_identification_number", "requested_delivery_window", "name"]}


def _constrained(engine: Engine) -> list[dict]:
    prompts = ["Order 1 as JSON:", "Order 2 as JSON:", "Answer yes or no, then a word:",
               "Give the date of the moon landing:"]
    params = [{"temperature": 0, "max_new_tokens": 32, "json_schema": json.dumps(LONG_KEYS)},
              {"temperature": 0.9, "seed": 5, "max_new_tokens": 32, "json_schema": json.dumps(LONG_KEYS)},
              {"temperature": 0, "max_new_tokens": 20, "regex": "(yes|no), [a-z]{2,8}\\."},
              {"temperature": 0, "max_new_tokens": 20, "regex": "19[0-9]{2}-[01][0-9]-[0-3][0-9]"}]
    return engine.generate(prompts, params)


@pytest.mark.parametrize("backend,jump_forward", [("xgrammar", False), ("outlines", True)],
                         ids=["xgrammar-no-jump", "outlines-jump"])
def test_constrained_requests_speculate_losslessly(backend, jump_forward):
    """Draft trees are cut to what the grammar allows, each verify row samples under its own
    path's grammar state, and acceptance stops where jump-forward takes over: the texts are the
    ones decoding alone gives, and the drafts were used."""
    kw = dict(grammar_backend=backend, disable_jump_forward=not jump_forward, random_seed=0)
    with Engine(**kw) as engine:
        expected = _constrained(engine)
    with Engine(**kw, speculative_algorithm="STANDALONE", speculative_draft_model_path=bundled_model_path(),
                speculative_num_steps=3, speculative_eagle_topk=2, speculative_num_draft_tokens=6) as engine:
        got = _constrained(engine)
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
    assert [o["text"] for o in got] == [o["text"] for o in expected]
    assert [o["meta_info"]["finish_reason"] for o in got] == [o["meta_info"]["finish_reason"] for o in expected]
    if got[0]["meta_info"]["finish_reason"]["type"] == "stop":  # (32 tokens may not finish it)
        json.loads(got[0]["text"])
    verified = [o["meta_info"].get("spec_verify_ct", 0) for o in got]
    accepted = [o["meta_info"].get("spec_accepted_tokens", 0) for o in got]
    assert all(v > 0 for v in verified) and sum(accepted) > 0, (verified, accepted)
    if jump_forward:
        assert got[0]["meta_info"].get("jump_forward_tokens", 0) > 0


def test_grammar_subtree_keeps_the_paths_the_grammar_allows():
    from sgl.runtime.grammar import create_grammar_backend
    from sgl.runtime.speculative.decoder import grammar_subtree
    from sgl.runtime.loader.tokenizer import get_tokenizer
    tok = get_tokenizer(bundled_model_path())
    backend = create_grammar_backend("xgrammar", tok, len(tok), stop_token_ids=[tok.eos_token_id])
    grammar = backend.compile("regex", "(yes|no)!")
    yes, no, bang, x = (tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "no", "!", "x"))
    tree = DraftTree()
    a = tree.add(yes, -1)     # allowed
    tree.add(bang, a)         # allowed after "yes"
    tree.add(x, a)            # refused after "yes"
    b = tree.add(x, -1)       # refused at the root...
    tree.add(bang, b)         # ... so its child goes too
    c = tree.add(no, -1)      # allowed
    tree.add(bang, c)
    kept = grammar_subtree(tree, grammar)
    assert kept.tokens == [yes, bang, no, bang] and kept.parents == [-1, 0, -1, 2]
    assert grammar.num_accepted == 0 and grammar.accept_token(no)  # the state was left as it was



def test_auto_kv_pool_leaves_room_for_the_draft_pool(tmp_path):
    """A draft model keeps a KV pool of as many tokens as the target's, so the auto-sized pool
    is sized for both whenever a draft model is named (also with speculation off, as
    bench_speculative starts): a STANDALONE copy of the target halves it, an EAGLE-3 head (one
    layer) takes 1/num_layers more per token. (A small random model whose KV per token puts the
    CPU pool below its 65,536-token cap.)"""
    from sgl.runtime.executor import pool_sizing
    config = _tiny_config(hidden_size=512, num_attention_heads=8, num_key_value_heads=8,
                          num_hidden_layers=8, intermediate_size=64)
    config.save_pretrained(tmp_path / "target")
    write_random_eagle_head(config, str(tmp_path / "head"), "EAGLE3", seed=1, draft_vocab_size=32)
    pools = {}
    for name, draft in (("plain", None), ("standalone", tmp_path / "target"), ("eagle3", tmp_path / "head")):
        runner = ModelRunner(ServerArgs(model_path=str(tmp_path / "target"), load_format="dummy",
                                        dtype="float32", skip_tokenizer_init=True,
                                        speculative_draft_model_path=draft and str(draft)))
        pools[name] = (runner.max_total_tokens, runner.kv_pool.bytes_per_token())
        runner.shutdown()
    tokens, per_token = pools["plain"]

    def fit(nbytes: int) -> int:
        return int(min(65536, max(4096, pool_sizing._CPU_KV_BYTES // nbytes)))
    assert tokens == fit(per_token) < 65536
    assert pools["standalone"][0] == fit(2 * per_token) < tokens
    assert pools["eagle3"][0] == fit(per_token + per_token // 8) < tokens
