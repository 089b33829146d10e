"""Multi-turn chat with roles: a short system prompt shared by every conversation, then four
user turns of 256-512 tokens, each answered by the assistant; every turn's prompt extends the
previous turn's. Two workloads differ in the replies: `multi_turn_short` (4-8 tokens) and
`multi_turn_long` (256-512 tokens). Replies ignore EOS so both systems do the same work."""
from __future__ import annotations

import sgl
from sgl.bench_programs.text import seeded, sentences
from sgl.bench_programs.workload import Batch, Sizes, Workload

SYSTEM = ("You are a patient assistant. Answer the user's questions about the documents they "
          "paste, quoting them where that helps, and keep the whole conversation in mind.")
NUM_TURNS = 4
USER_TOKENS = (256, 512)


@sgl.function
def multi_turn_chat(s, turns, reply_lens):
    s += sgl.system(SYSTEM)
    for i, (message, reply_len) in enumerate(zip(turns, reply_lens)):
        s += sgl.user(message)
        s += sgl.assistant(sgl.gen(f"reply_{i}", max_tokens=reply_len, ignore_eos=True))


def _make_batch(name: str, reply_tokens: tuple[int, int]):
    def make_batch(sizes: Sizes, num_programs: int) -> Batch:
        out = []
        for i in range(num_programs):
            rng = seeded(name, sizes.seed, i)
            out.append({"turns": [sentences(rng, sizes.tokens(rng.randint(*USER_TOKENS))) for _ in range(NUM_TURNS)],
                        "reply_lens": [sizes.out(rng.randint(*reply_tokens)) for _ in range(NUM_TURNS)]})
        return Batch({}, out)
    return make_batch


SHORT = Workload("multi_turn_short", "4 chat turns of 256-512 tokens, replies of 4-8 tokens",
                 multi_turn_chat, _make_batch("chat-short", (4, 8)))
LONG = Workload("multi_turn_long", "4 chat turns of 256-512 tokens, replies of 256-512 tokens",
                multi_turn_chat, _make_batch("chat-long", (256, 512)))
