"""Programs at scale (issue #26), through the public frontend (`run_batch`, one thread per program,
`sgl.LocalBackend(sgl.Engine(...))`):

- hellaswag: N HellaSwag-shaped programs (a 16-shot prefix of about 800 tokens, a context, then
  `select` over 4 endings of 15 words) run at once, against the same programs 8 at a time
  (answers must be equal, no step may fail) and, for the first N, against a cache-off engine.
- logprobs_8k: prompt logprobs of an 8k-token prompt with top_logprobs_num 20.
- extraction: 128 programs (`gen` with a regex) over 8 documents of about 800 tokens, 16 a
  document, submitted together: cache hit rate against the optimum the prompts' trie allows,
  and time against a cache-off engine.

    python -m sgl.bench_programs_scale --model-path llama-3.1-8b-dummy --load-format dummy \\
        --tokenizer-path .tok/llama3 [--sizes 128,512] [--parts hellaswag,extraction] \\
        [--result-filename out.jsonl] [server flags]

Each part runs in a process of its own (an engine per configuration), so the program also runs
unchanged on an older checkout (`PYTHONPATH=<tree>`, this file copied in) for before/after
figures: it uses the public API only, and reports what that checkout does not count as None."""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from typing import Any

from sgl.bench_utils import append_jsonl
from sgl.runtime.scheduler.prefix_trie import PrefixTrie

WORDS = ("the a man woman dog cat child runs walks jumps holds opens closes kitchen garden street "
         "table chair window door slowly quickly then after before water ball book phone car bike "
         "red green small large old new happy tired friend teacher player camera guitar paint "
         "rope ladder bowl knife bread cheese river hill snow sun rain music picture letter").split()
PARTS = ("hellaswag", "hellaswag_off", "extraction", "extraction_off")


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


