"""benchmarks/gpu_check.py, in its tiny CPU version: the same code paths as the GPU check."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_tiny_runs_both_loops_on_cpu(tmp_path, capsys):
    check = _gpu_check()
    assert check.main(["--tiny", "--json", str(tmp_path / "figures.json")]) == 0
    report = json.loads((tmp_path / "figures.json").read_text())
    assert report["hard_coded_cuda"] == []
    for name, backbone in (("siamese", "resnet50"), ("classifier", "densenet121")):
        figures = report[name]
        assert figures["backbone"] == backbone
        assert figures["shared_loop_images_per_s"] > 0 and figures["official_style_images_per_s"] > 0
    assert "ratio" in capsys.readouterr().out


def test_gpu_check_finds_hard_coded_cuda(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\nmodel.cuda()\n")
    (package / "b.py").write_text("model.to(accelerator.device)\n")
    assert _gpu_check().hard_coded_cuda(package) == ["pkg/a.py:2"]


def test_gpu_check_runs_the_cpu_profile_on_a_cpu(tmp_path, capsys):
    check = _gpu_check()
    data = check.write_phantom_release(tmp_path / "phantom", 6, 128)
    assert check.main(["--profile", "cpu", "--steps", "2", "--data-dir", str(data),
                       "--json", str(tmp_path / "figures.json")]) == 0
    report = json.loads((tmp_path / "figures.json").read_text())
    assert report["profile"] == "cpu" and report["image_size"] == 64 and report["device"].startswith("CPU")
    assert all(report[name]["speedup"] > 0 for name in ("siamese", "classifier"))
    assert "profile cpu" in capsys.readouterr().out
