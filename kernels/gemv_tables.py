"""Per-device tables of the batch-1 Triton GEMV's configs (kernels/linear.py), as data files.

A table is a JSON object whose "configs" maps a weight shape "N,K" to the GEMV's
[BLOCK_N, BLOCK_K, num_warps, num_stages(, SPLIT_K)], or to null for cuBLAS. Other keys are
documentation ("device", "source", "notes") except "also_for", below.

Shipped tables live in kernels/configs/gemv/, one file per device, named by the normalised
`torch.cuda.get_device_name()` ("NVIDIA H100 80GB HBM3" -> nvidia-h100-80gb-hbm3.json). The table
for a device is the file of its exact name if there is one; else the table whose "also_for" lists
a leading part of the name ("nvidia-h100" covers every H100 variant; the longest such part wins);
else none (untuned shapes only). `python -m sgl.bench_gemv --table-out FILE` writes this format, and
`--gemv-configs FILE` lays a file's entries over the device's table.

Nothing here runs at import time: the runner reads tables when it starts (kernels/linear.py)."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

Shape = tuple[int, int]
GemvConfig = tuple[int, ...] | None  # None: cuBLAS
GemvTable = dict[Shape, GemvConfig]

TABLE_DIR = Path(__file__).parent / "configs" / "gemv"


def normalize_device_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (a file name's stem)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def read_table(path: str | Path) -> GemvTable:
    """The "configs" of a table file. ValueError naming the file and the entry when it is malformed."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"GEMV table {path}: cannot read it as JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("configs"), dict):
        raise ValueError(f"GEMV table {path}: expected an object with a \"configs\" object "
                         "mapping \"N,K\" to [BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT_K] or null")
    return {_parse_shape(path, key): _parse_config(path, key, cfg) for key, cfg in doc["configs"].items()}


def _parse_shape(path: str | Path, key: str) -> Shape:
    parts = key.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"GEMV table {path}: key {key!r} is not \"N,K\" (two positive integers)")
    return int(parts[0]), int(parts[1])


def _parse_config(path: str | Path, key: str, cfg: Any) -> GemvConfig:
    if cfg is None:
        return None
    if (not isinstance(cfg, list) or len(cfg) not in (4, 5)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in cfg)):
        raise ValueError(f"GEMV table {path}: entry {key!r} must be null or 4-5 positive integers "
                         f"[BLOCK_N, BLOCK_K, num_warps, num_stages(, SPLIT_K)], got {cfg!r}")
    return tuple(cfg)


def write_table(path: str | Path, table: GemvTable, device: str, source: str) -> None:
    """Write `table` in the shipped format (what `read_table` and --gemv-configs take)."""
    configs = {f"{n},{k}": list(cfg) if cfg else None for (n, k), cfg in table.items()}
    with open(path, "w") as f:
        json.dump({"device": device, "source": source, "configs": configs}, f, indent=2)
        f.write("\n")


def find_table(device_name: str, table_dir: Path = TABLE_DIR) -> Path | None:
    """The table file for a device (rule in the module docstring), or None."""
    name = normalize_device_name(device_name)
    exact = table_dir / f"{name}.json"
    if exact.is_file():
        return exact
    best: tuple[int, Path] | None = None
    for path in sorted(table_dir.glob("*.json")):
        with open(path) as f:
            prefixes = json.load(f).get("also_for", [])
        for prefix in prefixes:
            covers = name == prefix or name.startswith(prefix + "-")
            if covers and (best is None or len(prefix) > best[0]):
                best = (len(prefix), path)
    return best[1] if best else None


@functools.lru_cache(maxsize=8)
def shipped_table(device_name: str) -> GemvTable:
    """The shipped table for a device (read once per process), or {} where none applies."""
    path = find_table(device_name)
    return read_table(path) if path is not None else {}
