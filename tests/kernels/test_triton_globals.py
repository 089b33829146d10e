"""A @triton.jit function may read a module-level name only if it is a tl.constexpr (or another
jit function, a module, an import): compiled for a GPU, any other global is a NameError
("Cannot access global variable ... from within @jit'ed function"), while the CPU interpreter
runs it as Python, so no CPU test would see it. (GeGLU's sqrt(2/pi) failed on the H100 so.)"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

KERNELS = sorted((Path(__file__).resolve().parents[2] / "kernels" / "triton").glob("*.py"))


def _plain_globals(tree: ast.Module) -> dict[str, str]:
    """Module-level names bound by assignment to something other than tl.constexpr(...)."""
    out = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        for t in targets:
            if isinstance(t, ast.Name) and value is not None and "constexpr(" not in ast.unparse(value):
                out[t.id] = ast.unparse(value)
    return out


def _is_jit(fn: ast.FunctionDef) -> bool:
    return any("jit" in ast.unparse(d) for d in fn.decorator_list)


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_jit_functions_read_only_constexpr_globals(path: Path):
    tree = ast.parse(path.read_text())
    plain = _plain_globals(tree)
    bad = []
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and _is_jit(n)):
        local = {a.arg for a in fn.args.args} | {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)
                                                  and isinstance(n.ctx, ast.Store)}
        read = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        bad += [f"{fn.name} reads {name} = {plain[name]}" for name in sorted((read - local) & set(plain))]
    assert not bad, bad


def test_the_check_sees_a_plain_global():
    tree = ast.parse("import triton\nX = 0.5\n@triton.jit\ndef k(p):\n    y = X * 2\n")
    assert _plain_globals(tree) == {"X": "0.5"}
