"""ReAct agent (HotpotQA-style): instructions and three solved trajectories (~1,700 tokens)
shared by every program; each program answers one question in 3-5 steps of Thought and Action,
each a `gen` that stops at a newline and extends the text the previous one ended, then the tool's
Observation (seeded text, as a search tool's result would be) is appended."""
from __future__ import annotations

import random

import sgl
from sgl.bench_programs.text import seeded, sentences, words
from sgl.bench_programs.workload import Batch, Sizes, Workload

INSTRUCTIONS = ("Solve a question answering task with interleaving Thought, Action, Observation "
                "steps. Thought can reason about the current situation, and Action can be three "
                "types: Search[entity], Lookup[keyword] and Finish[answer].\n")
NUM_SHOTS = 3
QUESTION_TOKENS = 30
THOUGHT_TOKENS = 40
ACTION_TOKENS = 10
OBSERVATION_TOKENS = 90


@sgl.function
def react_agent(s, examples, question, observations, thought_len, action_len):
    s += examples + "Question: " + question + "\n"
    for i, observation in enumerate(observations, 1):
        s += f"Thought {i}:" + sgl.gen(f"thought_{i}", max_tokens=thought_len, stop="\n")
        s += f"\nAction {i}:" + sgl.gen(f"action_{i}", max_tokens=action_len, stop="\n")
        s += f"\nObservation {i}: {observation}\n"


def _trajectory(rng: random.Random, sizes: Sizes, num_steps: int) -> str:
    text = "Question: " + sentences(rng, sizes.tokens(QUESTION_TOKENS)) + "\n"
    for i in range(1, num_steps + 1):
        action = "Finish" if i == num_steps else rng.choice(("Search", "Lookup"))
        text += (f"Thought {i}: {sentences(rng, sizes.tokens(THOUGHT_TOKENS))}\n"
                 f"Action {i}: {action}[{words(rng, 3)}]\n")
        if i < num_steps:
            text += f"Observation {i}: {sentences(rng, sizes.tokens(OBSERVATION_TOKENS))}\n"
    return text + "\n"


def make_batch(sizes: Sizes, num_programs: int) -> Batch:
    rng = seeded("react", sizes.seed)
    examples = INSTRUCTIONS + "".join(_trajectory(rng, sizes, 4) for _ in range(NUM_SHOTS))
    out = []
    for i in range(num_programs):
        rng = seeded("react-q", sizes.seed, i)
        num_steps = rng.randint(3, 5)
        out.append({"question": sentences(rng, sizes.tokens(QUESTION_TOKENS)),
                    "observations": [sentences(rng, sizes.tokens(OBSERVATION_TOKENS)) for _ in range(num_steps)]})
    shared = {"examples": examples, "thought_len": sizes.out(THOUGHT_TOKENS), "action_len": sizes.out(ACTION_TOKENS)}
    return Batch(shared, out)


WORKLOAD = Workload("react", "agent: 3-5 Thought/Action gen pairs per program, stop at newline",
                    react_agent, make_batch)
