"""One interface for linkage attacks: a panel of attacks, each beside its chance level, and the worst case.

A privacy figure must be judged against the strongest attack that can be run: on real radiographs an
attack that needs no training is often as strong as a trained network (on the real sample DP-Pix b = 8
reads 6.5 % P@1 with the network while 8 x 8 block means re-link 71 % of its images to the export). So
every privacy figure of the project -- notebook 01 on originals, notebook 03 per anonymization method,
notebook 04 for synthetic images, the audit -- comes from :func:`linkage_panel`, and a verdict reads
its worst case (:meth:`LinkagePanel.worst_case`), never one model alone.

An attack (:class:`Attack`) links a query image to gallery images by one of two rules:

* **descriptors** -- each image a vector, ranked by Euclidean distance with the project's one k-NN
  (:func:`cxrlib.metrics.nearest_neighbours`): the training-free attacks of :mod:`cxrlib.attacks`, block
  means at several grids, and embedding networks (the retrieval network, L2-normalized);
* **pair scores** -- a network that scores a pair (the siamese network: a weighted L1 difference of its
  embeddings, whose weights take both signs, so it is no metric and no k-NN index applies): the full
  query x gallery score matrix, ranked by :func:`torch.topk`. Test sets of a few thousand images only.

Three scopes, one protocol: ``internal`` (a set's images searched among each other, each query's own
row left out), ``anonymized`` (anonymized images searched among the originals, each query's own source
left out: the attacker holds other images of the patient, as in the papers' (anonymized, real) pairs)
and ``against`` (a release searched in another set that holds the same images, e.g. a publisher's export).
Per attack: P@1 with a 95 % CI from a bootstrap over patients beside its chance level (the share of a
query's patient among the gallery it searches); mAP@R and R-precision; the verification AUC of
same- against different-patient pairs with a patient-bootstrap CI, chance 0.5.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from cxrlib.attacks import TRAINING_FREE_ATTACKS, attack_features, block_means, zscored
from cxrlib.data.images import Images
from cxrlib.metrics import (nearest_neighbours, patient_bootstrap_auc, patient_bootstrap_mean, percentile_ci,
                            standardized_pixels)

#: every attack the project runs, in the order tables show them, with what a reader is told it is
ATTACK_LABELS = {
    "siamese": "siamese network (notebook 01)",
    "retrieval": "retrieval network (notebook 01)",
    "retrained": "siamese network re-trained on anonymized images (notebook 03)",
    **TRAINING_FREE_ATTACKS,
    "block_means_4": "4 x 4 block means",
    "block_means_16": "16 x 16 block means",
    "gradient_orientation": "gradient orientations (8 x 8 cells)",
    "raw_pixels_aligned": "pixel correlation, best of small shifts",
}
#: the attacks that need no training and rank by descriptors, in table order (block means at coarser and
#: finer grids too: a pixelization of another block size leaves one of them intact)
DESCRIPTOR_ATTACKS = (*TRAINING_FREE_ATTACKS, "block_means_4", "block_means_16", "gradient_orientation")
#: every attack that needs no training: the descriptors and the aligned pixel correlation
TRAINING_FREE = (*DESCRIPTOR_ATTACKS, "raw_pixels_aligned")
SCOPES = ("internal", "anonymized", "against")
#: same-patient pairs scored for the AUC at most (and as many different-patient pairs)
MAX_PAIRS = 20_000
#: scores held at once when a similarity attack ranks its gallery (a block of queries x the gallery)
MATRIX_ENTRIES = 1 << 22


@dataclass(frozen=True)
class Attack:
    """One attack on a query set and a gallery: descriptors (Euclidean k-NN) or a similarity function.

    ``queries`` and ``gallery`` are (N, D) arrays; ``gallery`` None: the queries' own set. Descriptor
    attacks rank by Euclidean distance (:func:`cxrlib.metrics.nearest_neighbours`). Otherwise
    ``pair_scores`` scores aligned rows -- two equally long blocks of rows, one score per pair, higher:
    more likely the same patient -- and ``block_scores`` (a block of queries against the whole gallery,
    a (Q, G) matrix; default: ``pair_scores`` over every combination) ranks the gallery, a block of
    queries at a time, so the full matrix is never held."""

    name: str
    queries: np.ndarray = field(repr=False)
    gallery: np.ndarray | None = field(default=None, repr=False)
    pair_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    block_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return ATTACK_LABELS.get(self.name, self.name)

    def _gallery(self) -> np.ndarray:
        return self.queries if self.gallery is None else self.gallery

    def search(self, k: int, own: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices) of each query's ``k`` most similar gallery rows, leaving out ``own``."""
        if self.pair_scores is None:
            distances, indices = nearest_neighbours(self.queries, self._gallery(), k, own=own)
            return -distances, indices
        gallery = self._gallery()
        k = min(k, len(gallery) - (own is not None))
        block = max(1, MATRIX_ENTRIES // len(gallery))
        values, indices = [], []
        for start in range(0, len(self.queries), block):
            scores = torch.from_numpy(np.asarray(self._block(self.queries[start:start + block], gallery),
                                                 dtype=np.float32))
            if own is not None:
                rows = np.arange(len(scores))
                mine = own[start:start + block]
                scores[rows[mine >= 0], mine[mine >= 0]] = -math.inf
            top = torch.topk(scores, k, dim=1)
            values.append(top.values.numpy())
            indices.append(top.indices.numpy())
        return np.concatenate(values), np.concatenate(indices)

    def _block(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        if self.block_scores is not None:
            return self.block_scores(queries, gallery)
        return np.asarray(self.pair_scores(np.repeat(queries, len(gallery), axis=0),
                                           np.tile(gallery, (len(queries), 1)))).reshape(len(queries), len(gallery))

    def score_matrix(self) -> np.ndarray:
        """Every query's score against every gallery row (small sets only: tests, figures)."""
        return np.concatenate([self._block(self.queries[s:s + 256], self._gallery())
                               for s in range(0, len(self.queries), 256)])

    def scores(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Scores of the pairs (query ``i``, gallery ``j``): minus the distance for descriptors."""
        gallery = self._gallery()
        if self.pair_scores is None:
            return -np.linalg.norm(self.queries[i] - gallery[j], axis=1)
        return np.concatenate([np.asarray(self.pair_scores(self.queries[i[s:s + 4096]], gallery[j[s:s + 4096]]),
                                          dtype=np.float64) for s in range(0, len(i), 4096)]) \
            if len(i) else np.empty(0)


@dataclass(frozen=True)
class AttackFigures:
    """One attack's figures on one panel. ``nearest_*``: each query's best match (not in the JSON)."""

    attack: str
    label: str
    precision_at_1: float
    precision_at_1_ci: tuple[float, float]
    map_at_r: float
    r_precision: float
    auc: float
    auc_ci: tuple[float, float]
    nearest_index: np.ndarray = field(repr=False, compare=False)
    nearest_score: np.ndarray = field(repr=False, compare=False)
    #: time the search and the figures took (the descriptors' computation not included)
    seconds: float = field(default=math.nan, compare=False)

    def to_json(self) -> dict:
        return {"label": self.label, "precision_at_1": self.precision_at_1,
                "precision_at_1_ci": list(self.precision_at_1_ci), "map_at_r": self.map_at_r,
                "r_precision": self.r_precision, "auc": self.auc, "auc_ci": list(self.auc_ci), "auc_chance": 0.5,
                "seconds": self.seconds}


@dataclass(frozen=True)
class WorstCase:
    """The strongest attack for one figure of a panel."""

    figure: str
    attack: str
    label: str
    value: float
    ci: tuple[float, float] | None
    chance: float | None


@dataclass(frozen=True)
class LinkagePanel:
    """Every attack's figures on one scope, beside chance (:func:`linkage_panel`)."""

    scope: str
    queries: int
    gallery: int
    patients: int
    chance_precision_at_1: float
    attacks: tuple[AttackFigures, ...]

    def __getitem__(self, attack: str) -> AttackFigures:
        for figures in self.attacks:
            if figures.attack == attack:
                return figures
        raise KeyError(f"no attack {attack!r} in this panel; it has {', '.join(a.attack for a in self.attacks)}")

    def __contains__(self, attack: str) -> bool:
        return any(a.attack == attack for a in self.attacks)

    @property
    def chance(self) -> dict[str, float]:
        return {"precision_at_1": self.chance_precision_at_1, "auc": 0.5}

    def worst_case(self) -> dict[str, WorstCase]:
        """Per figure (P@1, AUC, mAP@R), the attack that reaches the highest value."""
        out = {}
        for figure in ("precision_at_1", "auc", "map_at_r"):
            scored = [a for a in self.attacks if np.isfinite(getattr(a, figure))]
            if scored:
                best = max(scored, key=lambda a: getattr(a, figure))
                ci = getattr(best, f"{figure}_ci", None)
                out[figure] = WorstCase(figure, best.attack, best.label, getattr(best, figure),
                                        tuple(ci) if ci is not None else None, self.chance.get(figure))
        return out

    def table(self) -> pd.DataFrame:
        """One row per attack, the worst case marked: what notebooks print."""
        worst = {w.attack for w in self.worst_case().values()}
        return pd.DataFrame([{
            "attack": a.label + (" (worst case)" if a.attack in worst else ""),
            "P@1": a.precision_at_1, "P@1 95 % CI": f"{a.precision_at_1_ci[0]:.3f}-{a.precision_at_1_ci[1]:.3f}",
            "P@1 chance": self.chance_precision_at_1, "mAP@R": a.map_at_r, "AUC": a.auc,
            "AUC 95 % CI": f"{a.auc_ci[0]:.3f}-{a.auc_ci[1]:.3f}"} for a in self.attacks]).set_index("attack")

    def to_json(self) -> dict:
        return {"scope": self.scope, "queries": self.queries, "gallery": self.gallery, "patients": self.patients,
                "chance": self.chance, "attacks": {a.attack: a.to_json() for a in self.attacks},
                "worst_case": {figure: {"attack": w.attack, "label": w.label, "value": w.value,
                                        "ci": list(w.ci) if w.ci else None, "chance": w.chance}
                               for figure, w in self.worst_case().items()}}

    @classmethod
    def from_json(cls, payload: dict) -> "LinkagePanel":
        empty = np.empty(0)
        order = list(ATTACK_LABELS)
        # JSON files may sort their keys: restore the order tables show
        names = sorted(payload["attacks"], key=lambda n: (order.index(n) if n in order else len(order), n))
        attacks = tuple(AttackFigures(name, f["label"], f["precision_at_1"], tuple(f["precision_at_1_ci"]),
                                      f["map_at_r"], f["r_precision"], f["auc"], tuple(f["auc_ci"]), empty, empty,
                                      f.get("seconds", math.nan))
                        for name, f in ((n, payload["attacks"][n]) for n in names))
        return cls(payload["scope"], payload["queries"], payload["gallery"], payload["patients"],
                   payload["chance"]["precision_at_1"], attacks)


def descriptor_attacks(queries: Images, gallery: Images | None = None,
                       kinds: Sequence[str] = TRAINING_FREE) -> list[Attack]:
    """The attacks that need no training on ``queries`` (and ``gallery``). Descriptors other than raw
    pixels are z-scored over both sets together, so queries and gallery share one scale."""
    both = queries if gallery is None else Images((*queries.names, *gallery.names),
                                                 np.concatenate([queries.pixels, gallery.pixels]))
    out = []
    for kind in kinds:
        if kind == "raw_pixels_aligned":
            out.append(aligned_pixels_attack(queries, gallery))
            continue
        if kind.startswith("block_means_") and kind not in TRAINING_FREE_ATTACKS:
            features = zscored(block_means(both.pixels, int(kind.rsplit("_", 1)[1])))
        elif kind == "gradient_orientation":
            features = gradient_orientation_features(both.pixels)
        else:
            features = attack_features(both, kind)
        features = np.ascontiguousarray(features, dtype=np.float32)
        n = len(queries)
        out.append(Attack(kind, features[:n], None if gallery is None else features[n:]))
    return out


def embedding_attack(name: str, queries: np.ndarray, gallery: np.ndarray | None = None) -> Attack:
    """An embedding network's attack (e.g. the retrieval network): L2-normalized embeddings, so Euclidean
    distance ranks like cosine similarity, as :func:`cxrlib.metrics.retrieval_metrics` ranks."""
    def unit(x):
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return Attack(name, unit(queries), None if gallery is None else unit(gallery))


def siamese_attack(name: str, compare: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], queries: np.ndarray,
                   gallery: np.ndarray | None = None) -> Attack:
    """A siamese network's attack from its embeddings (``SiameseNetwork.embed``) and its ``compare``
    (logits of two embedding batches): every query scored against every gallery image."""
    def pair_scores(q: np.ndarray, g: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return compare(torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(np.ascontiguousarray(g))
                           ).float().numpy()

    def block_scores(q: np.ndarray, g: np.ndarray) -> np.ndarray:
        # compare takes aligned pairs: every combination of a few queries with the gallery at a time,
        # so that the (queries x gallery x features) differences stay small
        step = max(1, (1 << 22) // (len(g) * q.shape[1]))
        return np.concatenate([pair_scores(np.repeat(q[s:s + step], len(g), axis=0), np.tile(g, (len(q[s:s + step]), 1)))
                               .reshape(-1, len(g)) for s in range(0, len(q), step)])

    return Attack(name, np.asarray(queries, np.float32), None if gallery is None else np.asarray(gallery, np.float32),
                  pair_scores, block_scores)


#: the aligned pixel attack compares images at this size (area-downsampled), over shifts of up to
#: ALIGNED_SHIFT pixels at that size each axis (2 px at 64 px): the deformation-robust pixel correlation
ALIGNED_SIZE, ALIGNED_SHIFT = 32, 1


def _windows(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    size = x.shape[-1]
    return x[..., max(dy, 0):size + min(dy, 0), max(dx, 0):size + min(dx, 0)]


def aligned_pixels_attack(queries: Images, gallery: Images | None = None) -> Attack:
    """Pixel correlation at its best over small shifts (overlapping windows only, each standardized):
    an attack that a deformation of a pixel or two, or a re-cropped export, does not escape."""
    def small(images: Images) -> np.ndarray:
        x = torch.from_numpy(images.pixels.astype(np.float32) / 255).unsqueeze(1)
        if x.shape[-1] > ALIGNED_SIZE:
            x = torch.nn.functional.interpolate(x, size=ALIGNED_SIZE, mode="area")
        return x.flatten(1).numpy()

    def shifts():
        return [(dy, dx) for dy in range(-ALIGNED_SHIFT, ALIGNED_SHIFT + 1)
                for dx in range(-ALIGNED_SHIFT, ALIGNED_SHIFT + 1)]

    def as_images(x: np.ndarray) -> torch.Tensor:
        side = int(round(math.sqrt(x.shape[1])))
        return torch.from_numpy(np.ascontiguousarray(x)).reshape(len(x), side, side)

    def block_scores(q: np.ndarray, g: np.ndarray) -> np.ndarray:
        qi, gi = as_images(q), as_images(g)
        best = torch.full((len(q), len(g)), -1.0)
        for dy, dx in shifts():
            torch.maximum(best, standardized_pixels(_windows(qi, dy, dx))
                          @ standardized_pixels(_windows(gi, -dy, -dx)).T, out=best)
        return best.numpy()

    def pair_scores(q: np.ndarray, g: np.ndarray) -> np.ndarray:
        qi, gi = as_images(q), as_images(g)
        return torch.stack([(standardized_pixels(_windows(qi, dy, dx)) * standardized_pixels(_windows(gi, -dy, -dx)))
                            .sum(dim=1) for dy, dx in shifts()]).max(dim=0).values.numpy()

    return Attack("raw_pixels_aligned", small(queries), None if gallery is None else small(gallery),
                  pair_scores, block_scores)


#: the structural attack: gradient orientations (unsigned, ORIENTATION_BINS bins, weighted by the
#: gradient's magnitude) pooled over an ORIENTATION_GRID x ORIENTATION_GRID grid -- the layout of edges
#: (ribs, heart border, clavicles), blind to brightness and contrast
ORIENTATION_BINS, ORIENTATION_GRID = 8, 8


def gradient_orientation_features(pixels: np.ndarray) -> np.ndarray:
    """(N, GRID * GRID * BINS) histograms of gradient orientation per cell, each image's descriptor scaled
    to unit length (brightness and contrast drop out), then z-scored over the images."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255).unsqueeze(1)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = torch.nn.functional.conv2d(padded, sobel.view(1, 1, 3, 3))
    gy = torch.nn.functional.conv2d(padded, sobel.T.contiguous().view(1, 1, 3, 3))
    magnitude = torch.sqrt(gx ** 2 + gy ** 2)
    angle = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned: an edge, whichever side is brighter
    bins = torch.clamp((angle / math.pi * ORIENTATION_BINS).long(), max=ORIENTATION_BINS - 1)
    votes = torch.zeros(x.shape[0], ORIENTATION_BINS, *x.shape[-2:])
    votes.scatter_(1, bins, magnitude)
    cells = torch.nn.functional.adaptive_avg_pool2d(votes, ORIENTATION_GRID).flatten(1)
    cells = cells / cells.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return zscored(cells.numpy())


def p1_chance(query_labels: np.ndarray, gallery_labels: np.ndarray, own: np.ndarray | None) -> np.ndarray:
    """Per query, the chance that a gallery item drawn at random shows its patient: ``(n_p - 1) / (N - 1)``
    when the query's own row is left out of the gallery, ``n_p / N`` otherwise."""
    labels, counts = np.unique(gallery_labels, return_counts=True)
    count_of = dict(zip(labels.tolist(), counts.tolist()))
    n = np.array([count_of.get(label, 0) for label in query_labels.tolist()], dtype=float)
    if own is None:
        return n / len(gallery_labels)
    left_out = (own >= 0).astype(float)
    return (n - left_out) / (len(gallery_labels) - left_out)


def _same_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    where: dict = {}
    for j, label in enumerate(second.tolist()):
        where.setdefault(label, []).append(j)
    out_i, out_j = [], []
    for i, label in enumerate(first.tolist()):
        js = where.get(label, [])
        out_i += [i] * len(js)
        out_j += js
    return np.array(out_i, dtype=np.int64), np.array(out_j, dtype=np.int64)


def _pairs(first: np.ndarray, second: np.ndarray, own: np.ndarray | None, symmetric: bool,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same-patient pairs (all, up to MAX_PAIRS; never a query with its own row) and as many
    different-patient pairs drawn at random: index arrays i, j and a 0/1 label."""
    same_i, same_j = _same_pairs(first, second)
    keep = np.ones(len(same_i), bool) if own is None else same_j != own[same_i]
    if symmetric:
        keep &= same_i < same_j
    same_i, same_j = same_i[keep], same_j[keep]
    if len(same_i) > MAX_PAIRS:
        pick = rng.choice(len(same_i), MAX_PAIRS, replace=False)
        same_i, same_j = same_i[pick], same_j[pick]
    want = max(len(same_i), min(MAX_PAIRS, 2000))
    i, j = rng.integers(0, len(first), 3 * want), rng.integers(0, len(second), 3 * want)
    keep = first[i] != second[j]
    diff_i, diff_j = i[keep][:want], j[keep][:want]
    label = np.concatenate([np.ones(len(same_i)), np.zeros(len(diff_i))])
    return np.concatenate([same_i, diff_i]), np.concatenate([same_j, diff_j]), label


def _ranking_figures(hits: np.ndarray, relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Per query P@1, R-precision and AP@R from the ranked hits (Q, k) and each query's R (<= k)."""
    ranks = np.arange(1, hits.shape[1] + 1)
    hits_r = hits & (ranks[None, :] <= relevant[:, None])
    precision_at = np.cumsum(hits, axis=1) / ranks[None, :]
    return {"precision_at_1": hits[:, 0].astype(float), "r_precision": hits_r.sum(axis=1) / relevant,
            "map_at_r": (precision_at * hits_r).sum(axis=1) / relevant}


def percentile_interval(resampled: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of bootstrap resamples; NaN without any."""
    return percentile_ci(resampled) if len(resampled) else (math.nan, math.nan)


def linkage_panel(attacks: Sequence[Attack], query_labels, gallery_labels=None, *, scope: str = "internal",
                  n_bootstrap: int = 200, seed: int = 0) -> LinkagePanel:
    """Every attack's linkage of the queries (patient ``query_labels``) to the gallery.

    ``scope`` (see the module): ``internal`` -- the gallery is the queries' own set (``gallery_labels``
    None); ``anonymized`` -- query i is the anonymized version of gallery image i, which is left out of
    its search; ``against`` -- another set, nothing left out. Only queries whose patient has an image in
    the gallery (other than the one left out) are scored.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not attacks:
        raise ValueError("a linkage panel needs at least one attack")
    query_labels = np.asarray(query_labels)
    gallery_labels = query_labels if gallery_labels is None else np.asarray(gallery_labels)
    if scope != "against" and len(gallery_labels) != len(query_labels):
        raise ValueError(f"scope {scope!r}: query i must be gallery image i, but there are {len(query_labels)} "
                         f"queries and {len(gallery_labels)} gallery images")
    own = None if scope == "against" else np.arange(len(query_labels))
    labels, codes = np.unique(np.concatenate([query_labels, gallery_labels]), return_inverse=True)
    q_codes, g_codes = codes[:len(query_labels)], codes[len(query_labels):]
    counts = np.bincount(g_codes, minlength=len(labels))
    relevant_all = counts[q_codes] - (own is not None)
    scored = relevant_all > 0
    if not scored.any():
        raise ValueError("no query has another image of its patient in the gallery: nothing to link")
    relevant = relevant_all[scored]
    k = int(min(relevant.max(), len(gallery_labels) - (own is not None)))
    chance = p1_chance(q_codes[scored], g_codes, None if own is None else own[scored])
    rng = np.random.default_rng(seed)
    i, j, pair_label = _pairs(q_codes, g_codes, own, scope == "internal", rng)
    figures = []
    for attack in attacks:
        started = time.perf_counter()
        scores, indices = attack.search(k, own)
        hits = g_codes[indices[scored]] == q_codes[scored][:, None]
        per_query = _ranking_figures(hits, relevant)
        p1, resampled = patient_bootstrap_mean(per_query["precision_at_1"], q_codes[scored], n_samples=n_bootstrap,
                                               seed=seed)
        auc, auc_ci = math.nan, (math.nan, math.nan)
        if pair_label.any() and not pair_label.all():
            auc, auc_resampled = patient_bootstrap_auc(pair_label, attack.scores(i, j), q_codes[i], g_codes[j],
                                                       n_samples=n_bootstrap, seed=seed)
            auc_ci = percentile_interval(auc_resampled)
        figures.append(AttackFigures(attack.name, attack.label, p1, percentile_interval(resampled),
                                     float(per_query["map_at_r"].mean()), float(per_query["r_precision"].mean()),
                                     float(auc), auc_ci, indices[:, 0], scores[:, 0], time.perf_counter() - started))
    return LinkagePanel(scope, int(scored.sum()), len(gallery_labels), int(len(np.unique(q_codes[scored]))),
                        float(chance.mean()), tuple(figures))


def panels_table(panels: Mapping[str, LinkagePanel], figure: str = "precision_at_1") -> pd.DataFrame:
    """One figure of several panels side by side (e.g. one panel per anonymization method): rows are
    attacks, columns panels, with each panel's chance and worst case below."""
    rows: dict = {}
    for column, panel in panels.items():
        for a in panel.attacks:
            rows.setdefault(a.label, {})[column] = getattr(a, figure)
    table = pd.DataFrame(rows).T
    chance = {c: (p.chance_precision_at_1 if figure == "precision_at_1" else 0.5 if figure == "auc" else math.nan)
              for c, p in panels.items()}
    worst = {c: p.worst_case()[figure].value if figure in p.worst_case() else math.nan for c, p in panels.items()}
    return pd.concat([table, pd.DataFrame([chance, worst], index=["chance", "worst case"])])


def network_attacks(queries: Images, gallery: Images | None = None, *, siamese=None, retrieval=None,
                    retrained: Sequence = ()) -> list[Attack]:
    """The trained networks' attacks on ``queries`` (and ``gallery``): the siamese network (pair scores),
    the retrieval network (embedding), and siamese networks re-trained on anonymized images (the first
    named ``retrained``, the others ``retrained_2``, ...). Each network in eval mode, on its device."""
    from cxrlib.reid import embed_images
    from cxrlib.runtime import module_device

    def embedded(model, embed, images):
        model.eval()
        return embed_images(embed, images, device=module_device(model)).float().numpy()

    out = []
    for name, model in [("siamese", siamese), *((("retrained" if i == 0 else f"retrained_{i + 1}"), m)
                                                for i, m in enumerate(retrained))]:
        if model is not None:
            compare = _on_cpu(model.compare, model)
            out.append(siamese_attack(name, compare, embedded(model, model.embed, queries),
                                      None if gallery is None else embedded(model, model.embed, gallery)))
    if retrieval is not None:
        out.append(embedding_attack("retrieval", embedded(retrieval, retrieval, queries),
                                    None if gallery is None else embedded(retrieval, retrieval, gallery)))
    return out


def _on_cpu(compare, model):
    """``compare`` fed with CPU tensors whatever the model's device, returning CPU tensors."""
    from cxrlib.runtime import module_device

    device = module_device(model)
    return lambda a, b: compare(a.to(device), b.to(device)).cpu()
