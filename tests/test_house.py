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


def test_every_dataset_yields_the_one_item_shape():
    """One dataset contract (cxrlib.data.datasets): every torch Dataset the package defines derives from
    ItemDataset (items are dicts of tensors), and nothing builds a TensorDataset (items as tuples)."""
    import importlib
    import inspect
    import pkgutil

    from torch.utils.data import Dataset

    import cxrlib
    from cxrlib.data.datasets import ItemDataset

    outside = []
    for info in pkgutil.walk_packages(cxrlib.__path__, "cxrlib."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        outside += [f"{info.name}.{name}" for name, obj in vars(module).items()
                    if inspect.isclass(obj) and obj.__module__ == info.name and issubclass(obj, Dataset)
                    and not issubclass(obj, ItemDataset)]
    assert outside == []
    sources = [*modules(), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "notebooks").glob("*.ipynb")]
    assert [p.relative_to(ROOT).as_posix() for p in sources if "TensorDataset" in p.read_text()] == []
