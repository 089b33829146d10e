"""A simulated sgl worker for router benchmarks and hit-rate tests. It speaks the routes the
router and `sgl.bench_serving` use (/generate streamed or not, /health, /get_server_info,
/flush_cache) over a minimal asyncio HTTP/1.1 server, so that its own cost stays small next to
the router's, and models what decides a prefix-cache hit rate:

- a prefix cache of 16-token blocks, least recently used out first, `max_total_tokens` in all;
- with `decode_step_s` > 0, a GPU that runs one step at a time: a prefill step admits every
  waiting request (matching each against the cache as it is admitted, so two requests of one
  prefix prefilled together both miss) and takes its uncached tokens / `prefill_tok_per_s`;
  (at most `max_prefill_tokens` new tokens a step); otherwise a decode step gives every running request one token in `decode_step_s`;
- a prompt becomes a hit for later requests when its prefill ends (SGLang caches unfinished
  requests), or only when it finishes with `cache_on_finish`.
With `decode_step_s` == 0 every request is answered at once (the router's ceiling).

    python -m sgl.bench_sim_worker PORT [--decode-step-s S] [--prefill-tok-per-s N] ...
"""
from __future__ import annotations

import argparse
import asyncio
import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

BLOCK = 16
VOCAB_SIZE = 32000


class BlockCache:
    """Which 16-token blocks of earlier prompts a worker holds, keyed by a hash of the block and
    everything before it; a prompt's hit is its leading run of held blocks."""

    def __init__(self, max_tokens: int) -> None:
        self.max_blocks = max(max_tokens // BLOCK, 1)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def match(self, ids: list[int]) -> int:
        """Cached tokens at the front of `ids` (refreshing them, the deepest least)."""
        held = []
        for key in _block_keys(ids):
            if key not in self._blocks:
                break
            held.append(key)
        for key in reversed(held):  # the shared front ends most recent: leaves go first
            self._blocks.move_to_end(key)
        return len(held) * BLOCK

    def insert(self, ids: list[int]) -> None:
        keys = list(_block_keys(ids))
        for key in reversed(keys):
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()


def _block_keys(ids: list[int]) -> Iterator[int]:
    key = 0
    for i in range(0, len(ids) - len(ids) % BLOCK, BLOCK):
        key = hash((key, tuple(ids[i:i + BLOCK])))
        yield key


@dataclass
class Seq:
    input_ids: list[int]
    max_new_tokens: int
    num_out: int = 0
    cached: int = 0
    updates: asyncio.Queue = field(default_factory=asyncio.Queue)  # num_out after each step

    def result(self, rid: str) -> dict[str, Any]:
        finished = self.num_out >= self.max_new_tokens
        return {"text": " tok" * self.num_out, "output_ids": [7] * self.num_out,
                "meta_info": {"id": rid, "prompt_tokens": len(self.input_ids),
                              "completion_tokens": self.num_out, "cached_tokens": self.cached,
                              "finish_reason": {"type": "length", "length": self.num_out}
                              if finished else None}}


class SimEngine:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cache = BlockCache(args.max_total_tokens)
        self.waiting: list[Seq] = []
        self.running: list[Seq] = []
        self._wake = asyncio.Event()

    def submit(self, seq: Seq) -> None:
        if self.args.decode_step_s <= 0:  # instant
            seq.cached = self.cache.match(seq.input_ids)
            self.cache.insert(seq.input_ids)
            seq.num_out = seq.max_new_tokens
            seq.updates.put_nowait(seq.num_out)
            return
        self.waiting.append(seq)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
            if self.waiting:
                await self._prefill_step()
            else:
                await self._decode_step()

    async def _prefill_step(self) -> None:
        """Admit waiting requests in order up to --max-prefill-tokens new tokens (one at least),
        each matched against the cache as it stands now."""
        batch, new_tokens = [], 0
        while self.waiting and (not batch or new_tokens < self.args.max_prefill_tokens):
            seq = self.waiting.pop(0)
            seq.cached = min(self.cache.match(seq.input_ids), len(seq.input_ids) - 1)
            new_tokens += len(seq.input_ids) - seq.cached
            batch.append(seq)
        await asyncio.sleep(new_tokens / self.args.prefill_tok_per_s)
        for seq in batch:
            if not self.args.cache_on_finish:
                self.cache.insert(seq.input_ids)
            self._emit(seq)
        self.running += batch
        self._retire()

    async def _decode_step(self) -> None:
        await asyncio.sleep(self.args.decode_step_s)
        for seq in self.running:
            self._emit(seq)
        self._retire()

    def _emit(self, seq: Seq) -> None:
        seq.num_out += 1
        seq.updates.put_nowait(seq.num_out)

    def _retire(self) -> None:
        done = [s for s in self.running if s.num_out >= s.max_new_tokens]
        for seq in done:
            self.cache.insert(seq.input_ids)
        self.running = [s for s in self.running if s.num_out < s.max_new_tokens]


class SimWorker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.engine = SimEngine(args)
        self.num_requests = 0

    async def serve(self, host: str, port: int) -> None:
        server = await asyncio.start_server(self._connection, host, port)
        steps = asyncio.create_task(self.engine.run())
        print("ready", flush=True)
        async with server:
            await server.serve_forever()
        steps.cancel()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = dict(_header(line) for line in lines[1:] if ":" in line)
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                await self._route(method, target.split("?")[0], body, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str, body: bytes,
                     writer: asyncio.StreamWriter) -> None:
        if path == "/generate" and method == "POST":
            return await self._generate(json.loads(body), writer)
        if path == "/flush_cache":
            self.engine.cache.clear()
            return await _send_json(writer, {})
        if path == "/get_server_info":
            return await _send_json(writer, {"vocab_size": VOCAB_SIZE,
                                             "num_requests": self.num_requests})
        if path in ("/health", "/health_generate", "/get_model_info"):
            return await _send_json(writer, {"model_path": "sim"})
        await _send_json(writer, {"error": "not found"}, 404)

    async def _generate(self, obj: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        self.num_requests += 1
        rid = f"sim-{self.num_requests}"
        max_new = int(obj.get("sampling_params", {}).get("max_new_tokens", 16))
        seq = Seq(list(obj.get("input_ids") or []), max(max_new, 1))
        self.engine.submit(seq)
        if not obj.get("stream"):
            while await seq.updates.get() < seq.max_new_tokens:
                pass
            return await _send_json(writer, seq.result(rid))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        sent = 0
        while sent < seq.max_new_tokens:
            n = await seq.updates.get()
            # instant mode streams one event per token all the same, like a real worker
            for k in range(sent + 1, n + 1):
                seq.num_out = k
                _write_chunk(writer, f"data: {json.dumps(seq.result(rid))}\n\n".encode())
            sent = n
            await writer.drain()
        _write_chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))


async def _send_json(writer: asyncio.StreamWriter, obj: Any, status: int = 200) -> None:
    data = json.dumps(obj).encode()
    writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                 % (status, len(data)) + data)
    await writer.drain()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("port", type=int)
    p.add_argument("--decode-step-s", type=float, default=0.0)
    p.add_argument("--prefill-tok-per-s", type=float, default=40000.0)
    p.add_argument("--max-prefill-tokens", type=int, default=16384)
    p.add_argument("--max-total-tokens", type=int, default=1 << 30)
    p.add_argument("--cache-on-finish", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    cli = parse_args()
    asyncio.run(SimWorker(cli).serve("127.0.0.1", cli.port))
