"""The same static-batch workload as bench_one_batch through transformers' `generate()`, as the
baseline ratio (random weights from a config, or a HF folder).

    python -m sgl.bench_transformers --model-path llama-3.1-8b-dummy --batch-size 1 --input-len 128 --output-len 256
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import transformers

from sgl.runtime.bench_utils import append_jsonl
from sgl.runtime.loader import resolve_model_path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--result-filename", default=None)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
    path = resolve_model_path(args.model_path)
    cfg = transformers.AutoConfig.from_pretrained(path)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
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


if __name__ == "__main__":
    main()
