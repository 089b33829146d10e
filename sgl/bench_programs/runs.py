"""One measured run: a workload's programs through `run_batch` on a recording backend, or the
independent-calls replay of a recorded run. Both give a `RunResult`."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sgl.bench_programs.optimal import SentRequest, optimal_cached_tokens
from sgl.bench_programs.recorder import PRECACHE, Call, RecordingBackend
from sgl.bench_programs.systems import Usage, encode, prompts_of
from sgl.bench_programs.workload import Batch, Workload


@dataclass
class RunResult:
    workload: str
    config: str                # full | no_parallel | radix_off | independent
    num_programs: int
    parallel: int
    duration_s: float
    num_requests: int
    prompt_tokens: int
    cached_tokens: int         # sum of the runtime's per-request meta_info.cached_tokens
    output_tokens: int
    counter_prompt_tokens: int  # the scheduler's counters over the run (difference)
    counter_cached_tokens: int
    optimal_cached_tokens: int | None = None  # None: not computed (the replay)
    distinct_tokens: int | None = None        # tokens an unbounded cache would hold
    latencies_s: list[float] = field(default_factory=list)  # per program: first send to last reply

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("latencies_s")
        lat = sorted(self.latencies_s)
        out.update(programs_per_s=self.num_programs / self.duration_s,
                   output_tok_per_s=self.output_tokens / self.duration_s,
                   latency_p50_s=percentile(lat, 50), latency_p99_s=percentile(lat, 99),
                   hit_rate=self.cached_tokens / max(self.prompt_tokens, 1),
                   counter_hit_rate=self.counter_cached_tokens / max(self.counter_prompt_tokens, 1))
        if self.optimal_cached_tokens is not None:
            out["optimal_hit_rate"] = self.optimal_cached_tokens / max(self.prompt_tokens, 1)
            out["hit_ratio"] = self.cached_tokens / self.optimal_cached_tokens if self.optimal_cached_tokens else None
        return out


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(int(-(-q * len(sorted_values) // 100)), 1)  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def sent_requests(calls: list[Call], tokenizer: Any) -> list[SentRequest]:
    """Every prompt the run sent, with the ids the runtime saw and what it reported."""
    out = []
    for call in calls:
        prompts = prompts_of(call.payload)
        if len(prompts) != len(call.results):
            raise RuntimeError(f"{len(prompts)} prompts but {len(call.results)} results (n > 1 is not measured)")
        start = call.payload.get("logprob_start_len", -1) if call.payload.get("return_logprob") else -1
        for prompt, result in zip(prompts, call.results):
            ids = encode(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
            meta = result["meta_info"]
            if len(ids) != meta["prompt_tokens"]:
                raise RuntimeError(f"the prompt tokenizes to {len(ids)} tokens here but the runtime "
                                   f"counted {meta['prompt_tokens']}: not the runtime's tokenizer")
            out.append(SentRequest(call.program, ids, list(result["output_ids"]), call.t_send, call.t_done,
                                   -1 if start is None else start, meta["cached_tokens"],
                                   meta["completion_tokens"]))
    return out


def program_latencies(spans: list[tuple[int, float, float]]) -> list[float]:
    """Per program, from its first request's send to its last request's reply."""
    first: dict[int, float] = {}
    last: dict[int, float] = defaultdict(float)
    for program, t_send, t_done in spans:
        if program == PRECACHE:
            continue
        first[program] = min(first.get(program, t_send), t_send)
        last[program] = max(last[program], t_done)
    return [last[p] - first[p] for p in first]


def run_programs(system: Any, recorder: RecordingBackend, workload: Workload, batch: Batch,
                 parallel: int, config: str, flush: bool = True,
                 before_batch: Callable[[], None] | None = None) -> tuple[RunResult, list[Call]]:
    """The programs, from a flushed cache unless `flush` is False; raises if any program
    failed. `before_batch` runs just before the programs start (after the counters are read)."""
    if flush:
        system.flush()
    recorder.reset()
    before = system.counters()
    if before_batch is not None:
        before_batch()
    t0 = time.perf_counter()
    states = workload.run_batch(batch, backend=recorder, num_threads=parallel, temperature=0)
    duration = time.perf_counter() - t0
    after = system.counters()
    for i, state in enumerate(states):
        if state.error() is not None:
            raise RuntimeError(f"{workload.name}: program {i} failed: {state.error()!r}")
    calls = recorder.reset()
    reqs = sent_requests(calls, system.tokenizer)
    reused, distinct = optimal_cached_tokens(reqs)
    result = RunResult(
        workload.name, config, len(batch.each), parallel, duration, len(reqs),
        sum(len(r.prompt_ids) for r in reqs), sum(r.cached_tokens for r in reqs),
        sum(r.completion_tokens for r in reqs), after[0] - before[0], after[1] - before[1],
        sum(reused), distinct, program_latencies([(r.program, r.t_send, r.t_done) for r in reqs]))
    return result, calls


def replay_independent(system: Any, workload: str, calls: list[Call], num_programs: int,
                       parallel: int) -> RunResult:
    """What a client without the language sends: each program's calls one after another, each
    with its full prompt (no request that only fills the cache), `parallel` programs at a time."""
    by_program: dict[int, list[Call]] = defaultdict(list)
    for call in sorted(calls, key=lambda c: c.t_send):
        if call.program != PRECACHE and not call.is_cache_fill:
            by_program[call.program].append(call)
    system.flush()
    before = system.counters()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, min(parallel, len(by_program)))) as pool:
        done = list(pool.map(lambda p: _send_in_order(system, p, by_program[p]), sorted(by_program)))
    duration = time.perf_counter() - t0
    after = system.counters()
    usage, spans = Usage(), []
    for program_usage, program_spans in done:
        usage.add(program_usage)
        spans += program_spans
    num_prompts = sum(len(prompts_of(c.payload)) for p in by_program.values() for c in p)
    return RunResult(workload, "independent", num_programs, parallel, duration, num_prompts,
                     usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens,
                     after[0] - before[0], after[1] - before[1], None, None, program_latencies(spans))


def _send_in_order(system: Any, program: int, calls: list[Call]) -> tuple[Usage, list[tuple[int, float, float]]]:
    usage, spans = Usage(), []
    for call in calls:
        t_send = time.perf_counter()
        usage.add(system.complete(call))
        spans.append((program, t_send, time.perf_counter()))
    return usage, spans
