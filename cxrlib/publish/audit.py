"""How linkable is a release? The re-identification attack of the papers, run on a publisher's folder.

:func:`read_release` loads a folder of DICOM files or PNGs (each file's patient id from its DICOM header
or its ChestX-ray14 image name, where it has one), :func:`audit_release` embeds every image with the
project's retrieval network and reports

* internal linkage: each image with a patient id queried among the others with one
  (:func:`cxrlib.reid.evaluate_retrieval`: P@1, mAP@R, so the figures equal notebook 01's on the same
  images and model), the share of patients re-linked across follow-ups, and the ROC of embedding
  distances; the nearest-neighbour distances and suspected same-patient clusters of all images. Files
  without a patient id are listed by name and left out of the id-based figures, never switching them off
  for the others; when those figures cannot be computed, the result says why (``linkage_not_scored``);
* ``against``: the linkage attack, each release image matched to its nearest image of another set; with
  the anonymization key, the other set's ids are pseudonymized by the very function ``cxrlib anonymize``
  used (:meth:`~cxrlib.publish.deidentify.Pseudonymizer.pseudonym`), so a raw export and its release meet;
* header findings (Table E.1-1 attributes still present, private tags), suspected burned-in text,
  near-duplicate images, and anonymize's manifests left in the folder (they map outputs to inputs).

* the panel of linkage attacks (:mod:`cxrlib.publish.linkage`): the network and every training-free attack,
  internally and ``against``, each figure beside its chance level, and the verdict (``linkable``, ``no
  linkage found``, ``not scored``) from the worst case over the panel; the suspected-link threshold is
  calibrated on different-patient distances where ids are known, and said to be uncalibrated where not;
  the files with suspected burned-in text and the most linked pairs, by name.

Nearest neighbours come from the project's one k-NN (:func:`cxrlib.metrics.nearest_neighbours`, faiss exact L2
search), so a large release is searched in minutes.
A low linkage score from one model is evidence, not proof, of anonymity; the verdict reads the strongest
of several attacks for that reason.
"""

from __future__ import annotations

import dataclasses
import logging
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
from cxrlib.data.chestxray14 import DataError, load_image
from cxrlib.linkage import linkage_panel
from cxrlib.metrics import nearest_neighbours, retrieval_metrics
from cxrlib.publish import burned_in, dicom, linkage
from cxrlib.publish.batch import input_files, manifests_in
from cxrlib.publish.deidentify import Pseudonymizer, header_findings, patient_id_in_name, patient_id_kind

log = logging.getLogger(__name__)
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