def hellaswag_args(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Program arguments: the shared 16-shot prefix, each program's context and 4 endings."""
    rng = random.Random(1234)
    shots = [f"{_sentence(rng, 25)}. Answer: {_sentence(rng, 15)}.\n\n" for _ in range(16)]
    prefix = "".join(shots)
    rng = random.Random(seed)
    return [{"prefix": prefix, "context": f"{_sentence(rng, 25)}. Answer:",
             "endings": [f" {_sentence(rng, 15)}." for _ in range(4)]} for _ in range(n)]


def extraction_args(num_docs: int = 8, per_doc: int = 16) -> list[dict[str, Any]]:
    rng = random.Random(99)
    docs = [" ".join(_sentence(rng, 20) + "." for _ in range(32)) for _ in range(num_docs)]
    fields = [f"field number {i}" for i in range(per_doc)]
    return [{"doc": docs[d], "field": fields[f]} for f in range(per_doc) for d in range(num_docs)]


def _programs() -> tuple[Any, Any]:
    import sgl

    @sgl.function
    def hellaswag(s, prefix, context, endings):
        s += prefix + context
        s += sgl.select("answer", choices=endings)

    @sgl.function
    def extract(s, doc, field):
        s += doc + "\nQuestion: what is the " + field + "?\nAnswer:"
        s += sgl.gen("value", regex=r" [a-z]{1,8}( [a-z]{1,8}){0,2}\.", max_tokens=12, temperature=0)

    return hellaswag, extract


def _stats(engine: Any) -> dict[str, Any]:
    s = engine.scheduler
    recovery = getattr(s, "recovery", None)
    return {"cached": s.stats.total_cached_tokens, "prompt": s.stats.total_prompt_tokens,
            "failed_steps": recovery.num_failed_steps if recovery is not None else None}


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    failed = None if after["failed_steps"] is None else after["failed_steps"] - before["failed_steps"]
    prompt = after["prompt"] - before["prompt"]
    return {"hit_rate": (after["cached"] - before["cached"]) / max(prompt, 1), "failed_steps": failed}


def _run(engine: Any, program: Any, args: list[dict], threads: int) -> tuple[float, list, dict]:
    import sgl
    backend = sgl.LocalBackend(engine)
    engine.flush_cache()
    before, t0 = _stats(engine), time.perf_counter()
    states = program.run_batch(args, backend=backend, num_threads=threads, temperature=0)
    seconds = time.perf_counter() - t0
    return seconds, states, _delta(before, _stats(engine))


def _answers(states: list) -> tuple[list, list, int]:
    """(answers, their normalized logprobs per choice, number of failed programs)."""
    answers, scores, failed = [], [], 0
    for st in states:
        if st.error() is not None:
            failed += 1
            answers.append(None)
            scores.append(None)
            continue
        answers.append(st["answer"])
        scores.append(st.get_meta_info("answer")["normalized_prompt_logprobs"])
    return answers, scores, failed


def part_hellaswag(engine: Any, sizes: list[int]) -> dict[str, Any]:
    hellaswag, _ = _programs()
    _run(engine, hellaswag, hellaswag_args(16, seed=7), 16)  # warm-up: Triton variants, graphs
    out: dict[str, Any] = {}
    for n in sizes:
        args = hellaswag_args(n)
        seconds, states, delta = _run(engine, hellaswag, args, n)
        answers, _, failed = _answers(states)
        _, ref_states, _ = _run(engine, hellaswag, args, 8)
        ref, ref_scores, ref_failed = _answers(ref_states)
        differ = [i for i, (a, b) in enumerate(zip(answers, ref)) if a != b]
        margins = [_margin(ref_scores[i]) for i in differ if ref_scores[i] is not None]
        out[f"hellaswag_{n}"] = {"seconds": seconds, "failed_programs": failed, "ref_failed": ref_failed,
                                 "num_differ": len(differ), "differ_ref_margins": margins, **delta}
    out["logprobs_8k"] = _logprobs_8k(engine)
    return out


def _margin(scores: list[float]) -> float:
    """How far the reference's best choice was ahead of the second (small: a near-tie that
    batch-shape rounding may flip)."""
    top = sorted(scores, reverse=True)
    return top[0] - top[1]


def _logprobs_8k(engine: Any) -> dict[str, Any]:
    num_tokens = min(8192, engine.get_server_info()["context_length"] - 1)  # room for one new token
    ids = [(i * 7919) % 30000 + 1000 for i in range(num_tokens)]
    t0 = time.perf_counter()
    try:
        out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0},
                              return_logprob=True, logprob_start_len=0, top_logprobs_num=20)
    except Exception as e:  # noqa: BLE001 - reported as the figure
        return {"ok": False, "error": repr(e)[:300]}
    meta = out["meta_info"]
    ok = (meta["finish_reason"]["type"] != "abort" and len(meta["input_token_logprobs"]) == len(ids)
          and all(len(t) == 20 for t in meta["input_top_logprobs"][1:]))
    return {"ok": ok, "num_tokens": num_tokens, "seconds": time.perf_counter() - t0,
            "finish_reason": meta["finish_reason"]}


def part_hellaswag_off(engine: Any, sizes: list[int]) -> dict[str, Any]:
    hellaswag, _ = _programs()
    _run(engine, hellaswag, hellaswag_args(16, seed=7), 16)
    seconds, states, _ = _run(engine, hellaswag, hellaswag_args(sizes[0]), sizes[0])
    return {f"hellaswag_{sizes[0]}_off": {"seconds": seconds, "failed_programs": _answers(states)[2]}}


def part_extraction(engine: Any, num_docs: int, per_doc: int, suffix: str = "") -> dict[str, Any]:
    _, extract = _programs()
    args = extraction_args(num_docs, per_doc)
    _run(engine, extract, extraction_args(num_docs=2, per_doc=2), 4)  # warm-up, grammar compile
    seconds, states, delta = _run(engine, extract, args, len(args))
    texts = [a["doc"] + "\nQuestion: what is the " + a["field"] + "?\nAnswer:" for a in args]
    optimum = trie_optimum([engine.tokenizer.encode(t, add_special_tokens=False) for t in texts])
    failed = sum(st.error() is not None for st in states)
    return {f"extraction{suffix}": {"seconds": seconds, "failed_programs": failed, "trie_optimum": optimum,
                                    "of_optimum": delta["hit_rate"] / optimum, **delta}}


