"""Prometheus metrics in the text exposition format, written by hand (no dependency).
Names follow SGLang's (`sglang:` prefix) so existing dashboards work."""
from __future__ import annotations

import bisect
from typing import Any

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 60.0, 120.0)
_ITL_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)  # last: above every bucket
        self.sum, self.count = 0.0, 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.sum += value * times
        self.count += times

    def render(self, labels: str) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for le, n in zip((*map(str, self.buckets), "+Inf"), self.counts):
            cumulative += n
            lines.append(f'{self.name}_bucket{{{labels},le="{le}"}} {cumulative}')
        lines.append(f"{self.name}_sum{{{labels}}} {self.sum}")
        lines.append(f"{self.name}_count{{{labels}}} {self.count}")
        return lines


# (metric, help, key in the scheduler's internal state)
_GAUGES = (
    ("sglang:num_running_reqs", "The number of running requests.", "num_running_reqs"),
    ("sglang:num_queue_reqs", "The number of requests in the waiting queue.", "num_queue_reqs"),
    ("sglang:token_usage", "The token usage of the KV cache (0 to 1).", "token_usage"),
    ("sglang:gen_throughput", "The generation throughput (token/s).", "gen_throughput"),
    ("sglang:cache_hit_rate", "The prefix cache hit rate.", "cache_hit_rate"),
    ("sglang:max_total_num_tokens", "The KV pool size in tokens.", "max_total_tokens"),
)


class ServerMetrics:
    """Request-level latencies measured in the HTTP process, plus counters; gauges come from the
    scheduler's internal state at scrape time."""

    def __init__(self, model_name: str) -> None:
        self.labels = f'model_name="{_escape(model_name)}"'
        self.ttft = Histogram("sglang:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", _LATENCY_BUCKETS)
        self.itl = Histogram("sglang:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", _ITL_BUCKETS)
        self.e2e = Histogram("sglang:e2e_request_latency_seconds",
                             "Histogram of end-to-end request latency in seconds.",
                             _LATENCY_BUCKETS)
        self.counters = {"sglang:prompt_tokens_total": 0, "sglang:generation_tokens_total": 0,
                         "sglang:cached_tokens_total": 0, "sglang:num_requests_total": 0,
                         "sglang:num_aborted_requests_total": 0}

    def on_finish(self, meta: dict[str, Any], e2e_s: float, aborted: bool) -> None:
        c = self.counters
        c["sglang:prompt_tokens_total"] += meta.get("prompt_tokens", 0)
        c["sglang:generation_tokens_total"] += meta.get("completion_tokens", 0)
        c["sglang:cached_tokens_total"] += meta.get("cached_tokens", 0)
        c["sglang:num_requests_total"] += 1
        c["sglang:num_aborted_requests_total"] += int(aborted)
        self.e2e.observe(e2e_s)

    def render(self, state: dict[str, Any]) -> str:
        lines: list[str] = []
        for name, help_text, key in _GAUGES:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
                      f"{name}{{{self.labels}}} {float(state.get(key, 0))}"]
        for name, value in self.counters.items():
            lines += [f"# HELP {name} Total since start.", f"# TYPE {name} counter",
                      f"{name}{{{self.labels}}} {value}"]
        for hist in (self.ttft, self.itl, self.e2e):
            lines += hist.render(self.labels)
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
