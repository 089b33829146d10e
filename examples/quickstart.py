"""Quickstart: a two-turn chat program with gen.

    python examples/quickstart.py [--backend http://127.0.0.1:30000]
"""
from common import setup

import sgl


@sgl.function
def multi_turn_question(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=48))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=48))


if __name__ == "__main__":
    setup(__doc__)
    state = multi_turn_question.run(
        question_1="What is the capital of France?",
        question_2="List two landmarks there.",
        temperature=0,
    )
    for m in state.messages():
        print(f"{m['role']:>9}: {m['content']}")

    print("\n-- streaming --")
    state = multi_turn_question.run(question_1="Name a planet.", question_2="Why is it interesting?",
                                    temperature=0, stream=True)
    for piece in state.text_iter("answer_2"):
        print(piece, end="", flush=True)
    print()
