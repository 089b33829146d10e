"""Tree of thought (GSM-8K-style): instructions and two solved problems (~700 tokens) shared by
every program; each program grows a tree over its question with nested `fork`s, level by level
(2 branches per node, 3 levels: 14 thoughts), joins the branches and writes a final answer."""
from __future__ import annotations

from typing import Any

import sgl
from sgl.bench_programs.text import seeded, sentences
from sgl.bench_programs.workload import Batch, Sizes, Workload

INSTRUCTIONS = ("Solve the math problem step by step. At each step, propose a few different next "
                "steps; the best path is chosen at the end.\n\n")
NUM_SHOTS = 2
QUESTION_TOKENS = 80
SOLUTION_TOKENS = 220
THOUGHT_TOKENS = 32
ANSWER_TOKENS = 12
WIDTH, DEPTH = 2, 3


def _thought(level: int, thought_len: int):
    def branch(i: int) -> Any:
        return (f"Step {level}, idea {i + 1}: We"
                + sgl.gen(f"thought_{level}", max_tokens=thought_len, stop="\n") + "\n")
    return branch


@sgl.function
def tree_of_thought(s, examples, question, thought_len, answer_len):
    s += examples + "Question: " + question + "\n"
    frontier, groups = [s], []
    for level in range(1, DEPTH + 1):
        # every node of a level forks before any waits on its children, so a level runs at once
        next_frontier = []
        for node in frontier:
            branches = node.fork(WIDTH)
            branches += _thought(level, thought_len)
            groups.append(branches)
            next_frontier.extend(branches)
        frontier = next_frontier
    for branches in reversed(groups):  # innermost first: a branch joins its children before its parent joins it
        branches.join()
    s += "Final answer:" + sgl.gen("answer", max_tokens=answer_len, stop="\n")


def make_batch(sizes: Sizes, num_programs: int) -> Batch:
    rng = seeded("tot", sizes.seed)
    examples = INSTRUCTIONS + "".join(
        f"Question: {sentences(rng, sizes.tokens(QUESTION_TOKENS))}\n"
        f"Solution: {sentences(rng, sizes.tokens(SOLUTION_TOKENS))}\n\n" for _ in range(NUM_SHOTS))
    shared = {"examples": examples, "thought_len": sizes.out(THOUGHT_TOKENS), "answer_len": sizes.out(ANSWER_TOKENS)}
    return Batch(shared, [{"question": sentences(seeded("tot-q", sizes.seed, i), sizes.tokens(QUESTION_TOKENS))}
                          for i in range(num_programs)])


WORKLOAD = Workload("tree_of_thought", f"nested fork, {WIDTH} branches x {DEPTH} levels, then an answer",
                    tree_of_thought, make_batch)
