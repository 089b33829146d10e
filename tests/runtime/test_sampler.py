"""Sampler: truncation masks and penalties against naive Python oracles, logit processors end to
end, greedy ties, seeded reproducibility across batches, and the empirical distribution of draws."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
from sgl.kernels.sampling import (
    apply_penalties_ref,
    bits_to_uniform,
    fmix32,
    min_p_mask,
    top_k_mask,
    top_p_mask,
    uniform_noise,
)
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.sampling.sampler import Sampler, SamplingBatchInfo, process_logits

SHAPES = [(1, 5), (4, 17), (8, 300), (3, 1024)]
# chi2 quantile at 1 - 1e-6 by degrees of freedom: a correct sampler fails about once in a million.
CHI2_LIMIT = {1: 23.9, 2: 27.6, 3: 30.7, 4: 33.4, 5: 35.9, 6: 38.3, 7: 40.5, 8: 42.7, 9: 44.8}


def make_info(params: list[SamplingParams], vocab_size: int, seeds: list[int] | None = None,
              steps: list[int] | None = None, prompts: list[list[int]] | None = None,
              outputs: list[list[int]] | None = None,
              stops: list[set[int]] | None = None) -> SamplingBatchInfo:
    bs = len(params)
    return SamplingBatchInfo.from_requests(
        params, seeds or [1000 + i for i in range(bs)], steps or [0] * bs,
        prompts or [[] for _ in range(bs)], outputs or [[] for _ in range(bs)],
        stops or [set() for _ in range(bs)], vocab_size, "cpu")


def sample(logits: torch.Tensor, info: SamplingBatchInfo, **kw) -> list[int]:
    return Sampler().forward(logits, info, **kw).next_token_ids.tolist()


# ---- naive oracles: one row at a time, sorting in Python ----

def naive_top_k(row: list[float], k: int) -> list[bool]:
    if k >= len(row):
        return [True] * len(row)
    kth = sorted(row, reverse=True)[k - 1]
    return [v >= kth for v in row]


def naive_top_p(row: list[float], p: float) -> list[bool]:
    keep, mass = [False] * len(row), 0.0
    for j in sorted(range(len(row)), key=lambda j: (-row[j], j)):
        if mass >= p and p < 1:
            break
        keep[j], mass = True, mass + row[j]
    return keep


def naive_processed_probs(logits: list[float], temperature: float, top_k: int = -1,
                          top_p: float = 1.0, min_p: float = 0.0) -> list[float]:
    """The distribution the sampler should draw from, in float64."""
    scaled = [v / temperature for v in logits]
    keep = naive_top_k(scaled, top_k) if top_k > 0 else [True] * len(scaled)
    probs = _softmax([v if k else -math.inf for v, k in zip(scaled, keep)])
    probs = [q if k else 0.0 for q, k in zip(probs, naive_top_p(probs, top_p))]
    probs = [q if q >= min_p * max(probs) else 0.0 for q in probs]
    total = sum(probs)
    return [q / total for q in probs]


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    exps = [math.exp(v - m) if v != -math.inf else 0.0 for v in row]
    return [e / sum(exps) for e in exps]


# ---- masks vs oracles ----

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_ties", [False, True])
def test_top_k_mask_matches_naive(shape: tuple[int, int], with_ties: bool) -> None:
    g = torch.Generator().manual_seed(shape[1])
    bs, vocab = shape
    logits = torch.randn(shape, generator=g) * 3
    if with_ties:
        logits = logits.round()  # many equal values, including at the k-th place
    top_k = torch.randint(1, vocab + 3, (bs,), generator=g)
    top_k[0] = 1
    expected = [naive_top_k(row, k) for row, k in zip(logits.tolist(), top_k.tolist())]
    assert top_k_mask(logits, top_k).tolist() == expected
    below = [k for k in top_k.tolist() if k < vocab]
    assert top_k_mask(logits, top_k, max(below, default=1)).tolist() == expected


@pytest.mark.parametrize("shape", SHAPES)
def test_top_p_mask_matches_naive(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(7 + shape[1])
    bs = shape[0]
    for scale in (0.5, 3.0):
        probs = torch.softmax(torch.randn(shape, generator=g) * scale, dim=-1)
        top_p = torch.rand(bs, generator=g).clamp(min=0.01)
        top_p[-1] = 1.0
        expected = [naive_top_p(row, p) for row, p in zip(probs.tolist(), top_p.tolist())]
        got = top_p_mask(probs, top_p)
        assert got.tolist() == expected
        assert got[-1].all()  # top_p == 1 keeps the whole vocabulary


def test_top_p_mask_keeps_top_token_and_breaks_ties_by_id() -> None:
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.2, 0.1]])
    got = top_p_mask(probs, torch.tensor([0.5, 0.01]))
    assert got.tolist() == [[True, True, False, False], [False, True, False, False]]


@pytest.mark.parametrize("shape", SHAPES)
def test_min_p_mask_matches_naive(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(11 + shape[1])
    probs = torch.softmax(torch.randn(shape, generator=g) * 2, dim=-1)
    min_p = torch.rand(shape[0], generator=g)
    min_p[0] = 0.0
    min_p[-1] = 1.0  # keeps exactly the most probable token(s)
    expected = [[q >= m * max(row) for q in row] for row, m in zip(probs.tolist(), min_p.tolist())]
    got = min_p_mask(probs, min_p)
    assert got.tolist() == expected
    assert got[min_p == 0].all() and (got[min_p == 1].sum(-1) >= 1).all()


# ---- penalties ----

def naive_penalize(row: list[float], prompt: list[int], output: list[int],
                   p: SamplingParams) -> list[float]:
    row = list(row)
    for tok in set(prompt) | set(output):
        r = p.repetition_penalty
        row[tok] = row[tok] / r if row[tok] > 0 else row[tok] * r
    for tok, count in Counter(output).items():
        row[tok] -= p.frequency_penalty * count + p.presence_penalty
    return row


def random_requests(rng: random.Random, bs: int, vocab: int) -> tuple[list, list, list]:
    params, prompts, outputs = [], [], []
    for i in range(bs):
        params.append(SamplingParams(
            repetition_penalty=rng.choice([1.0, 1.3, 0.7]),
            frequency_penalty=rng.choice([0.0, 0.5, -0.4]),
            presence_penalty=rng.choice([0.0, 1.1, -0.6])))
        prompts.append([rng.randrange(vocab) for _ in range(rng.randrange(0, 12))])
        outputs.append([rng.randrange(vocab // 2) for _ in range(rng.randrange(0, 20))])
    return params, prompts, outputs


@pytest.mark.parametrize("bs,vocab", [(1, 7), (6, 40), (16, 200)])
def test_penalties_match_naive_loops(bs: int, vocab: int) -> None:
    rng = random.Random(bs * vocab)
    params, prompts, outputs = random_requests(rng, bs, vocab)
    params[0] = SamplingParams(repetition_penalty=1.5, frequency_penalty=0.3, presence_penalty=0.2)
    logits = torch.randn(bs, vocab, generator=torch.Generator().manual_seed(bs))
    info = make_info(params, vocab, prompts=prompts, outputs=outputs)
    expected = [naive_penalize(row, pr, out, p)
                for row, pr, out, p in zip(logits.tolist(), prompts, outputs, params)]
    torch.testing.assert_close(process_logits(logits, info), torch.tensor(expected))


def test_apply_penalties_ref_signs() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0, 0.5]])
    counts = torch.tensor([[3.0, 0.0, 0.0, 1.0, 0.0]])
    seen = torch.tensor([[True, True, False, False, False]])
    out = apply_penalties_ref(logits, counts, seen, torch.tensor([0.5]), torch.tensor([1.0]),
                              torch.tensor([2.0]))
    # token 0: 2/2 - 0.5*3 - 1; token 1: -2*2; token 3: -2 - 0.5 - 1
    assert out.tolist() == [[-1.5, -4.0, 2.0, -3.5, 0.5]]


def test_no_penalty_work_unless_asked() -> None:
    info = make_info([SamplingParams(), SamplingParams(temperature=0)], 10, outputs=[[1], [2]])
    assert not info.need_penalties and not info.need_logit_bias
    assert not info.need_min_tokens_mask and not info.need_top_k and not info.need_top_p
    info = make_info([SamplingParams(), SamplingParams(presence_penalty=0.5)], 10,
                     outputs=[[1], [2]])
    assert info.penalties.rows.tolist() == [1]
    assert info.penalties.prompt_output_mask is None  # repetition is neutral
    assert info.penalties.output_counts.shape == (1, 10)


# ---- logit bias, min_new_tokens, grammar mask ----

def test_logit_bias_added_to_logits() -> None:
    logits = torch.randn(3, 12, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(logit_bias={4: 2.5, 9: -1.0}), SamplingParams(),
              SamplingParams(logit_bias={0: 100.0}, temperature=0)]
    expected = logits.clone()
    expected[0, 4] += 2.5
    expected[0, 9] -= 1.0
    expected[2, 0] += 100.0
    info = make_info(params, 12)
    torch.testing.assert_close(process_logits(logits, info), expected)
    assert sample(logits, info)[2] == 0  # the bias decides the greedy choice
    many = make_info([SamplingParams(logit_bias={7: 100.0})] * 50, 12)
    assert set(sample(logits[:1].expand(50, 12), many)) == {7}


def test_min_new_tokens_masks_stop_ids_until_reached() -> None:
    vocab = 10
    logits = torch.zeros(3, vocab)
    logits[:, 2] = 10.0  # EOS is the model's clear favourite
    params = [SamplingParams(min_new_tokens=3, temperature=0)] * 3
    outputs = [[5], [5, 6], [5, 6, 7]]  # the last request has reached min_new_tokens
    # steps count generated tokens (those in flight too): the scheduler's own count
    info = make_info(params, vocab, steps=[len(o) for o in outputs], outputs=outputs,
                     stops=[{2, 8}] * 3)
    x = process_logits(logits, info)
    assert x[:2, 2].eq(-math.inf).all() and x[:2, 8].eq(-math.inf).all()
    assert torch.equal(x[2], logits[2])
    assert sample(logits, info) == [0, 0, 2]


def test_min_new_tokens_holds_for_sampled_rows() -> None:
    logits = torch.zeros(200, 4)
    logits[:, 3] = 5.0
    params = [SamplingParams(min_new_tokens=1, temperature=1.5)] * 200
    info = make_info(params, 4, seeds=list(range(200)), stops=[{3}] * 200)
    assert 3 not in sample(logits, info)


def test_vocab_mask_only_yields_allowed_tokens() -> None:
    g = torch.Generator().manual_seed(5)
    bs, vocab = 64, 50
    logits = torch.randn(bs, vocab, generator=g) * 4
    allowed = torch.rand(bs, vocab, generator=g) < 0.1
    allowed[torch.arange(bs), torch.randint(0, vocab, (bs,), generator=g)] = True
    choices = [SamplingParams(temperature=0), SamplingParams(temperature=1.0),
               SamplingParams(temperature=2.0, top_p=0.5), SamplingParams(top_k=3, min_p=0.1)]
    params = [choices[i % len(choices)] for i in range(bs)]
    for step in range(5):
        info = make_info(params, vocab, steps=[step] * bs)
        ids = torch.tensor(sample(logits, info, vocab_mask=allowed))
        assert allowed[torch.arange(bs), ids].all()


# ---- greedy ----

def test_greedy_is_argmax_with_ties_to_lowest_index() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0], [0.0, 1.0, 2.0, 2.0]])
    params = [SamplingParams(temperature=0), SamplingParams(top_k=1, temperature=1.7),
              SamplingParams(temperature=0, top_p=0.1)]
    assert sample(logits, make_info(params, 4)) == [1, 0, 2]
    g = torch.Generator().manual_seed(0)
    big = torch.randn(32, 500, generator=g)
    info = make_info([SamplingParams(temperature=0)] * 32, 500)
    assert sample(big, info) == big.argmax(-1).tolist()


def test_greedy_rows_in_mixed_batch() -> None:
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(4))
    params = [SamplingParams(temperature=0) if i % 2 else SamplingParams(temperature=5.0)
              for i in range(8)]
    got = sample(logits, make_info(params, 100))
    assert got[1::2] == logits[1::2].argmax(-1).tolist()
    assert got[0::2] != logits[0::2].argmax(-1).tolist()  # hot rows do sample


# ---- seeded reproducibility ----

def run_alone(logits: torch.Tensor, p: SamplingParams, seed: int, steps: range) -> list[int]:
    return [sample(logits[None], make_info([p], logits.shape[0], seeds=[seed], steps=[s]))[0]
            for s in steps]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.2),
])
def test_seed_reproducible_alone_and_in_any_batch(params: SamplingParams) -> None:
    vocab, bs = 300, 64
    g = torch.Generator().manual_seed(9)
    target = torch.randn(vocab, generator=g) * 2
    alone = run_alone(target, params, seed=42, steps=range(6))
    assert alone == run_alone(target, params, seed=42, steps=range(6))
    assert len(set(alone)) > 1  # the stream advances with the step counter
    others = [SamplingParams(temperature=0), SamplingParams(temperature=1.3, top_k=5),
              SamplingParams(top_p=0.5, frequency_penalty=1.0), SamplingParams(min_p=0.3)]
    for position in (0, 31, 63):
        logits = torch.randn(bs, vocab, generator=g) * 2
        logits[position] = target
        batch = [others[i % len(others)] for i in range(bs)]
        batch[position] = params
        seeds = [random.Random(i).getrandbits(63) for i in range(bs)]
        seeds[position] = 42
        for step in range(6):
            steps = [random.Random(step * bs + i).randrange(100) for i in range(bs)]
            steps[position] = step
            info = make_info(batch, vocab, seeds=seeds, steps=steps,
                             outputs=[[1, 2]] * bs, prompts=[[3]] * bs)
            assert sample(logits, info)[position] == alone[step]


def test_different_seeds_give_different_streams() -> None:
    logits = torch.zeros(1000)  # uniform: any correlation between seeds would show
    p = SamplingParams(temperature=1.0)
    streams = [tuple(run_alone(logits, p, seed, range(20))) for seed in (0, 1, 2**40, -1)]
    assert len(set(streams)) == len(streams)


def test_noise_hash_matches_python_integers() -> None:
    def fmix(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)
    rng = random.Random(0)
    xs = [0, 1, 0xFFFFFFFF, 0x80000000] + [rng.getrandbits(32) for _ in range(200)]
    assert fmix32(torch.tensor(xs)).tolist() == [fmix(x) for x in xs]
    u = bits_to_uniform(torch.tensor([0, 0xFFFFFFFF]))
    assert 0 < u[0] < 1e-6 and 1 - 1e-6 < u[1] < 1  # never 0 or 1: the logs stay finite
    noise = uniform_noise(torch.tensor([5, 5, 6]), torch.tensor([0, 1, 0]), 4096)
    assert (noise[0] != noise[1]).float().mean() > 0.99  # another step
    assert (noise[0] != noise[2]).float().mean() > 0.99  # another seed
    assert abs(noise.mean().item() - 0.5) < 0.01


# ---- the distribution of draws ----

@pytest.mark.parametrize("kw", [
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.3, "top_k": 3},
    {"temperature": 1.0, "min_p": 0.2},
    {"temperature": 0.9, "top_k": 6, "top_p": 0.8, "min_p": 0.05},
])
@pytest.mark.parametrize("vary", ["steps", "seeds"])
def test_empirical_distribution_matches_processed(kw: dict, vary: str) -> None:
    n, vocab = 20000, 8
    logits = torch.tensor([1.0, 0.3, 2.0, -1.0, 1.5, 0.0, -0.5, 1.2])
    params = [SamplingParams(**kw)] * n
    seeds = list(range(n)) if vary == "seeds" else [1234] * n
    steps = [7] * n if vary == "seeds" else list(range(n))
    info = make_info(params, vocab, seeds=seeds, steps=steps)
    counts = Counter(sample(logits.expand(n, vocab), info))
    expected = naive_processed_probs(logits.tolist(), **kw)
    support = [t for t in range(vocab) if expected[t] > 0]
    assert all(counts[t] == 0 for t in range(vocab) if expected[t] == 0), counts
    chi2 = sum((counts[t] - n * expected[t]) ** 2 / (n * expected[t]) for t in support)
    tv = 0.5 * sum(abs(counts[t] / n - expected[t]) for t in range(vocab))
    if len(support) > 1:
        assert chi2 < CHI2_LIMIT[len(support) - 1], (chi2, counts, expected)
    assert tv < 0.015, (tv, counts, expected)


# ---- logprobs ----

def test_logprobs_come_from_raw_distribution() -> None:
    g = torch.Generator().manual_seed(2)
    bs, vocab = 6, 64
    logits = torch.randn(bs, vocab, generator=g) * 3
    params = [SamplingParams(temperature=0.5, top_k=4, repetition_penalty=1.8,
                             logit_bias={3: 5.0}),
              SamplingParams(temperature=0), SamplingParams(top_p=0.3),
              SamplingParams(min_p=0.5, presence_penalty=2.0), SamplingParams(temperature=1.9),
              SamplingParams(temperature=0, frequency_penalty=-2.0)]
    info = make_info(params, vocab, outputs=[[3, 3, 1]] * bs, prompts=[[5]] * bs)
    out = Sampler().forward(logits, info, top_logprobs_num=5)
    raw = torch.log_softmax(logits, dim=-1)
    torch.testing.assert_close(out.logprobs, raw.gather(1, out.next_token_ids[:, None])[:, 0])
    top = raw.topk(5, dim=-1)
    torch.testing.assert_close(out.top_logprobs_vals, top.values)
    assert torch.equal(out.top_logprobs_ids, top.indices)
    assert out.next_token_ids.dtype == torch.int64 and out.logprobs.dtype == torch.float32
    empty = Sampler().forward(logits, info)
    assert empty.top_logprobs_vals.shape == (bs, 0) and empty.top_logprobs_ids.shape == (bs, 0)


def test_forward_leaves_input_logits_untouched() -> None:
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    before = logits.clone()
    params = [SamplingParams(temperature=0.5, top_p=0.5, repetition_penalty=1.5,
                             logit_bias={1: 3.0})] * 4
    Sampler().forward(logits, make_info(params, 30, outputs=[[1, 2]] * 4),
                      vocab_mask=torch.arange(30).expand(4, 30) % 3 != 0)
    assert torch.equal(logits, before)
