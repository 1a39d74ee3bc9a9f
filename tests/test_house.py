"""The house rules a maintainer relies on: modules of one job (at most 600 lines) and functions that fit on
a screen or two (at most 100 lines). (That every path the documentation names exists: test_docs.py.)"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cxrlib"
MODULE_LINES, FUNCTION_LINES = 600, 100


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_a_catch_all():
    long = {path.relative_to(ROOT).as_posix(): n for path in modules()
            if (n := path.read_text().count("\n")) > MODULE_LINES}
    assert long == {}


def test_no_function_is_longer_than_a_screen_or_two():
    long = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > FUNCTION_LINES:
                long.add(f"{path.relative_to(ROOT).as_posix()}:{node.name}")
    assert long == set(), sorted(long)
