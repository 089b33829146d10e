"""EAGLE / EAGLE-3 draft heads: random heads written in the published layout, loaded beside a tiny
target, run through the real one-layer KV pool and torch attention backend over a ragged batch
with a cached prefix, against a dense plain-torch reference computed from the raw checkpoint
tensors. Also: the target's aux hidden-state capture against transformers, and loader errors."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.loader import load_model
from sgl.runtime.loader.draft import DraftInfo, load_draft_model, write_random_eagle_head
from sgl.runtime.models.llama import LlamaForCausalLM
from sgl.runtime.models.llama_eagle3 import eagle3_capture_layers
from transformers import AutoModelForCausalLM, LlamaConfig

from tests.runtime.pools import Pools

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, VOCAB, DRAFT_VOCAB = 64, 4, 2, 16, 128, 40
TINY = {"hidden_size": HIDDEN, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 5000.0}


def _tiny_config(**overrides) -> LlamaConfig:
    config = LlamaConfig(**{**TINY, **overrides})
    config.architectures = ["LlamaForCausalLM"]
    return config


@torch.no_grad()
def _randomize(named_tensors, generator: torch.Generator) -> None:
    """Weights big enough (norms far enough from 1) that a wiring mistake moves the outputs well
    past the tolerance."""
    for name, t in named_tensors:
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=generator)
        t.copy_(1.0 + 0.3 * noise if "norm" in name else 0.15 * noise)


def _target(seed: int = 0) -> LlamaForCausalLM:
    model = LlamaForCausalLM(_tiny_config())
    _randomize(model.named_parameters(), torch.Generator().manual_seed(seed))
    return model.eval()


def _weights_file(path) -> str:
    names = [n for n in os.listdir(path) if n.endswith((".bin", ".safetensors"))]
    assert len(names) == 1
    return os.path.join(path, names[0])


def _read(path) -> dict[str, torch.Tensor]:
    file = _weights_file(path)
    return load_file(file) if file.endswith(".safetensors") else torch.load(file, weights_only=True)


def _write(path, tensors: dict[str, torch.Tensor]) -> None:
    file = _weights_file(path)
    save_file(tensors, file) if file.endswith(".safetensors") else torch.save(tensors, file)


def _write_head(path, kind: str, perturb: bool = True, **kwargs) -> dict[str, torch.Tensor]:
    """A random head on disk; returns its tensors without any `model.` prefix."""
    write_random_eagle_head(_tiny_config(), str(path), kind, **kwargs)
    tensors = _read(path)
    if perturb:
        _randomize(sorted(tensors.items()), torch.Generator().manual_seed(5))
        _write(path, tensors)
    return {name.removeprefix("model."): t for name, t in tensors.items()}


class DraftRunner:
    def __init__(self, info: DraftInfo) -> None:
        assert info.num_layers == 1
        self.model, self.pools = info.model, Pools(info.num_kv_heads, info.head_dim, 1)

    def step(self, chunks: dict[int, tuple[list[int], torch.Tensor]]):
        """chunks: row -> (new tokens, their hidden_in). Returns per request (hidden_next,
        hidden_for_logits, logits) of the new tokens."""
        batch = self.pools.batch({row: tokens for row, (tokens, _) in chunks.items()})
        hidden_in = torch.cat([hidden for _, hidden in chunks.values()])
        with torch.no_grad():
            hidden_next, for_logits = self.model(batch.input_ids, batch.positions, batch, hidden_in)
            logits = self.model.compute_logits(for_logits)
        lens = batch.extend_lens_cpu
        return list(zip(hidden_next.split(lens), for_logits.split(lens), logits.split(lens)))


# -- the dense reference ---------------------------------------------------------------------------
def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, theta: float = 5000.0) -> torch.Tensor:
    # x: (L, heads, D), positions 0..L-1, rotate_half layout
    inv_freq = 1.0 / theta ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    angles = torch.arange(x.shape[0]).float()[:, None] * inv_freq  # (L, D / 2)
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _ref_attention(x: torch.Tensor, w: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    seq_len = x.shape[0]
    q = _rope((x @ w[p + "self_attn.q_proj.weight"].T).view(seq_len, HEADS, HEAD_DIM))
    k = _rope((x @ w[p + "self_attn.k_proj.weight"].T).view(seq_len, KV_HEADS, HEAD_DIM))
    v = (x @ w[p + "self_attn.v_proj.weight"].T).view(seq_len, KV_HEADS, HEAD_DIM)
    k, v = (t.repeat_interleave(HEADS // KV_HEADS, dim=1) for t in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q, k) / HEAD_DIM ** 0.5
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    out = torch.einsum("hqk,khd->qhd", probs, v).reshape(seq_len, HEADS * HEAD_DIM)
    return out @ w[p + "self_attn.o_proj.weight"].T


def _ref_mlp(x: torch.Tensor, w: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
    return (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T


def _ref_eagle(w, embed, lm_head, tokens, hidden_in):
    """EAGLE-1 over a whole sequence: (hidden_next, hidden_for_logits, logits)."""
    x = torch.cat([embed[tokens], hidden_in], -1) @ w["fc.weight"].T + w["fc.bias"]
    x = _ref_attention(x, w, "layers.0.") + x  # no input norm
    out = _ref_mlp(_rms(x, w["layers.0.post_attention_layernorm.weight"]), w, "layers.0.") + x
    return out, out, out @ lm_head.T


def _ref_eagle3(w, embed, tokens, hidden_h):
    """EAGLE-3 over a whole sequence whose hidden inputs are already H wide."""
    p = "midlayer."
    attn_in = torch.cat([_rms(embed[tokens], w[p + "input_layernorm.weight"]),
                         _rms(hidden_h, w[p + "hidden_norm.weight"])], -1)
    x = _ref_attention(attn_in, w, p) + hidden_h
    pre_norm = _ref_mlp(_rms(x, w[p + "post_attention_layernorm.weight"]), w, p) + x
    for_logits = _rms(pre_norm, w["norm.weight"])
    return pre_norm, for_logits, for_logits @ w["lm_head.weight"].T


# -- (a) heads against the reference ---------------------------------------------------------------
HEAD_CASES = [("EAGLE", False, "", "bin"), ("EAGLE", True, "model.", "safetensors"),
              ("EAGLE3", False, "", "safetensors"), ("EAGLE3", True, "model.", "bin")]


@pytest.mark.parametrize("kind,with_embed,prefix,fmt", HEAD_CASES)
def test_head_matches_dense_reference(kind, with_embed, prefix, fmt, tmp_path):
    is_eagle3 = kind == "EAGLE3"
    w = _write_head(tmp_path, kind, with_embed=with_embed, name_prefix=prefix, weights_format=fmt,
                    draft_vocab_size=DRAFT_VOCAB if is_eagle3 else None)
    target = _target()
    info = load_draft_model(str(tmp_path), target, torch.float32, "cpu")
    model = info.model
    assert (info.num_layers, info.num_kv_heads, info.head_dim) == (1, KV_HEADS, HEAD_DIM)
    assert model.is_eagle3 == is_eagle3 and model.hidden_size == HIDDEN
    assert info.vocab_size == (DRAFT_VOCAB if is_eagle3 else VOCAB)
    assert (model.embed_tokens is target.model.embed_tokens) == (not with_embed)
    assert (model.lm_head is target.lm_head) == (not is_eagle3)
    embed = w["embed_tokens.weight"] if with_embed else target.model.embed_tokens.weight

    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(VOCAB, (10,), generator=g), torch.randint(VOCAB, (8,), generator=g)]
    # What the worker feeds: EAGLE-3 gets the target's 3H features while extending and its own
    # H-wide output on draft steps (here: the last token of each sequence).
    width = 3 * HIDDEN if is_eagle3 else HIDDEN
    feats = [torch.randn(len(s), width, generator=g) for s in seqs]
    own = [torch.randn(1, HIDDEN, generator=g) for _ in seqs]
    last = own if is_eagle3 else [f[-1:] for f in feats]  # the decode step's hidden_in
    if is_eagle3:
        refs = [_ref_eagle3(w, embed, s, torch.cat([f[:-1] @ w["fc.weight"].T, o]))
                for s, f, o in zip(seqs, feats, own)]
    else:
        refs = [_ref_eagle(w, embed, target.lm_head.weight, s, f) for s, f in zip(seqs, feats)]

    runner = DraftRunner(info)
    (a1,) = runner.step({2: (seqs[0][:5].tolist(), feats[0][:5])})
    a2, b2 = runner.step({2: (seqs[0][5:9].tolist(), feats[0][5:9]),
                          0: (seqs[1][:7].tolist(), feats[1][:7])})
    a3, b3 = runner.step({2: (seqs[0][9:].tolist(), last[0]), 0: (seqs[1][7:].tolist(), last[1])})
    for got, ref, rows in [(a1, refs[0], slice(0, 5)), (a2, refs[0], slice(5, 9)),
                           (b2, refs[1], slice(0, 7)), (a3, refs[0], slice(9, 10)),
                           (b3, refs[1], slice(7, 8))]:
        for got_t, ref_t in zip(got, ref):
            assert ref_t[rows].abs().max() > 0.5  # never compare near-zero tensors
            torch.testing.assert_close(got_t, ref_t[rows], atol=1e-4, rtol=1e-4)
    assert a3[2].dtype == torch.float32 and a3[2].shape == (1, info.vocab_size)


def test_name_variants_load_the_same_weights(tmp_path):
    """`model.`-prefixed names, and `layers.0.` for EAGLE-3's midlayer (vLLM speculators
    conversions), load into the same parameters as the plain published names."""
    target = _target()
    tensors = _write_head(tmp_path / "plain", "EAGLE3", draft_vocab_size=DRAFT_VOCAB)
    variants = {"prefixed": {"model." + n: t for n, t in tensors.items()},
                "layers0": {n.replace("midlayer.", "layers.0."): t for n, t in tensors.items()}}
    for name, renamed in variants.items():
        write_random_eagle_head(_tiny_config(), str(tmp_path / name), "EAGLE3",
                                draft_vocab_size=DRAFT_VOCAB)
        _write(tmp_path / name, renamed)
    plain = load_draft_model(str(tmp_path / "plain"), target).model.state_dict()
    for name in variants:
        other = load_draft_model(str(tmp_path / name), target).model.state_dict()
        assert other.keys() == plain.keys()
        assert all(torch.equal(other[k], plain[k]) for k in plain), name


def test_published_random_head_gives_usable_logits(tmp_path):
    """The unperturbed random heads (std 0.02, norms 1) give finite, non-flat logits."""
    target = _target()
    for kind in ("EAGLE", "EAGLE3"):
        _write_head(tmp_path / kind, kind, perturb=False)
        info = load_draft_model(str(tmp_path / kind), target)
        width = 3 * HIDDEN if kind == "EAGLE3" else HIDDEN
        hidden_in = torch.randn(6, width, generator=torch.Generator().manual_seed(0))
        ((_, _, logits),) = DraftRunner(info).step({0: ([3, 1, 4, 1, 5, 9], hidden_in)})
        assert torch.isfinite(logits).all() and logits.std(-1).min() > 1e-2


# -- (b) the vocabulary map ------------------------------------------------------------------------
def test_eagle3_draft_to_target(tmp_path):
    target = _target()
    w = _write_head(tmp_path / "subset", "EAGLE3", draft_vocab_size=DRAFT_VOCAB, seed=3)
    model = load_draft_model(str(tmp_path / "subset"), target).model
    d2t, t2d = w["d2t"], w["t2d"]
    assert model.draft_to_target.dtype == torch.int64
    assert torch.equal(model.draft_to_target, torch.arange(DRAFT_VOCAB) + d2t)
    assert torch.equal(model.draft_to_target, t2d.nonzero().flatten())  # a sorted subset
    assert len(set(model.draft_to_target.tolist())) == DRAFT_VOCAB < VOCAB
    assert torch.equal(model.t2d, t2d)
    _write_head(tmp_path / "full", "EAGLE3")
    full = load_draft_model(str(tmp_path / "full"), target).model
    assert torch.equal(full.draft_to_target, torch.arange(VOCAB))
    _write_head(tmp_path / "eagle", "EAGLE")
    assert load_draft_model(str(tmp_path / "eagle"), target).model.draft_to_target is None


# -- (c) the target's aux hidden states ------------------------------------------------------------
def _run_target(loaded, seqs) -> list[tuple[ForwardBatch, torch.Tensor]]:
    """Two steps (A[:4] | A[4:], B) over the real pool: [(batch, final hidden)]."""
    pools = Pools(loaded.num_kv_heads, loaded.head_dim, loaded.num_layers)
    steps = []
    for chunks in ({1: seqs[0][:4]}, {1: seqs[0][4:], 0: seqs[1]}):
        batch = pools.batch(chunks)
        with torch.no_grad():
            steps.append((batch, loaded.model(batch.input_ids, batch.positions, batch)))
    return steps


def test_target_capture_matches_transformers(tmp_path):
    config = _tiny_config()
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    _randomize(hf_model.named_parameters(), torch.Generator().manual_seed(0))
    hf_model.eval().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    seqs = [[5, 9, 2, 77, 31, 8, 100], [17, 3, 64, 12, 90]]
    with torch.no_grad():
        hf = [hf_model(torch.tensor([s]), output_hidden_states=True) for s in seqs]

    plain = _run_target(loaded, seqs)
    assert all(batch.aux_hidden_states is None for batch, _ in plain)
    capture = (0, 3, 2, 4)  # embeddings, inputs of layers 3 and 2, last layer's output pre-norm
    loaded.model.model.layers_to_capture = capture
    captured = _run_target(loaded, seqs)

    # Rows of the two steps: A[:4] | A[4:], B
    def hf_rows(pick):
        a, b = (pick(out)[0] for out in hf)
        return [a[:4], torch.cat([a[4:], b])]

    for step, ((batch, hidden), (_, hidden_plain)) in enumerate(zip(captured, plain)):
        assert torch.equal(hidden, hidden_plain)  # the output is unchanged
        aux = batch.aux_hidden_states
        assert aux.shape == (batch.num_tokens, len(capture) * HIDDEN)
        for j, layer in enumerate(capture[:3]):
            expected = hf_rows(lambda out, i=layer: out.hidden_states[i])[step]
            assert expected.abs().max() > 0.5
            torch.testing.assert_close(aux[:, j * HIDDEN:(j + 1) * HIDDEN], expected,
                                       atol=1e-4, rtol=1e-4)
        # Index num_layers: what the final norm turns into the output.
        last = aux[:, 3 * HIDDEN:]
        torch.testing.assert_close(_rms(last, loaded.model.model.norm.weight), hidden,
                                   atol=1e-5, rtol=1e-5)
        logits = loaded.model.compute_logits(hidden)
        torch.testing.assert_close(logits, hf_rows(lambda out: out.logits)[step], atol=1e-4, rtol=1e-4)


def test_eagle3_capture_layers():
    assert eagle3_capture_layers(_tiny_config(), 32) == [2, 16, 29]  # SGLang's default
    config = _tiny_config()
    config.eagle_config = {"eagle_aux_hidden_state_layer_ids": [1, 23, 44]}
    assert eagle3_capture_layers(config, 48) == [2, 24, 45]  # outputs of those = inputs of +1
    with pytest.raises(ValueError, match="do not fit a target of 2 layers"):
        eagle3_capture_layers(_tiny_config(), 2)


def test_load_draft_reports_capture_layers(tmp_path):
    _write_head(tmp_path, "EAGLE3", aux_layer_ids=[0, 1, 3])
    info = load_draft_model(str(tmp_path), _target())
    assert info.target_layers_to_capture == (1, 2, 4)
    assert info.hf_config.max_position_embeddings == 256


# -- (d) loader errors -----------------------------------------------------------------------------
def _edit_config(path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_unknown_draft_architecture(tmp_path):
    _write_head(tmp_path, "EAGLE")
    _edit_config(tmp_path, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match="unsupported draft architecture 'GPT2LMHeadModel'; "
                                         "supported: LlamaForCausalLMEagle"):
        load_draft_model(str(tmp_path), _target())


def test_eagle1_config_naming_the_target_architecture(tmp_path):
    _write_head(tmp_path, "EAGLE")
    _edit_config(tmp_path, architectures=["LlamaForCausalLM"])  # as yuhuili's EAGLE heads do
    info = load_draft_model(str(tmp_path), _target())
    assert info.architecture == "LlamaForCausalLMEagle" and not info.model.is_eagle3


def test_hidden_size_mismatch(tmp_path):
    write_random_eagle_head(_tiny_config(hidden_size=32, num_attention_heads=2, num_key_value_heads=1),
                            str(tmp_path), "EAGLE3")
    with pytest.raises(ValueError, match="hidden_size 32 differs from the target's 64"):
        load_draft_model(str(tmp_path), _target())


def test_missing_weights(tmp_path):
    target = _target()
    for name, match in [("midlayer.mlp.up_proj.weight", "lacks .* parameters, e.g. .*gate_up_proj"),
                        ("d2t", "lacks d2t"), ("lm_head.weight", "lacks lm_head.weight")]:
        tensors = _write_head(tmp_path / name, "EAGLE3", draft_vocab_size=DRAFT_VOCAB)
        del tensors[name]
        _write(tmp_path / name, tensors)
        with pytest.raises(ValueError, match=match):
            load_draft_model(str(tmp_path / name), target)


def test_eagle3_without_lm_head_borrows_the_targets(tmp_path):
    target = _target()
    tensors = _write_head(tmp_path, "EAGLE3")  # draft vocab == target vocab
    del tensors["lm_head.weight"], tensors["d2t"], tensors["t2d"]
    _write(tmp_path, tensors)
    model = load_draft_model(str(tmp_path), target).model
    assert model.lm_head is target.lm_head
    assert torch.equal(model.draft_to_target, torch.arange(VOCAB))


def test_load_model_refuses_a_draft_head(tmp_path):
    _write_head(tmp_path, "EAGLE3")
    with pytest.raises(ValueError, match="is a LlamaForCausalLMEagle3 draft head: load it beside"):
        load_model(str(tmp_path))
