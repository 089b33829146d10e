"""Program workloads: `@sgl.function` programs shaped like the SGLang paper's (few-shot, agents,
fork/join, multi-turn, constrained extraction, retrieval pipelines) and the driver that measures
what prefix sharing and frontend parallelism buy (`python -m sgl.bench_programs`)."""
