"""Constrained extraction: instructions with two worked examples (~600 tokens) shared by every
program; each program pastes a document (~400 tokens), generates a JSON object under a
`json_schema`, then the document's date under a `regex`, extending the JSON call's text."""
from __future__ import annotations

import json
from typing import Any

import sgl
from sgl.bench_programs.text import NAMES, seeded, sentences, words
from sgl.bench_programs.workload import Batch, Sizes, Workload

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 32},
        "country": {"type": "string", "maxLength": 24},
        "population": {"type": "integer", "minimum": 0, "maximum": 99_999_999},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
    },
    "required": ["name", "country", "population", "landmarks"],
    "additionalProperties": False,
}
DATE_REGEX = r"[12][0-9]{3}-[01][0-9]-[0-3][0-9]"
DATE_TOKENS = 16  # room for the ten characters whatever the tokenizer; not scaled
INSTRUCTIONS = ("Extract facts about the city the document describes as a JSON object with the "
                "keys name, country, population and landmarks, then give the date the document was "
                "written.\n\n")
NUM_SHOTS = 2
DOCUMENT_TOKENS = 400
EXAMPLE_DOCUMENT_TOKENS = 220
JSON_TOKENS = 96


@sgl.function
def json_extraction(s, examples, document, json_len):
    s += examples + "Document: " + document + "\nJSON:"
    s += sgl.gen("info", max_tokens=json_len, json_schema=SCHEMA)
    s += "\nDate written:" + sgl.gen("date", max_tokens=DATE_TOKENS, regex=" " + DATE_REGEX)


def _example(rng: Any, sizes: Sizes) -> str:
    info = {"name": words(rng, 2).title(), "country": words(rng, 1).title(),
            "population": rng.randint(10_000, 9_000_000), "landmarks": [words(rng, 2) for _ in range(2)]}
    date = f"{rng.randint(1900, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return (f"Document: {sentences(rng, sizes.tokens(EXAMPLE_DOCUMENT_TOKENS))}\n"
            f"JSON: {json.dumps(info)}\nDate written: {date}\n\n")


def make_batch(sizes: Sizes, num_programs: int) -> Batch:
    rng = seeded("json", sizes.seed)
    examples = INSTRUCTIONS + "".join(_example(rng, sizes) for _ in range(NUM_SHOTS))
    out = []
    for i in range(num_programs):
        rng = seeded("json-d", sizes.seed, i)
        city = f"{NAMES[i % len(NAMES)]}ton"
        out.append({"document": f"{city} is a city. " + sentences(rng, sizes.tokens(DOCUMENT_TOKENS))})
    return Batch({"examples": examples, "json_len": sizes.out(JSON_TOKENS)}, out)


WORKLOAD = Workload("json_extraction", "a json_schema gen then a regex gen over a pasted document",
                    json_extraction, make_batch)
