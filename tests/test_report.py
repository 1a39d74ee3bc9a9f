"""The README's results section is generated from results/<profile>/*.json and must agree with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrlib.cli import main
from cxrlib.report import (BENCHMARK_BLOCKS, BLOCKS, DOCUMENTS, REPORT, ReportError, current_section, load_results, markers,
                           reference_differences, replace_section, results_section, stage_timings, training_block,
                           training_records, update_readme, write_report)
from cxrlib.train import training_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "cpu"


@pytest.mark.parametrize("document", list(DOCUMENTS))
def test_generated_sections_agree_with_results_cpu(document):
    path = ROOT / document
    expected = results_section(RESULTS, path.parent, DOCUMENTS[document], root=ROOT)
    assert current_section(path.read_text(), "cpu") == expected, (
        f"{document}'s generated section differs from results/cpu: run `cxrlib report --profile cpu` "
        "(run_all.sh does) instead of editing the section by hand")


@pytest.fixture
def copied_results(tmp_path):
    results = tmp_path / "results" / "cpu"
    shutil.copytree(RESULTS, results, ignore=shutil.ignore_patterns("notebooks"))
    readme = tmp_path / "README.md"
    begin, end = markers("cpu")
    readme.write_text(f"# title\n\n## Results\n\n{begin}\nstale text 0.123\n{end}\n\n## After\n")
    return results, readme


def test_section_follows_the_json_and_keeps_the_rest_of_the_readme(copied_results, monkeypatch):
    results, readme = copied_results
    synthesis = json.loads((results / "synthesis.json").read_text())
    synthesis["synthetic_classifier"]["training_images"] = 4321
    synthesis["utility"]["synthetic"]["mean_auc"] = 0.5125
    (results / "synthesis.json").write_text(json.dumps(synthesis))
    data = json.loads((results / "data.json").read_text())
    data["context"]["machine"] = {"cpu": "Test CPU", "cores": 2, "gpu": None}
    data["context"]["bf16"] = True  # as on a CPU that computes bf16, whichever CPU made the copied results
    (results / "data.json").write_text(json.dumps(data))
    (results / "timings.tsv").write_text("notebook\tstage\tseconds\tcpu_seconds\n01_x.ipynb\tTraining\t1400.5\t\n"
                                         "01_x.ipynb\tall\t1401\t1500\ntrain ldm\tall\t1300\t900\n"
                                         "total\tall\t1500\t2400\n")
    assert update_readme(readme, results, "cpu")
    text = readme.read_text()
    assert text.startswith("# title\n\n## Results\n\n") and text.endswith("\n\n## After\n")
    assert "stale text" not in text
    section = current_section(text, "cpu")
    assert "trained on 4,321 synthetic images only reaches mean AUC 0.512" in section.replace("\n", " ")
    assert "on Test CPU (2 cores) with the phantom already made" in section.replace("\n", " ")
    assert ("the jobs kept the cores busy for 2,400 CPU seconds, so on 2 cores no order of the jobs ends "
            "before 20 min 0 s") in section.replace("\n", " ")
    assert "in bf16 autocast (every network; the latent diffusion model keeps" in section.replace("\n", " ")
    assert "(results/cpu/figures/tradeoff.png)" in section  # links relative to the README
    assert not update_readme(readme, results, "cpu")  # a second run changes nothing


def test_missing_results_leave_their_blocks_out(copied_results):
    results, _ = copied_results
    (results / "tradeoff.json").unlink()
    section = results_section(results, results.parents[1])
    assert "**Re-identification**" in section and "**Synthesis**" in section
    assert "Anonymization" not in section and "PriCheXy-Net" not in section


def test_bad_readme_or_results_are_refused(tmp_path):
    with pytest.raises(ReportError, match="marker"):
        replace_section("no markers here", "x", "cpu")
    begin, end = markers("cpu")
    with pytest.raises(ReportError, match="once each"):
        replace_section(f"{begin}\n{begin}\n{end}\n", "x", "cpu")
    with pytest.raises(ReportError, match="no results"):
        results_section(tmp_path)
    (tmp_path / "synthesis.json").write_text("{not json")
    with pytest.raises(ReportError, match="synthesis.json"):
        results_section(tmp_path)


def test_report_command_writes_the_section_or_says_there_is_none(copied_results, capsys):
    results, readme = copied_results
    root = readme.parent
    assert main(["report", "--profile", "cpu", "--results", str(results), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "README.md: results section of the reference run rewritten from" in out
    assert "data/README.md has no results section for the reference run" in out  # not in this copy
    assert "stale text" not in readme.read_text()
    assert not (results / REPORT).exists()
    assert main(["report", "--root", str(root)]) == 0  # the defaults: results/cpu under the root
    assert "README.md: results section of the reference run already matches" in capsys.readouterr().out
    assert main(["report", "--profile", "smoke", "--results", str(results), "--root", str(root)]) == 2
    assert "holds results of profile cpu, not smoke" in capsys.readouterr().err
    readme.write_text(markers("cpu")[0] + "\n")
    assert main(["report", "--profile", "cpu", "--results", str(results), "--root", str(root)]) == 2
    assert "marker" in capsys.readouterr().err


def _recontext(results: Path, **changes) -> None:
    """Every metrics file of a copied run, with its recorded context changed."""
    for path in results.glob("*.json"):
        payload = json.loads(path.read_text())
        if "context" in payload:
            payload["context"].update(changes)
            path.write_text(json.dumps(payload))


@pytest.mark.parametrize("run, reason", [
    ("seed", "seed 7, not 42"),
    ("data", "data ChestX-ray14 at /data/cxr14, 64 px, profile 'cpu', seed 42, not the profile's phantom"),
    ("dry run", "a dry run (--max-steps 2)"),
    ("folder", "cpu-elsewhere, not "),
])
def test_only_the_reference_run_writes_the_readmes_any_other_its_report(tmp_path, capsys, run, reason):
    root = tmp_path / "project"
    for name in DOCUMENTS:  # the real documents, markers and all
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    before = {name: (root / name).read_bytes() for name in DOCUMENTS}
    results = root / "results" / ("cpu-elsewhere" if run == "folder" else "cpu")
    shutil.copytree(RESULTS, results, ignore=shutil.ignore_patterns("notebooks"))
    if run == "seed":
        _recontext(results, seed=7)
    elif run == "data":
        _recontext(results, phantom=False, data="ChestX-ray14 at /data/cxr14, 64 px, profile 'cpu', seed 42")
    elif run == "dry run":
        _recontext(results, max_steps=2)
    assert main(["report", "--results", str(results), "--root", str(root)]) == 0
    assert f"{results / REPORT}: the report of this run" in capsys.readouterr().out
    assert {name: (root / name).read_bytes() for name in DOCUMENTS} == before  # byte-identical
    report = (results / REPORT).read_text()
    assert report.startswith(f"# Report of the run in `{results.name}/`") and reason in report.replace("\n", " ")
    # the same generated blocks, README's and data/README.md's, with links relative to the results folder
    assert "**Re-identification**" in report and "the phantom's lung fields" in report.replace("\n", " ")
    assert "](figures/tradeoff.png)" in report and "written to [`./`](./)" in report.replace("\n", " ")
    assert "committed under" not in report.replace("\n", " ")


def test_the_reference_run_is_read_from_the_recorded_context_and_the_folder(copied_results):
    results, readme = copied_results
    root = readme.parent
    assert reference_differences(results, root) == []
    data = json.loads((results / "publishing.json").read_text())  # one file of another run is enough
    data["context"]["seed"] = 1
    (results / "publishing.json").write_text(json.dumps(data))
    assert reference_differences(results, root) == ["seed 1, not 42"]
    assert write_report(results, root) == {results / REPORT: "written"}
    assert "stale text" in readme.read_text()


def _executed_notebook(path: Path, cells: list[tuple[str, str, float | None]]) -> Path:
    path.write_text(json.dumps({"cells": [
        {"cell_type": kind, "source": source,
         "metadata": {} if seconds is None else {"papermill": {"duration": seconds}}}
        for kind, source, seconds in cells]}))
    return path


def test_stage_timings_sum_code_cells_under_their_heading_and_feed_the_run_time(tmp_path, capsys):
    notebook = _executed_notebook(tmp_path / "01_x.ipynb", [
        ("code", "import cxrlib", 2.0), ("markdown", "## Training\nwhy", None), ("code", "fit()", 10.5),
        ("markdown", "no heading here", None), ("code", "fit_more()", 4.0), ("markdown", "### Tests", None),
        ("code", "test()", 1.25)])
    assert stage_timings(notebook) == [("setup", 2.0), ("Training", 14.5), ("Tests", 1.25)]
    assert main(["timings", str(notebook)]) == 0
    assert capsys.readouterr().out.splitlines() == ["01_x.ipynb\tsetup\t2.0", "01_x.ipynb\tTraining\t14.5",
                                                    "01_x.ipynb\tTests\t1.2"]
    (tmp_path / "timings.tsv").write_text("notebook\tstage\tseconds\n01_x.ipynb\tTraining\t14.5\n"
                                          "01_x.ipynb\tall\t18\ntotal\tall\t18\n")
    (tmp_path / "data.json").write_text("{}")
    timings = load_results(tmp_path)["timings"]
    assert timings == {"01_x.ipynb": 18, "total": 18} and all(isinstance(s, int) for s in timings.values())
    assert "cpu_seconds" not in load_results(tmp_path)  # timings of a run before run_all.sh measured them
    (tmp_path / "timings.tsv").write_text("notebook\tstage\tseconds\tcpu_seconds\n01_x.ipynb\tTraining\t14.5\t\n"
                                          "01_x.ipynb\tall\t18\t30\ntotal\tall\t18\t30\n")
    assert load_results(tmp_path)["cpu_seconds"] == {"01_x.ipynb": 30, "total": 30}


def test_stage_timings_refuse_a_notebook_papermill_did_not_run(tmp_path):
    notebook = _executed_notebook(tmp_path / "plain.ipynb", [("code", "x = 1", None)])
    with pytest.raises(ReportError, match="plain.ipynb.*no papermill duration"):
        stage_timings(notebook)
    (tmp_path / "broken.ipynb").write_text("{")
    with pytest.raises(ReportError, match="broken.ipynb"):
        stage_timings(tmp_path / "broken.ipynb")


def test_cpu_fast_paths_come_from_the_benchmarks_beside_the_readme(copied_results):
    results, readme = copied_results
    root = readme.parent
    assert "fast paths" not in results_section(results, root, BENCHMARK_BLOCKS)  # no benchmark there: no block
    (root / "benchmarks" / "results").mkdir(parents=True)
    machine = {"cpu": "Test CPU", "cores": 2, "torch": "9.9", "torch_cpu_capability": "AVX2", "bf16_flags": []}
    network = {"fp32": {"train": 100.0, "inference": 300.0, "train_ratio": 1.0, "inference_ratio": 1.0},
               "bf16": {"train": 25.0, "inference": 60.0, "train_ratio": 0.25, "inference_ratio": 0.2}}
    paths = {"profile": "cpu", "threads": 2, "machine": machine, "networks": {"siamese": network},
             "loop": {"fit_train_seconds": 10.5, "bare_loop_seconds": 10.0, "overhead": 0.05, "repeats": 3,
                      "rounds": [{"overhead": o} for o in (0.05, -0.02, 0.11)]}}
    (root / "benchmarks" / "results" / "cpu_paths.json").write_text(json.dumps(paths))
    section = results_section(results, root, BENCHMARK_BLOCKS)
    flat = section.replace("\n", " ")
    assert "5.0% longer than a bare loop" in flat and "Test CPU, 2 cores" in flat
    assert "the median of 3 rounds, which ranged from -2.0% to +11.0%" in flat
    assert "| siamese   | 100 / 300" in section and "0.25 / 0.20" in section
    assert "without bf16 hardware, like this one, every network trains in fp32" in flat
    with_bf16 = {**paths, "machine": {**machine, "bf16_flags": ["avx512_bf16"]}}
    (root / "benchmarks" / "results" / "cpu_paths.json").write_text(json.dumps(with_bf16))
    assert "like this one, every network trains in bf16 autocast" in results_section(results, root, BENCHMARK_BLOCKS).replace("\n", " ")
    with_batches = {**paths, "batches": {"siamese": {"train": 32, "inference": 128}}}
    (root / "benchmarks" / "results" / "cpu_paths.json").write_text(json.dumps(with_batches))
    assert "| siamese   | 32 / 128                    | 100 / 300" in results_section(results, root, BENCHMARK_BLOCKS)
    (root / "benchmarks" / "results" / "cpu_paths.json").write_text(json.dumps(paths))
    processes = {"profile": "cpu", "processes": {"siamese": {"threads": 2, "processes": 3, "ratio": 1.234}}}
    (root / "benchmarks" / "results" / "cpu_processes.json").write_text(json.dumps(processes))
    assert "1.23 |" in results_section(results, root, BENCHMARK_BLOCKS)
    # measured with another profile: left out
    (root / "benchmarks" / "results" / "cpu_paths.json").write_text(json.dumps({**paths, "profile": "smoke"}))
    assert "fast paths" not in results_section(results, root, BENCHMARK_BLOCKS)


def test_sampling_precision_comes_from_its_benchmark_beside_the_readme(copied_results):
    results, readme = copied_results
    root = readme.parent
    assert "Sampling in bf16" not in results_section(results, root, BENCHMARK_BLOCKS)
    (root / "benchmarks" / "results").mkdir(parents=True)

    def precision(seconds, aucs):
        return {"sampling_seconds": seconds, "mean_auc": sum(aucs) / len(aucs),
                "classifiers": [{"seed": 42 + i, "mean_auc": auc} for i, auc in enumerate(aucs)]}

    bench = {"profile": "cpu", "machine": {"cpu": "Test CPU"}, "threads": 1, "images": 3944,
             "pixels": {"mean_abs_difference": 0.0014, "share_off_by_an_8bit_level": 0.052},
             "precisions": {"fp32": precision(240.0, [0.72, 0.74]), "bf16": precision(155.0, [0.71, 0.73])},
             "speedup": 240 / 155, "auc_difference": -0.01}
    (root / "benchmarks" / "results" / "sampling_precision.json").write_text(json.dumps(bench))
    flat = results_section(results, root, BENCHMARK_BLOCKS).replace("\n", " ")
    assert "3,944 images of the synthetic data set, drawn from one seed, took 155 s with the U-Net in bf16 " \
           "against 240 s in fp32 (1.55x)" in flat
    assert "5.2% of pixels" in flat and "with the same 2 seeds" in flat
    assert "0.720 from bf16 samples (0.710, 0.730) and 0.730 from fp32 samples (0.720, 0.740)" in flat
    assert "a difference of -0.010" in flat
    smoke = {**bench, "profile": "smoke"}
    (root / "benchmarks" / "results" / "sampling_precision.json").write_text(json.dumps(smoke))
    assert "Sampling in bf16" not in results_section(results, root, BENCHMARK_BLOCKS)

    def trained(seconds, best, epochs, loss):
        return {"seconds": seconds, "best_epoch": best, "epochs": epochs, "best_val_loss": loss}

    training = {"profile": "cpu", "machine": {"cpu": "Test CPU"}, "threads": 1, "images": 3944,
                "compared": "training", "speedup": 1000 / 800, "auc_difference": 0.01,
                "precisions": {"fp32": {**precision(130.0, [0.70, 0.72]), "autoencoder": trained(200, 6, 9, 0.0778),
                                        "unet": trained(800, 34, 34, 0.0481)},
                               "bf16": {**precision(128.0, [0.71, 0.73]), "autoencoder": trained(160, 7, 10, 0.0775),
                                        "unet": trained(640, 33, 36, 0.0483)}}}
    (root / "benchmarks" / "results" / "training_precision.json").write_text(json.dumps(training))
    flat = results_section(results, root, BENCHMARK_BLOCKS).replace("\n", " ")
    assert "`benchmarks/bench_sampling_precision.py --training`, Test CPU, 1 thread per precision" in flat
    assert ("the autoencoder 160 s against 200 s (best epoch 7 of 10 against 6 of 9; validation loss 0.0775 "
            "against 0.0778), the U-Net 640 s against 800 s") in flat and "1.25x as fast together" in flat
    assert "0.720 from the model trained in bf16 (0.710, 0.730) and 0.710 from the model trained in fp32" in flat


def test_training_block_finds_every_record_and_counts_how_each_ended():
    results = {"reidentification": {"verification_runs": {"runs": [
                   {"seed": 1, **training_record(9, 6, 15, 3, True)},
                   {"seed": 2, **training_record(15, 15, 15, 3, False)}]}},
               "synthesis": {"unet": {"training": training_record(12, 12, 12, 20, False), "best_val_loss": 0.05},
                             "history": [{"epoch": 1}]}}
    assert set(training_records(results)) == {"reidentification.verification_runs.runs[]", "synthesis.unet"}
    block = training_block(results)
    assert "1 of 3 trainings stopped early" in block and "1 ran into their epoch cap" in block
    assert "1 had a fixed budget" in block
    assert "| `reidentification.verification_runs.runs[]` |      2 | early stopping 1, epoch cap 1 | 6–15" in block
    assert training_block({"synthesis": {"unet": {"best_val_loss": 0.05}}}) is None


def test_identity_profile_and_real_sample_blocks_come_from_their_runs(copied_results):
    from cxrlib.attacks import CueAUC, IdentityProfile
    from cxrlib.report import identity_profile_block, real_sample_block

    results, _ = copied_results

    def profile(name: str, auc: float) -> dict:
        cues = tuple(CueAUC(kind, kind.replace("_", " "), auc, auc - 0.02, auc + 0.02)
                     for kind in ("raw_pixels", "block_means_8", "histogram", "mean_sd"))
        return IdentityProfile(name, 10, 30, 100, 100, 50, 0, cues).to_json()

    data = json.loads((results / "data.json").read_text())
    data["identity_profiles"] = [profile("phantom", 0.71), profile("chestxray14-sample", 0.70)]
    (results / "data.json").write_text(json.dumps(data))
    block = identity_profile_block(load_results(results))
    assert "4 of 4 phantom cues lie within the real CI" in block and "0.710 (0.690–0.730)" in block
    data["identity_profiles"][1] = profile("chestxray14-sample", 0.60)
    (results / "data.json").write_text(json.dumps(data))
    assert "0 of 4 phantom cues" in identity_profile_block(load_results(results))

    def loaded() -> dict:
        return {**load_results(results), "link_root": results.parent.parent}

    assert real_sample_block(loaded()) is None  # no sample run beside it
    sample = results.parent / "cpu-chestxray14-sample"
    sample.mkdir()
    reid = json.loads((results / "reidentification.json").read_text())
    reid["retrieval"]["precision_at_1"] = 0.123456
    (sample / "reidentification.json").write_text(json.dumps(reid))
    assert real_sample_block(loaded()) is None  # a run in progress (no outputs.txt yet) is left out
    (sample / "outputs.txt").write_text("reidentification.json\n")
    assert real_sample_block(loaded()) is None  # a failed run (outputs.txt, no timings.tsv) is left out
    (sample / "timings.tsv").write_text("notebook\tstage\tseconds\tcpu_seconds\n")
    block = real_sample_block(loaded())
    ours = json.loads((results / "reidentification.json").read_text())["retrieval"]["precision_at_1"]
    row = next(line for line in block.splitlines() if line.startswith("| retrieval P@1"))
    assert [cell.strip() for cell in row.split("|")[2:4]] == [f"{ours:.3f}", "0.123"]
    assert "results/cpu-chestxray14-sample/" in block
    assert "–" in block  # the sample run wrote no synthesis.json


def test_prichexy_schedule_sentence_comes_from_notebook_02s_json():
    from cxrlib.report.blocks import _prichexy_schedule_sentence

    assert _prichexy_schedule_sentence({}) == ""  # a run from before the schedule was recorded
    prichexy = {"schedule": {"epochs": 10, "steps_per_epoch": 40}, "frozen_val_auc_original": 0.9,
                "per_mu": [{"mu": 0.005, "frozen_val_auc_kept": 0.88, "frozen_val_auc_lowest": 0.85},
                           {"mu": 0.01, "frozen_val_auc_kept": 0.8, "frozen_val_auc_lowest": 0.75}],
                "diagnostic_frozen_adversaries": {"frozen_val_auc_lowest": 0.6, "frozen_snn_auc": 0.62,
                                                  "frozen_snn_auc_ci": [0.58, 0.66]}}
    text = _prichexy_schedule_sentence(prichexy)
    assert "10 epochs of 40 generator steps" in text
    assert "at mu = 0.01 the frozen siamese network's validation AUC was 0.800 at the kept epoch (0.750" in text
    assert "0.900 on the original pairs" in text and "0.620 on the test pairs (95 % CI 0.580-0.660)" in text


def test_decomposition_sentence_comes_from_notebook_04s_json():
    from cxrlib.data.chestxray14 import LABELS
    from cxrlib.report.blocks import _decomposition_sentence
    from cxrlib.synthesis.decomposition import GapDecomposition, SeedAUCs

    assert _decomposition_sentence(None) == ""  # a run from before notebook 04 decomposed its gap
    parts = {"real": 0.85, "real_on_reconstructed": 0.84, "reconstructed": 0.83, "synthetic": 0.7}
    aucs = {part: {f: auc - (0.1 if f == "Fibrosis" and part == "synthetic" else 0) for f in LABELS}
            for part, auc in parts.items()}
    result = GapDecomposition(tuple(LABELS), (SeedAUCs(42, aucs, {f: 0.7 for f in LABELS}),), test_images=10,
                              real_training_images=20, synthetic_training_images=20, rendered_images=24)
    text = _decomposition_sentence({"summary": result.summary(), "worst_findings": result.worst_findings()})
    assert "(1 classifier seed)" in text and f"costs 2.0 points and the generator {100 * (0.13 + 0.1 / 14):.1f};" in text
    assert "loses most: Fibrosis 25.0," in text and "rendering AUC of the synthetic images 0.700" in text


def test_audit_time_comes_from_its_benchmark_beside_the_readme(copied_results):
    results, readme = copied_results
    root = readme.parent
    assert "The audit's time" not in results_section(results, root, BENCHMARK_BLOCKS)
    (root / "benchmarks" / "results").mkdir(parents=True)
    bench = {"profile": "cpu", "machine": {"cpu": "Test CPU"}, "threads": 2, "images": 5081,
             "attacks": ["retrieval", "raw_pixels"], "internal_seconds": 36.3, "internal_panel_seconds": 21.9,
             "against_seconds": 76.9, "release_images": 112120,
             "release_estimate": {"total_seconds": 3600, "slowest_part": "pixel correlation, best of small shifts",
                                  "slowest_part_seconds": 2364, "slowest_part_growth_exponent": 1.75}}
    (root / "benchmarks" / "results" / "audit.json").write_text(json.dumps(bench))
    flat = results_section(results, root, BENCHMARK_BLOCKS).replace("\n", " ")
    assert "**The audit's time** (`benchmarks/bench_audit.py`, Test CPU, 2 threads;" in flat
    assert "5,081 images of the `cpu` phantom with all 2 attacks of its panel took 36 s (the panel 22 s), 77 s" in flat
    assert "about 60 min 0 s" in flat and "(about 39 min 24 s; its time grew as" in flat and "power 1.75" in flat
    (root / "benchmarks" / "results" / "audit.json").write_text(json.dumps({**bench, "profile": "smoke"}))
    assert "The audit's time" not in results_section(results, root, BENCHMARK_BLOCKS)


def test_loop_ratio_comes_from_gpu_checks_cpu_figures_beside_the_readme(copied_results):
    results, readme = copied_results
    root = readme.parent
    assert "The shared loop against an official-style one" not in results_section(results, root, BENCHMARK_BLOCKS)
    (root / "benchmarks" / "results").mkdir(parents=True)

    def loop(backbone, batch, shared, official):
        return {"backbone": backbone, "batch": batch, "shared_loop_images_per_s": shared,
                "official_style_images_per_s": official, "speedup": shared / official}

    bench = {"profile": "cpu", "device": "Test CPU", "mixed_precision": "no", "image_size": 64, "steps": 40,
             "siamese": loop("convnet_spatial", 32, 300.0, 100.0), "classifier": loop("convnet_spatial", 32, 500.0, 250.0)}
    (root / "benchmarks" / "results" / "loop_ratio_cpu.json").write_text(json.dumps(bench))
    flat = results_section(results, root, BENCHMARK_BLOCKS).replace("\n", " ")
    assert "(`benchmarks/gpu_check.py --profile cpu`, Test CPU, mixed precision no;" in flat
    assert "the siamese network (convnet_spatial, batch 32) 300 against 100 images/s (3.00x)" in flat
    assert "the classifier network (convnet_spatial, batch 32) 500 against 250 images/s (2.00x)" in flat


def test_prichexy_geometry_is_the_one_the_run_recorded_not_the_codes_current_rule():
    """A run trained under an older geometry (mu a share of the image: 0.32 px at 64 px) is described by
    what it recorded, in the table and in the sentence, never relabelled with today's 1.28 px."""
    from cxrlib.report.blocks import tradeoff_reading_block, tradeoff_table_block

    results = load_results(RESULTS)
    for row in results["prichexy_net"]["per_mu"]:
        row["max_displacement_px"] = row["mu"] * 63 / 2  # the older rule: mu a share of the 64 px image
    table = tradeoff_table_block(results)
    assert "mu = 0.01 (at most 0.32 px at 64 px)" in table and "1.3 px" not in table
    assert "at most 0.32 px at 64 px, not the paper's 1.28 px" in tradeoff_reading_block(results)
    for row in results["prichexy_net"]["per_mu"]:
        row["max_displacement_px"] = 255 * row["mu"] / 2
    assert "mu = 0.01 (at most 1.3 px at 64 px)" in tradeoff_table_block(results)
    assert "at most 1.28 px at 64 px, as the paper's at 256 px" in tradeoff_reading_block(results)


