"""KV ownership rules in one place: slots come from the allocator (evicting cached prefixes when
short), prefixes come from and return to the radix tree, table rows follow each request. This is
the only code that allocates or frees slots and writes the request -> token table (whose writes
reach the runner through `flush_table`, in the step's inputs)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from sgl.runtime.cache.memory_pool import ReqTable, TableWrites, TokenAllocator
from sgl.runtime.scheduler.req import Req


class KVManager:
    def __init__(self, allocator: TokenAllocator, tree: Any, table: ReqTable) -> None:
        self.allocator, self.tree, self.table = allocator, tree, table

    # -- capacity ----------------------------------------------------------------------------
    def available(self) -> int:
        """Slots obtainable now: free ones plus cached ones nobody is using."""
        return self.allocator.available_size() + self.tree.evictable_size()

    def alloc(self, num_tokens: int) -> Optional[torch.Tensor]:
        short = num_tokens - self.allocator.available_size()
        if short > 0:
            self.tree.evict(short)
        return self.allocator.alloc(num_tokens)

    def free(self, slots: torch.Tensor) -> None:
        """Return slots nobody holds (a drafter's scratch, a step that was never run)."""
        self.allocator.free(slots)

    def flush_table(self) -> Optional[TableWrites]:
        """The table writes queued since the last flush, for the runner to apply."""
        return self.table.flush()

    # -- request lifecycle ------------------------------------------------------------------
    def match(self, req: Req) -> tuple[torch.Tensor, Any]:
        key = req.all_ids[: req.max_prefix_len()]
        if not key:
            return torch.empty(0, dtype=torch.int64), None
        indices, node = self.tree.match_prefix(key)
        return indices, node

    def admit(self, req: Req, prefix: torch.Tensor, node: Any) -> bool:
        """Give req a table row and its cached prefix; False if no row is free."""
        row = self.table.alloc()
        if row is None:
            return False
        req.req_pool_idx = row
        req.kv_indices = prefix.clone()
        req.cache_protected_len = req.confirmed_len = int(prefix.numel())
        req.last_node = node
        if node is not None:
            self.tree.inc_lock_ref(node)
        if prefix.numel():
            self.table.write(row, 0, prefix)
        return True

    def extend(self, req: Req, slots: torch.Tensor) -> None:
        self.table.write(req.req_pool_idx, req.num_computed, slots)
        req.extend_kv(slots)

    def write_verify_rows(self, req: Req, start: int, slots: torch.Tensor) -> None:
        """Speculative verify: the root and the draft nodes run in `slots` from column `start`;
        the request takes them only once `accept_draft` says which it keeps."""
        self.table.write(req.req_pool_idx, start, slots)

    def accept_draft(self, req: Req, slots: torch.Tensor, keep: list[int]) -> None:
        """After verification: req keeps the KV of `slots[keep]` (the root and the accepted
        nodes, in sequence order) as its next tokens; the rest go back to the allocator."""
        kept = slots[keep]
        self.table.write(req.req_pool_idx, req.num_computed, kept)
        req.extend_kv(kept)
        rejected = torch.ones(slots.numel(), dtype=torch.bool)
        rejected[keep] = False
        self.allocator.free(slots[rejected])

    def truncate(self, req: Req, keep: int) -> None:
        """Forget the KV of tokens past `keep` (their ids changed); keep >= cache_protected_len."""
        assert keep >= req.cache_protected_len
        self.allocator.free(req.kv_indices[keep:])
        req.kv_indices = req.kv_indices[:keep]
        req.confirmed_len = min(req.confirmed_len, keep)

    def confirm(self, req: Req, upto: int) -> None:
        """The KV of req's first `upto` tokens is computed (a step that wrote it was read back)."""
        req.confirmed_len = max(req.confirmed_len, min(upto, req.num_computed))

    def roll_back(self, req: Req, upto: Optional[int] = None) -> None:
        """Forget KV written by steps that were not read back (they failed) from position `upto`
        on (default: everything unconfirmed); the slots go back to the allocator. The table row
        is written again whole, since the lost steps may have carried writes the runner never
        applied."""
        keep = req.confirmed_len if upto is None else min(upto, req.confirmed_len)
        if req.num_computed > keep:
            self.truncate(req, keep)
        req.confirmed_len = keep
        if req.num_computed:
            self.table.write(req.req_pool_idx, 0, req.kv_indices)

    def cache_unfinished(self, req: Req, upto: Optional[int] = None) -> None:
        """Insert a still-running request's computed tokens (the first `upto` of them, if
        given) so others can share them, then re-point its table row at the tree's copies."""
        if self.tree.disable:
            return
        n = req.num_computed if upto is None else min(upto, req.num_computed)
        key = req.all_ids[:n]
        present = self.tree.insert(key, req.kv_indices[:n])
        self._free_duplicates(req, present)
        indices, node = self.tree.match_prefix(key)
        self.tree.inc_lock_ref(node)
        if req.last_node is not None:
            self.tree.dec_lock_ref(req.last_node)
        n = int(indices.numel())
        req.kv_indices = torch.cat([indices, req.kv_indices[n:]])
        req.last_node, req.cache_protected_len = node, n
        self.table.write(req.req_pool_idx, 0, indices)

    def release(self, req: Req) -> None:
        """Drop req's hold on KV: computed tokens go to the tree (or back to the free list)."""
        present = self.tree.insert(req.all_ids[: req.num_computed], req.kv_indices)
        self._free_duplicates(req, present)  # a disabled tree keeps nothing: all are "duplicates"
        self._let_go(req)

    def discard(self, req: Req) -> None:
        """Drop req's hold on KV without caching any of it: its own slots never received valid
        KV (prefill-decode disaggregation: a transfer that failed or was never made)."""
        self.allocator.free(req.kv_indices[req.cache_protected_len:])
        self._let_go(req)

    def _let_go(self, req: Req) -> None:
        if req.last_node is not None:
            self.tree.dec_lock_ref(req.last_node)
        if req.req_pool_idx is not None:
            self.table.free(req.req_pool_idx)
        req.req_pool_idx, req.last_node, req.cache_protected_len = None, None, 0
        req.kv_indices = torch.empty(0, dtype=torch.int64)

    def _free_duplicates(self, req: Req, present: int) -> None:
        # The tree already held tokens [0, present); ours in [protected, present) are copies.
        if present > req.cache_protected_len:
            self.allocator.free(req.kv_indices[req.cache_protected_len:present])
