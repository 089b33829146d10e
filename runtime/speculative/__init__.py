"""Speculative decoding, the scheduler's side: draft a tree of tokens per request, verify it in one
target forward.

`SpecDecoder` (decoder.py) plans on the CPU like the `Planner`: before each step it sets
`req.draft` on the running requests that may speculate. NGRAM drafts here, from the request's own
tokens (ngram.py); a draft model or EAGLE head drafts in the runner (runtime/executor/drafter.py),
reached through `Runner.draft` with plain data (`DraftInputs`: token ids, KV slots, scratch slots
the scheduler's `KVManager` allocated). The batch builder turns each draft into verify rows with
a tree mask (tree.py); the result processor accepts the longest verified prefix and `KVManager`
keeps its KV and frees the rest.

Constrained requests speculate too: their trees keep only the nodes the grammar allows after
the path to them (`grammar_subtree`), each verify row samples under the grammar state of its own
path, and acceptance advances the grammar token by token, stopping where jump-forward takes over
(scheduler/output.py), so the output is the one decoding without speculation gives."""
