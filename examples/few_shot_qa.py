"""Few-shot question answering over a batch with run_batch (the shared few-shot prefix is
cached once and reused by every question).

    python examples/few_shot_qa.py [--backend URL]
"""
from common import setup

import sgl

EXAMPLES = """The following are questions with short answers.

Question: What is the capital of Japan?
Answer: Tokyo

Question: How many legs does a spider have?
Answer: Eight

Question: What color is the sky on a clear day?
Answer: Blue

"""


@sgl.function
def few_shot_qa(s, question):
    s += EXAMPLES
    s += "Question: " + question + "\n"
    s += "Answer:" + sgl.gen("answer", max_tokens=8, stop="\n")


if __name__ == "__main__":
    setup(__doc__)
    questions = ["What is the capital of France?", "How many days are in a week?",
                 "What is the largest ocean?", "What do bees make?"]
    states = few_shot_qa.run_batch([{"question": q} for q in questions], temperature=0, progress_bar=True)
    for q, s in zip(questions, states):
        meta = s.get_meta_info("answer")
        print(f"{q:<35} -> {s['answer'].strip():<15} (cached {meta['cached_tokens']}/{meta['prompt_tokens']} prompt tokens)")
