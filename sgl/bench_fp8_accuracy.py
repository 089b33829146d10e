"""Accuracy of FP8 weights and FP8 KV cache against the unquantized model, teacher-forced: each
variant scores the same token windows (prompt logprobs of one request per window, through the
Engine: prefill, the KV pool and the attention backend as served), and at every position is
compared with the baseline's:

  - top-1 agreement: the share of positions whose most likely next token is the baseline's;
  - mean |delta logprob|: the mean over positions of |log p(next text token)| differences.

    python -m sgl.bench_fp8_accuracy [--model-path P] [--text-files A.md B.md]
        [--num-windows 16] [--window-len 256] [--variants fp8_weights,fp8_kv,fp8_both]

Windows are token spans of --text-files (default: README.md and docs/*.md of the working
directory) read with the model's tokenizer, or random token ids with --random-tokens (models
without a tokenizer, e.g. tests/data/tiny-llama). With --continue-after K each window keeps its
first K tokens and the rest is the baseline's own greedy continuation; positions are then
counted over the continuation only (does the variant pick the token the baseline generated?).
On CPU the FP8 variants run the dequantizing reference paths (kernels/fp8.py, the torch
attention backend over an FP8 pool).
"""
from __future__ import annotations

import argparse
import glob
import time
from typing import Any

import torch

from sgl.bench_utils import append_jsonl

VARIANTS: dict[str, dict[str, Any]] = {
    "fp8_weights": {"quantization": "fp8"},
    "fp8_kv": {"kv_cache_dtype": "fp8_e4m3"},
    "fp8_kv_e5m2": {"kv_cache_dtype": "fp8_e5m2"},
    "fp8_both": {"quantization": "fp8", "kv_cache_dtype": "fp8_e4m3"},
}

Scores = tuple[list[list[int]], list[list[float]]]  # per window: top-1 ids, text-token logprobs


def text_windows(args: argparse.Namespace) -> list[list[int]]:
    """--num-windows spans of --window-len tokens, back to back through the texts."""
    if args.random_tokens:
        g = torch.Generator().manual_seed(args.seed)
        vocab = args.random_tokens
        return [torch.randint(0, vocab, (args.window_len,), generator=g).tolist()
                for _ in range(args.num_windows)]
    from sgl.runtime.loader.bundled import bundled_model_path
    from sgl.runtime.loader.tokenizer import get_tokenizer
    files = args.text_files or ["README.md", *sorted(glob.glob("docs/*.md"))]
    tok = get_tokenizer(args.model_path or bundled_model_path(), args.tokenizer_path)
    ids: list[int] = []
    for path in files:
        with open(path) as f:
            ids += tok.encode(f.read(), add_special_tokens=False)
    n = args.window_len
    windows = [ids[i:i + n] for i in range(0, len(ids) - n + 1, n)][:args.num_windows]
    if len(windows) < args.num_windows:
        raise SystemExit(f"{files} hold {len(ids)} tokens: fewer than {args.num_windows} "
                         f"windows of {n}")
    return windows


def score(windows: list[list[int]], engine_args: dict[str, Any], first: int = 1) -> Scores:
    """Top-1 ids and the window tokens' logprobs at positions first.. of every window."""
    import sgl
    engine = sgl.Engine(**engine_args)
    try:
        out = engine.generate(input_ids=windows, sampling_params={"max_new_tokens": 1, "temperature": 0},
                              return_logprob=True, logprob_start_len=0, top_logprobs_num=1)
    finally:
        engine.shutdown()
    tops = [[top[0][1] for top in o["meta_info"]["input_top_logprobs"][first:]] for o in out]
    lps = [[lp for lp, _, _ in o["meta_info"]["input_token_logprobs"][first:]] for o in out]
    return tops, lps


def continue_greedily(windows: list[list[int]], keep: int, engine_args: dict[str, Any]) -> list[list[int]]:
    """Each window's first `keep` tokens and the baseline's greedy continuation to its length."""
    import sgl
    engine = sgl.Engine(**engine_args)
    try:
        params = [{"max_new_tokens": len(w) - keep, "temperature": 0, "ignore_eos": True} for w in windows]
        out = engine.generate(input_ids=[w[:keep] for w in windows], sampling_params=params)
    finally:
        engine.shutdown()
    return [w[:keep] + o["output_ids"] for w, o in zip(windows, out)]


def compare(base: Scores, other: Scores) -> dict[str, float]:
    pairs = [(a, b) for wa, wb in zip(base[0], other[0]) for a, b in zip(wa, wb)]
    deltas = [abs(a - b) for wa, wb in zip(base[1], other[1]) for a, b in zip(wa, wb)]
    return {"top1_agreement": sum(a == b for a, b in pairs) / len(pairs),
            "mean_abs_logprob_diff": sum(deltas) / len(deltas),
            "max_abs_logprob_diff": max(deltas), "num_positions": len(pairs)}


def base_args(args: argparse.Namespace) -> dict[str, Any]:
    engine_args = {"load_format": args.load_format, "dtype": args.dtype, "device": args.device,
                   "disable_radix_cache": True, "random_seed": args.seed,
                   "max_total_tokens": max(4096, 2 * args.num_windows * args.window_len)}
    if args.model_path:
        engine_args["model_path"] = args.model_path
    if args.tokenizer_path:
        engine_args["tokenizer_path"] = args.tokenizer_path
    if args.random_tokens:
        engine_args["skip_tokenizer_init"] = True
    return engine_args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    p.add_argument("--tokenizer-path", default=None)
    p.add_argument("--load-format", default="auto")
    p.add_argument("--dtype", default="auto", help="of the baseline and of everything FP8 leaves")
    p.add_argument("--device", default="auto")
    p.add_argument("--text-files", nargs="*", default=None)
    p.add_argument("--random-tokens", type=int, default=0, metavar="VOCAB",
                   help="windows of random ids below VOCAB instead of text")
    p.add_argument("--num-windows", type=int, default=16)
    p.add_argument("--window-len", type=int, default=256)
    p.add_argument("--continue-after", type=int, default=0, metavar="K",
                   help="score the baseline's greedy continuation after each window's first K tokens")
    p.add_argument("--variants", default="fp8_weights,fp8_kv,fp8_both",
                   help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result-filename", default=None)
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; have {list(VARIANTS)}")
    windows = text_windows(args)
    t0 = time.perf_counter()
    first = 1
    if args.continue_after:
        windows, first = continue_greedily(windows, args.continue_after, base_args(args)), args.continue_after
    base = score(windows, base_args(args), first)
    rows = []
    print(f"{'variant':<14} {'top-1 agreement':>16} {'mean |dlogprob|':>16} {'max':>8}  positions")
    for name in names:
        row = {"variant": name, "model_path": args.model_path or "bundled", "dtype": args.dtype,
               "text": f"greedy after {first}" if args.continue_after else "as given",
               **compare(base, score(windows, {**base_args(args), **VARIANTS[name]}, first))}
        rows.append(row)
        append_jsonl(args.result_filename, row)
        print(f"{name:<14} {100 * row['top1_agreement']:15.2f}% {row['mean_abs_logprob_diff']:16.4f} "
              f"{row['max_abs_logprob_diff']:8.3f}  {row['num_positions']}", flush=True)
    print(f"# {len(windows)} windows of {args.window_len} tokens; {time.perf_counter() - t0:.0f} s")
    return rows


if __name__ == "__main__":
    main()
