"""The command line: each command on tiny inputs, its output, and a clear error with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrlib.cli import build_parser, main
from cxrlib.data.cache import ImageCache, default_cache_dir


def test_phantom_then_prepare_writes_a_cache(tmp_path, capsys):
    out = tmp_path / "phantom"
    assert main(["phantom", "--out", str(out), "--patients", "3", "--size", "32", "--seed", "1",
                 "--max-followups", "2"]) == 0
    assert f"phantom written to {out}" in capsys.readouterr().out
    assert (out / "Data_Entry_2017_v2020.csv").is_file()
    assert main(["phantom", "--out", str(out), "--patients", "3", "--size", "32"]) == 2  # exists already
    assert "cxrlib phantom: error" in capsys.readouterr().err

    assert main(["prepare", str(out), "--size", "16", "--workers", "1"]) == 0
    cache = ImageCache.open(default_cache_dir(out, 16))
    assert cache.size == 16 and f"cache of {len(cache.names)} images at 16 px" in capsys.readouterr().out


def test_data_prepares_a_given_folder_at_the_profiles_size(tiny_dataset, capsys):
    assert main(["data", "--profile", "smoke", "--data-dir", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"data: {tiny_dataset} (18 images, cached at 32 px)")


def test_bad_input_is_an_error_naming_the_problem(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing"), "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrlib prepare: error:") and "missing" in err
    assert main(["data", "--profile", "nonexistent", "--data-dir", str(tmp_path)]) == 2
    assert "cxrlib data: error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["unknown-command"])


def test_run_refuses_what_it_cannot_run_before_any_step(tmp_path, capsys):
    assert main(["run", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrlib run: error:") and f"{tmp_path.resolve()} is not the project folder" in err
    root = Path(__file__).resolve().parents[1]
    assert main(["run", "--root", str(root), "--data-dir", str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--profile", "huge"])
