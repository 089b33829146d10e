"""`dimensions` (OpenAI's embeddings field, SGLang's too): a Matryoshka-trained embedding model
may be asked for a shorter vector, its first `dimensions` values (renormalized when the model
normalizes: executor/pooling.py). Which sizes a model allows is read from its config.json as
SGLang reads it; the front end checks each request against that (torch-free: it runs in the
HTTP process)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Matryoshka:
    """Which `dimensions` an embedding request may ask for, from the model's config.json (the
    names SGLang and vLLM read): any size up to hidden_size when `is_matryoshka`, only the
    listed ones when `matryoshka_dimensions` is given, none otherwise."""
    hidden_size: int
    is_matryoshka: bool = False
    matryoshka_dimensions: Optional[tuple[int, ...]] = None

    @classmethod
    def of(cls, hf_config: Any) -> "Matryoshka":
        listed = getattr(hf_config, "matryoshka_dimensions", None)
        listed = tuple(int(d) for d in listed) if listed else None
        return cls(int(hf_config.hidden_size),
                   bool(listed) or bool(getattr(hf_config, "is_matryoshka", False)), listed)

    def check(self, dimensions: Any) -> Optional[int]:
        """`dimensions` if a request may ask for it (None: the full vector); else ValueError."""
        if dimensions is None:
            return None
        if not isinstance(dimensions, int) or isinstance(dimensions, bool):
            raise ValueError(f"dimensions must be an integer, got {dimensions!r}")
        if not self.is_matryoshka:
            raise ValueError("dimensions: this model is not Matryoshka-trained (its config.json sets "
                             "neither is_matryoshka nor matryoshka_dimensions); a truncated vector "
                             "would be a poor embedding")
        if dimensions < 1:
            raise ValueError(f"dimensions must be at least 1, got {dimensions}")
        if self.matryoshka_dimensions and dimensions not in self.matryoshka_dimensions:
            raise ValueError(f"dimensions must be one of the model's matryoshka_dimensions "
                             f"{list(self.matryoshka_dimensions)}, got {dimensions}")
        if dimensions > self.hidden_size:
            raise ValueError(f"dimensions must be at most the embedding size {self.hidden_size}, "
                             f"got {dimensions}")
        return dimensions
