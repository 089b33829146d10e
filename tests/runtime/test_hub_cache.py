"""Model ids through a Hugging Face cache laid out on disk (offline): the snapshot that
refs/main names is loaded; an id that is not cached fails naming the folder it looked in."""
from __future__ import annotations

import json

import pytest

from sgl.runtime.loader import load_model, resolve_model_path
from tests.server.conftest import TINY_CONFIG


def _fake_cache(root, model_id: str, revision: str = "0123abcd") -> str:
    repo = root / "hub" / ("models--" + model_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY_CONFIG))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return str(snapshot)


def test_model_id_resolves_to_the_cached_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snapshot = _fake_cache(tmp_path, "tiny-org/tiny-llama")
    assert resolve_model_path("tiny-org/tiny-llama") == snapshot
    loaded = load_model("tiny-org/tiny-llama", load_format="dummy")
    assert loaded.model_path == snapshot and loaded.num_layers == TINY_CONFIG["num_hidden_layers"]


def test_uncached_id_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "hub")):
        resolve_model_path("Qwen/Qwen3-0.6B")
