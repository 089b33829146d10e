"""return_hidden_states on the scheduler's side: which token rows of a step the runner returns
the final hidden states of (`StepInputs.hidden_rows`), and what each request keeps of them until
its next output.

Positions are the unit. A request asking for every position ("full") needs positions
[0, seq_len - 1): its prompt's, then one per output token fed back. So that every prompt
position is computed by the model, its radix-cache match is capped at the positions it already
holds (`Req.max_prefix_len`): none at first admission, so a cached prefix is recomputed (as for
prompt logprobs), but all of them when a retracted request comes back. Chunked prefill, decode
steps, overlap-chained steps and speculative verify steps each add the positions they computed;
rows of positions a request already holds (recomputed after a retraction) are dropped, so each
position is sent once. A "last" request needs only the newest computed position's row."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


class HiddenStates:
    """One request's hidden states not yet sent to the front end (CPU float32 rows)."""

    def __init__(self, last_only: bool) -> None:
        self.last_only = last_only
        self.num_known = 0      # positions [0, num_known) computed (and kept or sent)
        self._unsent: list[torch.Tensor] = []  # rows of positions [num_sent, num_known)

    def add(self, start: int, rows: torch.Tensor) -> None:
        """rows: (n, hidden) of positions [start, start + n)."""
        end = start + int(rows.shape[0])
        if end <= self.num_known:
            return
        if self.last_only:
            self._unsent, self.num_known = [rows[-1:]], end
            return
        # The prefix cap means a step never starts past the positions already held.
        assert start <= self.num_known, f"hidden states of positions {self.num_known}..{start} missing"
        self._unsent.append(rows[self.num_known - start:])
        self.num_known = end

    def take(self) -> Optional[torch.Tensor]:
        """The rows computed since the last call (None: nothing new). A tensor: it crosses to
        the front end in 4 bytes a value, which turns it into lists there, off this thread."""
        if not self._unsent:
            return None
        rows = torch.cat(self._unsent) if len(self._unsent) > 1 else self._unsent[0]
        self._unsent = []
        return rows


@dataclass
class HiddenSpan:
    """A request's rows in a step's returned hidden states: [offset, offset + count) of
    `RunResult.hidden_states`, for positions from `start` (a verified request: its root and
    draft nodes, of which only the kept ones are its positions)."""
    req: object
    offset: int
    count: int
    start: int


def wanted_rows(last_only: bool, first_row: int, num_rows: int, start: int,
                whole: bool = False) -> tuple[list[int], int]:
    """(token rows to return, position of the first) for a request running `num_rows` rows from
    `first_row` at positions from `start`; "last" wants only the final row, unless `whole` (a
    verify step: which rows count is known only after acceptance)."""
    if last_only and not whole:
        return [first_row + num_rows - 1], start + num_rows - 1
    return list(range(first_row, first_row + num_rows)), start