def trained_retrieval_networks(artifacts_dir: str | Path, profile: str) -> list[Path]:
    """Every finished retrieval network notebook 01 saved for ``profile``, of whatever data (one folder each
    under ``artifacts_dir/profile``), the newest first."""
    found = [p for p in (Path(artifacts_dir) / profile).glob("*/retrieval-*.safetensors")
             if ".last" not in p.name and not p.stem.endswith("-frozen") and p.with_suffix(".json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_retrieval_network(artifacts_dir: str | Path, profile: str) -> Path:
    """The newest of :func:`trained_retrieval_networks` (the command line names it, and how many others
    there are)."""
    found = trained_retrieval_networks(artifacts_dir, profile)
    if not found:
        raise DataError(Path(artifacts_dir) / profile, "no trained retrieval network; run notebook 01 for this "
                                                       "profile or pass --model PATH.safetensors")
    return found[0]


@dataclass
class Release:
    """A folder's images at the model's size, with what the files say about them."""

    folder: Path
    images: reid.Images
    #: each image's patient id as its file carries it (the DICOM PatientID, the id in a ChestX-ray14 name),
    #: None where it carries none
    patient_ids: list[str | None]
    headers: list[dict] = field(default_factory=list)
    text_found: list[int] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: anonymize's manifests found in the folder (hidden files, which the images never include)
    manifests: list[str] = field(default_factory=list)

    @property
    def without_patient_id(self) -> list[str]:
        """Names of the images whose file carries no patient id."""
        return [name for name, pid in zip(self.images.names, self.patient_ids) if pid is None]

    def pseudonymized_ids(self, key: bytes) -> list[str | None]:
        """The ids ``cxrlib anonymize`` with ``key`` writes for these files (each by its kind of file)."""
        pseudonymizer = Pseudonymizer(key)
        return [pseudonymizer.pseudonym(patient_id_kind(name), pid)
                for name, pid in zip(self.images.names, self.patient_ids)]


def _labels(patient_ids: Sequence[str]) -> np.ndarray:
    """Patient ids as integers (the metrics want integer labels)."""
    codes = {pid: i for i, pid in enumerate(dict.fromkeys(patient_ids))}
    return np.array([codes[pid] for pid in patient_ids], dtype=np.int64)


def _to_model_size(image: np.ndarray, size: int) -> np.ndarray:
    """[0, 1] -> uint8 at ``size``: the same conversion and resampling as the project's image cache."""
    gray = Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8))
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def read_release(folder: str | Path, size: int, *, detect_text: bool = True,
                 progress: bool | None = None) -> Release:
    """Every readable image under ``folder`` (DICOM or PNG, recursively); unreadable files are listed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "release folder does not exist")
    pixels, names, ids, headers, text, unreadable = [], [], [], [], [], []
    for path in tqdm(input_files(folder), desc="reading release", unit="file", disable=progress is False,
                     leave=False):
        name = path.relative_to(folder).as_posix()
        if path.suffix.lower() in (".csv", ".txt", ".json", ".gz", ".md"):
            continue  # metadata and lists beside the images
        try:
            if dicom.is_png(path):
                # the project's loader, so a PNG release is seen exactly as the notebooks' cache sees it
                image = load_image(path).astype(np.float32) / 255.0
                # the release name carries the id (the metadata CSV must agree with it, and may be blanked)
                pid = patient_id_in_name(path.name)
            else:
                ds = dicom.read_dicom(path)
                image, _ = dicom.dicom_pixels(ds, path)
                headers.append({"file": name, **header_findings(ds)})
                pid = str(ds.get("PatientID", "") or "").strip() or None
        except DataError as err:
            unreadable.append((name, err.problem))
            continue
        text.append(len(burned_in.detect_text(image)) if detect_text else 0)
        pixels.append(_to_model_size(image, size))
        names.append(name)
        ids.append(pid)
    if not names:
        raise DataError(folder, "no readable DICOM or PNG image in this folder")
    manifests = [p.relative_to(folder).as_posix() for p in manifests_in(folder)]
    return Release(folder, reid.Images(tuple(names), np.stack(pixels)), ids, headers, text, unreadable, manifests)


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


def _internal_linkage(embeddings: np.ndarray, ids: Sequence[str | None], seed: int) -> dict:
    """Retrieval figures over the images that carry a patient id (the others left out), or why none."""
    known = np.array([pid is not None for pid in ids], dtype=bool)
    if not known.any():
        return {"linkage_not_scored": "no file carries a patient id"}
    labels = _labels([pid for pid in ids if pid is not None])
    if len(np.unique(labels)) == len(labels):
        return {"linkage_not_scored": f"each of the {len(labels)} patients with an id has one image here: "
                                      "there is no other image of the same patient to find"}
    mine = embeddings[known]
    distances, indices = nearest_neighbours(mine, k=5)
    same_nn = labels[indices[:, 0]] == labels
    repeat = np.bincount(labels)[labels] > 1
    linked = {int(p) for p in labels[repeat & same_nn]}
    with_followups = {int(p) for p in labels[repeat]}
    # the embeddings evaluate_retrieval would compute, scored by the same metric
    return {"patients": int(len(np.unique(labels))), "images_with_patient_id": int(known.sum()),
            "retrieval": retrieval_metrics(mine, labels), "patients_relinked": len(linked) / len(with_followups),
            "patients_with_followups": len(with_followups), "roc": _pair_roc(mine, labels, seed)}


@torch.no_grad()
def audit_release(release: Release, model: reid.RetrievalNetwork, *, against: Release | None = None,
                  key: bytes | None = None, link_distance: float | None = None, seed: int = 0,
                  progress: bool = False, attacks: Sequence[str] = tuple(linkage.AUDIT_ATTACKS),
                  n_bootstrap: int = 200) -> dict:
    """The audit's findings as a JSON-able dict (see the module docstring); ``key`` pseudonymizes the
    ``against`` set's patient ids first, so a raw set can be compared with its anonymized release."""
    started = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    embeddings = reid.embed_images(model, release.images, device=device, progress=progress).numpy()
    n = len(embeddings)
    distances, indices = nearest_neighbours(embeddings, k=5)
    ids = release.patient_ids
    result: dict = {"folder": str(release.folder), "images": n, "unreadable": release.unreadable,
                    "patient_ids_known": any(pid is not None for pid in ids),
                    "files_without_patient_id": release.without_patient_id,
                    "manifests_in_release": release.manifests,
                    "nearest_neighbour": {"distance": distances[:, 0].tolist(), "index": indices[:, 0].tolist()}}
    if result["patient_ids_known"]:
        # True/False where both images carry an id, None where one does not
        result["nearest_neighbour"]["same_patient"] = [
            None if ids[i] is None or ids[int(j)] is None else ids[i] == ids[int(j)]
            for i, j in enumerate(indices[:, 0])]
    result.update(_internal_linkage(embeddings, ids, seed))
    known = np.array([pid is not None for pid in ids], dtype=bool)
    if link_distance is not None:
        calibration = {"link_distance": float(link_distance), "calibrated": None, "chosen": "given (--link-distance)"}
    else:
        calibration = linkage.calibrated_threshold(
            embeddings[known], _labels([pid for pid in ids if pid is not None]) if known.any() else None,
            distances[:, 0], seed)
    threshold = calibration["link_distance"]
    close = np.nonzero(distances[:, 0] < threshold)[0]
    clusters = _clusters(np.stack([close, indices[close, 0]], axis=1) if len(close) else np.empty((0, 2), int), n)
    result["suspected_clusters"] = {**calibration,
                                    "clusters": [[release.images.names[i] for i in c] for c in clusters[:50]],
                                    "count": len(clusters), "images_in_clusters": int(sum(map(len, clusters)))}
    thumbs = _thumbnails(release.images)
    thumb_d, thumb_i = nearest_neighbours(thumbs, k=1)
    # L2 over the thumbnail, as a mean absolute difference scale: sqrt(mean squared difference)
    rms = thumb_d[:, 0] / np.sqrt(thumbs.shape[1])
    duplicates = sorted({tuple(sorted((int(a), int(b)))) for a, b, d in zip(range(n), thumb_i[:, 0], rms)
                         if d < DUPLICATE_DIFFERENCE})
    result["near_duplicates"] = [[release.images.names[a], release.images.names[b]] for a, b in duplicates]
    result["burned_in_text"] = {"images_with_text": int(sum(t > 0 for t in release.text_found)),
                                "regions": int(sum(release.text_found)),
                                "files": [name for name, t in zip(release.images.names, release.text_found) if t > 0]}
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
    gallery = None
    if against is not None:
        gallery = reid.embed_images(model, against.images, device=device, progress=progress).numpy()
        result["against"] = _link(release, embeddings, against, gallery, key)
    attack_started = time.perf_counter()
    _attack_panel(result, release, embeddings, against, gallery, key, attacks, n_bootstrap, seed)
    result["panel_seconds"] = time.perf_counter() - attack_started
    result["seconds"] = time.perf_counter() - started
    return result


