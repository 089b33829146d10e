"""Multi-turn chat: the conversation grows turn by turn in one program state; each turn reuses
the cached conversation so far. Run interactively with --interactive.

    python examples/multi_turn_chat.py [--backend URL] [--interactive]
"""
from common import setup

import sgl


@sgl.function
def chat(s, turns):
    s += sgl.system("You are a friendly assistant. Keep answers short.")
    for i, message in enumerate(turns):
        with s.user():
            s += message
        with s.assistant():
            s += sgl.gen(f"reply_{i}", max_tokens=48)


@sgl.function
def one_turn(s, history, message):
    for m in history:
        s += getattr(sgl, m["role"])(m["content"])
    s += sgl.user(message)
    s += sgl.assistant(sgl.gen("reply", max_tokens=64))


if __name__ == "__main__":
    args = setup(__doc__, lambda p: p.add_argument("--interactive", action="store_true"))
    if not args.interactive:
        state = chat.run(turns=["Hi! Who are you?", "What can you help me with?", "Thanks, bye!"], temperature=0)
        for m in state.messages():
            print(f"{m['role']:>9}: {m['content']}")
    else:
        history = [{"role": "system", "content": "You are a friendly assistant."}]
        while (message := input("you> ").strip()):
            state = one_turn.run(history=history, message=message, temperature=0.7, stream=True)
            print("bot> ", end="")
            for piece in state.text_iter("reply"):
                print(piece, end="", flush=True)
            print()
            history = state.messages()
