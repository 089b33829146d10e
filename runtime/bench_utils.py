"""Small pieces the benchmark programs share."""
from __future__ import annotations

import json
from typing import Any


def append_jsonl(path: str | None, record: dict[str, Any]) -> None:
    """Append one result as a JSON line (SGLang's benchmarks keep results this way)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
