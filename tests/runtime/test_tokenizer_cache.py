"""The GGUF tokenizer is converted once and then loaded from a cache folder; the cached copy
must behave exactly like the one built from the GGUF metadata."""
from __future__ import annotations

import os

from sgl.runtime.loader.bundled import bundled_model_path
from sgl.runtime.loader.tokenizer import _load_gguf_tokenizer, get_tokenizer

TEXTS = ["Hello <|im_start|> wörld 🍕 数据", "  leading spaces\n\ttabs", "def f(x):\n    return x**2"]


def test_cached_gguf_tokenizer_equals_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("SGL_CACHE_DIR", str(tmp_path))
    _load_gguf_tokenizer.cache_clear()
    fresh = get_tokenizer(bundled_model_path())
    (entry,) = os.listdir(tmp_path / "gguf-tokenizers")
    assert os.path.isfile(tmp_path / "gguf-tokenizers" / entry / "tokenizer.json")
    _load_gguf_tokenizer.cache_clear()
    cached = get_tokenizer(bundled_model_path())
    assert cached is not fresh
    for text in TEXTS:
        ids = fresh.encode(text)
        assert cached.encode(text) == ids
        assert cached.decode(ids) == fresh.decode(ids)
    msgs = [{"role": "user", "content": "hi"}]
    assert cached.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        fresh.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert (cached.eos_token_id, cached.all_special_ids, len(cached)) == \
        (fresh.eos_token_id, fresh.all_special_ids, len(fresh))
    _load_gguf_tokenizer.cache_clear()
