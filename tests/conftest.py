"""Settings for the whole test session."""
from __future__ import annotations

import os


def pytest_configure(config) -> None:
    # Under pytest-xdist every worker, and each server or engine process it starts (they inherit
    # the environment), computes on one thread: N workers then share N cores. With torch's
    # default of one OpenMP thread per core in every process, the spinning threads of a handful
    # of processes made tests 10-20x slower on a 2-core machine.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch
        torch.set_num_threads(1)
