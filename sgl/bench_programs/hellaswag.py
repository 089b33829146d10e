"""HellaSwag-style 20-shot completion: one 20-shot prefix (~2,100 tokens) shared by every
program; each program adds its context and `select`s among four continuations, which the
backend scores by their token logprobs."""
from __future__ import annotations

import random

import sgl
from sgl.bench_programs.text import seeded, sentences, words
from sgl.bench_programs.workload import Batch, Sizes, Workload

NUM_SHOTS = 20
CONTEXT_TOKENS = 70
ENDING_TOKENS = 28


@sgl.function
def few_shot_hellaswag(s, examples, context, endings):
    s += examples + context
    s += sgl.select("ending", choices=endings)


def _context(rng: random.Random, sizes: Sizes) -> str:
    return words(rng, 2).title() + ": " + sentences(rng, sizes.tokens(CONTEXT_TOKENS))


def _ending(rng: random.Random, sizes: Sizes) -> str:
    return " " + sentences(rng, sizes.tokens(ENDING_TOKENS))


def make_batch(sizes: Sizes, num_programs: int) -> Batch:
    rng = seeded("hellaswag", sizes.seed)
    examples = "".join(_context(rng, sizes) + _ending(rng, sizes) + "\n\n" for _ in range(NUM_SHOTS))
    out = []
    for i in range(num_programs):
        rng = seeded("hellaswag-q", sizes.seed, i)
        out.append({"context": _context(rng, sizes), "endings": [_ending(rng, sizes) for _ in range(4)]})
    return Batch({"examples": examples}, out)


WORKLOAD = Workload("hellaswag", "20-shot select over 4 continuations", few_shot_hellaswag,
                    make_batch, is_few_shot=True)