def test_benchmarks_leave_the_readme_for_docs_benchmarks_and_the_scale_table_is_generated(copied_results):
    results, readme = copied_results
    root = readme.parent
    assert not set(BLOCKS) & set(BENCHMARK_BLOCKS)  # each topic once: results in the README, speed in docs/
    assert "at ChestX-ray14 scale" not in results_section(results, root, BENCHMARK_BLOCKS)  # not measured
    (root / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "results" / "scale.json", root / "benchmarks" / "results" / "scale.json")
    bench = json.loads((root / "benchmarks" / "results" / "scale.json").read_text())
    section = results_section(results, root, BENCHMARK_BLOCKS)
    assert f"{bench['bench_seconds']:.0f} s on {bench['machine']}" in section.replace("\n", " ")
    assert "| cache size | " in section and "| what | measured |" in section

def test_sampler_sweep_comes_from_its_benchmark_beside_the_readme(copied_results):
    results, readme = copied_results
    root = readme.parent
    assert "**The sampler**" not in results_section(results, root, BENCHMARK_BLOCKS)
    (root / "benchmarks" / "results").mkdir(parents=True)

    def run(sampler, scale, steps, frechet, auc, seconds, rescale=0.0):
        return {"sampler": sampler, "guidance_scale": scale, "steps": steps, "guidance_rescale": rescale,
                "frechet_distance": frechet, "rendering_auc": auc, "seconds_per_image": seconds}

    runs = [run("ddim", 3.0, 15, 20.5, 0.70, 0.09), run("ddim", 1.5, 10, 12.25, 0.60, 0.06),
            run("dpm", 4.0, 25, 30.0, 0.75, 0.15), run("ddim", 3.0, 15, 18.0, 0.69, 0.091, rescale=0.7)]
    bench = {"profile": "cpu", "machine": {"cpu": "Test CPU"}, "threads": 1, "images": 1490, "test_images": 1137,
             "min_positives": 20, "positives": {"Mass": 34, "Pneumonia": 21, "Hernia": 5},
             "real_training_images": {"frechet_distance": 9.391}, "real_test_images": {"auc": 0.8512},
             "profile_setting": {"sampler": "ddim", "guidance_scale": 3.0, "steps": 15},
             "best_by_ranks": {"sampler": "ddim", "guidance_scale": 3.0, "steps": 15}, "runs": runs,
             "seed_spread": {"seeds": [42, 43, 44], "frechet_distance": [20.5, 19.0, 22.125],
                             "rendering_auc": [0.70, 0.6875, 0.71]},
             "timing": {"images": 32, "repeats": 3, "seconds_per_image": {"ddim": {"10": 0.06, "25": 0.15},
                                                                          "dpm": {"10": 0.061, "25": 0.152}}}}
    (root / "benchmarks" / "results" / "sampler_sweep.json").write_text(json.dumps(bench))
    section = results_section(results, root, BENCHMARK_BLOCKS)
    flat = section.replace("\n", " ")
    assert "**The sampler** (`benchmarks/bench_sampler.py`, Test CPU, 1 thread;" in flat
    assert "drew 1,490 images with each setting" in flat
    assert "at least 20 positives where the split has as many (Hernia has 5)." in flat
    assert "the 1,137 real test images (the real training images of the same label vectors: 9.39)" in flat
    assert "on the real test images it reaches 0.851" in flat
    assert ("Best by the lowest Fréchet distance: DDIM, guidance scale 1.5, 10 steps; the highest rendering AUC: "
            "DPM-Solver++, guidance scale 4, 25 steps; the fastest (side by side): DDIM at 10 steps; the lowest sum "
            "of both ranks: DDIM, guidance scale 3, 15 steps.") in flat
    assert "The profile samples with DDIM, guidance scale 3, 15 steps. Drawn from 3 seeds" in flat
    assert "a Fréchet distance from 19.00 to 22.12 and a rendering AUC from 0.688 to 0.710" in flat
    assert ("Guidance rescale 0.7 (Lin et al. 2024): at DDIM, guidance scale 3, 15 steps it moves the Fréchet "
            "distance from 20.50 to 18.00 and the rendering AUC from 0.700 to 0.690.") in flat
    assert ("Timed side by side, the fastest of 3 rounds over 32 images that each draw every setting in turn "
            "(other jobs shared the machine, so the sweep's own times drift with their load): DDIM 0.060 and 0.150 "
            "s per image at 10 and 25 steps; DPM-Solver++ 0.061 and 0.152 s per image at 10 and 25 steps.") in flat
    assert "| DPM-Solver++ | 4" in section and "| 12.25 " in section and "| 0.150 " in section
    untimed = {key: value for key, value in bench.items() if key != "timing"}
    (root / "benchmarks" / "results" / "sampler_sweep.json").write_text(json.dumps(untimed))
    assert "the fastest: DDIM, guidance scale 1.5, 10 steps;" in results_section(results, root, BENCHMARK_BLOCKS).replace("\n", " ")
    # measured with another profile: left out
    (root / "benchmarks" / "results" / "sampler_sweep.json").write_text(json.dumps({**bench, "profile": "smoke"}))
    assert "**The sampler**" not in results_section(results, root, BENCHMARK_BLOCKS)

