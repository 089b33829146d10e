"""The offline-throughput workload (bench_offline_throughput: 500 prompts, input U[1, 4096],
output U[1, 2048], ignore_eos) through the real Scheduler with a cost-model runner instead of a
model: how big the decode batches get for a KV pool of POOL tokens, whether anything is retracted,
and how long the schedule would take if every step ran at the H100's roofline for the 8B shape
(weights 16.06 GB + the step's KV at 3.0 TB/s, or its matmul FLOPs at 60% of 770 TFLOP/s,
whichever is longer). Runs on CPU in seconds.

    python -m sgl.bench_schedule_sim [POOL=420000] [NUM_PROMPTS=500] [CONSERVATIVENESS=1.0]
"""
import sys
import time

import numpy as np

from sgl.runtime.config import ServerArgs
from sgl.runtime.io_struct import TokenizedGenerateReq
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.contract import RunnerInfo, RunResult, StepInputs
from sgl.runtime.scheduler.scheduler import Scheduler

# Llama-3.1-8B shape (runtime/configs/llama-3.1-8b-dummy), bf16, on an H100.
WEIGHT_BYTES, MATMUL_PARAMS = 16.06e9, 6.98e9
LAYERS, KV_HEADS, HEAD_DIM, HIDDEN = 32, 8, 128, 4096
KV_BYTES_PER_TOKEN = LAYERS * 2 * KV_HEADS * HEAD_DIM * 2
HBM_BYTES_S, MATMUL_FLOP_S = 3.0e12, 0.6 * 770e12


class CostRunner:
    """The scheduler's `Runner` protocol with no model: every sampled token is 5, and each
    step's roofline time is logged as (batch size, decode-only, seconds)."""

    def __init__(self, pool: int, max_running: int = 1024, chunk: int = 8192, ctx: int = 8192) -> None:
        self.info = RunnerInfo(vocab_size=128256, context_len=ctx, max_total_tokens=pool,
                               max_running_requests=max_running, max_req_rows=max_running + 1,
                               table_width=ctx + 8, chunked_prefill_size=chunk)
        self.log: list[tuple[int, bool, float]] = []

    def launch_batch(self, step: StepInputs) -> "_Done":
        return _Done(self.run_batch(step))

    def launch_forward(self, step: StepInputs) -> StepInputs:
        return step

    def launch_sampling(self, step: StepInputs, forward: object) -> "_Done":
        return self.launch_batch(step)

    def draft(self, inputs: object) -> list:
        raise NotImplementedError("no draft model")

    def set_speculative(self, server_args: object) -> None:
        raise NotImplementedError("no draft model")

    def run_batch(self, step: StepInputs) -> RunResult:
        b = step.batch
        new, kv = sum(b.extend_lens_cpu), sum(b.seq_lens_cpu)
        attn = 4 * HIDDEN * LAYERS * sum(e * s for e, s in zip(b.extend_lens_cpu, b.seq_lens_cpu))
        seconds = max((WEIGHT_BYTES + kv * KV_BYTES_PER_TOKEN) / HBM_BYTES_S,
                      (2 * MATMUL_PARAMS * new + attn) / MATMUL_FLOP_S)
        self.log.append((b.batch_size, new == b.batch_size, seconds))
        return RunResult(next_token_ids=[5] * len(step.sample_rows))


class _Done:
    def __init__(self, result: RunResult) -> None:
        self.result = result

    def resolve(self) -> RunResult:
        return self.result


def main() -> None:
    pool = int(sys.argv[1]) if len(sys.argv) > 1 else 420_000
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    conservativeness = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    rng = np.random.default_rng(0)
    ins, outs = rng.integers(1, 4097, n), rng.integers(1, 2049, n)
    runner = CostRunner(pool)
    sched = Scheduler(ServerArgs(schedule_conservativeness=conservativeness), runner)
    for i in range(n):
        params = SamplingParams(max_new_tokens=int(outs[i]), ignore_eos=True, temperature=0)
        sched.add_request(TokenizedGenerateReq(f"r{i}", rng.integers(0, 128000, int(ins[i])).tolist(), params))
    start = time.time()
    while sched.has_work:
        sched.step()
    decode = [(bs, sec) for bs, only_decode, sec in runner.log if only_decode]
    total = sum(sec for _, _, sec in runner.log)
    decode_s = sum(sec for _, sec in decode)
    print(f"pool {pool}: {time.time() - start:.1f} s on the host; ideal GPU time {total:.1f} s over "
          f"{len(runner.log)} steps; mean decode batch {np.mean([bs for bs, _ in decode]):.0f}; "
          f"retracted {sched.stats.num_retracted}; ideal output tok/s {outs.sum() / total:.0f}")
    print(f"prefill-carrying steps {total - decode_s:.1f} s; decode steps {decode_s:.1f} s, of which "
          f"batch < 32: {sum(sec for bs, sec in decode if bs < 32):.1f} s")


if __name__ == "__main__":
    main()
