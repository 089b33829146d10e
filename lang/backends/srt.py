"""What the local engine and an sgl/SGLang server have in common: SGLang's native /generate
request. Subclasses only say how a request is sent (`_send`, `_send_stream`); building requests,
`select` scoring and prefix caching live here, so both give the same results for a program."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sgl.lang.backends.base import BaseBackend
from sgl.lang.choices import ChoicesDecision, ChoicesSamplingMethod, mean_logprob
from sgl.lang.global_config import global_config
from sgl.lang.ir import SglSamplingParams

Payload = dict[str, Any]


class SrtBackend(BaseBackend):
    def _send(self, data: Payload) -> dict | list:
        """POST one /generate request; a dict back, or a list for a batch."""
        raise NotImplementedError

    def _send_stream(self, data: Payload) -> Iterator[tuple[str, dict]]:
        """POST a streaming /generate request; yield (new text, meta_info) per chunk."""
        raise NotImplementedError

    def _request(self, data: Payload) -> dict | list:
        """`_send`, with an aborted sequence raised as the program's error."""
        out = self._send(data)
        for o in out if isinstance(out, list) else [out]:
            check_finished(o["meta_info"])
        return out

    # --- generation ----------------------------------------------------------------------------

    def _payload(self, s: Any, params: SglSamplingParams) -> Payload:
        sampling = {"skip_special_tokens": global_config.skip_special_tokens_in_output,
                    "spaces_between_special_tokens": global_config.spaces_between_special_tokens_in_out,
                    **params.to_srt_kwargs()}
        return {"text": s.text_, "sampling_params": sampling, **params.logprob_kwargs()}

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[Any, Any]:
        out = self._request(self._payload(s, sampling_params))
        if isinstance(out, list):  # n > 1
            return [o["text"] for o in out], [o["meta_info"] for o in out]
        return out["text"], out["meta_info"]

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams) -> Iterator[tuple[str, dict]]:
        if (sampling_params.n or 1) > 1:
            raise ValueError("gen(n > 1) cannot stream; run the program with stream=False")
        data = self._payload(s, sampling_params)
        data["stream"] = True
        return _checked_stream(self._send_stream(data))

    def cache_prefix(self, prefix_str: str) -> None:
        if prefix_str:
            self._request({"text": prefix_str, "sampling_params": {"max_new_tokens": 0}})

    # --- select --------------------------------------------------------------------------------

    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Score each choice by the logprobs of its tokens after the prompt. The prompt is sent
        once first (cached); the choices then go as one batch whose logprobs start two tokens
        before the prompt ends, so a token that merges the prompt's end with the choice's start
        (token healing) is scored as part of the choice."""
        if temperature > 1e-5:
            raise ValueError("select() scores choices greedily; temperature must be 0")
        start = 0
        if s.text_:
            prefix = self._request({"text": s.text_, "sampling_params": {"max_new_tokens": 0}})
            start = max(prefix["meta_info"]["prompt_tokens"] - 2, 0)
        out = self._request({"text": [s.text_ + c for c in choices],
                          "sampling_params": {"max_new_tokens": 0, "temperature": 0},
                          "return_logprob": True, "return_text_in_logprobs": True,
                          "logprob_start_len": start})
        input_lps = [choice_token_logprobs(o["meta_info"]["input_token_logprobs"], c)
                     for o, c in zip(out, choices)]
        unconditional = None
        if choices_method.requires_unconditional_logprobs:
            unconditional = self.unconditional_logprobs(input_lps)
        return choices_method(
            choices=choices, normalized_prompt_logprobs=[mean_logprob(x) for x in input_lps],
            input_token_logprobs=input_lps,
            output_token_logprobs=[o["meta_info"].get("output_token_logprobs", []) for o in out],
            unconditional_token_logprobs=unconditional)

    def unconditional_logprobs(self, token_logprobs: list[list[tuple]]) -> list[list[tuple]]:
        """Logprobs of each choice's tokens with no prompt before them."""
        ids = [[e[1] for e in entries] for entries in token_logprobs]
        todo = [i for i, x in enumerate(ids) if x]
        result: list[list[tuple]] = [[] for _ in ids]
        if todo:
            out = self._request({"input_ids": [ids[i] for i in todo], "sampling_params": {"max_new_tokens": 0},
                              "return_logprob": True, "logprob_start_len": 0})
            for i, o in zip(todo, out):
                result[i] = list(o["meta_info"]["input_token_logprobs"])
        return result


def check_finished(meta_info: dict[str, Any]) -> None:
    """A sequence that ended in an abort is an error of the program, never its result: its text
    and logprobs were cut short wherever the abort found them."""
    reason = meta_info.get("finish_reason")
    if isinstance(reason, dict) and reason.get("type") == "abort":
        raise RuntimeError(f"request aborted: {reason.get('message', 'no reason given')}")


def _checked_stream(chunks: Iterator[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    for delta, meta_info in chunks:
        check_finished(meta_info)
        yield delta, meta_info


def choice_token_logprobs(entries: list, choice: str) -> list[tuple]:
    """The trailing entries that spell `choice`: walk back from the end until their text covers
    it. The first of them may also hold the end of the prompt (a healed boundary token)."""
    picked: list[tuple] = []
    covered = 0
    for entry in reversed(entries):
        if covered >= len(choice):
            break
        text = entry[2]
        if text is None:
            raise RuntimeError("the backend returned logprobs without token text "
                               "(return_text_in_logprobs was ignored); select() needs it")
        picked.append(tuple(entry))
        covered += len(text)
    return picked[::-1]