def test_gap_decomposition_comes_from_its_benchmark_beside_the_readme(copied_results):
    from cxrlib.data.chestxray14 import LABELS
    from cxrlib.synthesis import GapDecomposition, SeedAUCs

    results, readme = copied_results
    root = readme.parent
    assert "synthetic-only gap decomposed" not in results_section(results, root, BENCHMARK_BLOCKS)
    (root / "benchmarks" / "results").mkdir(parents=True)

    def seed(number, real, on_reconstructed, reconstructed, synthetic):
        def aucs(value):  # Cardiomegaly loses 10 points more than the others; Hernia has no positive test image
            return {f: float("nan") if f == "Hernia" else value - (0.1 if f == "Cardiomegaly" else 0.0)
                    for f in LABELS}

        return SeedAUCs(number, {"real": {**aucs(real), "Cardiomegaly": real},
                                 "real_on_reconstructed": aucs(on_reconstructed),
                                 "reconstructed": aucs(reconstructed), "synthetic": aucs(synthetic)}, aucs(0.8))

    decomposition = GapDecomposition(tuple(LABELS),
                                     (seed(42, 0.85, 0.84, 0.80, 0.73), seed(43, 0.86, 0.84, 0.80, 0.74)),
                                     test_images=1137, real_training_images=3457, synthetic_training_images=3457,
                                     rendered_images=3944)
    bench = {"profile": "cpu", "machine": {"cpu": "Test CPU"}, "threads": 1, "seconds": {"total": 1800.0},
             "synthetic_set": {"training": 3457, "sampling_steps": 15, "guidance_scale": 3.0, "privacy_filter": False},
             "worst_findings": decomposition.worst_findings(), "summary": decomposition.summary(),
             "decomposition": decomposition.to_json()}
    (root / "benchmarks" / "results" / "gap_decomposition.json").write_text(json.dumps(bench))
    section = results_section(results, root, BENCHMARK_BLOCKS)
    flat = section.replace("\n", " ")
    assert "(`benchmarks/bench_gap_decomposition.py`, Test CPU, 1 thread, 30 min 0 s;" in flat
    assert "2 classifier seeds (42, 43)" in flat and "3,457 synthetic images only" in flat
    assert "same 1,137 real test images. Of" in flat
    bench["classifiers"] = {"real": {"42": {"from_reference": True}, "43": {"from_reference": False}}}
    (root / "benchmarks" / "results" / "gap_decomposition.json").write_text(json.dumps(bench))
    flat = results_section(results, root, BENCHMARK_BLOCKS).replace("\n", " ")
    assert "same 1,137 real test images (the real classifier of seed 42 is the finished run's, loaded)." in flat
    # the gaps, in points, from the hand-made AUCs: a - d = 12 and 12 (the mean over findings), and so on
    synthetic_only = decomposition.gap("synthetic_only")
    assert f"synthetic-only gap of {synthetic_only.mean:.1f} ± {synthetic_only.std:.1f} AUC points" in flat
    assert "without the privacy filter" in flat
    assert flat.index("The findings that lose most (points): Cardiomegaly") > 0
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table[2].startswith("| mean over findings (± SD over seeds) | 0.855 ± 0.007 |")
    assert table[3].startswith("| Cardiomegaly | 0.855 | 0.740 | 0.700 | 0.635 | 22.0 | 15.5 | 6.5 | 11.5 | 0.700 |")
    assert table[-1].startswith("| Hernia | – | – |")  # no AUC: last, not a number
    (root / "benchmarks" / "results" / "gap_decomposition.json").write_text(json.dumps({**bench, "profile": "smoke"}))
    assert "synthetic-only gap decomposed" not in results_section(results, root, BENCHMARK_BLOCKS)


