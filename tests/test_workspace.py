"""The notebooks' entry point on a small phantom: pair requests capped to what a split allows."""

import pandas as pd
import pytest

from cxrlib.data.chestxray14 import DataError
from cxrlib.data.pairs import max_positive_pairs
from cxrlib.data.phantom import generate_phantom
from cxrlib.workspace import Workspace


def _workspace(tmp_path, max_followups):
    data = generate_phantom(tmp_path / "phantom", n_patients=30, size=32, seed=3, max_followups=max_followups,
                            progress=False)
    return Workspace.open("smoke", data, seed=0, results_dir=tmp_path / "results",
                          artifacts_dir=tmp_path / "artifacts", progress=False)


def test_pairs_capped_to_what_the_split_allows(tmp_path):
    ws = _workspace(tmp_path, max_followups=4)
    allowed = 2 * max_positive_pairs(ws.splits["val"])
    with pytest.warns(UserWarning, match=f"using {allowed} pairs instead of 1000000"):
        pairs = ws.pairs("val", 10**6, "verification")
    assert len(pairs) == allowed and pairs["label"].sum() == allowed // 2
    assert len(ws.pairs("val", 2, "verification")) == 2


def test_pairs_of_a_split_without_repeat_patients_raise(tmp_path):
    ws = _workspace(tmp_path, max_followups=1)
    with pytest.raises(DataError, match="no patient with two images"):
        ws.pairs("train", 10, "verification")


def test_results_folder_appears_with_the_first_result_only(tmp_path):
    # `cxrlib train` opens a workspace to train models: it must not leave an empty results/<profile>/
    ws = _workspace(tmp_path, max_followups=4)
    assert not ws.results_dir.exists()
    ws.save_table(pd.DataFrame({"a": [1]}), "table")
    assert (ws.results_dir / "table.csv").is_file() and (ws.results_dir / "table.md").is_file()


def test_classifier_paths_share_the_recipe_key_and_name_their_images_and_seed(tmp_path):
    ws = _workspace(tmp_path, max_followups=4)
    assert ws.classifier_path() == ws.artifact_path("classifier", "classifier")  # the workspace's real one
    other_seed = ws.classifier_path(seed=7)
    assert other_seed.name == ws.classifier_path().name.removesuffix("-seed0") + "-seed7"
    synthetic = ws.classifier_path("synthetic-abc", seed=7)
    assert synthetic.parent == other_seed.parent and synthetic.name.startswith("classifier-synthetic-abc-")
    tensors = ws.labeled_tensors("val")
    assert len(tensors) == len(ws.splits["val"]) and tensors.tensors["labels"].shape[1] == 14
