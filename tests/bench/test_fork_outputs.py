"""Fork/join programs give the same greedy outputs with frontend parallelism on and off and
with the radix cache on and off (the bundled model, float32 on CPU)."""
from __future__ import annotations

import re

import pytest

from sgl.bench_programs.workload import Sizes
from sgl.bench_programs.workloads import WORKLOADS

SIZES = Sizes(scale=0.05, output_scale=0.08, seed=1)


def _leaves(value) -> list[str]:
    """join() gathers a branch's variables into lists, nested by fork level."""
    return [x for v in value for x in _leaves(v)] if isinstance(value, list) else [value]


# What the branches generated, read from a program's (text, variables): 14 thoughts of the tree
# (gathered into variables), 4 expansions of the skeleton (appended to the text).
BRANCH_OUTPUTS = {
    "tree_of_thought": (14, lambda text, variables: [
        x for name, v in variables.items() if name.startswith("thought") for x in _leaves(v)]),
    "skeleton_of_thought": (4, lambda text, variables: re.findall(
        r"expanded:(.*?)(?=\nPoint \d+ expanded:|\nSummary:)", text, re.DOTALL)),
}


def _outputs(system, name: str, parallel: int) -> list[tuple[str, dict]]:
    w = WORKLOADS[name]
    system.flush()
    states = w.run_batch(w.make_batch(SIZES, 2), backend=system.backend, num_threads=parallel, temperature=0)
    for s in states:
        s.sync()
    return [(s.text(), dict(s.stream_executor.variables)) for s in states]


@pytest.mark.parametrize("name", list(BRANCH_OUTPUTS))
def test_fork_join_outputs_do_not_depend_on_parallelism_or_the_cache(system, system_off, name):
    reference = _outputs(system, name, 2)
    num_branches, branch_outputs = BRANCH_OUTPUTS[name]
    for text, variables in reference:  # every branch generated: the comparisons are not vacuous
        outputs = branch_outputs(text, variables)
        assert len(outputs) == num_branches and all(o.strip() for o in outputs)
    assert _outputs(system, name, 1) == reference
    assert _outputs(system_off, name, 2) == reference
