"""Tokenizer lookup: from GGUF metadata for .gguf files (with the chat template llama.cpp stores),
else the folder's HF tokenizer files."""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile

import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from sgl.runtime.loader.hub_cache import cached_snapshot, looks_like_hub_id

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def get_tokenizer(model_path: str, tokenizer_path: str | None = None,
                  trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    path = tokenizer_path or model_path
    if looks_like_hub_id(path):
        path = cached_snapshot(path)
    if path.endswith(".gguf"):
        return _load_gguf_tokenizer(os.path.abspath(path))
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        raise ValueError(f"no tokenizer found in {path} (none of {', '.join(_TOKENIZER_FILES)}); "
                         "pass tokenizer_path (--tokenizer-path) pointing at one")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load a tokenizer from {path}: {e}") from e


@functools.lru_cache(maxsize=4)
def _load_gguf_tokenizer(path: str) -> PreTrainedTokenizerBase:
    # Building a fast tokenizer out of GGUF metadata takes seconds (~15 on a small CPU): do it
    # once per file, keep the result as ordinary tokenizer files in a cache folder, and load
    # those afterwards (well under a second).
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    cache = _cache_dir(path)
    if cache is not None and os.path.isfile(os.path.join(cache, "tokenizer.json")):
        try:
            return AutoTokenizer.from_pretrained(cache)
        except (OSError, ValueError):
            pass  # a damaged cache: rebuild it below
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    if cache is not None:
        _save_atomically(tok, cache)
    return tok


def _cache_dir(path: str) -> str | None:
    # Where a cache lives is the machine's business, not the server's: an environment variable,
    # as HF_HOME and TRITON_CACHE_DIR are (read here, at the first GGUF tokenizer load).
    root = os.environ.get("SGL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sgl")
    st = os.stat(path)
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}".encode())
    return os.path.join(root, "gguf-tokenizers", key.hexdigest()[:24])


def _save_atomically(tok: PreTrainedTokenizerBase, cache: str) -> None:
    parent = os.path.dirname(cache)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent)
    except OSError:
        return  # an unwritable cache folder: work without a cache
    try:
        tok.save_pretrained(tmp)
        os.replace(tmp, cache)  # concurrent builders: one rename wins, the others fail here
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
