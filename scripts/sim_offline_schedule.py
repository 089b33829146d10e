"""The offline-throughput workload (bench_offline_throughput: 500 prompts, input U[1, 4096],
output U[1, 2048], ignore_eos) through the real Scheduler with a cost-model runner instead of a
model: how big the decode batches get for a KV pool of POOL tokens, whether anything is retracted,
and how long the schedule would take if every step ran at the H100's roofline for the 8B shape
(weights 16.06 GB + the step's KV at 3.0 TB/s, or its matmul FLOPs at 60% of 770 TFLOP/s,
whichever is longer). Runs on CPU in seconds.

    python scripts/sim_offline_schedule.py [POOL=420000] [NUM_PROMPTS=500] [CONSERVATIVENESS=1.0]
"""
import random, sys, time
from dataclasses import replace
import numpy as np
from sgl.runtime.cache.memory_pool import ReqToTokenPool
from sgl.runtime.config import ServerArgs
from sgl.runtime.io_struct import TokenizedGenerateReq
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.batch import RunResult
from sgl.runtime.scheduler.scheduler import Scheduler

W, BW, FL = 16.06e9, 3.0e12, 0.6 * 770e12
KV_PER_TOKEN = 32 * 2 * 8 * 128 * 2

class Done:
    def __init__(self, r): self.result = r
    def resolve(self): return self.result

class CostRunner:
    def __init__(self, pool, max_running=1024, chunk=8192, ctx=8192):
        self.max_total_tokens, self.max_running_requests, self.chunked_prefill_size = pool, max_running, chunk
        self.context_len, self.vocab_size = ctx, 128256
        self.req_to_token_pool = ReqToTokenPool(max_running + 1, ctx + 8, "cpu")
        self.log = []; self.t = 0.0; self.steps = 0; self.decode_bs = []; self.new_tokens = 0
    def run_batch(self, step):
        b = step.batch
        n = sum(b.extend_lens_cpu); kv = sum(b.seq_lens_cpu)
        attn = sum(4 * 4096 * e * s for e, s in zip(b.extend_lens_cpu, b.seq_lens_cpu)) * 32
        dt = max(W / BW + kv * KV_PER_TOKEN / BW, (2 * 7e9 * n + attn) / FL)
        self.t += dt; self.steps += 1; self.new_tokens += n
        self.log.append((b.batch_size, n == b.batch_size, dt))
        if n == b.batch_size: self.decode_bs.append(b.batch_size)
        return RunResult(next_token_ids=[5] * len(step.sample_rows))
    def launch_batch(self, step): return Done(self.run_batch(step))

pool = int(sys.argv[1]) if len(sys.argv) > 1 else 420_000
n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
rng = np.random.default_rng(0)
ins = rng.integers(1, 4097, n); outs = rng.integers(1, 2049, n)
args = ServerArgs(schedule_conservativeness=float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)
runner = CostRunner(pool)
s = Scheduler(args, runner)
for i in range(n):
    s.add_request(TokenizedGenerateReq(f"r{i}", rng.integers(0, 128000, int(ins[i])).tolist(), SamplingParams(max_new_tokens=int(outs[i]), ignore_eos=True, temperature=0)))
t0 = time.time()
while s.has_work:
    s.step()
print(f"pool {pool}: wall {time.time()-t0:.1f} s host; simulated GPU {runner.t:.1f} s; steps {runner.steps}; "
      f"decode steps {len(runner.decode_bs)} mean bs {np.mean(runner.decode_bs):.0f}; "
      f"tokens computed {runner.new_tokens} vs needed {int(ins.sum() + outs.sum())}; retracted {s.stats.num_retracted}; "
      f"sim out tok/s {outs.sum() / runner.t:.0f}")

log = runner.log
dec = [(bs, dt) for bs, d, dt in log if d]
pre = sum(dt for bs, d, dt in log if not d)
small = sum(dt for bs, dt in dec if bs < 32)
print(f"prefill-carrying steps {pre:.1f} s; decode {sum(dt for _, dt in dec):.1f} s, of which bs<32: {small:.1f} s")
