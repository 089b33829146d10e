"""Model ids (`Qwen/Qwen3-0.6B`) resolved through the local Hugging Face cache, offline, as
transformers does with `local_files_only=True`: `$HF_HUB_CACHE` (default `$HF_HOME/hub`),
`models--org--name/snapshots/<revision>` named by `refs/main`. sgl never downloads; an id that
is not cached is an error naming the cache folder it looked in."""
from __future__ import annotations

import os
import re

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_hub_id(path: str) -> bool:
    """`org/name` that is not a local path."""
    return _HUB_ID.fullmatch(path) is not None and not os.path.exists(path)


def cached_snapshot(model_id: str) -> str:
    """The cached snapshot folder of `model_id` (its main revision)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    cache = hub_cache_dir()
    try:
        return snapshot_download(model_id, cache_dir=cache, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise FileNotFoundError(
            f"model {model_id!r} is not a local path and is not in the Hugging Face cache "
            f"(looked in {cache}); sgl downloads nothing: fetch it first, e.g. "
            f"`hf download {model_id}`, or pass a local folder") from None


def hub_cache_dir() -> str:
    """Hugging Face's cache folder, by its own rules, read when a model is resolved (not at
    import, so a process that sets HF_HOME before starting an engine is honoured)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return os.path.join(home, "hub")
