"""Generative agents: a town's shared world description (~1,300 tokens) starts every program;
each program is one agent (its persona, ~150 tokens) reacting to a chain of five events, every
call extending the previous one's text and output."""
from __future__ import annotations

import sgl
from sgl.bench_programs.text import NAMES, seeded, sentences
from sgl.bench_programs.workload import Batch, Sizes, Workload

WORLD_TOKENS = 1300
PERSONA_TOKENS = 150
EVENT_TOKENS = 40
NUM_EVENTS = 5
REACTION_TOKENS = 32


@sgl.function
def generative_agent(s, world, name, persona, events, reaction_len):
    s += world + f"\n\nAgent: {name}\n{persona}\n"
    for i, event in enumerate(events):
        s += f"\n[{8 + i}:00] {event}\nHow does {name} react?"
        s += sgl.gen(f"reaction_{i}", max_tokens=reaction_len, stop="\n")


def make_batch(sizes: Sizes, num_programs: int) -> Batch:
    rng = seeded("agents", sizes.seed)
    world = "World: " + sentences(rng, sizes.tokens(WORLD_TOKENS))
    out = []
    for i in range(num_programs):
        rng = seeded("agents-a", sizes.seed, i)
        out.append({"name": f"{NAMES[i % len(NAMES)]} {i}", "persona": sentences(rng, sizes.tokens(PERSONA_TOKENS)),
                    "events": [sentences(rng, sizes.tokens(EVENT_TOKENS)) for _ in range(NUM_EVENTS)]})
    return Batch({"world": world, "reaction_len": sizes.out(REACTION_TOKENS)}, out)


WORKLOAD = Workload("generative_agents", "one agent per program: 5 chained calls over a shared world",
                    generative_agent, make_batch)
