"""The same workloads as sgl's benchmarks through transformers' `generate()`, as the baseline
ratio (random weights from a config, or a HF folder).

bench_one_batch's static batch:

    python -m sgl.bench_transformers --model-path llama-3.1-8b-dummy --batch-size 1 --input-len 128 --output-len 256

bench_offline_throughput's random workload (`--num-prompts N`; the same flags and seed draw the
same prompts and lengths): transformers has no continuous batching, so the prompts run in static
batches of --batch-size, left-padded, each batch generating as many tokens as its longest
request wants (EOS ignored); only the tokens each request asked for count.

    python -m sgl.bench_transformers --model-path llama-3.1-8b-dummy --num-prompts 50 --batch-size 50 \
        --random-input-len 4096 --random-output-len 2048 --random-range-ratio 0
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import transformers

from sgl.bench_utils import append_jsonl
from sgl.runtime.loader import resolve_model_path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--result-filename", default=None)
    p.add_argument("--num-prompts", type=int, default=0, help="Run bench_offline_throughput's random workload.")
    p.add_argument("--random-input-len", type=int, default=256)
    p.add_argument("--random-output-len", type=int, default=64)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
    path = resolve_model_path(args.model_path)
    cfg = transformers.AutoConfig.from_pretrained(path)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    if args.num_prompts:
        return _offline(model, cfg, args, device)
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.input_len), device=device)
    gen = dict(max_new_tokens=args.output_len, min_new_tokens=args.output_len, do_sample=False,
               eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids[:, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm up
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, **gen)
        if device == "cuda":
            torch.cuda.synchronize()
        dur = time.perf_counter() - t
    r = {"engine": "transformers", "transformers": transformers.__version__, "batch_size": args.batch_size,
         "input_len": args.input_len, "output_len": args.output_len, "total_latency": dur,
         "output_throughput": args.batch_size * args.output_len / dur}
    print(json.dumps(r))
    append_jsonl(args.result_filename, r)
    return r


@torch.no_grad()
def _offline(model, cfg, args: argparse.Namespace, device: str) -> dict:
    from sgl.bench_offline_throughput import random_workload
    work = random_workload(args.num_prompts, args.random_input_len, args.random_output_len,
                           args.random_range_ratio, cfg.vocab_size, args.seed)
    model.generate(torch.zeros((1, 8), dtype=torch.long, device=device), max_new_tokens=2,
                   do_sample=False, pad_token_id=0)  # warm up
    _sync(device)
    t = time.perf_counter()
    for i in range(0, len(work), args.batch_size):
        chunk = work[i:i + args.batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (prompt, _) in enumerate(chunk):  # left padding
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        steps = max(ol for _, ol in chunk)
        model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=steps,
                       min_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    _sync(device)
    dur = time.perf_counter() - t
    n_in, n_out = sum(len(ids) for ids, _ in work), sum(ol for _, ol in work)
    r = {"engine": "transformers", "transformers": transformers.__version__, "num_prompts": len(work),
         "batch_size": args.batch_size, "duration_s": dur, "total_input_tokens": n_in,
         "total_output_tokens": n_out, "output_throughput": n_out / dur,
         "total_throughput": (n_in + n_out) / dur}
    print(json.dumps(r))
    append_jsonl(args.result_filename, r)
    return r


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
