"""What a workload is: an `@sgl.function` program and the arguments of each of its runs, built
from seeded synthetic text at the paper's lengths times a scale."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """Prompt text lengths are the paper's times `scale`; gen max_tokens times `output_scale`
    (both at least 1), so the same programs run at full size on a GPU and tiny on a CPU."""
    scale: float = 1.0
    output_scale: float = 1.0
    seed: int = 0

    def tokens(self, num_tokens: int) -> int:
        return max(1, round(num_tokens * self.scale))

    def out(self, num_tokens: int) -> int:
        return max(1, round(num_tokens * self.output_scale))


@dataclass(frozen=True)
class Batch:
    """A run's arguments: `shared` is bound into the program (`SglFunction.bind`), as a user
    fixes the text every run starts with, so that `run_batch` can find it by tracing and cache
    it once before the programs start; `each` holds every program's own arguments."""
    shared: dict[str, Any]
    each: list[dict[str, Any]]

    def head(self, num_programs: int) -> Batch:
        return Batch(self.shared, self.each[:num_programs])


@dataclass(frozen=True)
class Workload:
    name: str
    summary: str
    program: Any  # an SglFunction
    make_batch: Callable[[Sizes, int], Batch]  # (sizes, num_programs)
    is_few_shot: bool = False      # the >= 5x / >= 3x targets apply
    shares_prefix: bool = True     # False: the radix-overhead case

    def run_batch(self, batch: Batch, **kwargs: Any) -> list[Any]:
        program = self.program.bind(**batch.shared) if batch.shared else self.program
        return program.run_batch(batch.each, **kwargs)
