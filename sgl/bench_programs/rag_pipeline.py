"""A DSPy-like retrieval-augmented pipeline: the program retrieves three passages for its
question from a seeded corpus (word overlap, in Python), then over a shared signature and two
demonstrations (~650 tokens) generates a rationale, an answer, and checks the answer with a
`select`; each call extends the previous one's text."""
from __future__ import annotations

import sgl
from sgl.bench_programs.text import seeded, sentences
from sgl.bench_programs.workload import Batch, Sizes, Workload

SIGNATURE = ("Answer questions with short factoid answers.\n\n---\n\nFollow the following format.\n\n"
             "Context: may contain relevant facts\nQuestion: ${question}\nReasoning: Let's think "
             "step by step in order to ${produce the answer}. We ...\nAnswer: often between 1 and 5 "
             "words\n\n---\n\n")
NUM_DEMOS = 2
NUM_PASSAGES = 3
CORPUS_SIZE = 64
PASSAGE_TOKENS = 90
QUESTION_TOKENS = 20
REASONING_TOKENS = 48
ANSWER_TOKENS = 12


def retrieve(corpus: list[str], question: str, k: int = NUM_PASSAGES) -> list[str]:
    """The k passages sharing the most words with the question (ties: corpus order)."""
    asked = set(question.lower().split())
    scores = [(-len(asked & set(p.lower().split())), i) for i, p in enumerate(corpus)]
    return [corpus[i] for _, i in sorted(scores)[:k]]


def _context(passages: list[str]) -> str:
    return "Context:\n" + "".join(f"[{i + 1}] «{p}»\n" for i, p in enumerate(passages))


@sgl.function
def rag_pipeline(s, signature, corpus, question, reasoning_len, answer_len):
    s += signature + _context(retrieve(corpus, question)) + f"Question: {question}\n"
    s += "Reasoning: Let's think step by step in order to"
    s += sgl.gen("reasoning", max_tokens=reasoning_len, stop="\n")
    s += "\nAnswer:" + sgl.gen("answer", max_tokens=answer_len, stop="\n")
    s += "\nIs the answer supported by the context?" + sgl.select("supported", choices=[" yes", " no"])


def make_batch(sizes: Sizes, num_programs: int) -> Batch:
    rng = seeded("rag", sizes.seed)
    corpus = [sentences(rng, sizes.tokens(PASSAGE_TOKENS)) for _ in range(CORPUS_SIZE)]
    signature = SIGNATURE
    for _ in range(NUM_DEMOS):
        question = sentences(rng, sizes.tokens(QUESTION_TOKENS))
        signature += (_context(retrieve(corpus, question)) + f"Question: {question}\nReasoning: Let's "
                      f"think step by step in order to {sentences(rng, sizes.tokens(REASONING_TOKENS))}\n"
                      f"Answer: {sentences(rng, 4)}\n\n---\n\n")
    shared = {"signature": signature, "corpus": corpus, "reasoning_len": sizes.out(REASONING_TOKENS),
              "answer_len": sizes.out(ANSWER_TOKENS)}
    return Batch(shared, [{"question": sentences(seeded("rag-q", sizes.seed, i), sizes.tokens(QUESTION_TOKENS))}
                          for i in range(num_programs)])


WORKLOAD = Workload("rag_pipeline", "retrieve, reason, answer, check (select) over shared demos",
                    rag_pipeline, make_batch)