def _names_of(figures_or_nn, query_names, gallery_names, query_ids, gallery_ids, count: int) -> list[dict]:
    """The ``count`` closest (query, nearest gallery item) pairs of one attack, by name, each pair once.
    ``figures_or_nn``: an attack's :class:`cxrlib.linkage.AttackFigures` or ``(distances, indices)``."""
    if isinstance(figures_or_nn, tuple):
        d, idx = figures_or_nn
    else:
        d, idx = -figures_or_nn.nearest_score, figures_or_nn.nearest_index
    rows, seen = [], set()
    for q in np.argsort(d, kind="stable"):
        g = int(idx[q])
        pair = (query_names[q], gallery_names[g])
        if frozenset(pair) in seen:
            continue
        seen.add(frozenset(pair))
        same = None if query_ids[q] is None or gallery_ids[g] is None else bool(query_ids[q] == gallery_ids[g])
        rows.append({"image": pair[0], "nearest": pair[1], "distance": float(d[q]), "same_patient": same})
        if len(rows) == count:
            break
    return rows


def _attack_panel(result: dict, release: Release, embeddings: np.ndarray, against: Release | None,
                  gallery: np.ndarray | None, key: bytes | None, attacks: Sequence[str], n_bootstrap: int,
                  seed: int) -> None:
    """The panel of linkage attacks (cxrlib.publish.linkage), the verdict from its worst case, and the most
    linked pairs by name."""
    ids = release.patient_ids
    panels, not_scored, top_pairs = {}, {}, {}
    names = release.images.names
    if "retrieval" in result:
        known = np.nonzero([pid is not None for pid in ids])[0]
        mine = reid.Images(tuple(names[i] for i in known), release.images.pixels[known])
        panels["internal"] = linkage_panel(linkage.audit_attacks(mine, embeddings[known], attacks),
                                           _labels([ids[i] for i in known]), scope="internal",
                                           n_bootstrap=n_bootstrap, seed=seed)
        strongest = panels["internal"][panels["internal"].worst_case()["precision_at_1"].attack]
        known_names, known_ids = [names[i] for i in known], [ids[i] for i in known]
        top_pairs["internal"] = {"attack": strongest.attack, "pairs": _names_of(
            strongest, known_names, known_names, known_ids, known_ids, linkage.TOP_PAIRS)}
    else:
        not_scored["internal"] = result.get("linkage_not_scored", "not scored")
        nn = result["nearest_neighbour"]
        top_pairs["internal"] = {"attack": linkage.NETWORK, "pairs": _names_of(
            (np.asarray(nn["distance"]), np.asarray(nn["index"])), names, names, ids, ids, linkage.TOP_PAIRS)}
    if against is not None:
        a = result["against"]
        if "linkage_not_scored" in a:
            not_scored["against"] = a["linkage_not_scored"]
        else:
            theirs = against.pseudonymized_ids(key) if key is not None else against.patient_ids
            in_other = set(theirs) - {None}
            queries = np.array([i for i, pid in enumerate(ids) if pid in in_other])
            labelled = np.array([j for j, pid in enumerate(theirs) if pid is not None])
            codes = _labels([ids[i] for i in queries] + [theirs[j] for j in labelled])
            q = len(queries)
            mine = reid.Images(tuple(names[i] for i in queries), release.images.pixels[queries])
            other = reid.Images(tuple(against.images.names[j] for j in labelled), against.images.pixels[labelled])
            panels["against"] = linkage_panel(
                linkage.audit_attacks(mine, embeddings[queries], attacks, other, gallery[labelled]),
                codes[:q], codes[q:], scope="against", n_bootstrap=n_bootstrap, seed=seed)
            strongest = panels["against"][panels["against"].worst_case()["precision_at_1"].attack]
            top_pairs["against"] = {"attack": strongest.attack, "pairs": _names_of(
                strongest, [names[i] for i in queries], [against.images.names[j] for j in labelled],
                [ids[i] for i in queries], [theirs[j] for j in labelled], linkage.TOP_PAIRS)}
    result["verdict"] = linkage.verdict(panels, not_scored)
    result["attack_panel"] = {**{scope: panel.to_json() for scope, panel in panels.items()},
                              "labels": linkage.LABELS,
                              "attack_names": {k: linkage.AUDIT_ATTACKS[k] for k in attacks},
                              "n_bootstrap": n_bootstrap}
    result["most_linked_pairs"] = top_pairs


