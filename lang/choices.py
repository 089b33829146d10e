"""How `select` picks among choices once a backend has scored them.

Every method receives, per choice, the logprob entries `(logprob, token_id, text)` of the
choice's own tokens (after token healing at the prefix/choice boundary) and returns a
`ChoicesDecision`. Backends compute the logprobs; methods only compare them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Entry = tuple  # (logprob | None, token_id, text | None)


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] | None = None


def _first_argmax(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("-inf")


def mean_logprob(entries: list[Entry]) -> float:
    """Mean logprob of a choice's tokens; entries without a logprob are left out."""
    return _mean([e[0] for e in entries if e[0] is not None])


class ChoicesSamplingMethod:
    """Interface of a selection method. `requires_unconditional_logprobs` asks the backend to
    also score each choice's tokens with no prompt at all."""

    requires_unconditional_logprobs = False

    def __call__(self, *, choices: list[str], normalized_prompt_logprobs: list[float],
                 input_token_logprobs: list[list[Entry]], output_token_logprobs: list[list[Entry]],
                 unconditional_token_logprobs: list[list[Entry]] | None = None) -> ChoicesDecision:
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean token logprob."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        best = _first_argmax(normalized_prompt_logprobs)
        return ChoicesDecision(choices[best], {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs,
        })


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Compare choices token by token, keeping those with the best logprob at each position.
    A choice shorter than the longest is padded with its own mean logprob."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        matrix = greedy_logprob_matrix(input_token_logprobs)
        alive = list(range(len(choices)))
        for col in range(len(matrix[0]) if matrix else 0):
            top = max(matrix[i][col] for i in alive)
            alive = [i for i in alive if matrix[i][col] == top]
            if len(alive) == 1:
                break
        return ChoicesDecision(choices[alive[0]], {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs,
            "greedy_logprob_matrix": matrix,
        })


def greedy_logprob_matrix(input_token_logprobs: list[list[Entry]]) -> list[list[float]]:
    width = max((len(row) for row in input_token_logprobs), default=0)
    matrix = []
    for row in input_token_logprobs:
        values = [e[0] if e[0] is not None else 0.0 for e in row]
        pad = _mean(values) if values else float("nan")
        matrix.append(values + [pad] * (width - len(values)))
    return matrix


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The choice whose tokens gain the most logprob from the prompt: mean over tokens of
    log p(token | prompt) - log p(token | no prompt). The first unconditional token has no
    logprob; it counts as 0."""

    requires_unconditional_logprobs = True

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional token logprobs")
        scores = [unconditional_gain(c, u) for c, u in zip(input_token_logprobs, unconditional_token_logprobs)]
        return ChoicesDecision(choices[_first_argmax(scores)], {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs,
            "unconditional_token_logprobs": unconditional_token_logprobs,
            "normalized_unconditional_prompt_logprobs": scores,
        })


def unconditional_gain(conditional: list[Entry], unconditional: list[Entry]) -> float:
    if len(conditional) != len(unconditional):
        raise ValueError("conditional and unconditional logprobs cover different tokens "
                         f"({len(conditional)} vs {len(unconditional)})")
    gains = [(c[0] or 0.0) - (u[0] or 0.0) for c, u in zip(conditional, unconditional)]
    return _mean(gains) if gains else -math.inf


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
