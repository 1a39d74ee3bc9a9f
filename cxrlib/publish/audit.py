"""How linkable is a release? The re-identification attack of the papers, run on a publisher's folder.

:func:`read_release` loads a folder of DICOM files or PNGs (patient ids from the DICOM header, the
ChestX-ray14 metadata or image names, when there are any), :func:`audit_release` embeds every image
with the project's retrieval network and reports

* internal linkage: each image queried among all others (:func:`cxrlib.reid.evaluate_retrieval`:
  P@1, mAP@R, so the figures equal notebook 01's on the same images and model), the share of
  patients re-linked across follow-ups, and the ROC of embedding distances, when patient ids are known;
  the nearest-neighbour distances and suspected same-patient clusters when they are not;
* ``against``: the linkage attack, each release image matched to its nearest image of another set;
* header findings (Table E.1-1 attributes still present, private tags), suspected burned-in text, and
  near-duplicate images.

Nearest neighbours come from faiss (exact L2 search), so a large release is searched in minutes.
A low linkage score from one model is evidence, not proof, of anonymity.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cxrlib import reid
from cxrlib.artifacts import load_weights, read_sidecar
from cxrlib.config import RetrievalConfig
from cxrlib.data.chestxray14 import DataError, find_metadata_file, load_image, read_metadata
from cxrlib.metrics import retrieval_metrics
from cxrlib.publish import burned_in, dicom
from cxrlib.publish.batch import input_files
from cxrlib.publish.deidentify import Pseudonymizer, header_findings

log = logging.getLogger(__name__)

_CXR14_NAME = re.compile(r"^(\d{8})_\d{3}\.png$")
#: mean absolute difference (of 32 px thumbnails in [0, 1]) below which two images are near-duplicates
DUPLICATE_DIFFERENCE = 0.01
THUMBNAIL = 32


def load_retrieval_network(path: str | Path) -> reid.RetrievalNetwork:
    """A retrieval network saved by :func:`cxrlib.reid.train_retrieval` (safetensors + JSON sidecar)."""
    config = read_sidecar(path).get("config", {})
    names = {f.name for f in dataclasses.fields(RetrievalConfig)}
    try:
        settings = RetrievalConfig(**{k: v for k, v in config.items() if k in names})
    except TypeError as err:
        raise DataError(Path(path).with_suffix(".json"), f"not a retrieval network's sidecar ({err})") from err
    model = reid.build_retrieval_network(settings)
    load_weights(model, path, config=config)
    return model.eval()


def find_retrieval_network(artifacts_dir: str | Path, profile: str) -> Path:
    """The newest finished retrieval network notebook 01 saved for ``profile``."""
    found = [p for p in (Path(artifacts_dir) / profile).glob("*/retrieval-*.safetensors")
             if ".last" not in p.name and not p.stem.endswith("-frozen") and p.with_suffix(".json").is_file()]
    if not found:
        raise DataError(Path(artifacts_dir) / profile, "no trained retrieval network; run notebook 01 for this "
                                                       "profile or pass --model PATH.safetensors")
    return max(found, key=lambda p: p.stat().st_mtime)


@dataclass
class Release:
    """A folder's images at the model's size, with what the files say about them."""

    folder: Path
    images: reid.Images
    patient_ids: list[str] | None
    headers: list[dict] = field(default_factory=list)
    text_found: list[int] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray | None:
        """Patient ids as integers (the metrics want integer labels)."""
        if self.patient_ids is None:
            return None
        codes = {pid: i for i, pid in enumerate(dict.fromkeys(self.patient_ids))}
        return np.array([codes[pid] for pid in self.patient_ids])


def _to_model_size(image: np.ndarray, size: int) -> np.ndarray:
    """[0, 1] -> uint8 at ``size``: the same conversion and resampling as the project's image cache."""
    gray = Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8))
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def _png_patients(folder: Path, files: Sequence[Path]) -> list[str] | None:
    try:
        meta = read_metadata(find_metadata_file(folder))
        by_image = dict(zip(meta["image"], meta["patient_id"].astype(str)))
    except DataError:
        by_image = {}
    ids = []
    for f in files:
        match = _CXR14_NAME.match(f.name)
        pid = by_image.get(f.name) or (str(int(match.group(1))) if match else None)
        if pid is None:
            return None
        ids.append(pid)
    return ids


