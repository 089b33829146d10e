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


def test_cache_folder_follows_sgl_cache_dir_then_xdg_cache_home(tmp_path, monkeypatch):
    from sgl.runtime.loader.tokenizer import _cache_dir
    gguf = bundled_model_path()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SGL_CACHE_DIR", str(tmp_path / "sgl"))
    assert _cache_dir(gguf).startswith(str(tmp_path / "sgl" / "gguf-tokenizers") + os.sep)
    monkeypatch.delenv("SGL_CACHE_DIR")
    assert _cache_dir(gguf).startswith(str(tmp_path / "xdg" / "sgl" / "gguf-tokenizers") + os.sep)
