"""Run by tests/server/test_sglang_client.py under the *published* sglang package (in a venv of
its own, never with sgl importable): `python sglang_client_program.py URL SCHEMA` drives
`sgl serve` at URL through sglang's RuntimeEndpoint and prints one JSON object of what every
program produced. The test checks the values against references; this file only runs programs."""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import sglang as sgl

CHOICES = [" yes", " no", " maybe"]
METHODS = {"token_length_normalized": sgl.token_length_normalized,
           "greedy_token_selection": sgl.greedy_token_selection,
           "unconditional_likelihood_normalized": sgl.unconditional_likelihood_normalized}


@sgl.function
def qa(s, question):
    s += question + sgl.gen("answer", max_tokens=6)


@sgl.function
def pick(s, method):
    s += "Is the sky blue? Answer:" + sgl.select("choice", choices=CHOICES, choices_method=method)


@sgl.function
def branches(s, mode):
    s += "Two colors:"
    forks = s.fork(2)
    forks += lambda i: f" Color {i + 1}:" + sgl.gen("color", max_tokens=3)
    forks.join(mode=mode)
    s += " Done." + sgl.gen("after", max_tokens=3)


@sgl.function
def story(s):
    s += "Once upon a time" + sgl.gen("story", max_tokens=12, return_logprob=True)


@sgl.function
def constrained(s, schema):
    s += "Three digits: " + sgl.gen("digits", regex=r"[0-9]{3}", max_tokens=8)
    s += "\nA person as JSON: " + sgl.gen("person", json_schema=schema, max_tokens=48)
    s += "\nAn integer: " + sgl.gen_int("int", max_tokens=8)
    s += "\nA number: " + sgl.gen("float", dtype=float, max_tokens=8)
    s += "\nTrue or False: " + sgl.gen("bool", dtype=bool, max_tokens=4)
    s += '\nA name in quotes: ' + sgl.gen_string("string", max_tokens=24)
    s += "\nCount: 1, 2, 3," + sgl.gen("counted", max_tokens=16, stop_regex=r"[0-9]")


def run_all(url: str, schema: str) -> dict[str, Any]:
    sgl.set_default_backend(sgl.RuntimeEndpoint(url))
    greedy = {"temperature": 0.0}
    out: dict[str, Any] = {"model_path": sgl.RuntimeEndpoint(url).get_model_name()}
    state = qa.run(question="The capital of France is", **greedy)
    out["gen"] = {"text": state["answer"], "meta": state.get_meta_info("answer")}
    batch = qa.run_batch([{"question": "One plus one is"}, {"question": "The sky is"}], **greedy)
    out["batch"] = [s["answer"] for s in batch]
    out["select"] = {}
    for name, method in METHODS.items():
        state = pick.run(method=method)
        out["select"][name] = {"decision": state["choice"], "meta": state.get_meta_info("choice")}
    out["fork"] = {}
    for mode in ("gather_variable", "concate_and_append"):
        state = branches.run(mode=mode, **greedy)
        out["fork"][mode] = {"text": state.text(), "after": state["after"],
                             "color": state["color"] if mode == "gather_variable" else None}
    out["stream"] = asyncio.run(stream_story(greedy))
    out["story"] = story.run(**greedy)["story"]
    state = constrained.run(schema=schema, **greedy)
    out["constrained"] = {k: state[k] for k in ("digits", "person", "int", "float", "bool",
                                                "string", "counted")}
    out["counted_meta"] = state.get_meta_info("counted")
    out["server_info_keys"] = sorted(sgl.get_server_info())
    sgl.flush_cache()
    return out


async def stream_story(greedy: dict[str, Any]) -> list[Any]:
    state = story.run(stream=True, **greedy)
    chunks = []
    async for text, meta in state.text_async_iter("story", return_meta_data=True):
        chunks.append([text, meta.get("completion_tokens"), meta.get("finish_reason")])
    return chunks


if __name__ == "__main__":
    print("RESULT " + json.dumps(run_all(sys.argv[1], sys.argv[2])))
