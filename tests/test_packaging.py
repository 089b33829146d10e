"""Packaging: the wheel holds every module under the sgl import root and nothing else at top level;
nothing of ours takes a top-level name from another distribution, so the project works with the
repository root as the working directory (where `python -m` puts it first on sys.path)."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOMS = ("lang", "runtime", "kernels")


def expected_files() -> set[str]:
    out = {f"sgl/{f}" for f in os.listdir(os.path.join(ROOT, "sgl")) if f.endswith(".py")}
    for room in ROOMS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, room)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, os.path.join(ROOT, room))
            for f in filenames:
                if f.endswith(".py") or f.endswith(".json"):
                    out.add(os.path.normpath(os.path.join("sgl", room, rel, f)).replace(os.sep, "/"))
    return out


def test_wheel_contains_every_module(tmp_path):
    # Built from a clean copy: the repository's own build/ and sgl.egg-info (an editable install's)
    # remember files from earlier builds and would hide a data file that package-data misses.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(src)],
                   check=True, capture_output=True)
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    missing = expected_files() - names
    assert not missing, f"missing from the wheel: {sorted(missing)}"
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"sgl"}, f"unexpected top-level entries: {top}"
    assert "sgl/runtime/configs/llama-3.1-8b-dummy/config.json" in names
    assert "sgl/kernels/configs/gemv/nvidia-h200.json" in names  # the shipped GEMV table
    assert not any("__pycache__" in n for n in names)


def test_editable_install_links_the_rooms():
    import sgl
    import sgl.kernels
    import sgl.lang
    import sgl.runtime
    assert os.path.samefile(os.path.dirname(sgl.__file__), os.path.join(ROOT, "sgl"))
    for module, room in ((sgl.lang, "lang"), (sgl.runtime, "runtime"), (sgl.kernels, "kernels")):
        (path,) = list(module.__path__)
        assert os.path.samefile(path, os.path.join(ROOT, room))


def _root_importables() -> set[str]:
    """Top-level names that Python run from the repository root imports as regular packages or
    modules of ours (a folder without __init__.py is at most an empty namespace, which loses to
    any installed package of that name)."""
    names = set()
    for entry in os.listdir(ROOT):
        path = os.path.join(ROOT, entry)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "__init__.py")):
            names.add(entry)
        elif entry.endswith(".py"):
            names.add(entry[:-3])
    return names


def test_no_top_level_name_of_ours_shadows_an_installed_distribution():
    owners = importlib.metadata.packages_distributions()
    taken = {name: owners[name] for name in _root_importables() if name in owners and name != "sgl"}
    assert not taken, f"repository-root names that installed distributions also provide: {taken}"
    for room in ROOMS:
        assert not os.path.exists(os.path.join(ROOT, room, "__init__.py")), f"{room}/ must stay a plain folder"


def test_installed_names_resolve_to_their_distribution_from_the_repository_root():
    """Each name an installed distribution provides, that is also a folder here, imports the
    installed one when Python runs from the root (Hugging Face's `kernels` beside our kernels/)."""
    owners = importlib.metadata.packages_distributions()
    clashes = [e for e in os.listdir(ROOT) if e in owners and e != "sgl" and os.path.isdir(os.path.join(ROOT, e))]
    code = ("import importlib.util, json, sys; "
            "print(json.dumps({n: importlib.util.find_spec(n).origin for n in sys.argv[1:]}))")
    out = subprocess.run([sys.executable, "-c", code, *clashes], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    import json
    for name, origin in json.loads(out).items():
        assert origin and not os.path.realpath(origin).startswith(ROOT + os.sep), (name, origin)


def test_engine_runs_with_the_repository_root_as_working_directory():
    """`python -m ...` from the root puts the root first on sys.path; transformers (which imports
    the `kernels` distribution) and a generation must still work there."""
    code = ("import transformers.activations, sgl; e = sgl.Engine(); "
            "print(repr(e.generate('The capital of France is', {'max_new_tokens': 4, 'temperature': 0})['text'])); "
            "e.shutdown()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = eval(proc.stdout.strip().splitlines()[-1])
    assert isinstance(text, str) and text.strip()
