"""Import every module of a package and report what its own code read at import time: environment
variables (os.environ read, iterated or written) and files (audit events "open", "os.listdir",
"os.scandir"). Run in a fresh process: `python tests/import_audit.py PACKAGE`; prints JSON
{"modules": [...], "failed": {module: error}, "reads": [{"kind", "what", "where"}]}.

A read counts when the first frame above it outside the standard library belongs to the package
(its folders, symbolic links followed): `os.path.expanduser` called by the package counts, a read
by torch or transformers while the package imports them does not, and neither does the import
system reading the modules' own source files."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import sysconfig
import traceback
from types import FrameType
from typing import Any

FILE_EVENTS = ("open", "os.listdir", "os.scandir")


def package_modules(package: str) -> tuple[list[str], set[str]]:
    """The package's module names (walking its folder, links followed) and its folders' real paths."""
    spec = importlib.util.find_spec(package)
    (top,) = list(spec.submodule_search_locations)
    modules, folders = [package], set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d.isidentifier())  # not __pycache__, data folders
        folders.add(os.path.realpath(dirpath))
        rel = os.path.relpath(dirpath, top)
        prefix = [package] + ([] if rel == "." else rel.split(os.sep))
        if len(prefix) > 1:
            modules.append(".".join(prefix))
        modules += [".".join([*prefix, f[:-3]]) for f in sorted(filenames)
                    if f.endswith(".py") and f not in ("__init__.py", "__main__.py")]
    return modules, folders


class Auditor:
    def __init__(self, folders: set[str]) -> None:
        self.folders = folders
        paths = sysconfig.get_paths()
        self.stdlib = tuple({os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib")})
        self.kind_of_file: dict[str, str] = {}
        self.reads: list[dict[str, str]] = []

    def _kind(self, filename: str) -> str:
        """'ours', 'stdlib', 'import' (the import system) or 'other' for a code object's file."""
        kind = self.kind_of_file.get(filename)
        if kind is None:
            real = os.path.realpath(filename)
            if filename.startswith("<frozen importlib"):
                kind = "import"
            elif filename.startswith("<frozen") or (real.startswith(self.stdlib) and not any(
                    part in real.split(os.sep) for part in ("site-packages", "dist-packages"))):
                kind = "stdlib"
            elif os.path.dirname(real) in self.folders:
                kind = "ours"
            else:
                kind = "other"
            self.kind_of_file[filename] = kind
        return kind

    def note(self, kind: str, what: Any, frame: FrameType | None) -> None:
        while frame is not None:
            owner = self._kind(frame.f_code.co_filename)
            if owner == "ours":
                where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
                self.reads.append({"kind": kind, "what": str(what), "where": where})
                return
            if owner != "stdlib":  # the import system or another distribution
                return
            frame = frame.f_back

    def audit_hook(self, event: str, args: tuple) -> None:
        if event in FILE_EVENTS:
            try:
                self.note(event, args[0] if args else "", sys._getframe(1))
            except Exception:  # noqa: BLE001 - never break the audited call
                self.reads.append({"kind": "audit-error", "what": traceback.format_exc(), "where": ""})

    def watch_environ(self) -> None:
        """Wrap os.environ's class: reads, iteration and writes from our code are noted."""
        environ_cls = type(os.environ)
        for name, kind in (("__getitem__", "environ"), ("__iter__", "environ"),
                           ("__setitem__", "environ-write"), ("__delitem__", "environ-write")):
            original = getattr(environ_cls, name)

            def wrapped(env: Any, *args: Any, _original: Any = original, _kind: str = kind) -> Any:
                self.note(_kind, args[0] if args else "*", sys._getframe(1))
                return _original(env, *args)

            setattr(environ_cls, name, wrapped)


def main(package: str) -> None:
    modules, folders = package_modules(package)
    auditor = Auditor(folders)
    auditor.watch_environ()
    sys.addaudithook(auditor.audit_hook)
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - reported, the rest still audited
            failed[name] = f"{type(e).__name__}: {e}"
    print(json.dumps({"modules": modules, "failed": failed, "reads": auditor.reads}))


if __name__ == "__main__":
    del sys.path[0]  # this script's folder (tests/): its kernels/ would shadow the installed one
    main(sys.argv[1])