def test_ldm_recipes_come_from_their_benchmark_with_each_recipes_gap(copied_results):
    from cxrlib.data.chestxray14 import LABELS
    from cxrlib.synthesis import GapDecomposition, SeedAUCs

    results, readme = copied_results
    root = readme.parent
    assert "How the latent diffusion model is trained" not in results_section(results, root, BENCHMARK_BLOCKS)
    (root / "benchmarks" / "results").mkdir(parents=True)

    def recipe(synthetic, channels, schedule, balance, edges, epochs, cap):
        synthetic = synthetic if isinstance(synthetic, tuple) else (synthetic,)
        seeds = tuple(SeedAUCs(42 + i, {
            "real": {f: 0.85 for f in LABELS}, "real_on_reconstructed": {f: 0.84 for f in LABELS},
            "reconstructed": {f: 0.84 for f in LABELS}, "synthetic": {f: auc for f in LABELS}}, {f: 0.7 for f in LABELS})
            for i, auc in enumerate(synthetic))
        decomposition = GapDecomposition(tuple(LABELS), seeds, test_images=1137, real_training_images=3457,
                                         synthetic_training_images=3457, rendered_images=3944)
        return {"settings": {"unet_channels": channels, "unet_epochs": cap, "unet_lr": 1e-3, "unet_lr_schedule": schedule,
                             "unet_warmup_steps": 200, "unet_class_balance": balance, "autoencoder_edge_weight": edges,
                             "patience": 3, "min_improvement": 0.01},
                "training": {"cpu_seconds": 1500.0, "autoencoder": {"seconds": 630.0},
                             "unet": {"epochs": epochs, "max_epochs": cap, "seconds": 1410.0}},
                "validation_reconstruction": {"psnr": 25.9}, "frechet_distance": 16.04,
                "summary": decomposition.summary()}

    bench = {"profile": "cpu", "machine": {"cpu": "Test CPU"}, "threads": 1, "budget_epochs": 34, "recipes": {
        "profile": recipe(0.73, [32, 64, 64], "constant", 0.0, 0.0, 34, 60),
        "cosine-balanced": recipe((0.76, 0.78), [32, 64, 64], "cosine", 1.0, 0.0, 34, 34)}}
    (root / "benchmarks" / "results" / "ldm_recipe.json").write_text(json.dumps(bench))
    section = results_section(results, root, BENCHMARK_BLOCKS)
    flat = section.replace("\n", " ")
    assert "(`benchmarks/bench_ldm_recipe.py`, Test CPU, 1 thread per process" in flat
    assert "over its classifier seeds (of 42, 43;" in flat and "The fixed budget is 34 epochs" in flat
    assert "The lowest synthetic-only gap: `cosine-balanced`, 8.0 points." in flat
    assert "one model's gap moves by an SD of 1.4 to 1.4 points" in flat and "Each recipe trained once" in flat
    rows = {line.split(" | ")[0]: line for line in section.splitlines() if line.startswith("| `")}
    assert rows["| `profile`"].startswith(
        "| `profile` | 32 / 64 / 64 | constant; stops after 3 epochs without a 1% gain | uniform | 0 | 34 of 60 | 10 / 24 "
        "| 25.90 | 16.04 | 0.700 | 1 | 1.0 | 11.0 | **12.0** |")
    assert "| cosine, warm-up 200 steps, fixed budget | inverse prevalence | 0 | 34 of 34 |" in rows["| `cosine-balanced`"]
    assert rows["| `cosine-balanced`"].endswith("| 2 | 1.0 ± 0.0 | 7.0 ± 1.4 | **8.0 ± 1.4** |")
    (root / "benchmarks" / "results" / "ldm_recipe.json").write_text(json.dumps({**bench, "profile": "smoke"}))
    assert "How the latent diffusion model is trained" not in results_section(results, root, BENCHMARK_BLOCKS)
