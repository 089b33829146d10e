"""Offline throughput through `sgl.Engine` on a random workload (SGLang's flag names).

    python -m sgl.bench_offline_throughput --num-prompts 500 --random-input-len 1024 \
        --random-output-len 1024 --random-range-ratio 0 [--model-path P --load-format dummy]

Input and output lengths are drawn uniformly from [len * range_ratio, len]; EOS is ignored so
every request produces its drawn length."""
from __future__ import annotations

import argparse
import random
import time

from sgl.bench_utils import append_jsonl
from sgl.runtime.config import ServerArgs


def random_workload(num: int, input_len: int, output_len: int, ratio: float, vocab: int,
                    seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        il = rng.randint(max(int(input_len * ratio), 1), input_len)
        ol = rng.randint(max(int(output_len * ratio), 1), output_len)
        out.append(([rng.randrange(vocab) for _ in range(il)], ol))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--random-input-len", type=int, default=256)
    parser.add_argument("--random-output-len", type=int, default=64)
    parser.add_argument("--random-range-ratio", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--result-filename", default=None)
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(argv)
    from sgl.runtime.engine import Engine
    server_args = ServerArgs.from_cli_args(args)
    engine = Engine(**vars(server_args))
    work = random_workload(args.num_prompts, args.random_input_len, args.random_output_len,
                           args.random_range_ratio, engine.runner.vocab_size, args.seed)
    params = [{"max_new_tokens": ol, "ignore_eos": True, "temperature": 0} for _, ol in work]
    engine.generate(input_ids=[work[0][0][:8]], sampling_params=[{"max_new_tokens": 2}])  # warm up
    t0 = time.perf_counter()
    outs = engine.generate(input_ids=[ids for ids, _ in work], sampling_params=params)
    dur = time.perf_counter() - t0
    engine.shutdown()
    n_in = sum(len(ids) for ids, _ in work)
    n_out = sum(o["meta_info"]["completion_tokens"] for o in outs)
    r = {"num_prompts": args.num_prompts, "duration_s": dur, "total_input_tokens": n_in,
         "total_output_tokens": n_out, "request_throughput": args.num_prompts / dur,
         "input_throughput": n_in / dur, "output_throughput": n_out / dur,
         "total_throughput": (n_in + n_out) / dur}
    print("====== Offline Throughput Benchmark Result ======")
    for k, v in r.items():
        print(f"{k:<24} {v:.2f}" if isinstance(v, float) else f"{k:<24} {v}")
    append_jsonl(args.result_filename, r)
    return r


if __name__ == "__main__":
    main()
