"""The runner's KV transfers (runtime/disaggregation/transfer.py) over real gloo links: slots of
one KV pool land in other slots of another, a transfer that runs past its timeout fails and
closes its link, a peer that dies mid-transfer fails the job at once, and new links work after
either. Pools are MHATokenToKVPool with random contents."""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist

from sgl.runtime.cache.memory_pool import MHATokenToKVPool
from sgl.runtime.disaggregation.transfer import KVTransferAgent, PoolIO
from sgl.runtime.executor.tensor_parallel import free_port
from sgl.runtime.scheduler.contract import KVJob, KVJobResult, KVLinkSpec

LAYERS, HEADS, DIM = 4, 2, 16


def random_pool(size: int, seed: int, layers: int = LAYERS) -> MHATokenToKVPool:
    pool = MHATokenToKVPool(size, HEADS, DIM, layers, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(seed)
    for buf in [*pool.k_buffer, *pool.v_buffer]:
        buf.copy_(torch.randn(buf.shape, generator=gen))
    return pool


def spec(port: int, link_id: int, rank: int, timeout_s: float = 20.0,
         pair_timeout_s: float = 20.0) -> KVLinkSpec:
    return KVLinkSpec(link_id, "127.0.0.1", port, rank, "gloo", timeout_s, pair_timeout_s)


def wait_results(agent: KVTransferAgent, n: int, timeout_s: float = 30.0) -> list[KVJobResult]:
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {out} of {n} results"
        out += agent.poll()
        time.sleep(0.005)
    return out


@pytest.fixture
def store() -> Any:
    master = dist.TCPStore("127.0.0.1", free_port(), is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=30))
    yield master


def test_kv_lands_in_the_receivers_slots(store: Any) -> None:
    src, dst = random_pool(64, 1), random_pool(64, 2)
    sender, receiver = KVTransferAgent(PoolIO(src)), KVTransferAgent(PoolIO(dst))
    sender.open(spec(store.port, 1, 0))
    receiver.open(spec(store.port, 1, 1))
    from_slots = [torch.tensor([5, 9, 1, 33]), torch.tensor([60, 2])]
    to_slots = [torch.tensor([40, 3, 17, 8]), torch.tensor([11, 12])]
    for i, (a, b) in enumerate(zip(from_slots, to_slots)):  # two jobs, queued in order
        sender.submit(KVJob(1, f"r{i}", True, len(a), a))
        receiver.submit(KVJob(1, f"r{i}", False, len(b), b))
    assert [r.error for r in wait_results(sender, 2) + wait_results(receiver, 2)] == [None] * 4
    for a, b in zip(from_slots, to_slots):
        for layer in range(LAYERS):
            assert torch.equal(dst.k_buffer[layer][b], src.k_buffer[layer][a])
            assert torch.equal(dst.v_buffer[layer][b], src.v_buffer[layer][a])
    untouched = torch.tensor([0, 4, 20])  # slots no job named keep their contents
    assert torch.equal(dst.k_buffer[0][untouched], random_pool(64, 2).k_buffer[0][untouched])
    sender.close_all()
    receiver.close_all()


def test_a_transfer_past_its_timeout_fails_and_a_new_link_works(store: Any) -> None:
    # ~100 MB of KV with a 5 ms budget: the bytes are still moving when time is up
    src, dst = random_pool(4096, 3, layers=24), random_pool(4096, 4, layers=24)
    sender, receiver = KVTransferAgent(PoolIO(src)), KVTransferAgent(PoolIO(dst))
    sender.open(spec(store.port, 1, 0, timeout_s=0.005))
    receiver.open(spec(store.port, 1, 1, timeout_s=0.005))
    slots = torch.arange(1, 4097)
    sender.submit(KVJob(1, "big", True, 4096, slots))
    receiver.submit(KVJob(1, "big", False, 4096, slots))
    got = wait_results(receiver, 1)[0]
    assert got.error is not None and "receiving KV from the peer server failed" in got.error
    assert wait_results(sender, 1)[0].error is not None  # its peer gave up: the pair is closed
    receiver.submit(KVJob(1, "later", False, 1, slots[:1]))  # the closed link refuses at once
    assert "KV link closed" in wait_results(receiver, 1, timeout_s=1)[0].error
    sender.open(spec(store.port, 2, 0))
    receiver.open(spec(store.port, 2, 1))
    sender.submit(KVJob(2, "small", True, 3, slots[:3]))
    receiver.submit(KVJob(2, "small", False, 3, slots[10:13]))
    assert wait_results(receiver, 1)[0].error is None and wait_results(sender, 1)[0].error is None
    assert torch.equal(dst.v_buffer[7][slots[10:13]], src.v_buffer[7][slots[:3]])
    sender.close_all()
    receiver.close_all()


