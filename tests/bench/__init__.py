"""Tests of the program workloads and their driver (sgl.bench_programs)."""
