"""Where and how a benchmark ran, recorded beside its figures."""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
from typing import Any

from sgl.runtime.config import ServerArgs


def run_metadata(argv: list[str], plan: Any, server_args: dict[str, Any]) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(ServerArgs)}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m sgl.bench_programs " + " ".join(argv),
        "commit": _git_commit(),
        "device": _device(),
        "workloads": [w.name for w in plan.workloads],
        "num_programs": plan.num_programs, "parallel": plan.parallel,
        "num_sequential_programs": plan.num_sequential, "scale": plan.sizes.scale,
        "output_scale": plan.sizes.output_scale, "seed": plan.sizes.seed,
        "server_args": {k: v for k, v in server_args.items() if defaults.get(k) != v},
    }


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _device() -> str:
    import torch
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
