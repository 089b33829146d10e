"""The wheel holds every module of the three rooms under the sgl import root, and nothing else
at top level."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOMS = {"lang": "sgl", "runtime": "sgl/runtime", "kernels": "sgl/kernels"}


def expected_files() -> set[str]:
    out = set()
    for room, target in ROOMS.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, room)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, os.path.join(ROOT, room))
            for f in filenames:
                if f.endswith(".py") or f.endswith(".json"):
                    out.add(os.path.normpath(os.path.join(target, rel, f)).replace(os.sep, "/"))
    return out


def test_wheel_contains_every_module(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), ROOT],
                   check=True, capture_output=True)
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    missing = expected_files() - names
    assert not missing, f"missing from the wheel: {sorted(missing)}"
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"sgl"}, f"unexpected top-level entries: {top}"
    assert "sgl/runtime/configs/llama-3.1-8b-dummy/config.json" in names


def test_editable_install_maps_the_rooms():
    import sgl
    import sgl.kernels
    import sgl.runtime
    assert os.path.samefile(os.path.dirname(sgl.__file__), os.path.join(ROOT, "lang"))
    assert os.path.samefile(os.path.dirname(sgl.runtime.__file__), os.path.join(ROOT, "runtime"))
    assert os.path.samefile(os.path.dirname(sgl.kernels.__file__), os.path.join(ROOT, "kernels"))
