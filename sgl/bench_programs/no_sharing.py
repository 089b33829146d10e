"""The overhead case: programs that share no prefix. Each prompt is its own seeded text (~512
tokens) opening with the program's number, and generates 64 tokens ignoring EOS, so the cache
on and off do the same work and any difference is the radix tree's cost."""
from __future__ import annotations

import sgl
from sgl.bench_programs.text import seeded, sentences
from sgl.bench_programs.workload import Batch, Sizes, Workload

PROMPT_TOKENS = 512
OUTPUT_TOKENS = 64


@sgl.function
def independent_prompt(s, prompt, out_len):
    s += prompt + sgl.gen("out", max_tokens=out_len, ignore_eos=True)


def make_batch(sizes: Sizes, num_programs: int) -> Batch:
    return Batch({"out_len": sizes.out(OUTPUT_TOKENS)},
                 [{"prompt": f"{i}: " + sentences(seeded("none", sizes.seed, i), sizes.tokens(PROMPT_TOKENS))}
                  for i in range(num_programs)])


WORKLOAD = Workload("no_sharing", "independent 512-token prompts, 64 tokens out (radix overhead)",
                    independent_prompt, make_batch, shares_prefix=False)
