"""House rules checked on the source itself: type hints on every public function and method,
and no TODO/FIXME/XXX markers left in the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "xmodal"


def _public_modules() -> list[Path]:
    """Every module whose path has no private (``_name``) part, ``__init__.py`` included."""
    return [p for p in sorted(SRC.rglob("*.py"))
            if not any(part.startswith("_") and part != "__init__.py" for part in p.relative_to(SRC).parts)]


def missing_hints(source: str, where: str) -> list[str]:
    """``where:line name`` of each public module-level function and public class's method
    (``__init__`` included, nested functions and torch ``forward`` left out) that lacks an
    annotation on a parameter or its return."""
    out = []

    def check(fn: ast.FunctionDef | ast.AsyncFunctionDef, prefix: str) -> None:
        if (fn.name.startswith("_") and fn.name != "__init__") or fn.name == "forward":
            return
        a = fn.args
        args = [x for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
        args += [x for x in (a.vararg, a.kwarg) if x is not None]
        lacking = [x.arg for x in args if x.annotation is None]
        if fn.returns is None and fn.name != "__init__":
            lacking.append("return")
        if lacking:
            out.append(f"{where}:{fn.lineno} {prefix}{fn.name} ({', '.join(lacking)})")

    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            check(node, "")
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for m in node.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    check(m, f"{node.name}.")
    return out


def test_the_hint_check_finds_what_lacks_one():
    src = ("def f(a, b: int): ...\n"
           "def g(**kw: int) -> None: ...\n"
           "def _private(a): ...\n"
           "class C:\n"
           "    def __init__(self, n): ...\n"
           "    def forward(self, x): ...\n"
           "    def m(self) -> int: ...\n"
           "class _Hidden:\n"
           "    def m(self, x): ...\n")
    assert missing_hints(src, "x.py") == ["x.py:1 f (a, return)", "x.py:5 C.__init__ (n)"]


def test_public_functions_have_type_hints():
    lacking = [hit for p in _public_modules()
               for hit in missing_hints(p.read_text(encoding="utf-8"), str(p.relative_to(SRC.parent)))]
    assert not lacking, "public functions without type hints:\n" + "\n".join(lacking)


def test_no_todo_markers_in_the_source():
    marker = re.compile(r"#.*\b(TODO|FIXME|XXX)\b")
    hits = [f"{p.relative_to(SRC.parent)}:{i}" for p in sorted(SRC.rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if marker.search(line)]
    assert not hits, f"TODO/FIXME/XXX left in: {hits}"


def test_ruff_finds_nothing():
    """pyflakes' checks (pyproject.toml [tool.ruff]): an unused import or variable, or a name
    used but never defined, in the package, its tests or benchmarks."""
    import subprocess
    import sys

    root = SRC.parents[1]
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                          "src", "tests", "benchmarks"], cwd=root, capture_output=True, text=True)
    assert "No module named ruff" not in out.stderr, "ruff is a dev dependency: pip install -e '.[dev]'"
    assert out.returncode == 0, out.stdout + out.stderr
