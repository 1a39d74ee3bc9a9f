"""Every notebook under the smoke profile, executed by run_all.sh (cxrlib run)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

from cxrlib.pipeline import JOBS
from cxrlib.results_folder import manifest_mismatches

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

#: what each notebook must write under the results folder (beside its figures)
EXPECTED_METRICS = {
    "00_data": ["data.json"],
    "01_reidentification": ["reidentification.json"],
    "02_prichexy_net": ["prichexy_net.json"],
    "03_baselines_and_tradeoff": ["tradeoff.json", "tradeoff.csv", "tradeoff.md"],
    "04_ldm_synthesis": ["synthesis.json"],
    "05_publishing_a_release": ["publishing.json", "05_release_audits.csv"],
    "06_transfer": ["transfer.json"],
}


def test_source_notebooks_have_no_outputs_and_a_parameters_cell():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{path.name} has outputs"
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        source = "".join(tagged[0]["source"])
        for name in ("profile", "data_dir", "seed", "results_dir", "artifacts_dir"):
            assert f"{name} =" in source, f"{path.name}: parameter {name} missing"
        assert nb["metadata"]["kernelspec"]["name"] == "cxrlib"


#: the longest dict display a notebook cell may build; results JSON is assembled by typed objects of the library
LONGEST_DICT_LINES = 10


def notebook_code_problems(source: str) -> list[str]:
    """What a notebook code cell does that belongs in the library: a function or class defined (also a
    lambda bound to a name), or a dict (a display, a comprehension or a ``dict(...)`` call) spanning more
    than :data:`LONGEST_DICT_LINES` lines."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            problems.append(f"line {node.lineno} defines {node.name}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Lambda):
            problems.append(f"line {node.lineno} binds a lambda to a name")
        elif isinstance(node, (ast.Dict, ast.DictComp)) or (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"):
            lines = node.end_lineno - node.lineno + 1
            if lines > LONGEST_DICT_LINES:
                problems.append(f"line {node.lineno} builds a dict over {lines} lines")
    return problems


def test_notebook_code_problems_finds_functions_and_long_dicts():
    long_dict = "x = {\n" + "".join(f"    'k{i}': {i},\n" for i in range(10)) + "}\n"
    assert notebook_code_problems(long_dict) == ["line 1 builds a dict over 12 lines"]
    assert notebook_code_problems("x = {\n" + "".join(f"    'k{i}': {i},\n" for i in range(8)) + "}\n") == []
    long_call = "x = dict(\n" + "".join(f"    k{i}={i},\n" for i in range(10)) + ")\n"
    assert notebook_code_problems(long_call) == ["line 1 builds a dict over 12 lines"]
    long_comprehension = "x = {k: v\n" + "     for k, v in y.items()\n" * 10 + "}\n"
    assert notebook_code_problems(long_comprehension) == ["line 1 builds a dict over 12 lines"]
    assert notebook_code_problems("def f():\n    pass\n") == ["line 1 defines f"]
    assert notebook_code_problems("async def f():\n    pass\n") == ["line 1 defines f"]
    assert notebook_code_problems("class C:\n    pass\n") == ["line 1 defines C"]
    assert notebook_code_problems("f = lambda x: x\n") == ["line 1 binds a lambda to a name"]
    # an inline lambda (a sort key, a rename) defines nothing
    assert notebook_code_problems("sorted(xs, key=lambda x: -x)\n") == []


def test_notebooks_define_no_functions_and_build_no_long_dicts():
    # magics and shell escapes are not Python; none of the notebooks uses them, so parsing must succeed
    problems = [f"{path.name} cell {index}: {problem}" for path in NOTEBOOKS
                for index, cell in enumerate(json.loads(path.read_text())["cells"]) if cell["cell_type"] == "code"
                for problem in notebook_code_problems("".join(cell["source"]))]
    assert not problems, "\n".join(problems)


def run_smoke(tmp_path: Path, *arguments: str, env: dict | None = None) -> Path:
    """``run_all.sh --profile smoke`` into ``tmp_path`` with ``arguments``; the results folder, after checking
    that it succeeded, that every notebook wrote its metrics and showed a figure, and that no figure is empty."""
    from jupyter_client.kernelspec import KernelSpecManager

    assert "cxrlib" in KernelSpecManager().find_kernel_specs(), (
        "the 'cxrlib' Jupyter kernel is not registered; run ./run_tests.sh (scripts/setup.sh registers it)")
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    assert set(EXPECTED_METRICS) == {path.stem for path in NOTEBOOKS}
    run = subprocess.run([str(ROOT / "run_all.sh"), "--profile", "smoke", *arguments, "--results", str(results),
                          "--artifacts", str(artifacts)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for path in NOTEBOOKS:
        for name in EXPECTED_METRICS[path.stem]:
            written = results / name
            assert written.is_file() and written.stat().st_size > 0, f"{path.name} did not write {name}"
        assert any("image/png" in output.get("data", {}) for output in executed_outputs(results, path.name)), \
            f"{path.name} showed no figure"
    figures = list((results / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures), "an empty figure was saved"
    return results


def executed_outputs(results: Path, notebook: str) -> list[dict]:
    """Every output of every cell of the executed ``notebook`` in ``results``."""
    executed = json.loads((results / "notebooks" / notebook).read_text())
    return [output for cell in executed["cells"] for output in cell.get("outputs", [])]


@pytest.mark.slow
def test_run_all_executes_every_notebook_on_smoke(tmp_path):
    # the default precision: bf16 autocast where the CPU computes bf16 in hardware (conftest turns it off)
    env = {k: v for k, v in os.environ.items() if k != "CXRLIB_CPU_BF16"}
    results = run_smoke(tmp_path, env=env)
    metrics = json.loads((results / "data.json").read_text())
    assert metrics["context"]["profile"] == "smoke"
    # the models run_all.sh trains beside the notebooks are the ones the notebooks then load
    synthesis = json.loads((results / "synthesis.json").read_text())
    assert synthesis["unet"]["training"]["epochs"] >= 1 and "ldm: " in (results / "logs" / "train ldm.log").read_text()
    executed_04 = (results / "notebooks" / "04_ldm_synthesis.ipynb").read_text()
    assert "loaded from ldm-" in executed_04
    lines = (results / "timings.tsv").read_text().splitlines()
    assert lines[0] == "notebook\tstage\tseconds\tcpu_seconds" and lines[-1].startswith("total\tall\t")
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 4 for row in rows)
    jobs = {row[0]: int(row[3]) for row in rows if row[1] == "all"}
    assert set(jobs) == {path.name for path in NOTEBOOKS} | {"train classifier", "train ldm", "total"}
    # every job's processes (kernels, workers) used CPU time, and the total is theirs
    assert all(seconds > 0 for seconds in jobs.values())
    assert jobs["total"] == sum(seconds for name, seconds in jobs.items() if name != "total")
    assert all(row[3] == "" for row in rows if row[1] != "all")
    # sections first (per executed notebook), then one row per job, then the total
    assert [row[1] == "all" for row in rows] == sorted(row[1] == "all" for row in rows)
    assert {row[0] for row in rows if row[1] != "all"} == {path.name for path in NOTEBOOKS}
    assert all((results / "logs" / f"{job.name}.log").is_file() for job in JOBS)
    # not the reference run: its report lies beside its results, and the folder holds what it lists
    assert (results / "REPORT.md").read_text().startswith("# Report of the run in ")
    assert manifest_mismatches(results) == ([], [])
    assert "REPORT.md" in (results / "outputs.txt").read_text().splitlines()
