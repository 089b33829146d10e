"""MMLU-style 5-shot multiple choice. Per subject, a header and five solved questions (~1,100
tokens) that every question of the subject shares; each program asks one question (~210 tokens)
and generates its answer letter (one token). Programs come grouped by subject, 64 to a subject
(MMLU's hold 100-1,500), in the order an evaluation harness sends them. With six questions'
worth of prompt per program of which five are shared, reuse can at best make prefill ~6x
cheaper."""
from __future__ import annotations

import random

import sgl
from sgl.bench_programs.text import seeded, sentences, words
from sgl.bench_programs.workload import Batch, Sizes, Workload

NUM_SHOTS = 5
QUESTIONS_PER_SUBJECT = 64
QUESTION_TOKENS = 150
CHOICE_TOKENS = 12


@sgl.function
def few_shot_mmlu(s, examples, question):
    s += examples + question
    s += sgl.gen("answer", max_tokens=1)


def _question(rng: random.Random, sizes: Sizes) -> str:
    text = sentences(rng, sizes.tokens(QUESTION_TOKENS))
    for letter in "ABCD":
        text += f"\n{letter}. " + words(rng, sizes.tokens(CHOICE_TOKENS))
    return text + "\nAnswer:"


def _examples(subject: str, rng: random.Random, sizes: Sizes) -> str:
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return head + "".join(f"{_question(rng, sizes)} {rng.choice('ABCD')}\n\n" for _ in range(NUM_SHOTS))


def make_batch(sizes: Sizes, num_programs: int) -> Batch:
    args, examples = [], ""
    for i in range(num_programs):
        subject_index = i // QUESTIONS_PER_SUBJECT
        if i % QUESTIONS_PER_SUBJECT == 0:
            rng = seeded("mmlu", sizes.seed, subject_index)
            examples = _examples(words(rng, 2), rng, sizes)
        args.append({"examples": examples, "question": _question(seeded("mmlu-q", sizes.seed, i), sizes)})
    return Batch({}, args)


WORKLOAD = Workload("mmlu", "5-shot multiple choice, 64 questions per subject, 1 output token",
                    few_shot_mmlu, make_batch, is_few_shot=True)
