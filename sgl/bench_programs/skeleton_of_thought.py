"""Skeleton of thought: instructions with one worked example (~400 tokens) shared by every
program; each program writes a skeleton of its answer, `fork`s into one branch per point to
expand them in parallel, `join`s the expansions into the text and writes a summary after them."""
from __future__ import annotations

from typing import Any

import sgl
from sgl.bench_programs.text import seeded, sentences
from sgl.bench_programs.workload import Batch, Sizes, Workload

INSTRUCTIONS = ("You are an organizer. First write the skeleton of the answer as a short numbered "
                "list of points, three to five words each; then each point is expanded on its own "
                "in two or three sentences.\n\n")
EXAMPLE_TOKENS = 360
QUESTION_TOKENS = 40
NUM_POINTS = 4
SKELETON_TOKENS = 48
POINT_TOKENS = 80
SUMMARY_TOKENS = 32


def _expand(point_len: int):
    def branch(i: int) -> Any:
        return f"\nPoint {i + 1} expanded:" + sgl.gen("point", max_tokens=point_len)
    return branch


@sgl.function
def skeleton_of_thought(s, instructions, question, skeleton_len, point_len, summary_len):
    s += instructions + "Question: " + question + "\nSkeleton:"
    s += sgl.gen("skeleton", max_tokens=skeleton_len)
    points = s.fork(NUM_POINTS)
    points += _expand(point_len)
    points.join("concate_and_append")
    s += "\nSummary:" + sgl.gen("summary", max_tokens=summary_len)


def make_batch(sizes: Sizes, num_programs: int) -> Batch:
    instructions = INSTRUCTIONS + "Example. " + sentences(seeded("sot", sizes.seed), sizes.tokens(EXAMPLE_TOKENS)) + "\n\n"
    shared = {"instructions": instructions, "skeleton_len": sizes.out(SKELETON_TOKENS),
              "point_len": sizes.out(POINT_TOKENS), "summary_len": sizes.out(SUMMARY_TOKENS)}
    return Batch(shared, [{"question": sentences(seeded("sot-q", sizes.seed, i), sizes.tokens(QUESTION_TOKENS))}
                          for i in range(num_programs)])


WORKLOAD = Workload("skeleton_of_thought", f"skeleton, fork into {NUM_POINTS} expansions, join, summary",
                    skeleton_of_thought, make_batch)