def read_release(folder: str | Path, size: int, *, detect_text: bool = True,
                 progress: bool | None = None) -> Release:
    """Every readable image under ``folder`` (DICOM or PNG, recursively); unreadable files are listed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "release folder does not exist")
    pixels, names, ids, headers, text, unreadable, used = [], [], [], [], [], [], []
    for path in tqdm(input_files(folder), desc="reading release", unit="file", disable=progress is False,
                     leave=False):
        name = path.relative_to(folder).as_posix()
        if path.suffix.lower() in (".csv", ".txt", ".json", ".gz", ".md"):
            continue  # metadata and lists beside the images
        try:
            if dicom.is_png(path):
                # the project's loader, so a PNG release is seen exactly as the notebooks' cache sees it
                image = load_image(path).astype(np.float32) / 255.0
                pid = None
            else:
                ds = dicom.read_dicom(path)
                image, _ = dicom.dicom_pixels(ds, path)
                headers.append({"file": name, **header_findings(ds)})
                pid = str(ds.get("PatientID", "") or "") or None
        except DataError as err:
            unreadable.append((name, err.problem))
            continue
        text.append(len(burned_in.detect_text(image)) if detect_text else 0)
        pixels.append(_to_model_size(image, size))
        names.append(name)
        ids.append(pid)
        used.append(path)
    if not names:
        raise DataError(folder, "no readable DICOM or PNG image in this folder")
    if all(dicom.is_png(p) for p in used):
        patient_ids = _png_patients(folder, used)
    else:
        patient_ids = ids if all(pid is not None for pid in ids) else None
    return Release(folder, reid.Images(tuple(names), np.stack(pixels)), patient_ids, headers, text, unreadable)


def nearest_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 k-NN (faiss): distances (Euclidean) and indices, (N, k) each."""
    import faiss

    index = faiss.IndexFlatL2(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    distances, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.sqrt(np.maximum(distances, 0)), indices


def _without_self(distances: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop each query itself from its own neighbour list (the first hit that equals the query row)."""
    rows = np.arange(len(indices))[:, None]
    keep = indices != rows
    # exact duplicates may come before the query itself: keep the first k-1 others in order
    out_d = np.array([d[m][: indices.shape[1] - 1] for d, m in zip(distances, keep)])
    out_i = np.array([i[m][: indices.shape[1] - 1] for i, m in zip(indices, keep)])
    return out_d, out_i


def _clusters(pairs: np.ndarray, n: int) -> list[list[int]]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(pairs) == 0:
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)


def _pair_roc(embeddings: np.ndarray, labels: np.ndarray, seed: int, max_pairs: int = 200_000) -> dict:
    """ROC of -distance for same- vs different-patient pairs (all pairs, or a seeded sample)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    n = len(labels)
    rng = np.random.default_rng(seed)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        i, j = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
        keep = i != j
        i, j = i[keep], j[keep]
        # add every same-patient pair: they are rare in a random sample
        same_i, same_j = np.nonzero(np.triu(labels[:, None] == labels[None, :], 1)) if n <= 20_000 else ((), ())
        i, j = np.concatenate([i, same_i]), np.concatenate([j, same_j])
    same = labels[i] == labels[j]
    if same.all() or not same.any():
        return {}
    score = -np.linalg.norm(embeddings[i] - embeddings[j], axis=1)
    fpr, tpr, _ = roc_curve(same, score)
    step = max(1, len(fpr) // 400)
    return {"auc": float(roc_auc_score(same, score)), "fpr": fpr[::step].tolist(), "tpr": tpr[::step].tolist(),
            "pairs": int(len(same)), "same_patient_pairs": int(same.sum())}


def _thumbnails(images: reid.Images) -> np.ndarray:
    x = torch.from_numpy(images.pixels.astype(np.float32) / 255.0)[:, None]
    small = torch.nn.functional.adaptive_avg_pool2d(x, THUMBNAIL)
    return small.flatten(1).numpy()


@torch.no_grad()
def audit_release(release: Release, model: reid.RetrievalNetwork, *, against: Release | None = None,
                  key: bytes | None = None, link_distance: float | None = None, seed: int = 0,
                  progress: bool = False) -> dict:
    """The audit's findings as a JSON-able dict (see the module docstring); ``key`` pseudonymizes the
    ``against`` set's patient ids first, so a raw set can be compared with its anonymized release."""
    started = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    embeddings = reid.embed_images(model, release.images, device=device, progress=progress).numpy()
    n = len(embeddings)
    k = min(n, 6)
    distances, indices = _without_self(*nearest_neighbours(embeddings, embeddings, k))
    result: dict = {"folder": str(release.folder), "images": n, "unreadable": release.unreadable,
                    "patient_ids_known": release.patient_ids is not None,
                    "nearest_neighbour": {"distance": distances[:, 0].tolist(), "index": indices[:, 0].tolist()}}
    labels = release.labels
    if labels is not None and len(np.unique(labels)) < n:
        result["patients"] = int(len(np.unique(labels)))
        # the embeddings evaluate_retrieval would compute, scored by the same metric
        result["retrieval"] = retrieval_metrics(embeddings, labels)
        same_nn = labels[indices[:, 0]] == labels
        result["nearest_neighbour"]["same_patient"] = same_nn.tolist()
        repeat = np.bincount(labels)[labels] > 1
        linked = {int(p) for p in labels[repeat & same_nn]}
        with_followups = {int(p) for p in labels[repeat]}
        result["patients_relinked"] = len(linked) / len(with_followups)
        result["patients_with_followups"] = len(with_followups)
        result["roc"] = _pair_roc(embeddings, labels, seed)
    threshold = link_distance if link_distance is not None else float(np.quantile(distances[:, 0], 0.1))
    close = np.nonzero(distances[:, 0] < threshold)[0]
    clusters = _clusters(np.stack([close, indices[close, 0]], axis=1) if len(close) else np.empty((0, 2), int), n)
    result["suspected_clusters"] = {"link_distance": threshold, "chosen": "given" if link_distance is not None
                                    else "10 % quantile of nearest-neighbour distances",
                                    "clusters": [[release.images.names[i] for i in c] for c in clusters[:50]],
                                    "count": len(clusters)}
    thumbs = _thumbnails(release.images)
    thumb_d, thumb_i = _without_self(*nearest_neighbours(thumbs, thumbs, min(n, 2)))
    # L2 over the thumbnail, as a mean absolute difference scale: sqrt(mean squared difference)
    rms = thumb_d[:, 0] / np.sqrt(thumbs.shape[1])
    duplicates = sorted({tuple(sorted((int(a), int(b)))) for a, b, d in zip(range(n), thumb_i[:, 0], rms)
                         if d < DUPLICATE_DIFFERENCE})
    result["near_duplicates"] = [[release.images.names[a], release.images.names[b]] for a, b in duplicates]
    result["burned_in_text"] = {"images_with_text": int(sum(t > 0 for t in release.text_found)),
                                "regions": int(sum(release.text_found))}
    if release.headers:
        present: dict[str, int] = {}
        for h in release.headers:
            for keyword in h["table_e1_1_present"]:
                present[keyword] = present.get(keyword, 0) + 1
        result["headers"] = {
            "files": len(release.headers),
            "table_e1_1_present": dict(sorted(present.items(), key=lambda kv: -kv[1])),
            "files_with_private_tags": sum(h["private_tags"] > 0 for h in release.headers),
            "files_without_identity_removed": sum(h["patient_identity_removed"].upper() != "YES"
                                                  for h in release.headers),
            "burned_in_annotation": {v or "(absent)": sum(h["burned_in_annotation"] == v for h in release.headers)
                                     for v in sorted({h["burned_in_annotation"] for h in release.headers})},
        }
    if against is not None:
        result["against"] = _link(release, embeddings, against, model, key, device, progress)
    result["seconds"] = time.perf_counter() - started
    return result


def _link(release: Release, embeddings: np.ndarray, other: Release, model, key, device, progress) -> dict:
    gallery = reid.embed_images(model, other.images, device=device, progress=progress).numpy()
    k = min(5, len(gallery))
    distances, indices = nearest_neighbours(embeddings, gallery, k)
    out = {"folder": str(other.folder), "images": len(gallery),
           "nearest": {"distance": distances[:, 0].tolist(),
                       "match": [other.images.names[i] for i in indices[:, 0]]}}
    if release.patient_ids is not None and other.patient_ids is not None:
        theirs = other.patient_ids
        if key is not None:
            theirs = [Pseudonymizer(key).patient(pid) for pid in theirs]
        mine, theirs = np.array(release.patient_ids), np.array(theirs)
        present = np.isin(mine, theirs)
        if present.any():
            hits = theirs[indices] == mine[:, None]
            out["queries_with_patient_in_other"] = int(present.sum())
            out["top1"] = float(hits[present, 0].mean())
            out[f"top{k}"] = float(hits[present].any(axis=1).mean())
            out["nearest"]["same_patient"] = hits[:, 0].tolist()
    return out
