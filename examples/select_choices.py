"""select: let the model pick among fixed choices, scored from prompt logprobs.

    python examples/select_choices.py [--backend URL]
"""
from common import setup

import sgl


@sgl.function
def classify(s, review, method):
    s += "Review: " + review + "\n"
    s += "Is this review positive or negative? Answer:"
    s += sgl.select("label", choices=[" positive", " negative"], choices_method=method)


@sgl.function
def tool_use(s, question):
    s += "To answer this question: " + question + ". "
    s += "I need to use a " + sgl.gen("tool", choices=["calculator", "search engine"]) + ". "


if __name__ == "__main__":
    setup(__doc__)
    review = "The food was cold and the waiter ignored us for an hour."
    for method in (sgl.token_length_normalized, sgl.greedy_token_selection,
                   sgl.unconditional_likelihood_normalized):
        state = classify.run(review=review, method=method)
        scores = state.get_meta_info("label")["normalized_prompt_logprobs"]
        print(f"{method!r:<36} -> {state['label'].strip():<9} mean logprobs {[round(x, 3) for x in scores]}")
    for q in ("What is 37 * 89", "Who won the 2010 World Cup"):
        print(q, "->", tool_use.run(question=q)["tool"])