def trie_optimum(prompts: list[list[int]]) -> float:
    """The best hit rate for prompts sent together: every distinct prefix token computed once."""
    trie = PrefixTrie()
    for p in prompts:
        trie.insert(p)
    total = sum(map(len, prompts))
    return (total - trie.num_tokens) / total


def run_part(part: str, args: argparse.Namespace, server: dict[str, Any]) -> dict[str, Any]:
    from sgl.runtime.engine import Engine
    sizes = [int(x) for x in args.sizes.split(",")]
    engine = Engine(**server, disable_radix_cache=part.endswith("_off"))
    try:
        if part == "hellaswag":
            return part_hellaswag(engine, sizes)
        if part == "hellaswag_off":
            return part_hellaswag_off(engine, sizes)
        return part_extraction(engine, args.num_docs, args.per_doc, "_off" if part.endswith("_off") else "")
    finally:
        engine.shutdown()


def figures(r: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = sizes[0]
    on, off = r.get(f"hellaswag_{n}"), r.get(f"hellaswag_{n}_off")
    if on and off:
        out[f"hellaswag_{n}_speedup_vs_cache_off"] = off["seconds"] / on["seconds"]
    for size in sizes:
        h = r.get(f"hellaswag_{size}")
        if h:
            out[f"hellaswag_{size}_differ_from_8_at_a_time"] = h["num_differ"]
            out[f"hellaswag_{size}_failed_steps"] = h["failed_steps"]
            out[f"hellaswag_{size}_failed_programs"] = h["failed_programs"]
    if "logprobs_8k" in r:
        out["logprobs_8k_top20_ok"] = r["logprobs_8k"]["ok"]
    ex, ex_off = r.get("extraction"), r.get("extraction_off")
    if ex:
        out["extraction_hit_rate_of_optimum"] = ex["of_optimum"]
    if ex and ex_off:
        out["extraction_speedup_vs_cache_off"] = ex_off["seconds"] / ex["seconds"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from sgl.runtime.config import ServerArgs
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128,512", help="Programs run at once (hellaswag); the first "
                   "is also run on a cache-off engine.")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--num-docs", type=int, default=8, help="extraction: documents")
    p.add_argument("--per-doc", type=int, default=16, help="extraction: programs per document")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # one part, in this process
    p.add_argument("--result-filename", default=None)
    ServerArgs.add_cli_args(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    server = {k: v for k, v in vars(ServerArgs.from_cli_args(args)).items()
              if v != getattr(ServerArgs(), k) and k != "disable_radix_cache"}
    if args.part:
        print("PART-RESULT " + json.dumps(run_part(args.part, args, server)), flush=True)
        return {}
    results: dict[str, Any] = {}
    for part in args.parts.split(","):
        proc = subprocess.run([sys.executable, "-m", "sgl.bench_programs_scale", *argv, "--part", part],
                              capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PART-RESULT ")), None)
        if line is None:
            results[f"{part}_error"] = (proc.stdout + proc.stderr)[-3000:]
            print(f"# {part} failed:\n{results[f'{part}_error']}", flush=True)
            continue
        results.update(json.loads(line[len("PART-RESULT "):]))
        print(f"# {part}: {line[len('PART-RESULT '):][:2000]}", flush=True)
    results["figures"] = figures(results, [int(x) for x in args.sizes.split(",")])
    print(json.dumps(results["figures"], indent=1))
    append_jsonl(args.result_filename, results)
    return results


if __name__ == "__main__":
    main()
