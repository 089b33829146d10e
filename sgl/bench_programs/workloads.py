"""The registry of workloads, in the order the driver runs and reports them."""
from __future__ import annotations

from sgl.bench_programs import (
    generative_agents,
    hellaswag,
    json_extraction,
    mmlu,
    multi_turn_chat,
    no_sharing,
    rag_pipeline,
    react,
    skeleton_of_thought,
    tree_of_thought,
)
from sgl.bench_programs.workload import Workload

WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    mmlu.WORKLOAD, hellaswag.WORKLOAD, react.WORKLOAD, generative_agents.WORKLOAD,
    tree_of_thought.WORKLOAD, skeleton_of_thought.WORKLOAD, multi_turn_chat.SHORT,
    multi_turn_chat.LONG, json_extraction.WORKLOAD, rag_pipeline.WORKLOAD, no_sharing.WORKLOAD)}
