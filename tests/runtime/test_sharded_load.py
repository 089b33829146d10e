"""Tensor-parallel loading from a sharded HF safetensors folder: every rank's parameters are its
slice of the checkpoint tensors, and a rank reads from disk only its slice of each sharded
tensor (safetensors get_slice), never the whole tensor (get_tensor). No process group is needed:
the layers use only their rank and size while loading."""
from __future__ import annotations

import glob
import os
from collections import Counter

import pytest
import torch
import transformers
from safetensors import safe_open

from sgl.runtime.layers.lazy_tensor import LazyTensor
from sgl.runtime.loader import hf, load_model
from sgl.runtime.models.registry import get_model_class

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTER, VOCAB = 8, 2, 8, 64, 128, 211  # 211: padded per rank


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """A tiny random Llama saved in several safetensors shards; its tensors read whole."""
    path = str(tmp_path_factory.mktemp("sharded-llama"))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                                      num_hidden_layers=2, num_attention_heads=HEADS,
                                      num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                                      tie_word_embeddings=False, initializer_range=0.3)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path, max_shard_size="60KB")
    files = glob.glob(os.path.join(path, "*.safetensors"))
    assert len(files) > 2 and os.path.isfile(os.path.join(path, hf.SAFETENSORS_INDEX))
    full = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            full.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118
    return path, full


class ReadLog:
    """Wraps safetensors.safe_open in the loader: counts the elements each tensor's slices
    return and the names read whole with get_tensor."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.elements: Counter[str] = Counter()
        self.whole: list[str] = []
        monkeypatch.setattr(hf, "safe_open", lambda *a, **kw: _File(safe_open(*a, **kw), self))


class _File:
    def __init__(self, handle, log: ReadLog) -> None:
        self.handle, self.log = handle, log

    def __enter__(self) -> _File:
        self.f = self.handle.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.handle.__exit__(*exc)

    def keys(self) -> list[str]:
        return self.f.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        self.log.whole.append(name)
        return self.f.get_tensor(name)

    def get_slice(self, name: str) -> _Slice:
        return _Slice(self.f.get_slice(name), name, self.log)


class _Slice:
    def __init__(self, source, name: str, log: ReadLog) -> None:
        self.source, self.name, self.log = source, name, log

    def get_shape(self) -> list[int]:
        return self.source.get_shape()

    def __getitem__(self, index) -> torch.Tensor:
        out = self.source[index]
        self.log.elements[self.name] += out.numel()
        return out


def rank_slices(full: dict[str, torch.Tensor], rank: int, tp: int) -> dict[str, torch.Tensor]:
    """What rank `rank` of `tp` must hold, cut from the whole checkpoint tensors."""
    kv_per_rank = max(KV_HEADS // tp, 1)
    kv_rank = rank // max(tp // KV_HEADS, 1)  # tp > KV_HEADS: a KV head lives on several ranks

    def rows(t: torch.Tensor, n: int, i: int) -> torch.Tensor:
        return t[i * n:(i + 1) * n]

    per_rank_vocab = -(-VOCAB // tp)
    want = {}
    for name, t in full.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            block = torch.zeros(per_rank_vocab, HIDDEN)
            part = rows(t, per_rank_vocab, rank)
            block[:len(part)] = part  # the last rank's padding rows are zero
            want[name] = block
        elif ".q_proj." in name:
            q = rows(t, HEADS // tp * HEAD_DIM, rank)
            k = rows(full[name.replace("q_proj", "k_proj")], kv_per_rank * HEAD_DIM, kv_rank)
            v = rows(full[name.replace("q_proj", "v_proj")], kv_per_rank * HEAD_DIM, kv_rank)
            want[name.replace("q_proj", "qkv_proj")] = torch.cat([q, k, v])
        elif ".gate_proj." in name:
            up = full[name.replace("gate_proj", "up_proj")]
            want[name.replace("gate_proj", "gate_up_proj")] = torch.cat(
                [rows(t, INTER // tp, rank), rows(up, INTER // tp, rank)])
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            want[name] = rows(t.T, t.shape[1] // tp, rank).T
        elif not name.endswith(("k_proj.weight", "v_proj.weight", "up_proj.weight")):
            want[name] = t  # norms: replicated
    return want


def read_per_rank(name: str, t: torch.Tensor, rank: int, tp: int) -> int:
    """Elements a rank needs from checkpoint tensor `name`."""
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        per_rank = -(-VOCAB // tp)
        return (min((rank + 1) * per_rank, VOCAB) - rank * per_rank) * HIDDEN
    if name.endswith(("k_proj.weight", "v_proj.weight")):
        return max(KV_HEADS // tp, 1) * HEAD_DIM * HIDDEN
    if t.dim() == 2:
        return t.numel() // tp
    return t.numel()


@pytest.mark.parametrize("tp", [2, 4], ids=["tp2", "tp4-kv-heads-shared"])
def test_each_rank_holds_and_reads_only_its_slice(checkpoint, monkeypatch, tp):
    path, full = checkpoint
    for rank in range(tp):
        log = ReadLog(monkeypatch)
        params = dict(load_model(path, tp_rank=rank, tp_size=tp).model.named_parameters())
        want = rank_slices(full, rank, tp)
        assert set(params) == set(want)
        for name, value in want.items():
            torch.testing.assert_close(params[name], value, rtol=0, atol=0, msg=name)
        assert log.whole == []  # nothing read whole through get_tensor
        expected = {name: read_per_rank(name, t, rank, tp) for name, t in full.items()}
        assert dict(log.elements) == expected


def test_full_tensor_path_gives_the_same_parameters(checkpoint):
    """GGUF and .bin checkpoints hand the weight loaders whole tensors: same result."""
    path, full = checkpoint
    lazy = load_model(path, tp_rank=1, tp_size=2).model
    config = hf.load_hf_config(path)
    eager = get_model_class("LlamaForCausalLM")(config, tp_rank=1, tp_size=2)
    items = list(hf.iterate_hf_weights(path))
    assert all(isinstance(t, torch.Tensor) for _, t in items)  # lazy is opt-in
    eager.load_weights(items)
    for (name, a), (_, b) in zip(lazy.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_lazy_tensor_reads_slices_and_the_whole(checkpoint):
    path, full = checkpoint
    with safe_open(hf.safetensors_files(path)[0], framework="pt") as f:
        name = next(n for n in f.keys() if full[n].dim() == 2)  # noqa: SIM118
        lazy, whole = LazyTensor(f.get_slice(name)), full[name]
        assert lazy.shape == whole.shape and lazy.dim() == 2
        torch.testing.assert_close(lazy.narrow(1, 16, 16), whole[:, 16:32], rtol=0, atol=0)
        torch.testing.assert_close(lazy.narrow(0, 3, 2), whole[3:5], rtol=0, atol=0)
        torch.testing.assert_close(lazy.materialize(), whole, rtol=0, atol=0)


def test_rope_freqs_tensor_in_a_safetensors_checkpoint(tmp_path):
    """llama.cpp's per-frequency rope factors, if a safetensors folder carries them, reach the
    rotary table through the lazy reader too."""
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    plain = load_model(str(tmp_path)).model.model.rotary_emb.inv_freq.clone()
    (file,) = glob.glob(os.path.join(tmp_path, "*.safetensors"))
    tensors = load_file(file)
    factors = torch.arange(1, plain.numel() + 1, dtype=torch.float32)
    tensors["rope_freqs.weight"] = factors
    save_file(tensors, file, metadata={"format": "pt"})
    scaled = load_model(str(tmp_path)).model.model.rotary_emb.inv_freq
    torch.testing.assert_close(scaled, plain / factors)