def _link(release: Release, embeddings: np.ndarray, other: Release, gallery: np.ndarray, key) -> dict:
    """Each release image's nearest images in ``other`` (its embeddings ``gallery``); by patient id over the
    images that carry one."""
    k = min(5, len(gallery))
    distances, indices = nearest_neighbours(embeddings, gallery, k)
    out = {"folder": str(other.folder), "images": len(gallery), "files_without_patient_id": other.without_patient_id,
           "nearest": {"distance": distances[:, 0].tolist(),
                       "match": [other.images.names[i] for i in indices[:, 0]]}}
    mine = release.patient_ids
    theirs = other.pseudonymized_ids(key) if key is not None else other.patient_ids
    theirs_known = np.array([pid is not None for pid in theirs], dtype=bool)
    in_other = set(theirs) - {None}
    queries = [i for i, pid in enumerate(mine) if pid in in_other]
    if not any(pid is not None for pid in mine):
        out["linkage_not_scored"] = "no file of the release carries a patient id"
    elif not theirs_known.any():
        out["linkage_not_scored"] = "no file of the other set carries a patient id"
    elif not queries:
        out["linkage_not_scored"] = (
            "no patient id of the release occurs in the other set"
            + (" after pseudonymizing the other set's ids with the key: a wrong key, or the other set is not "
               "what this release was made from" if key is not None else
               "; pass --key when the other set is the raw export this release was made from"))
    if "linkage_not_scored" in out:
        return out
    # the id-based figures search the other set's images with an id only: a match without an id is unknown
    labelled = np.nonzero(theirs_known)[0]
    k_known = min(5, len(labelled))
    _, found = nearest_neighbours(embeddings[queries], gallery[labelled], k_known)
    hits = np.array([[theirs[labelled[j]] == mine[i] for j in row] for i, row in zip(queries, found)])
    out["queries_with_patient_in_other"] = len(queries)
    out["queries_without_patient_in_other"] = sum(pid is not None for pid in mine) - len(queries)
    out["top1"] = float(hits[:, 0].mean())
    out[f"top{k_known}"] = float(hits.any(axis=1).mean())
    out["nearest"]["same_patient"] = [None if pid is None or theirs[j] is None else theirs[j] == pid
                                      for pid, j in zip(mine, indices[:, 0])]
    return out
