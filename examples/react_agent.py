"""A ReAct-style agent loop: the model thinks, picks an action with select, the program runs
the tool in Python and feeds back the observation, until the model answers.

    python examples/react_agent.py [--backend URL]
"""
from common import setup

import sgl

FACTS = {"france": "Paris is the capital of France. Population about 2.1 million.",
         "japan": "Tokyo is the capital of Japan. Population about 14 million."}


def search(query: str) -> str:
    for key, fact in FACTS.items():
        if key in query.lower():
            return fact
    return "No results."


def calculate(expr: str) -> str:
    allowed = set("0123456789+-*/(). ")
    return str(eval(expr)) if expr and set(expr) <= allowed else "Cannot compute."


TOOLS = {"Search": search, "Calculate": calculate}

PROMPT = """Answer the question by interleaving Thought, Action and Observation steps.
Action is one of: Search[query], Calculate[expression], Finish[answer].

Question: What is the capital of Japan?
Thought 1: I should search for Japan.
Action 1: Search[Japan]
Observation 1: Tokyo is the capital of Japan. Population about 14 million.
Thought 2: The capital is Tokyo.
Action 2: Finish[Tokyo]

"""


@sgl.function
def react(s, question, max_steps=3):
    s += PROMPT + "Question: " + question + "\n"
    for step in range(1, max_steps + 1):
        s += f"Thought {step}:" + sgl.gen(f"thought_{step}", max_tokens=30, stop="\n") + "\n"
        s += f"Action {step}: " + sgl.select(f"action_{step}", choices=["Search", "Calculate", "Finish"])
        s += "[" + sgl.gen(f"arg_{step}", max_tokens=16, stop=["]", "\n"]) + "]\n"
        action, arg = s[f"action_{step}"], s[f"arg_{step}"]
        if action == "Finish":
            return arg
        s += f"Observation {step}: " + TOOLS[action](arg) + "\n"
    return None


if __name__ == "__main__":
    setup(__doc__)
    for q in ("What is the capital of France?", "What is 12 * 7?"):
        state = react.run(question=q, temperature=0)
        print(state.text()[len(PROMPT):])
        print("=> final answer:", state.ret_value, "\n")
