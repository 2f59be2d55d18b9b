"""Entry points run as users launch them: `python experiments/x.py` from any directory
(`python -m experiments.x` from the checkout, as before: the guard is skipped when
`__package__` is set), and a missing optional extra named in one line.

Each subprocess costs ~6 s (importing jax), so a few representative files are launched and
every other entry point is checked statically for the same bootstrap guard.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
ENTRY_POINTS = sorted(
    p for d in ("experiments", "scripts") for p in (REPO / d).glob("*.py")
    if "__main__" in p.read_text())


def _launch(args, cwd, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _is_guard(node: ast.stmt) -> bool:
    """`if not __package__: ... sys.path.insert(0, <repository root>)`."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.UnaryOp)
            and isinstance(node.test.op, ast.Not)
            and getattr(node.test.operand, "id", None) == "__package__"
            and "sys.path.insert(0" in ast.unparse(node))


PROJECT = ("experiments", "structsel", "_bench")  # what the guard makes importable


def _imports_project(node: ast.stmt) -> bool:
    names = ([a.name for a in node.names] if isinstance(node, ast.Import)
             else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    return any(n.split(".")[0] in PROJECT for n in names)


def test_every_entry_point_has_the_bootstrap_before_its_imports():
    assert len(ENTRY_POINTS) >= 15, ENTRY_POINTS  # 9 experiments, 8+ scripts today
    for path in ENTRY_POINTS:
        body = ast.parse(path.read_text()).body
        first_import = next((i for i, n in enumerate(body) if _imports_project(n)), len(body))
        guards = [i for i, n in enumerate(body) if _is_guard(n)]
        assert guards and guards[0] < first_import, f"{path.name}: no bootstrap before imports"


@pytest.mark.parametrize("relpath", ["experiments/complexity.py",
                                     "scripts/blackbox_curves.py"])
def test_path_form_from_another_directory(relpath, tmp_path):
    # complexity imports experiments.glm_toy: the package must resolve from the checkout.
    out = _launch([str(REPO / relpath), "--help"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())  # --help writes nothing into the caller's directory


def test_module_form_from_another_directory(tmp_path):
    # `pip install -e .` installs the experiments package too (pyproject: packages.find)
    out = _launch(["-m", "experiments.glm_toy", "--help"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "Traceback" not in out.stderr


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None
                    and importlib.util.find_spec("torchopt") is not None,
                    reason="the bench extra is installed here")
def test_missing_bench_extra_is_one_line_naming_it(tmp_path):
    out = _launch([str(REPO / "scripts" / "bench_torch.py"), "--tiny"], cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[bench]"' in lines[0], out.stderr
    assert "is not installed" in lines[0] and out.stdout == ""
