"""Execute every notebook under the smoke profile, in order, as run_all.sh does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_every_notebook_executes_on_smoke(tmp_path):
    papermill = pytest.importorskip("papermill")
    from jupyter_client.kernelspec import KernelSpecManager

    assert "cxrlib" in KernelSpecManager().find_kernel_specs(), (
        "the 'cxrlib' Jupyter kernel is not registered; run ./run_tests.sh (scripts/setup.sh registers it)")
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    figures: set[Path] = set()
    assert set(EXPECTED_METRICS) == {path.stem for path in NOTEBOOKS}
    for path in NOTEBOOKS:
        papermill.execute_notebook(
            str(path), str(tmp_path / path.name), kernel_name="cxrlib", cwd=str(ROOT / "notebooks"),
            parameters={"profile": "smoke", "data_dir": "", "seed": 0, "results_dir": str(results),
                        "artifacts_dir": str(artifacts)},
            progress_bar=False,
        )
        for name in EXPECTED_METRICS.get(path.stem, []):
            written = results / name
            assert written.is_file() and written.stat().st_size > 0, f"{path.name} did not write {name}"
        new_figures = set((results / "figures").glob("*.png")) - figures
        assert new_figures, f"{path.name} saved no figure"
        assert all(f.stat().st_size > 1000 for f in new_figures), f"{path.name} saved an empty figure"
        figures |= new_figures
    metrics = json.loads((results / "data.json").read_text())
    assert metrics["context"]["profile"] == "smoke"