def _dying_sender(port: int) -> None:
    """A peer server's runner that pairs and dies while its receiver waits for the KV. (It used
    to start a ~50 MB send first and die 20 ms later, but on a quiet machine the send could end
    within those 20 ms and the job then succeeded.)"""
    agent = KVTransferAgent(PoolIO(random_pool(2048, 5, layers=24)))
    agent.open(spec(port, 1, 0))
    deadline = time.monotonic() + 60
    while agent.links[1]._pg is None and time.monotonic() < deadline:  # paired
        time.sleep(0.001)
    time.sleep(0.2)  # the receiver's recv is posted
    os._exit(1)


def test_a_peer_dying_mid_transfer_fails_the_job_at_once(store: Any) -> None:
    dst = random_pool(2048, 6, layers=24)
    receiver = KVTransferAgent(PoolIO(dst))
    child = mp.get_context("spawn").Process(target=_dying_sender, args=(store.port,), daemon=True)
    child.start()
    receiver.open(spec(store.port, 1, 1, timeout_s=60))
    receiver.submit(KVJob(1, "r", False, 2048, torch.arange(1, 2049)))
    error = wait_results(receiver, 1, timeout_s=90)[0].error
    child.join(30)
    assert child.exitcode == 1
    # long before the 60 s timeout: gloo sees the connection close
    took = re.search(r"receiving KV from the peer server failed after ([0-9.]+) s", error or "")
    assert took is not None and float(took.group(1)) < 20, error
    # the next peer serves: the receiver kept working
    src = random_pool(2048, 5, layers=24)
    sender = KVTransferAgent(PoolIO(src))
    sender.open(spec(store.port, 2, 0))
    receiver.open(spec(store.port, 2, 1))
    sender.submit(KVJob(2, "r", True, 2048, torch.arange(1, 2049)))
    receiver.submit(KVJob(2, "r", False, 2048, torch.arange(1, 2049)))
    assert wait_results(receiver, 1)[0].error is None and wait_results(sender, 1)[0].error is None
    assert torch.equal(dst.k_buffer[3][1:2049], src.k_buffer[3][1:2049])
    sender.close_all()
    receiver.close_all()


def test_closing_a_link_fails_its_queued_jobs(store: Any) -> None:
    receiver = KVTransferAgent(PoolIO(random_pool(16, 7)))
    receiver.open(spec(store.port, 1, 1, pair_timeout_s=2))  # no peer will ever pair
    for i in range(3):
        receiver.submit(KVJob(1, f"r{i}", False, 1, torch.tensor([i + 1])))
    threading.Timer(0.1, receiver.close, args=(1,)).start()
    results = wait_results(receiver, 3, timeout_s=10)
    assert sorted(r.job_id for r in results) == ["r0", "r1", "r2"]
    assert all(r.error for r in results)
    receiver.submit(KVJob(1, "late", False, 1, torch.tensor([1])))
    assert "not open" in wait_results(receiver, 1)[0].error


def _nccl_side(rank: int, port: int, link_id: int, send: bool, results: Any) -> None:
    """One server's runner on GPU `rank`: sends slots 1..256 of a seeded pool (send) or
    receives them into slots 300..555 (with send=None: waits for a send that never comes)."""
    torch.cuda.set_device(rank)
    pool = MHATokenToKVPool(1024, HEADS, DIM, LAYERS, torch.bfloat16, f"cuda:{rank}")
    for buf in [*pool.k_buffer, *pool.v_buffer]:
        buf.copy_(torch.randn(buf.shape, generator=torch.Generator().manual_seed(9)).to(buf))
    agent = KVTransferAgent(PoolIO(pool))
    agent.open(KVLinkSpec(link_id, "127.0.0.1", port, rank, "nccl", 3.0, 60.0))
    slots = torch.arange(1, 257) if send else torch.arange(300, 556)
    if send is not None or rank == 1:
        agent.submit(KVJob(link_id, "r", bool(send), 256, slots))
    result = wait_results(agent, 1, timeout_s=60)[0] if send is not None or rank == 1 else None
    same = bool(torch.equal(pool.v_buffer[2][300:556], pool.v_buffer[2][1:257])) if rank == 1 else None
    results.put((rank, send, result.error if result else None, same))
    time.sleep(1 if send is not None else 8)  # a silent sender outlives the receiver's deadline


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs two CUDA GPUs")
def test_nccl_moves_kv_between_gpus_and_a_stuck_transfer_times_out(store: Any) -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    # link 1: a transfer that works; link 2: the sender never sends (the receiver's 3 s deadline
    # aborts it and its process goes on)
    for link_id, modes in ((1, (True, False)), (2, (None, None))):
        procs = [ctx.Process(target=_nccl_side, args=(rank, store.port, link_id, mode, results))
                 for rank, mode in enumerate(modes)]
        for p in procs:
            p.start()
        got = {r[0]: r for r in (results.get(timeout=120) for _ in procs)}
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        if link_id == 1:
            assert got[0][2] is None and got[1][2] is None and got[1][3], got
        else:
            assert got[1][2] is not None and "failed after" in got[1][2], got
