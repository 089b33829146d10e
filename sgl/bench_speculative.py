"""Speculative decoding sweep: batch sizes x num-steps x topk x num-draft-tokens over the user's
prompts, against the same engine without speculation. Prints a table of output throughput and
acceptance length, and the best setting per batch size.

    python -m sgl.bench_speculative --speculative-algorithm NGRAM --prompts-file prompts.txt \\
        --batch-sizes 1 8 --num-draft-tokens 4 8 16 [server flags]
    python -m sgl.bench_speculative --speculative-algorithm EAGLE \\
        --speculative-draft-model-path HEAD --dataset copy --num-steps 2 3 5 --topk 1 4 --num-draft-tokens 4 8

--prompts-file: one prompt per line, or JSON lines with a "prompt" (or "text") field.
--dataset copy: built-in copy-heavy prompts (rewrite a record list of the prompt).
The target model loads once; each setting swaps the drafter (a benchmark-only switch) and starts
from an empty prefix cache."""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import itertools
import json
import pstats
import random
import time
from typing import Any

from sgl.bench_utils import append_jsonl, hook_steps
from sgl.runtime.config import ServerArgs

_NAMES = ["Alice Martin", "Bruno Costa", "Chen Wei", "Dara Okafor", "Elena Petrova", "Farid Haddad",
          "Greta Lind", "Hiro Tanaka", "Ines Duarte", "Jonas Berg", "Kofi Mensah", "Lena Vogel"]
_CITIES = ["Lisbon", "Osaka", "Nairobi", "Oslo", "Lima", "Perth", "Tunis", "Quebec", "Porto", "Graz"]


def copy_prompts(n: int, seed: int = 0) -> list[str]:
    """Prompts whose answers mostly copy spans of the prompt: rewrite a record list."""
    out = []
    for i in range(n):
        rng = random.Random(seed + i)
        rows = [f"{rng.choice(_NAMES)}, {rng.choice(_CITIES)}, id {rng.randint(1000, 9999)}"
                for _ in range(12)]
        out.append("Records:\n" + "\n".join(rows) + "\n\nRewrite every record above as "
                   "'id: name (city)', one per line, in the same order.\n")
    return out


def read_prompts(path: str) -> list[str]:
    prompts = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                obj = json.loads(line)
                line = obj.get("prompt", obj.get("text"))
                if not isinstance(line, str):
                    raise ValueError(f"{path}: a JSON line needs a string 'prompt' or 'text' field")
            prompts.append(line.replace("\\n", "\n"))
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def settings(args: argparse.Namespace, algorithm: str) -> list[tuple[int, int, int]]:
    """Valid (num_steps, topk, num_draft_tokens) combinations of the sweep."""
    if algorithm == "NGRAM":
        return [(1, 1, t) for t in args.num_draft_tokens]
    out = []
    for steps, topk, tokens in itertools.product(args.num_steps, args.topk, args.num_draft_tokens):
        most = steps + 1 if topk == 1 else 1 + topk + (steps - 1) * topk * topk
        if tokens <= most:
            out.append((steps, topk, tokens))
    return out


