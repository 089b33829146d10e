"""Greedy parity across tensor-parallel sizes: the same random prompts, greedy, through an Engine
at each --tp-size (each in its own process), compared with the first size's tokens. Reports per
size the share of requests whose tokens are all identical and the share of tokens generated
before each request's first divergence (after a divergence the two runs continue different texts, so later positions say
nothing). Dummy weights are the same model at every tp_size (runtime/loader/dummy.py).

Greedy tokens flip wherever two logits are nearly tied, which random weights make common, so each
size also scores the first size's outputs teacher-forced (one prefill over prompt + output, the
log-probability of every output token and the top two candidates at each position). Reported per
size: the largest and mean |difference| in those log-probabilities, the share of positions whose
top candidate agrees, and the same share over "decisive" positions (the first size's top two more
than --margin nats apart), where rounding alone should never flip the choice.

    python -m sgl.bench_tp_parity --model-path llama-3.1-8b-dummy --load-format dummy \\
        --tp-sizes 1 2 4 --num-prompts 32 --input-len 256 --output-len 128 --out parity.json
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import random
import subprocess
import sys
import tempfile

from sgl.runtime.engine import Engine

logger = logging.getLogger("tp_parity")


def run(tp_size: int, args: argparse.Namespace, prompts: list[list[int]], dump: str) -> None:
    """Generate at this tp_size, then score the reference outputs (args.score_ids, else these),
    and write both to `dump` before the engine shuts down (a shutdown problem then costs the
    time, not the result)."""
    logger.info("tp_size %d: starting the engine", tp_size)
    with Engine(args.model_path, load_format=args.load_format, dtype=args.dtype, tp_size=tp_size,
                skip_tokenizer_init=True) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params={
            "max_new_tokens": args.output_len, "temperature": 0, "ignore_eos": True})
        tokens = [o["output_ids"] for o in outs]
        logger.info("tp_size %d: generated", tp_size)
        ref = tokens
        if args.score_ids:
            with open(args.score_ids) as f:
                ref = json.load(f)
        scored = engine.generate(input_ids=[p + o for p, o in zip(prompts, ref)],
                                 sampling_params={"max_new_tokens": 0}, return_logprob=True,
                                 logprob_start_len=args.input_len, top_logprobs_num=2)
        scores = [[(lp, top[0][1], top[0][0], top[1][0]) for (lp, _, _), top in
                   zip(s["meta_info"]["input_token_logprobs"], s["meta_info"]["input_top_logprobs"])]
                  for s in scored]
        with open(dump, "w") as f:
            json.dump({"tokens": tokens, "scores": scores}, f)
    logger.info("tp_size %d: shut down", tp_size)


def run_isolated(tp_size: int, argv: list[str], timeout: float, score_ids: list | None = None) -> dict:
    """One tp_size in a fresh process: nothing (GPU memory, process groups) carries over from
    the last size, and a hang costs `timeout` seconds and that size alone."""
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "out.json")
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--only-tp", str(tp_size), "--dump", dump]
        if score_ids is not None:
            cmd += ["--score-ids", os.path.join(tmp, "ref.json")]
            with open(cmd[-1], "w") as f:
                json.dump(score_ids, f)
        try:
            subprocess.run(cmd, check=True, timeout=timeout)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            if not os.path.exists(dump):
                raise
            logger.warning("tp_size %d: the run ended badly after writing its tokens (%s)", tp_size, e)
        with open(dump) as f:
            return json.load(f)


def compare(ref: list[list[int]], got: list[list[int]]) -> dict:
    agree = []
    for a, b in zip(ref, got):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        agree.append(n)
    return {"identical_requests": sum(a == b for a, b in zip(ref, got)) / len(ref),
            "tokens_before_divergence": sum(agree) / max(sum(map(len, ref)), 1),
            "first_divergence": [n for n, a in zip(agree, ref) if n < len(a)]}


def compare_scores(ref: list[list], got: list[list], margin: float) -> dict:
    """Teacher-forced: both sizes scored the same tokens. Rows are (log-probability of the
    token, top candidate id, top log-probability, second log-probability) per position."""
    pairs = [(r, g) for rr, gg in zip(ref, got) for r, g in zip(rr, gg)]
    diffs = [abs(r[0] - g[0]) for r, g in pairs]
    decisive = [(r, g) for r, g in pairs if r[2] - r[3] > margin]
    flips = [r[2] - r[3] for r, g in pairs if r[1] != g[1]]
    return {"positions": len(pairs), "max_abs_logprob_diff": max(diffs, default=0.0),
            "mean_abs_logprob_diff": sum(diffs) / max(len(diffs), 1),
            "top1_agreement": sum(r[1] == g[1] for r, g in pairs) / max(len(pairs), 1),
            "decisive_positions": len(decisive), "decisive_margin_nats": margin,
            "top1_agreement_decisive": sum(r[1] == g[1] for r, g in decisive) / max(len(decisive), 1),
            "max_margin_at_a_flip": max(flips, default=0.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--load-format", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tp-sizes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=32000, help="Prompt ids are drawn below this.")
    p.add_argument("--out", default=None)
    p.add_argument("--margin", type=float, default=0.1,
                   help="Nats between the top two candidates that make a position decisive.")
    p.add_argument("--hang-dump", type=float, default=0,
                   help="After this many seconds, a size's process prints every thread's stack and "
                        "exits (0: never).")
    p.add_argument("--only-tp", type=int, default=None, help=argparse.SUPPRESS)  # one size, in a child
    p.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    p.add_argument("--score-ids", default=None, help=argparse.SUPPRESS)  # the reference's outputs
    argv = sys.argv[1:]
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.hang_dump and args.only_tp is not None:  # in each size's process
        faulthandler.dump_traceback_later(args.hang_dump, exit=True)
        # and in its follower ranks: their stacks every half that (runtime/server/ipc.py)
        os.environ["SGL_STACK_DUMP_S"] = str(args.hang_dump / 2)
    rng = random.Random(0)
    prompts = [[rng.randrange(args.vocab_size) for _ in range(args.input_len)] for _ in range(args.num_prompts)]
    if args.only_tp is not None:
        run(args.only_tp, args, prompts, args.dump)
        return
    timeout = (args.hang_dump or 3600) + 60
    first = args.tp_sizes[0]
    runs = {first: run_isolated(first, argv, timeout)}
    ref = runs[first]
    for tp in args.tp_sizes[1:]:
        runs[tp] = run_isolated(tp, argv, timeout, score_ids=ref["tokens"])
    report = {"model": args.model_path, "dtype": args.dtype, "reference_tp_size": first,
              "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
              "by_tp_size": {tp: dict(compare(ref["tokens"], runs[tp]["tokens"]),
                                      teacher_forced=compare_scores(ref["scores"], runs[tp]["scores"], args.margin))
                             for tp in args.tp_sizes[1:]}}
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(report, outputs={tp: r["tokens"] for tp, r in runs.items()}), f)


if __name__ == "__main__":
    main()
