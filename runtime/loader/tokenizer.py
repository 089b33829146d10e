"""Tokenizer lookup: from GGUF metadata for .gguf files (with the chat template llama.cpp stores),
else the folder's HF tokenizer files."""
from __future__ import annotations

import functools
import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def get_tokenizer(model_path: str, tokenizer_path: str | None = None,
                  trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    path = tokenizer_path or model_path
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
    # Parsing the vocabulary out of GGUF metadata takes seconds: do it once per file per process.
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