def run_one(engine: Any, server_args: ServerArgs, prompts: list[str], params: dict,
            profile: bool = False, batch_size: int = 0) -> dict:
    """Run `prompts` (warm-up, then timed) under `server_args`' speculation, at most
    `batch_size` of them running at once (0: all)."""
    engine.call_in_scheduler(lambda s: s.set_speculative(server_args), timeout=600)
    limit = batch_size or len(prompts)
    engine.call_in_scheduler(lambda s: s.set_max_running(limit), timeout=60)
    # Warm up this setting's shapes (Triton compiles its kernels on first use), then time.
    engine.generate(prompts, params)
    engine.flush_cache()
    prof = cProfile.Profile() if profile else None
    with hook_steps(engine.scheduler, [], prof) if profile else contextlib.nullcontext():
        t = time.perf_counter()
        outs = engine.generate(prompts, params)
        elapsed = time.perf_counter() - t
    if prof is not None:
        print(f"--- scheduler steps, {server_args.speculative_algorithm or 'no speculation'}, "
              f"{len(prompts)} prompts, {elapsed:.3f} s")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(r"sgl|runtime|kernels", 40)
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    verify = sum(o["meta_info"].get("spec_verify_ct", 0) for o in outs)
    accepted = sum(o["meta_info"].get("spec_accepted_tokens", 0) for o in outs)
    return {"throughput_tok_s": tokens / elapsed, "elapsed_s": elapsed, "output_tokens": tokens,
            "accept_len": (accepted + verify) / verify if verify else 1.0,
            "texts": [o["text"] for o in outs]}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts-file", default=None)
    p.add_argument("--dataset", choices=["copy"], default=None, help="Built-in prompts instead of a file.")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--num-steps", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--topk", type=int, nargs="+", default=[1, 4])
    p.add_argument("--num-draft-tokens", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--num-prompts", type=int, default=0,
                   help="Prompts per run, at most the batch size running at once (default: the batch size).")
    p.add_argument("--apply-chat-template", action="store_true")
    p.add_argument("--result-filename", default=None)
    p.add_argument("--profile", action="store_true", help="cProfile the scheduler's steps in every run.")
    ServerArgs.add_cli_args(p)
    args = p.parse_args(argv)
    if bool(args.prompts_file) == bool(args.dataset):
        p.error("pass exactly one of --prompts-file and --dataset")
    base_args = ServerArgs.from_cli_args(args)
    algorithm = base_args.speculative_algorithm
    if algorithm is None:
        p.error("--speculative-algorithm is required")
    prompts = (read_prompts(args.prompts_file) if args.prompts_file
               else copy_prompts(max(args.batch_sizes + [args.num_prompts])))

    from sgl.runtime.engine import Engine
    plain = dataclasses.replace(base_args, speculative_algorithm=None)
    engine = Engine(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)})
    if args.apply_chat_template:
        prompts = [engine.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                        add_generation_prompt=True) for q in prompts]
    params = {"temperature": 0, "max_new_tokens": args.max_new_tokens}
    run_one(engine, plain, prompts[:2], dict(params, max_new_tokens=8))  # warm up
    rows: list[dict] = []
    for bs in args.batch_sizes:
        batch = [prompts[i % len(prompts)] for i in range(max(bs, args.num_prompts))]
        base = run_one(engine, plain, batch, params, args.profile, bs)
        rows.append(_row(bs, None, base, base))
        for steps, topk, tokens in settings(args, algorithm):
            spec_args = dataclasses.replace(base_args, speculative_num_steps=steps,
                                            speculative_eagle_topk=topk, speculative_num_draft_tokens=tokens)
            rows.append(_row(bs, (steps, topk, tokens), run_one(engine, spec_args, batch, params, args.profile, bs),
                             base))
    engine.shutdown()
    _print(rows, algorithm)
    for row in rows:
        append_jsonl(args.result_filename, dict(row, algorithm=algorithm, model=base_args.model_path))
    return rows


def _row(bs: int, setting: tuple[int, int, int] | None, res: dict, base: dict) -> dict:
    same = sum(a == b for a, b in zip(res["texts"], base["texts"])) / len(base["texts"])
    steps, topk, tokens = setting or (0, 0, 0)
    return {"batch_size": bs, "num_steps": steps, "topk": topk, "num_draft_tokens": tokens,
            "throughput_tok_s": round(res["throughput_tok_s"], 2), "accept_len": round(res["accept_len"], 3),
            "speedup": round(res["throughput_tok_s"] / base["throughput_tok_s"], 3),
            "identical_outputs": same, "output_tokens": res["output_tokens"]}


def _print(rows: list[dict], algorithm: str) -> None:
    head = f"{'bs':>4} {'steps':>5} {'topk':>4} {'draft':>5} {'tok/s':>10} {'accept':>7} {'speedup':>8} {'same':>5}"
    print(f"\n{algorithm}\n{head}")
    for r in rows:
        label = ("    -     -     -" if r["num_draft_tokens"] == 0 else
                 f"{r['num_steps']:>5} {r['topk']:>4} {r['num_draft_tokens']:>5}")
        print(f"{r['batch_size']:>4} {label} {r['throughput_tok_s']:>10.1f} {r['accept_len']:>7.2f} "
              f"{r['speedup']:>7.2f}x {r['identical_outputs']:>5.2f}")
    print("\nbest per batch size:")
    for bs in dict.fromkeys(r["batch_size"] for r in rows):
        best = max((r for r in rows if r["batch_size"] == bs), key=lambda r: r["throughput_tok_s"])
        what = ("no speculation" if best["num_draft_tokens"] == 0 else
                f"num_steps={best['num_steps']} topk={best['topk']} num_draft_tokens={best['num_draft_tokens']}")
        print(f"  bs {bs}: {what}  ({best['throughput_tok_s']:.1f} tok/s, {best['speedup']:.2f}x)")


if __name__ == "__main__":
    main()
