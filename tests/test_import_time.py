"""No module of sgl reads the environment or a file at import time (behaviour comes from server
arguments; the few debugging variables are read at first use). Each module is imported in a
fresh process under tests/import_audit.py, which notes environment and file reads made by the
package's own code; the auditor itself is checked on a package that does read at import."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

AUDIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "import_audit.py")


def audit(package: str, cwd: str, pythonpath: str | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, AUDIT, package], check=False, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_every_sgl_module_reads_no_environment_variable_and_no_file(tmp_path):
    report = audit("sgl", str(tmp_path))
    assert report["failed"] == {}
    assert report["reads"] == []
    # the walk went through every room (linked into sgl/) and the command modules
    for module in ("sgl.lang.api", "sgl.runtime.engine", "sgl.runtime.server.ipc",
                   "sgl.kernels.linear", "sgl.kernels.dispatch", "sgl.kernels.triton.gemv",
                   "sgl.launch_server"):
        assert module in report["modules"]


def test_the_audit_sees_reads_by_the_package_at_import(tmp_path):
    """A package like ours (a room linked into it) that reads at import: every read is reported
    with its line; imports, lazy reads and reads by the standard library's own imports are not."""
    (tmp_path / "room").mkdir()
    (tmp_path / "pkg").mkdir()
    os.symlink(tmp_path / "room", tmp_path / "pkg" / "room")
    (tmp_path / "pkg" / "__init__.py").write_text(textwrap.dedent("""\
        import os
        FLAG = os.environ.get("PKG_FLAG")
        """))
    (tmp_path / "room" / "mod.py").write_text(textwrap.dedent("""\
        import json, os
        import email.parser

        with open(__file__) as f:
            SOURCE = f.read()
        HOME = os.path.expanduser("~")
        NAMES = os.listdir(os.path.dirname(__file__))


        def lazy():
            return os.environ.get("PKG_LAZY"), open(__file__)
        """))
    report = audit("pkg", str(tmp_path), pythonpath=str(tmp_path))
    assert report["failed"] == {}
    assert set(report["modules"]) == {"pkg", "pkg.room", "pkg.room.mod"}
    init, mod = str(tmp_path / "pkg" / "__init__.py"), str(tmp_path / "pkg" / "room" / "mod.py")
    reads = {(r["kind"], r["what"], r["where"]) for r in report["reads"]}
    assert reads == {("environ", "PKG_FLAG", f"{init}:2"), ("open", mod, f"{mod}:4"),
                     ("environ", "HOME", f"{mod}:6"),
                     ("os.listdir", os.path.dirname(mod), f"{mod}:7")}
