"""The phantom: synthetic chest radiographs with patient identity and the 14 findings, written in the
ChestX-ray14 layout so that :mod:`cxrlib.data.chestxray14` reads it unchanged.

How identity is encoded. Every patient gets about 60 persistent anatomical parameters (thorax and
lung shape, diaphragm domes, heart, aortic knob, mediastinum and trachea, spine, the posterior and
anterior rib cage with its own spacing, curvature, thickness and undulation, clavicles, scapulae,
soft tissue and breasts, bone density, lung vessel pattern) and, for some, distinctive marks
(calcified granuloma, healed rib fracture, sternotomy wires, port, pacemaker). The parameters drift
slowly with age. Each scan then varies what a radiographer varies: view position (AP magnifies the
heart and brings the scapulae over the lungs), in-plane rotation, patient rotation, translation,
magnification, inspiration depth, blur, collimation, burned-in text and side markers, and what a
department varies: exposure and beam quality, dose (quantum noise), and the image processing of one of
several simulated vendors (equalization, edge enhancement, contrast curve, automatic windowing). Pixels
and global intensity statistics therefore change between scans of one patient while the shapes and their
ratios stay: raw-pixel or histogram matching fails, a network has to learn shape.

Rendering is supersampled (:func:`supersampling`) and box-averaged down to the output size, so a small
phantom looks like a resized radiograph rather than point samples of the anatomy.

Metadata (follow-up counts, ages, sex, view position, findings per scan, so also label frequency,
co-occurrence and longitudinal structure) is resampled patient by patient from the real
``Data_Entry_2017_v2020.csv``. Findings are drawn per scan from the real label sequence, with
positions and severities drawn anew for every scan, so they carry no identity beyond the labels.

Geometry: image coordinates x, y span [-1, 1] (x to the image right = the patient's left, y down).
Anatomy lives in patient coordinates u, v with the same orientation; a scan's pose maps them to the
image. One unit is ``FIELD_OF_VIEW_MM / 2`` millimetres.

Output folder::

    images/{patient:08d}_{followup:03d}.png   8-bit grayscale
    Data_Entry_2017_v2020.csv                 the release's header and columns
    train_val_list.txt, test_list.txt         patient-disjoint, about the release's 77/23 %
    phantom_truth.csv                         ground truth: text boxes and generative parameters
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from cxrlib.data.chestxray14 import (
    LABELS, SPLIT_FILES, DataError, findings_string, read_metadata, real_metadata_path, split_patients,
    write_metadata,
)

#: bump whenever the same arguments would give different files: it names the profile's phantom folder
PHANTOM_VERSION = 4
PHANTOM_TRUTH = "phantom_truth.csv"
METADATA_FILE = "Data_Entry_2017_v2020.csv"
#: detector width; sets OriginalImagePixelSpacing and the size of findings in millimetres
FIELD_OF_VIEW_MM = 430.0
MM = 2.0 / FIELD_OF_VIEW_MM  # one millimetre in patient units
MAX_SIZE = 1024
#: attenuation removed by a full lung depth of air (soft tissue through the whole body is 0.55)
AIR = 0.45
#: share of patients in test_list.txt: the release's share of images there (25,596 of 112,120)
TEST_FRACTION = 25_596 / 112_120
#: zlib level of the PNGs: fixed for byte-identical output, low because encoding dominates otherwise
PNG_COMPRESS_LEVEL = 1

# Random streams: every patient, scan and finding has its own generator keyed by (seed, stream, ...),
# so no draw shifts another (a finding added to a scan leaves its pose and the patient's anatomy).
_META, _ANATOMY, _SCAN, _FINDINGS, _TEXTURE, _EXAMPLE, _HABIT = range(7)


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


# --------------------------------------------------------------------------------------------------
# Anatomy: persistent per patient
# --------------------------------------------------------------------------------------------------

#: name: (mean, between-patient sd). Units are patient units unless the name says otherwise;
#: ``_r``/``_l`` are the patient's right (image left) and left.
ANATOMY_PARAMETERS: dict[str, tuple[float, float]] = {
    "thorax_w": (0.7, 0.065),       # lateral inner rib-cage half-width
    "apex_v": (-0.7, 0.06),        # lung apices
    "lung_box": (0.45, 0.25),        # 0 elliptic ... 1 boxy lung fields
    "lung_taper": (0.35, 0.12),      # narrowing toward the apex
    "lung_med_r": (0.075, 0.02),    # medial lung border (upper mediastinum)
    "lung_med_l": (0.07, 0.02),
    "dome_v_r": (0.38, 0.07),        # top of the right hemidiaphragm
    "dome_drop_l": (0.05, 0.045),     # left dome below the right
    "dome_curv_r": (1.6, 0.5),
    "dome_curv_l": (1.6, 0.5),
    "dome_peak": (0.45, 0.11),       # where the dome is highest, share of thorax_w
    "heart_u": (0.1, 0.035),
    "heart_dv": (-0.13, 0.045),      # heart centre relative to the left dome
    "heart_rx": (0.3, 0.032),
    "heart_ry": (0.22, 0.03),
    "heart_tilt": (0.5, 0.18),       # radians
    "atrium_r": (0.12, 0.022),        # right atrium: the right heart border
    "med_w": (0.08, 0.016),          # upper mediastinum half-width
    "aorta_u": (0.07, 0.02),
    "aorta_v": (-0.28, 0.05),
    "aorta_r": (0.05, 0.013),
    "trachea_u": (-0.01, 0.015),
    "trachea_w": (0.026, 0.004),
    "carina_v": (-0.2, 0.05),
    "spine_w": (0.07, 0.011),
    "spine_curve": (0.0, 0.045),      # scoliosis amplitude
    "spine_wave": (1.0, 0.3),
    "vert_h": (0.08, 0.01),         # vertebral body height
    "rib_spacing": (0.1, 0.014),
    "rib_growth": (0.22, 0.11),      # spacing widens downward
    "rib_rise": (0.4, 0.12),
    "rib_curv": (1.1, 0.3),
    "rib_thick": (0.42, 0.09),       # share of the period a rib occupies
    "rib_phase_r": (0.0, 0.3),       # rib levels relative to the apex, in periods
    "rib_phase_l": (0.0, 0.3),
    "rib_wobble": (0.012, 0.007),    # undulation amplitude
    "rib_wobble_freq": (9.0, 2.5),
    "ant_rib_slope": (0.55, 0.14),
    "ant_rib_spacing": (0.15, 0.02),
    "ant_rib_phase": (0.0, 0.35),
    "ant_rib_cc": (0.4, 0.08),       # costochondral junction, share of thorax_w
    "clav_v": (-0.64, 0.055),
    "clav_angle_r": (0.15, 0.1),    # radians, rising laterally
    "clav_angle_l": (0.15, 0.1),
    "clav_len": (0.6, 0.07),
    "clav_thick": (0.03, 0.006),
    "clav_s": (0.02, 0.014),          # S-curve amplitude
    "scap_v": (-0.42, 0.055),
    "scap_size": (0.2, 0.04),
    "scap_angle": (0.25, 0.14),
    "body_margin": (0.2, 0.07),      # soft tissue lateral to the rib cage
    "neck_w": (0.24, 0.035),
    "shoulder_v": (-0.88, 0.07),
    "soft_tissue": (1.0, 0.22),      # soft-tissue density (habitus)
    "bone_density": (1.0, 0.2),
    "lung_air": (1.0, 0.12),         # how dark the lungs are (lung volume, habitus)
    "breast_size": (0.0, 0.0),       # drawn for female patients only
    "breast_v": (0.0, 0.05),
    "hilum_v": (-0.12, 0.03),
    "vessel_count": (7.0, 1.2),
    "vessel_twist": (0.0, 2.0),
    "vessel_phase": (0.0, 1.8),
}
#: sex differences in the mean
_SEX_SHIFT = {"M": {"thorax_w": 0.025, "heart_rx": 0.01, "clav_len": 0.02},
              "F": {"thorax_w": -0.02, "body_margin": 0.01, "heart_rx": -0.01, "clav_len": -0.015}}
#: plausible ranges: a few shape parameters break down beyond them (ribs fold, lungs leave the body)
_BOUNDS = {"lung_box": (0.0, 1.0), "lung_taper": (0.1, 0.6), "dome_curv_r": (0.5, 3.0), "dome_curv_l": (0.5, 3.0),
           "rib_growth": (0.0, 0.35), "rib_thick": (0.25, 0.6), "rib_wobble": (0.0, 0.03),
           "clav_angle_r": (-0.1, 0.45), "clav_angle_l": (-0.1, 0.45), "body_margin": (0.1, 0.4)}
#: mean drift per decade of age (on top of each patient's own small drift)
_DRIFT_PER_DECADE = {"heart_rx": 0.008, "heart_ry": 0.005, "aorta_r": 0.005, "bone_density": -0.04,
                     "spine_curve": 0.0, "dome_v_r": 0.01, "soft_tissue": 0.02, "apex_v": 0.005}
#: a patient's own drift per decade, as a share of the between-patient sd
_INDIVIDUAL_DRIFT = 0.15
#: Widens every between-patient shape sd above (not the densities: see :data:`_DENSITIES`). The cpu
#: profile works at 64 px, one pixel per 6.7 mm, where
#: the fine cues that identify real patients (rib and vessel detail) are gone and about a thousand
#: training patients must teach a small network identity in minutes. Measured on a 1,500-patient phantom at
#: 64 px before acquisition varied per scan (convnet siamese network, Adam 3e-3): test AUC 0.91 at 1.0 (15
#: epochs), 0.95 at 1.5 (12), while raw-pixel nearest-neighbour P@1 rose from 0.25 to 0.43.
POPULATION_SPREAD = 1.5
#: densities keep their plain between-patient sd: widened, they made the exposure level identify patients
_DENSITIES = ("soft_tissue", "bone_density", "lung_air")

#: distinctive marks: probability per patient
MARKS = {"granuloma": 0.15, "rib_fracture": 0.08, "sternotomy": 0.05, "port": 0.05, "pacemaker": 0.04}


@dataclass(frozen=True)
class Patient:
    sex: str
    base_age: float
    base: dict[str, float]
    drift: dict[str, float]
    marks: dict[str, float]

    def anatomy_at(self, age: float) -> dict[str, float]:
        """The anatomy at ``age`` (drifted from the first scan's), with the distinctive marks."""
        decades = (age - self.base_age) / 10.0
        return {**{k: v + self.drift[k] * decades for k, v in self.base.items()}, **self.marks}


def draw_patient(rng: np.random.Generator, sex: str, base_age: float, marks: bool = True) -> Patient:
    names = list(ANATOMY_PARAMETERS)
    mean = np.array([ANATOMY_PARAMETERS[k][0] + _SEX_SHIFT[sex].get(k, 0.0) for k in names])
    sd = np.array([ANATOMY_PARAMETERS[k][1] * (1.0 if k in _DENSITIES else POPULATION_SPREAD) for k in names])
    # truncated at 2.5 sd: a phantom of a few hundred patients should not hold freaks
    z = np.clip(rng.standard_normal(len(names)), -2.5, 2.5)
    base = dict(zip(names, (mean + sd * z).tolist()))
    for name, (low, high) in _BOUNDS.items():
        base[name] = min(max(base[name], low), high)
    base["rib_count"] = float(rng.choice([11, 12, 13], p=[0.06, 0.9, 0.04]))
    if sex == "F" and base_age >= 14:
        base["breast_size"] = float(np.clip(rng.normal(0.2, 0.06), 0.06, 0.32))
    trend = np.array([_DRIFT_PER_DECADE.get(k, 0.0) for k in names])
    own = rng.standard_normal(len(names)) * sd * _INDIVIDUAL_DRIFT
    drift = dict(zip(names, (trend + own).tolist()))
    drift["rib_count"] = drift["breast_size"] = 0.0
    return Patient(sex=sex, base_age=float(base_age), base=base, drift=drift,
                   marks=_draw_marks(rng) if marks else {})


def _draw_marks(rng: np.random.Generator) -> dict[str, float]:
    present = rng.random(len(MARKS)) < np.array(list(MARKS.values()))
    marks: dict[str, float] = {}
    draws = rng.random(16).tolist()
    side = lambda x: -1.0 if x < 0.5 else 1.0  # noqa: E731
    if present[0]:
        marks.update(granuloma_side=side(draws[0]), granuloma_a=0.3 + 0.5 * draws[1],
                     granuloma_v=-0.35 + 0.6 * draws[2], granuloma_r=0.012 + 0.01 * draws[3])
    if present[1]:
        marks.update(rib_fracture_side=side(draws[4]), rib_fracture_rib=float(3 + int(6 * draws[5])),
                     rib_fracture_a=0.3 + 0.35 * draws[6])
    if present[2]:
        marks.update(sternotomy_wires=float(5 + int(3 * draws[7])), sternotomy_top=-0.35 + 0.08 * draws[8])
    if present[3]:
        marks.update(port_side=side(draws[9]), port_a=0.3 + 0.1 * draws[10], port_v=-0.4 + 0.08 * draws[11])
    if present[4]:
        marks.update(pacemaker_a=0.32 + 0.1 * draws[12], pacemaker_v=-0.42 + 0.08 * draws[13],
                     pacemaker_leads=float(1 + int(2 * draws[14])))
    return marks


# --------------------------------------------------------------------------------------------------
# Scan: what varies from one acquisition to the next
# --------------------------------------------------------------------------------------------------

#: how closely the detector frames the chest, as a magnification of every scan: real radiographs are
#: collimated closer to the chest than the field of view above. 1.15 makes the phantom's median lung-field
#: share of the image match the 517 real masks in torchxrayvision (0.365 against 0.363 on 300 scans at
#: 128 px; 0.276 without it), see cxrlib/data/lung_fields.py
FRAMING = 1.15


#: Scales the spread of positioning between scans (rotation 3 degrees, shift 5 % of the half-width,
#: magnification 4 %, obliquity, each times this). Real follow-ups are positioned less alike than 1.0
#: gives: held against the real sample with the protocol of :func:`cxrlib.attacks.identity_profile`,
#: pixel correlation links a patient's scans at AUC 0.85 at 1.0, within the real CI at 1.5
#: (docs/decisions.md has the calibration).
POSE_SPREAD = 1.5


def draw_scan(rng: np.random.Generator, view: str, usual: dict | None = None) -> dict:
    """Pose, inspiration, exposure, detector and annotation of one acquisition; ``usual`` is the
    patient's usual acquisition (:func:`draw_usual_acquisition`), which the scan may follow."""
    ap = view == "AP"
    pose = POSE_SPREAD
    scan = {
        "rotation_deg": float(np.clip(rng.normal(0.0, 3.0 * pose), -8 * pose, 8 * pose)),
        "shift_x": float(np.clip(rng.normal(0.0, 0.05 * pose), -0.12 * pose, 0.12 * pose)),
        "shift_y": float(np.clip(rng.normal(0.02, 0.05 * pose), 0.02 - 0.12 * pose, 0.02 + 0.12 * pose)),
        "magnification": FRAMING * float(np.exp(rng.normal(0.03 if ap else 0.0, 0.04 * pose))),
        # patient turned about the vertical axis: anterior structures shift against the spine
        "obliquity": float(rng.normal(0.0, 0.025 * pose)),
        "inspiration": float(rng.normal(-0.6 if ap else 0.0, 1.0)),
        "heart_magnification": 1.12 if ap else 1.0,
        "scapula_shift": float(rng.uniform(0.1, 0.16) if ap else rng.uniform(-0.04, 0.02)),
        "clavicle_lift": float(rng.uniform(-0.08, -0.02) if ap else rng.uniform(-0.02, 0.02)),
        **draw_acquisition(rng, usual),
        "blur_mm": float(rng.uniform(0.6, 3.0)),
        "mottle": float(rng.uniform(0.0075, 0.02)),
        "gastric_bubble": float(rng.uniform(0.0, 0.07) * (rng.random() < 0.7)),
        "noise_offset": int(rng.integers(0, 2**31)),
        "ecg_leads": int(rng.integers(2, 5) if ap and rng.random() < 0.4 else 0),
        "lead_seed": int(rng.integers(0, 2**31)),
    }
    collimated = rng.random() < 0.25
    for side in ("left", "right", "top", "bottom"):
        scan[f"collimation_{side}"] = float(rng.uniform(0.0, 0.1) if collimated and rng.random() < 0.6 else 0.0)
    corners = ["top_left", "top_right", "bottom_left", "bottom_right"]
    text = []
    if rng.random() < 0.55:
        for corner in rng.choice(corners, size=int(rng.integers(1, 3)), replace=False).tolist():
            text.append({"corner": corner, "lines": int(rng.integers(1, 4)),
                         "chars": int(rng.integers(5, 15)), "seed": int(rng.integers(0, 2**31))})
    scan["text"] = text
    scan["marker"] = str(rng.choice(["L", "R"])) if rng.random() < 0.5 else ""
    scan["marker_corner"] = str(rng.choice([c for c in corners if c not in {t["corner"] for t in text}]))
    return scan


#: Simulated vendors' processing: ranges of histogram equalization strength, unsharp-mask (edge
#: enhancement) radius in mm and amount, and contrast curve (gamma). Each scan is processed by one of them.
VENDORS = {
    "linear": {"equalize": (0.0, 0.15), "unsharp_mm": (4.0, 8.0), "unsharp": (0.0, 0.3), "gamma": (0.8, 1.25)},
    "equalized": {"equalize": (0.5, 0.9), "unsharp_mm": (3.0, 6.0), "unsharp": (0.2, 0.6), "gamma": (0.7, 1.1)},
    "edge_enhanced": {"equalize": (0.2, 0.5), "unsharp_mm": (1.5, 4.0), "unsharp": (0.6, 1.4), "gamma": (0.9, 1.4)},
    "soft": {"equalize": (0.0, 0.4), "unsharp_mm": (8.0, 16.0), "unsharp": (0.3, 0.8), "gamma": (1.1, 1.7)},
}


#: Acquisition habits. Most of a real patient's follow-ups are taken on the same device, in the same
#: department, with the same protocol, so their global intensity statistics recur: on the real sample
#: (data/chestxray14-sample) an image's mean and sd alone link two scans of one patient at AUC 0.65, on a
#: phantom whose every scan draws its acquisition afresh at 0.53. A scan follows the patient's usual
#: acquisition with this probability (otherwise it is taken elsewhere: a new draw) ...
USUAL_ACQUISITION_SHARE = 0.7
#: ... and then varies around it by this share of the department-wide spread (day-to-day exposure and
#: positioning of the same protocol)
USUAL_ACQUISITION_SPREAD = 0.35
#: acquisition parameters that vary on a log scale (ratios), blended as logarithms
_LOG_ACQUISITION = ("dose", "gamma", "window_width")


def draw_usual_acquisition(rng: np.random.Generator) -> dict:
    """A patient's usual acquisition: one draw from the department-wide spread."""
    return draw_acquisition(rng)


def draw_acquisition(rng: np.random.Generator, usual: dict | None = None) -> dict:
    """Exposure, beam quality, dose and processing of one acquisition, as they vary across a department's
    rooms and days; with ``usual``, the scan follows the patient's usual acquisition with probability
    :data:`USUAL_ACQUISITION_SHARE`, varying around it by :data:`USUAL_ACQUISITION_SPREAD`."""
    vendor = str(rng.choice(list(VENDORS)))
    ranges = VENDORS[vendor]
    fresh = {
        "vendor": vendor,
        # effective attenuation scale: low kVp gives high contrast, high kVp flattens bone and soft tissue
        "contrast": float(rng.uniform(1.4, 3.2)),
        # relative dose: quantum noise sd goes as 1/sqrt(dose)
        "dose": float(np.exp(rng.normal(0.0, 0.5))),
        "equalize": float(rng.uniform(*ranges["equalize"])),
        "unsharp_mm": float(rng.uniform(*ranges["unsharp_mm"])),
        "unsharp": float(rng.uniform(*ranges["unsharp"])),
        "gamma": float(np.exp(rng.uniform(*np.log(ranges["gamma"])))),
        # automatic windowing on the image's own 1 %-99 % range, then the operator's (or preset's) shift
        # of the centre (in window widths) and scale of the width
        "window_centre": float(rng.normal(0.0, 0.08)),
        "window_width": float(np.exp(rng.normal(0.0, 0.2))),
        # quantum noise sd at 1024 px at the reference dose; smaller images average it down
        "noise": float(rng.uniform(0.01, 0.035)),
    }
    follows = rng.random() < USUAL_ACQUISITION_SHARE  # drawn always, so that later draws never shift
    if usual is None or not follows:
        return fresh
    # the usual protocol, moved toward this scan's fresh draw by the day-to-day share of the spread
    kept = {"vendor": usual["vendor"]}
    for name, value in fresh.items():
        if name == "vendor":
            continue
        if name in _LOG_ACQUISITION:
            kept[name] = float(np.exp(np.log(usual[name]) + USUAL_ACQUISITION_SPREAD
                                      * (np.log(value) - np.log(usual[name]))))
        else:
            kept[name] = float(usual[name] + USUAL_ACQUISITION_SPREAD * (value - usual[name]))
    return kept


# --------------------------------------------------------------------------------------------------
# Findings: drawn per scan, placed by anatomy
# --------------------------------------------------------------------------------------------------

def draw_findings(rng: np.random.Generator, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Severity, side and position of each present finding (positions in lung-relative units:
    ``a`` from medial 0 to lateral 1, ``h`` from apex 0 to diaphragm 1)."""
    findings = {}
    for label, present in zip(LABELS, labels):
        draws = rng.random(8)  # drawn even when absent, so each label's draws never shift another's
        if present:
            findings[label] = {
                # no faint findings: ChestX-ray14's labels come from reports, which name what is visible
                "severity": float(0.6 + 0.4 * draws[0]),
                "side": -1.0 if draws[1] < 0.5 else 1.0,
                "bilateral": float(draws[2] < 0.3),
                "a": float(draws[3]),
                "h": float(draws[4]),
                "shape": float(draws[5]),
                "count": float(draws[6]),
                "texture": int(draws[7] * 2**31),
            }
    return findings


# Zones where each finding usually sits: (a_lo, a_hi, h_lo, h_hi) in lung-relative units
_ZONES = {
    "Atelectasis": (0.2, 0.8, 0.6, 0.85), "Infiltration": (0.15, 0.85, 0.3, 0.9),
    "Mass": (0.25, 0.75, 0.2, 0.75), "Nodule": (0.15, 0.85, 0.1, 0.85),
    "Pneumonia": (0.25, 0.8, 0.45, 0.85), "Consolidation": (0.2, 0.8, 0.35, 0.85),
    "Fibrosis": (0.55, 0.9, 0.55, 0.9),
}


def _apply_modifiers(p: dict, scan: dict, findings: dict) -> dict:
    """Anatomy as seen on this scan: pose-independent changes of inspiration, view and findings."""
    p = dict(p)
    insp = scan["inspiration"]
    p["dome_v_l"] = p["dome_v_r"] + p["dome_drop_l"]
    for side in ("_r", "_l"):
        p["dome_v" + side] += 0.035 * insp
        p["dome_curv" + side] *= 1.0 - 0.06 * insp
        p["collapse" + side] = 1.0
        p["fluid" + side] = 0.0
        p["rim" + side] = 0.0
    p["rib_spacing"] *= 1.0 + 0.03 * insp
    p["heart_v"] = p["dome_v_l"] + p["heart_dv"]  # the heart rides on the left hemidiaphragm
    p["heart_rx"] *= scan["heart_magnification"] * (1.0 - 0.03 * insp)
    p["heart_ry"] *= scan["heart_magnification"]
    p["air"] = p["lung_air"]
    p["body_w"] = p["thorax_w"] + p["body_margin"]
    p["vessels"] = 1.0
    p["haze"] = 0.0
    sides = lambda f: ("_r", "_l") if f["bilateral"] else ("_r" if f["side"] < 0 else "_l",)  # noqa: E731
    for label, f in findings.items():
        sev = f["severity"]
        if label == "Cardiomegaly":  # a cardiothoracic ratio of 0.52 to 0.66
            target = 0.52 + 0.14 * sev
            for _ in range(3):  # the ratio is nearly proportional to the heart's size
                grow = target / cardiothoracic_ratio(p)
                if grow <= 1.0:
                    break
                p["heart_rx"] *= grow
                p["atrium_r"] *= grow
                p["heart_ry"] *= math.sqrt(grow)
        elif label == "Emphysema":
            p["air"] *= 1.0 + 0.45 * sev
            p["vessels"] = 1.0 - 0.6 * sev
            for side in ("_r", "_l"):
                p["dome_v" + side] += 0.14 * sev
                p["dome_curv" + side] *= 1.0 - 0.65 * sev
        elif label in ("Atelectasis", "Fibrosis"):
            for side in sides(f):
                p["dome_v" + side] -= 0.06 * sev
        elif label == "Pneumothorax":
            p["collapse" + ("_r" if f["side"] < 0 else "_l")] = 0.85 - 0.3 * sev
        elif label == "Effusion":
            for side in sides(f):
                p["fluid" + side] = 0.06 + 0.3 * sev
        elif label == "Pleural_Thickening":
            for side in sides(f):
                p["rim" + side] = 0.02 + 0.04 * sev
            p["rim_apical"] = float(f["shape"] < 0.5)
        elif label == "Edema":
            p["haze"] = 0.1 + 0.15 * sev
    return p


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

def supersampling(size: int) -> int:
    """How many rendered pixels per output pixel and axis: at least 256 rendered pixels across, at most 4x."""
    return min(max(256 // size, 1), 4)


class Textures:
    """Seeded noise tiles twice the image size; each scan reads windows at its own offsets. ``coarse``
    and ``fine`` (anatomy, findings) are at the rendering resolution, ``noise`` and ``mottle`` (detector)
    at the output size."""

    def __init__(self, size: int, seed: int):
        rng = _rng(seed, _TEXTURE, size)
        canvas = size * supersampling(size)
        self.size = size
        self.noise = self._filtered(rng, 2 * size, 0.5)
        self.coarse = self._filtered(rng, 2 * canvas, 0.035 * canvas)
        self.fine = self._filtered(rng, 2 * canvas, 0.009 * canvas)
        self.mottle = self._filtered(rng, 2 * size, 0.035 * size)

    @staticmethod
    def _filtered(rng: np.random.Generator, n: int, sigma_px: float) -> np.ndarray:
        white = rng.standard_normal((n, n)).astype(np.float32)
        fy = np.fft.fftfreq(n)[:, None]
        fx = np.fft.rfftfreq(n)[None, :]
        spectrum = np.fft.rfft2(white) * np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
        tile = np.fft.irfft2(spectrum, s=(n, n)).astype(np.float32)
        return tile / tile.std()

    def window(self, tile: np.ndarray, shape: tuple[int, int], key: int) -> np.ndarray:
        h, w = shape
        oy = key % (tile.shape[0] - h + 1)
        ox = (key // 65_537) % (tile.shape[1] - w + 1)
        return tile[oy:oy + h, ox:ox + w]


def _step(d: np.ndarray, eps: float) -> np.ndarray:
    """Soft 0/1 step of a signed distance, one ``eps`` wide."""
    out = d * (1.0 / eps)
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out)


class _Canvas:
    """An attenuation image and the pose that maps patient coordinates onto it."""

    def __init__(self, size: int, scan: dict):
        self.n = size
        angle = np.deg2rad(scan["rotation_deg"])
        self.cos, self.sin = float(np.cos(angle)), float(np.sin(angle))
        self.m = scan["magnification"]
        self.tx, self.ty = scan["shift_x"], scan["shift_y"]
        self.coord = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0)
        self.pixel = 2.0 / size / self.m  # one pixel in patient units
        self.eps = max(scan["blur_mm"] * MM, self.pixel)
        self.attenuation = np.zeros((size, size), np.float32)
        self.air = np.zeros((size, size), np.float32)
        #: mediastinum and heart: they hide the lung behind them
        self.solid = np.zeros((size, size), np.float32)
        #: the lung fields as a segmentation would outline them (the visible lung, not behind the heart)
        self.lung = np.zeros((size, size), np.float32)

    def window(self, u0: float, u1: float, v0: float, v1: float):
        """Pixel slices covering a patient-coordinate box, and the patient coordinates there."""
        m, cos, sin, n = self.m, self.cos, self.sin, self.n
        xs = [m * (cos * u - sin * v) + self.tx for u in (u0, u1) for v in (v0, v1)]
        ys = [m * (sin * u + cos * v) + self.ty for u in (u0, u1) for v in (v0, v1)]
        half = n / 2.0
        c0 = min(max(math.floor((min(xs) + 1.0) * half), 0), n)
        c1 = min(max(math.ceil((max(xs) + 1.0) * half), 0), n)
        r0 = min(max(math.floor((min(ys) + 1.0) * half), 0), n)
        r1 = min(max(math.ceil((max(ys) + 1.0) * half), 0), n)
        if c1 <= c0 or r1 <= r0:
            return None
        xs = self.coord[c0:c1] - self.tx
        ys = self.coord[r0:r1] - self.ty
        k = 1.0 / self.m
        u = (xs * (self.cos * k))[None, :] + (ys * (self.sin * k))[:, None]
        v = (xs * (-self.sin * k))[None, :] + (ys * (self.cos * k))[:, None]
        return (slice(r0, r1), slice(c0, c1)), u, v

    def subwindow(self, outer: tuple[slice, slice], u0: float, u1: float, v0: float, v1: float):
        """Slices, relative to an ``outer`` window, of the part of a patient box inside it."""
        found = self.window(u0, u1, v0, v1)
        if found is None:
            return None
        (r, c), (ro, co) = found[0], outer
        rows = slice(max(r.start, ro.start) - ro.start, min(r.stop, ro.stop) - ro.start)
        cols = slice(max(c.start, co.start) - co.start, min(c.stop, co.stop) - co.start)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            return None
        return rows, cols

    @staticmethod
    def shift(outer: tuple[slice, slice], inner: tuple[slice, slice]) -> tuple[slice, slice]:
        """Image slices of an ``inner`` window given relative to ``outer``."""
        return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))

    def blob(self, cu: float, cv: float, ru: float, rv: float, density: float, *, profile: str = "dome",
             edge: float | None = None) -> None:
        """Add an ellipse: a "dome" (thickness of a sphere) or a "flat" disc."""
        found = self.window(cu - ru, cu + ru, cv - rv, cv + rv)
        if found is None:
            return
        sl, u, v = found
        du = (u - cu) * (1.0 / ru)
        dv = (v - cv) * (1.0 / rv)
        r2 = du * du + dv * dv
        if profile == "dome":
            shape = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
        else:
            shape = _step(1.0 - np.sqrt(r2), (edge or self.eps) / min(ru, rv))
        self.attenuation[sl] += density * shape

    def curve(self, points: np.ndarray, width: float, density: float) -> None:
        """Add a smooth tube along a polyline (devices, leads, catheters)."""
        for (u0, v0), (u1, v1) in zip(points[:-1], points[1:]):
            pad = width + self.eps
            found = self.window(min(u0, u1) - pad, max(u0, u1) + pad, min(v0, v1) - pad, max(v0, v1) + pad)
            if found is None:
                continue
            sl, u, v = found
            du, dv = u1 - u0, v1 - v0
            length2 = du * du + dv * dv + 1e-12
            t = np.clip(((u - u0) * du + (v - v0) * dv) * (1.0 / length2), 0.0, 1.0)
            eu = u - u0 - t * du
            ev = v - v0 - t * dv
            dist = np.sqrt(eu * eu + ev * ev)
            # t > 0 leaves each joint to one segment, so the tube is not doubled there
            self.attenuation[sl] += density * _step(width - dist, self.eps) * (t > 0.0)


def _body(cv: _Canvas, p: dict) -> None:
    """Soft tissue of neck, shoulders and trunk: the thickness of an elliptic cylinder."""
    density = 0.55 * p["soft_tissue"]
    shoulders_end = p["shoulder_v"] + 0.3
    # the neck widening into rounded shoulders, in the rows that reach above the shoulders' end
    top = cv.window(-1.6, 1.6, -1.6, shoulders_end)
    rows = top[0][0].stop if top is not None else 0
    if top is not None:
        sl, u, v = top
        shoulders = np.clip((v - p["shoulder_v"]) * (1.0 / 0.3), 0.0, 1.0)
        shoulders *= 2.0 - shoulders
        np.sqrt(shoulders, out=shoulders)
        half_width = p["neck_w"] + (p["body_w"] - p["neck_w"]) * shoulders
        _add_cylinder(cv.attenuation[sl], u / half_width, density)
    bottom = cv.window(-1.6, 1.6, shoulders_end, 1.6)
    if bottom is not None:  # rows below the top window: the trunk has one width
        (rs, cs), u, _ = bottom
        start = max(rs.start, rows)
        if start < rs.stop:
            _add_cylinder(cv.attenuation[start:rs.stop, cs], u[start - rs.start:] * (1.0 / p["body_w"]), density)


def _add_cylinder(out: np.ndarray, x: np.ndarray, density: float) -> None:
    x *= x
    np.subtract(1.0, x, out=x)
    np.clip(x, 0.0, 1.0, out=x)
    np.sqrt(x, out=x)
    x *= density
    out += x


def _hemithorax(cv: _Canvas, p: dict, side: float, tex: Textures, scan: dict) -> None:
    """One lung with its vessels and the findings that change its shape, and its half of the rib
    cage. Ribs are computed over the whole cage, the lung over its own smaller window."""
    sfx = "_r" if side < 0 else "_l"
    tw, med, apex = p["thorax_w"], p["lung_med" + sfx], p["apex_v"]
    dome, curv = p["dome_v" + sfx], p["dome_curv" + sfx]
    peak = p["dome_peak"] * tw
    bottom = dome + curv * (tw - peak) ** 2
    lo_u, hi_u = (-tw - 0.09, 0.0) if side < 0 else (0.0, tw + 0.09)
    found = cv.window(lo_u, hi_u, apex - 0.2, bottom + 0.12)
    if found is None:
        return
    sl, u, v = found
    a = u if side > 0 else -u
    eps = cv.eps

    # the cage: a superellipse narrowing to the apex; r < 1 is lung, cut below by the dome
    ac, aw = 0.5 * (tw + med), 0.5 * (tw - med)
    vc, vh = 0.5 * (apex + bottom + 0.2), 0.5 * (bottom + 0.2 - apex)
    q = (v - vc) * (1.0 / vh)
    top = np.clip(q, -1.0, 0.0)
    top *= top
    narrowing = 1.0 - p["lung_taper"] * top
    pu = (a - ac) / (aw * narrowing)
    pu2, q2 = pu * pu, q * q
    box = p["lung_box"]
    r = pu2 + q2
    r *= 1.0 - box
    r += box * (pu2 * pu2 + q2 * q2)
    dome_curve = a - peak
    dome_curve *= dome_curve
    dome_curve *= curv
    dome_curve += dome - v
    below = _step(dome_curve, eps)

    # posterior ribs: a phase field whose level sets are the rib centre lines; clipping the phase
    # to the rib count leaves cos = -1 (no rib) beyond the first and the last rib
    bone = p["bone_density"]
    ribs_phase = p["rib_phase" + sfx]
    s = (p["rib_rise"] - p["rib_curv"] * a) * a + v
    s -= apex - 0.04 + ribs_phase * p["rib_spacing"]
    phi = s * (1.0 / p["rib_spacing"])
    phi *= 1.0 - p["rib_growth"] * s
    phi += (p["rib_wobble"] / p["rib_spacing"]) * np.sin(p["rib_wobble_freq"] * a + (3.0 * side + ribs_phase))
    if "rib_fracture_side" in p and p["rib_fracture_side"] == side:
        # healed fracture: a step in one rib and a callus
        k, fa = p["rib_fracture_rib"], p["rib_fracture_a"]
        near = np.exp(-((phi - k) ** 2) * 8.0)
        phi += 0.2 * near * _step(a - fa, eps)
        cv.attenuation[sl] += 0.3 * bone * near * np.exp(-((a - fa) ** 2) * (1.0 / 0.002))
    np.clip(phi, -0.5, p["rib_count"] - 0.5, out=phi)
    wave = np.cos(phi * (2.0 * np.pi))
    # sharp at high resolution, blending into the fundamental where a rib period spans few pixels
    # (otherwise small images alias into a mesh)
    t = math.cos(math.pi * p["rib_thick"])
    rib = np.sqrt(np.clip((wave - t) * (1.0 / (1.0 - t)), 0.0, 1.0))
    smooth = min(max(3.0 * cv.pixel / p["rib_spacing"] - 0.3, 0.0), 1.0)
    if smooth > 0.0:
        rib *= 1.0 - smooth
        rib += smooth * (0.35 + 0.35 * wave)
    # ribs are seen edge-on (denser) at the lateral chest wall (r about 1.08) and end just outside
    # it; medially they run under the spine; below the domes they overlie the abdomen and fade
    weight = np.clip(r, 0.9, 1.08)
    weight -= 0.9 - 1.0 / 6.7
    wall = np.clip(r, 1.08, 1.29)
    wall -= 1.08
    wall *= 10.5 / 6.7  # the density rises 1 -> 2.2 over r 0.9 -> 1.08 and falls to 0 at r 1.29
    weight -= wall
    weight *= 6.7
    np.maximum(weight, 0.0, out=weight)
    fade = below * 0.6
    fade += 0.4
    weight *= fade
    rib *= weight
    cv.attenuation[sl] += (0.1 * bone) * rib

    # anterior ribs: sloping down toward the midline, ending at the costochondral junction
    phi_a = (v - p["ant_rib_slope"] * (tw - a) - (apex + 0.05 + p["ant_rib_phase"] * p["ant_rib_spacing"]))
    phi_a *= 1.0 / p["ant_rib_spacing"]
    np.clip(phi_a, -0.5, 6.5, out=phi_a)
    wave = np.cos(phi_a * (2.0 * np.pi))
    rib = np.clip((wave - 0.1) * (1.0 / 0.9), 0.0, 1.0)
    if smooth > 0.0:
        rib *= 1.0 - smooth
        rib += smooth * (0.3 + 0.3 * wave)
    rib *= weight
    rib *= _step(a - p["ant_rib_cc"] * tw, 0.05)
    cv.attenuation[sl] += (0.06 * bone) * rib

    # the lung, in its own window
    inner = cv.subwindow(sl, -tw if side < 0 else med - 0.02, tw if side > 0 else -med + 0.02, apex, bottom + 0.02)
    if inner is None:
        return
    ll, sl = inner, cv.shift(sl, inner)
    a, v, r, q, top, below = a[ll], v[ll], r[ll], q[ll], top[ll], below[ll]
    depth = np.clip((1.0 - r) * 1.5, 0.0, 1.0)
    np.sqrt(depth, out=depth)
    depth *= below
    field = _step(1.0 - r, eps)
    field *= below
    field *= cv.solid[sl] < 0.5
    np.maximum(cv.lung[sl], field, out=cv.lung[sl])
    hidden = 1.0 - 0.9 * cv.solid[sl]
    depth *= hidden
    collapse = p["collapse" + sfx]
    if collapse < 1.0:
        # pneumothorax: the lung shrinks toward the hilum, denser for the air it lost; the pleural
        # space is pure air, without vessels
        cu_ = (a - (ac - aw * (1.0 - collapse) * 0.6)) / (aw * collapse * (1.0 - p["lung_taper"] * top))
        cq = (v - (vc + vh * (1.0 - collapse) * 0.5)) * (1.0 / (vh * collapse))
        rc = (1.0 - box) * (cu_ * cu_ + cq * cq) + box * (cu_**4 + cq**4)
        lung = _step(1.0 - rc, 0.04) * below * hidden
        pleural_line = np.clip(1.0 - np.abs(1.0 - rc) * (0.5 / (cv.pixel + 0.004)), 0.0, 1.0) * below
        air = depth * (0.75 * lung + 1.4 * (1.0 - lung)) * p["air"]
        cv.attenuation[sl] += 0.4 * pleural_line
    else:
        lung = np.clip(depth * 3.0, 0.0, 1.0)
        air = depth * p["air"]
    cv.air[sl] += air

    # vessels radiating from the hilum, fading to the periphery, broken up by a random field
    ha, hv = med + 0.05, p["hilum_v"]
    da, dv = a - ha, v - hv
    rr = da * da
    rr += dv * dv
    theta = np.arctan2(dv, da)
    theta *= p["vessel_count"] * 2.0
    theta += p["vessel_twist"] * rr + (p["vessel_phase"] + side)
    vessels = np.cos(theta)
    vessels *= 4.0
    vessels -= 3.0
    np.clip(vessels, 0.0, 1.0, out=vessels)
    broken = tex.window(tex.coarse, vessels.shape, scan["noise_offset"] // 3) * 0.7 + 0.7
    vessels *= np.clip(broken, 0.0, 1.2, out=broken)
    fade = np.exp(rr * -5.0)
    fade *= 0.08 * p["vessels"]
    vessels *= fade
    vessels *= lung
    cv.attenuation[sl] += vessels

    if p["haze"] > 0.0:  # edema: perihilar (bat-wing) haze
        haze = np.exp(-(da * da * (1.0 / 0.12) + dv * dv * (1.0 / 0.15)))
        texture = 1.0 + 0.35 * tex.window(tex.coarse, haze.shape, scan["noise_offset"] // 7)
        cv.attenuation[sl] += p["haze"] * haze * texture * lung
    fluid = p["fluid" + sfx]
    if fluid > 0.0:  # effusion: dependent fluid with a meniscus rising laterally, blunting the angle
        rise = np.clip((a - med) * (1.0 / (tw - med)), 0.0, 1.0)
        level = bottom - fluid * (bottom - apex) * (0.5 + rise * rise)
        water = _step(v - level, 2.0 * eps) * _step(1.05 - r, 0.05) * below
        cv.attenuation[sl] += water * (AIR * air + 0.1)
    rim = p["rim" + sfx]
    if rim > 0.0:  # pleural thickening: a dense band inside the chest wall, apical or lateral
        band = _step(r - (1.0 - 3.0 * rim), 0.02) * _step(1.02 - r, 0.02)
        zone = np.clip(-q * 2.0, 0.0, 1.0) if p.get("rim_apical", 0.0) else np.clip((a - ac) * (4.0 / aw), 0.0, 1.0)
        cv.attenuation[sl] += 0.3 * band * zone * below


#: the right atrium's centre lies this share of the heart's long radius to the right of the heart's
_ATRIUM_OFFSET = 0.6


def _mediastinum(cv: _Canvas, p: dict, scan: dict) -> None:
    """Upper mediastinum, aortic knob and heart: soft tissue that hides the lung behind it (marked
    in ``cv.solid`` for the lungs), and the air of trachea and main bronchi."""
    ob, eps = scan["obliquity"], cv.eps
    found = cv.window(-0.25 + ob, 0.25 + ob, -1.2, p["heart_v"])
    if found is not None:  # upper mediastinum, widening toward the heart
        sl, u, v = found
        width = p["med_w"] * (1.0 + 0.6 * np.clip((v - p["carina_v"]) * 3.0, 0.0, 1.0))
        np.maximum(cv.solid[sl], _step(width - np.abs(u - (ob + 0.01)), eps), out=cv.solid[sl])
    r = p["aorta_r"]
    found = cv.window(p["aorta_u"] + ob - r, p["aorta_u"] + ob + r, p["aorta_v"] - r, p["aorta_v"] + r)
    if found is not None:
        sl, u, v = found
        ku, kv = u - (p["aorta_u"] + ob), v - p["aorta_v"]
        np.maximum(cv.solid[sl], _step(r - np.sqrt(ku * ku + kv * kv), eps), out=cv.solid[sl])
    # heart: a tilted ellipse (ventricles) and a circle (right atrium, the right heart border)
    hu, hv, rx, ry = p["heart_u"] + ob, p["heart_v"], p["heart_rx"], p["heart_ry"]
    au, av, ar = hu - _ATRIUM_OFFSET * rx, hv - 0.05 * ry, p["atrium_r"]
    reach = max(rx, ry)
    found = cv.window(min(hu - reach, au - ar), hu + reach, hv - reach, hv + reach)
    if found is not None:
        sl, u, v = found
        du, dv = u - hu, v - hv
        ct, st = math.cos(p["heart_tilt"]), math.sin(p["heart_tilt"])
        hx = (du * ct - dv * st) * (1.0 / rx)
        hy = (du * st + dv * ct) * (1.0 / ry)
        heart = np.sqrt(np.clip((1.0 - hx * hx - hy * hy) * 6.0, 0.0, 1.0))
        du, dv = u - au, v - av
        atrium = np.sqrt(np.clip((1.0 - (du * du + dv * dv) * (1.0 / ar**2)) * 6.0, 0.0, 1.0))
        np.maximum(cv.solid[sl], np.maximum(heart, atrium, out=heart), out=cv.solid[sl])
    found = cv.window(-0.12 + ob, 0.12 + ob, -1.2, p["carina_v"] + 0.13)
    if found is not None:  # trachea and main bronchi
        sl, u, v = found
        uc = u - (ob + p["trachea_u"])
        above = v < p["carina_v"]
        trachea = _step(p["trachea_w"] - np.abs(uc - 0.15 * (v - p["carina_v"]) * above), eps)
        trachea *= above
        dvb = v - p["carina_v"]
        bronchi = _step(0.7 * p["trachea_w"] - np.abs(np.abs(uc) - 0.9 * dvb), eps) * (dvb > 0.0)
        cv.attenuation[sl] -= 0.12 * (trachea + bronchi)


def _spine(cv: _Canvas, p: dict) -> None:
    found = cv.window(-0.25, 0.25, -1.3, 1.3)
    if found is None:
        return
    sl, u, v = found
    centre = p["spine_curve"] * np.sin((v + 1.0) * (np.pi * p["spine_wave"]))
    du = np.abs(u - centre)
    body = _step(p["spine_w"] - du, cv.eps)
    vertebrae = 0.75 + 0.25 * np.cos(v * (2.0 * np.pi / p["vert_h"]))
    # pedicles: brighter ovals at the lateral edges of each body
    pedicles = np.clip(1.0 - np.abs(du - 0.75 * p["spine_w"]) * (1.0 / (0.18 * p["spine_w"])), 0.0, 1.0)
    cv.attenuation[sl] += p["bone_density"] * body * (0.09 * vertebrae + 0.06 * pedicles * (vertebrae > 0.8))


def _shoulder_girdle(cv: _Canvas, p: dict, scan: dict, side: float) -> None:
    sfx = "_r" if side < 0 else "_l"
    bone = p["bone_density"]
    # clavicle: an S-shaped bar rising laterally from the sternal notch
    cl_v, length = p["clav_v"] + scan["clavicle_lift"], p["clav_len"]
    angle = p["clav_angle" + sfx] * (0.6 if scan["heart_magnification"] > 1.0 else 1.0)
    ob = scan["obliquity"]
    lo, hi = (-length - 0.08 + ob, ob) if side < 0 else (ob, length + 0.08 + ob)
    found = cv.window(lo, hi, cl_v - length * np.tan(angle) - 0.12, cl_v + 0.1)
    if found is not None:
        sl, u, v = found
        a = (u - ob) * side
        centre = cl_v - np.tan(angle) * a + p["clav_s"] * np.sin(a * (2.0 * np.pi / length))
        dist = np.abs(v - centre)
        bar = np.sqrt(np.clip(1.0 - dist * (1.0 / p["clav_thick"]), 0.0, 1.0))
        cv.attenuation[sl] += 0.2 * bone * bar * _step(length - a, 0.02) * _step(a - 0.03, 0.02)
    # scapula: a tilted plate at the lateral chest wall, over the lung on AP views
    size = p["scap_size"]
    cu = side * (p["thorax_w"] + 0.1 - scan["scapula_shift"])
    cv_ = p["scap_v"]
    found = cv.window(cu - size, cu + size, cv_ - 1.4 * size, cv_ + 1.4 * size)
    if found is not None:
        sl, u, v = found
        ca, sa = float(np.cos(p["scap_angle"])), float(np.sin(p["scap_angle"])) * side
        du, dv = u - cu, v - cv_
        x = (du * ca + dv * sa) * (1.0 / (0.55 * size))
        y = (-du * sa + dv * ca) * (1.0 / (1.3 * size))
        rad = x * x + y * y + 0.6 * x * y * side
        plate = _step(1.0 - rad, 0.15) * (1.0 + 0.8 * np.clip(1.0 - np.abs(x + 0.8 * side) * 3.0, 0.0, 1.0))
        cv.attenuation[sl] += 0.08 * bone * plate
    # humeral head at the top corner
    head = 0.12
    cv.blob(side * (p["body_w"] + 0.08), p["shoulder_v"] + 0.3, head, head, 0.18 * bone)


def _breasts(cv: _Canvas, p: dict) -> None:
    """Breast shadows over the lower lung fields: a sharp curved lower border, fading upward."""
    size = p["breast_size"]
    for side in (-1.0, 1.0):
        cu, cv_ = side * 0.6 * p["thorax_w"], p["breast_v"] + 0.5 * size
        found = cv.window(cu - 0.9 * size, cu + 0.9 * size, cv_ - size, cv_ + size)
        if found is None:
            continue
        sl, u, v = found
        x = (u - cu) * (1.0 / (0.9 * size))
        y = (v - cv_) * (1.0 / size)
        shadow = np.sqrt(np.clip(1.0 - x * x - y * y, 0.0, 1.0)) * np.clip(0.5 + y, 0.0, 1.0)
        cv.attenuation[sl] += 0.16 * shadow


def _marks(cv: _Canvas, p: dict, scan: dict) -> None:
    """Distinctive marks (lateral positions as shares of the thorax half-width); metal is far denser
    than bone."""
    ob = scan["obliquity"]
    if "granuloma_a" in p:
        cv.blob(p["granuloma_side"] * p["granuloma_a"] * p["thorax_w"], p["granuloma_v"],
                p["granuloma_r"], p["granuloma_r"], 1.0, profile="flat")
    if "sternotomy_wires" in p:
        wires = int(p["sternotomy_wires"])
        for i in range(wires):
            cu, cv_ = ob + 0.006 * (i % 2), p["sternotomy_top"] + i * 0.075
            cv.blob(cu, cv_, 0.03, 0.012, 0.9, profile="flat")
            cv.blob(cu, cv_, 0.018, 0.005, -0.9, profile="flat")
    if "port_a" in p:
        side = p["port_side"]
        cu, cv_ = side * p["port_a"] + ob, p["port_v"]
        cv.blob(cu, cv_, 0.035, 0.03, 1.4, profile="flat")
        catheter = np.array([[cu, cv_], [cu - side * 0.12, cv_ + 0.02], [ob - 0.03, p["carina_v"] - 0.02],
                             [-0.05 + ob, p["heart_v"] - 0.08]])
        cv.curve(catheter, 0.006, 0.8)
    if "pacemaker_a" in p:
        cu, cv_ = p["pacemaker_a"] + ob, p["pacemaker_v"]
        cv.blob(cu, cv_, 0.07, 0.05, 2.0, profile="flat", edge=0.02)
        for i in range(int(p["pacemaker_leads"])):
            lead = np.array([[cu - 0.03, cv_ + 0.01], [0.12 + ob, cv_ - 0.01 * i], [-0.02 + ob, p["carina_v"] + 0.05],
                             [-0.03 + ob + 0.05 * i, p["heart_v"] + 0.04 + 0.06 * i],
                             [p["heart_u"] + ob + 0.04 * i, p["heart_v"] + 0.12]])
            cv.curve(lead, 0.007, 1.0)


def _support_devices(cv: _Canvas, scan: dict) -> None:
    """ECG electrodes of bedside (AP) scans: they belong to the scan, not to the patient."""
    if scan["ecg_leads"]:
        rng = np.random.default_rng(scan["lead_seed"])
        for _ in range(scan["ecg_leads"]):
            cu, cv_ = rng.uniform(-0.6, 0.6), rng.uniform(-0.55, 0.45)
            cv.blob(cu, cv_, 0.03, 0.03, 0.6, profile="flat")
            cv.blob(cu, cv_, 0.02, 0.02, -0.45, profile="flat")


def _lung_point(p: dict, side: float, a: float, h: float) -> tuple[float, float]:
    """Patient coordinates of a lung-relative position (a: medial 0 .. lateral 1, h: apex 0 .. base 1)."""
    sfx = "_r" if side < 0 else "_l"
    med, tw = p["lung_med" + sfx], p["thorax_w"]
    lateral = med + a * (tw - med)
    v = p["apex_v"] + 0.1 + h * (p["dome_v" + sfx] - p["apex_v"] - 0.1)
    return side * lateral, v


def _lesions(cv: _Canvas, p: dict, findings: dict, tex: Textures) -> None:
    """Findings that add opacity inside the lungs."""
    for label, f in findings.items():
        sev = f["severity"]
        sides = (-1.0, 1.0) if f["bilateral"] and label in ("Infiltration", "Fibrosis") else (f["side"],)
        zone = _ZONES.get(label)
        for side in sides:
            if zone is not None:
                cu, cv_ = _lung_point(p, side, zone[0] + f["a"] * (zone[1] - zone[0]),
                                      zone[2] + f["h"] * (zone[3] - zone[2]))
            if label == "Mass":
                radius = (17.5 + 17.5 * sev) * MM  # 3.5 to 7 cm across
                cv.blob(cu, cv_, radius, radius * (0.85 + 0.3 * f["shape"]), 0.45, profile="dome")
            elif label == "Nodule":
                for i in range(1 + int(f["count"] * 2.5)):
                    radius = (6.0 + 10.0 * sev) * MM  # 1.2 to 3.2 cm across
                    du = 0.12 * np.sin(7.0 * i + f["a"] * 20.0) * i
                    dv = 0.15 * np.cos(5.0 * i + f["h"] * 20.0) * i
                    cv.blob(cu + du, cv_ + dv, radius, radius, 0.45, profile="dome")
            elif label == "Atelectasis":
                _patch(cv, tex, f, cu, cv_, 0.16, 0.02 + 0.015 * sev, 0.2 + 0.2 * sev, tilt=0.25 * side,
                       mottle=0.2, threshold=-1.0)
            elif label == "Infiltration":
                _patch(cv, tex, f, cu, cv_, 0.25, 0.3, 0.15 + 0.15 * sev, mottle=1.0, threshold=-0.3)
            elif label == "Pneumonia":
                _patch(cv, tex, f, cu, cv_, 0.22, 0.22, 0.3 + 0.2 * sev, mottle=0.6, threshold=-0.6,
                       fissure=True)
            elif label == "Consolidation":
                _patch(cv, tex, f, cu, cv_, 0.16, 0.14, 0.3 + 0.15 * sev, mottle=0.15, threshold=-1.5,
                       bronchograms=True)
            elif label == "Fibrosis":
                _patch(cv, tex, f, cu, cv_, 0.22, 0.22, 0.2 + 0.15 * sev, mottle=1.0, threshold=0.0,
                       reticular=True)
            elif label == "Hernia":
                # hiatal hernia: retrocardiac mass with an air-fluid level
                size = (0.07 + 0.05 * sev)
                hu, hv = 0.03 + 0.04 * f["a"], p["dome_v_l"] - 0.25 * size
                cv.blob(hu, hv, size, 0.8 * size, 0.4, profile="dome")
                _air_fluid_level(cv, hu, hv, size)


def _air_fluid_level(cv: _Canvas, cu: float, cv_: float, size: float) -> None:
    found = cv.window(cu - size, cu + size, cv_ - size, cv_ + size)
    if found is None:
        return
    sl, u, v = found
    du, dv = (u - cu) * (1.0 / size), (v - cv_) * (1.0 / (0.8 * size))
    inside = np.clip((1.0 - du * du - dv * dv) * 4.0, 0.0, 1.0)
    # the level is horizontal in the image (gravity), not in the patient's frame
    rows = np.arange(inside.shape[0], dtype=np.float32)[:, None]
    level = inside.shape[0] * 0.45
    cv.attenuation[sl] -= 0.4 * inside * np.clip(level - rows, 0.0, 1.0)


def _patch(cv: _Canvas, tex: Textures, f: dict, cu: float, cv_: float, ru: float, rv: float,
           density: float, *, tilt: float = 0.0, mottle: float, threshold: float, fissure: bool = False,
           bronchograms: bool = False, reticular: bool = False) -> None:
    """An opacity within the lung: Gaussian envelope times a thresholded texture."""
    found = cv.window(cu - 2 * ru, cu + 2 * ru, cv_ - 2 * rv, cv_ + 2 * rv)
    if found is None:
        return
    sl, u, v = found
    du, dv = u - cu, v - cv_
    x = (du * np.cos(tilt) + dv * np.sin(tilt)) * (1.0 / ru)
    y = (-du * np.sin(tilt) + dv * np.cos(tilt)) * (1.0 / rv)
    envelope = np.exp(-(x * x + y * y) * 1.5)
    texture = tex.window(tex.fine if reticular else tex.coarse, envelope.shape, f["texture"])
    if reticular:
        # a net of thin lines: the level set of a fine random field
        pattern = np.clip(1.0 - np.abs(texture) * 4.0, 0.0, 1.0) + 0.3
    else:
        pattern = np.clip((texture - threshold) * mottle + (1.0 - mottle), 0.0, 1.5)
    opacity = density * envelope * pattern
    if fissure:  # a lobar border: sharp above, fading below
        opacity *= _step(dv + 0.6 * rv, cv.eps)
    if bronchograms:
        branch = np.clip(1.0 - np.abs(np.sin(np.arctan2(dv, du + 2.0 * np.sign(cu) * ru) * 9.0)) * 6.0, 0.0, 1.0)
        opacity *= 1.0 - 0.6 * branch
    lung = np.clip(cv.air[sl] * 3.0, 0.0, 1.0)
    cv.attenuation[sl] += opacity * lung


def _gastric_bubble(cv: _Canvas, p: dict, scan: dict) -> None:
    size = scan["gastric_bubble"]
    if size > 0.0:
        cu, cv_ = 0.3 * p["thorax_w"] + 0.05, p["dome_v_l"] + 0.1 + size
        cv.blob(cu, cv_, 1.3 * size, size, -0.35, profile="dome")


# -- detector: exposure, noise, collimation, burned-in text --------------------------------------

_L = ["1....", "1....", "1....", "1....", "1....", "1....", "11111"]
_R = ["1111.", "1...1", "1...1", "1111.", "1.1..", "1..1.", "1...1"]
_GLYPHS = {"L": np.array([[c == "1" for c in row] for row in _L], np.float32),
           "R": np.array([[c == "1" for c in row] for row in _R], np.float32)}


def _pseudo_text(block: dict) -> np.ndarray:
    """A bitmap of ``lines`` lines of random 5x7 dot glyphs on a 6x9 grid (about 15 % spaces,
    ragged line ends): text-like, unreadable by design."""
    rng = np.random.default_rng(block["seed"])
    lines, chars = block["lines"], block["chars"]
    glyphs = (rng.random((lines, chars, 7, 5)) < 0.45) & (rng.random((lines, chars, 1, 1)) > 0.15)
    line_length = chars - rng.integers(0, 4, size=lines)
    glyphs &= (np.arange(chars)[None, :] < line_length[:, None])[:, :, None, None]
    return _glyph_grid(glyphs.astype(np.float32))


def _glyph_grid(glyphs: np.ndarray) -> np.ndarray:
    """(lines, chars, 7, 5) glyphs -> one bitmap, each glyph in a 9x6 cell."""
    lines, chars = glyphs.shape[:2]
    cells = np.zeros((lines, chars, 9, 6), np.float32)
    cells[:, :, 1:8, :5] = glyphs
    return cells.transpose(0, 2, 1, 3).reshape(lines * 9, chars * 6)


def _side_marker(letter: str) -> np.ndarray:
    """The letter in a frame."""
    cell = _glyph_grid(_GLYPHS[letter][None, None])
    framed = np.ones((cell.shape[0] + 2, cell.shape[1] + 2), np.float32)
    framed[1:-1, 1:-1] = cell
    return framed


def _place(image: np.ndarray, bitmap: np.ndarray, corner: str, level: float) -> list[int]:
    """Burn a bitmap into a corner at the size text has on a 1024 px release image, scaled to this
    image; returns its box [x0, y0, x1, y1] (pixels, exclusive end)."""
    n = image.shape[0]
    scale = 4.0 * n / 1024.0  # glyph dots of 4 px at 1024 px
    h = max(1, int(round(bitmap.shape[0] * scale)))
    w = max(1, int(round(bitmap.shape[1] * scale)))
    h, w = min(h, n // 3), min(w, n // 2)
    small = np.asarray(Image.fromarray(bitmap).resize((w, h), Image.Resampling.BOX), dtype=np.float32)
    margin = max(1, int(round(0.02 * n)))
    y0 = margin if corner.startswith("top") else n - margin - h
    x0 = margin if corner.endswith("left") else n - margin - w
    region = image[y0:y0 + h, x0:x0 + w]
    np.maximum(region, level * small, out=region)
    return [x0, y0, x0 + w, y0 + h]


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box average over ``factor`` x ``factor`` blocks: each output pixel integrates its area."""
    if factor == 1:
        return image
    n = image.shape[0] // factor
    return image.reshape(n, factor, n, factor).mean(axis=(1, 3), dtype=np.float32)


def _detector(attenuation: np.ndarray, scan: dict, tex: Textures) -> tuple[np.ndarray, list[list[int]]]:
    """Attenuation at the output size -> displayed 8-bit image: exposure, dose noise, the vendor's
    processing, automatic windowing, collimation and burned-in annotation."""
    n = attenuation.shape[0]
    # superimposed soft tissue and bowel gas: low-frequency mottle inside the body, new every scan
    mottle = tex.window(tex.mottle, (n, n), scan["noise_offset"] // 11) * scan["mottle"]
    mottle += 1.0
    transmitted = attenuation * mottle
    transmitted *= -scan["contrast"]
    np.exp(transmitted, out=transmitted)
    image = 1.0 - transmitted
    # quantum noise, larger where fewer photons arrive (behind dense tissue) and at low dose
    sd = scan["noise"] * n / 1024.0 / math.sqrt(scan["dose"])
    noise = tex.window(tex.noise, (n, n), scan["noise_offset"]) * sd  # a new array: the tile stays
    noise *= image + 0.5
    image += noise
    image = _process(image, scan, n)
    for side in ("left", "right", "top", "bottom"):
        width = int(round(scan[f"collimation_{side}"] * n))
        if width:
            edge = {"left": (slice(None), slice(0, width)), "right": (slice(None), slice(n - width, n)),
                    "top": (slice(0, width), slice(None)), "bottom": (slice(n - width, n), slice(None))}[side]
            image[edge] = 0.88 + 0.03 * image[edge]  # unexposed: nearly white
    boxes = [_place(image, _pseudo_text(block), block["corner"], 0.97) for block in scan["text"]]
    if scan["marker"]:
        boxes.append(_place(image, _side_marker(scan["marker"]), scan["marker_corner"], 1.0))
    image *= 255.0
    image += 0.5
    np.clip(image, 0.0, 255.0, out=image)
    return image.astype(np.uint8), boxes


def _process(image: np.ndarray, scan: dict, n: int) -> np.ndarray:
    """A vendor's processing of the detector signal: histogram equalization blended in, unsharp-mask
    edge enhancement, a contrast curve, then windowing on the image's own range, shifted and scaled."""
    low, high = np.percentile(image, (1.0, 99.0))
    image = (image - low) * (1.0 / max(high - low, 1e-6))
    if scan["equalize"] > 0.0:
        ranks = np.empty(image.size, np.float32)
        ranks[np.argsort(image, axis=None, kind="stable")] = np.linspace(0.0, 1.0, image.size, dtype=np.float32)
        image += scan["equalize"] * (ranks.reshape(image.shape) - image)
    sigma_px = scan["unsharp_mm"] * n / FIELD_OF_VIEW_MM
    if scan["unsharp"] > 0.0 and sigma_px > 0.3:
        image += scan["unsharp"] * (image - ndimage.gaussian_filter(image, sigma_px, mode="nearest"))
    np.clip(image, 0.0, 1.0, out=image)
    image **= scan["gamma"]
    low, high = np.percentile(image, (1.0, 99.0))
    width = max(high - low, 1e-6) * scan["window_width"]
    centre = 0.5 * (low + high) + scan["window_centre"] * width
    image -= centre
    image *= 1.0 / width
    image += 0.5
    return np.clip(image, 0.0, 1.0, out=image)


def _draw(patient_anatomy: dict, scan: dict, findings: dict, size: int, textures: Textures) -> tuple[_Canvas, dict]:
    """The scan's anatomy, drawn on a canvas at the rendering resolution."""
    p = _apply_modifiers(patient_anatomy, scan, findings)
    cv = _Canvas(size * supersampling(size), scan)
    _body(cv, p)
    _mediastinum(cv, p, scan)
    cv.attenuation += 0.12 * cv.solid
    for side in (-1.0, 1.0):
        _hemithorax(cv, p, side, textures, scan)
    cv.attenuation -= AIR * cv.air
    _spine(cv, p)
    for side in (-1.0, 1.0):
        _shoulder_girdle(cv, p, scan, side)
    if p["breast_size"] > 0.0:
        _breasts(cv, p)
    _gastric_bubble(cv, p, scan)
    _lesions(cv, p, findings, textures)
    _marks(cv, p, scan)
    _support_devices(cv, scan)
    return cv, p


def render(patient_anatomy: dict, scan: dict, findings: dict, size: int,
           textures: Textures) -> tuple[np.ndarray, list[list[int]], dict]:
    """One radiograph: (uint8 image, burned-in text boxes, the anatomy as seen on this scan)."""
    cv, p = _draw(patient_anatomy, scan, findings, size, textures)
    image, boxes = _detector(_downsample(cv.attenuation, supersampling(size)), scan, textures)
    return image, boxes, p


def lung_field_mask(patient_anatomy: dict, scan: dict, findings: dict, size: int, textures: Textures) -> np.ndarray:
    """The scan's lung fields at ``size`` px (bool), outlined as a segmentation would: the visible lung
    above the domes, not the part hidden behind heart and mediastinum."""
    cv, _ = _draw(patient_anatomy, scan, findings, size, textures)
    return _downsample(cv.lung, supersampling(size)) >= 0.5


def cardiothoracic_ratio(p: dict) -> float:
    """Widest heart silhouette (ventricles and right atrium) over the inner thoracic width."""
    ct, st = math.cos(p["heart_tilt"]), math.sin(p["heart_tilt"])
    reach = math.hypot(p["heart_rx"] * ct, p["heart_ry"] * st)
    right_border = min(p["heart_u"] - reach, p["heart_u"] - _ATRIUM_OFFSET * p["heart_rx"] - p["atrium_r"])
    return (p["heart_u"] + reach - right_border) / (2.0 * p["thorax_w"])


# --------------------------------------------------------------------------------------------------
# Metadata resampled from the real release
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _real_scans() -> pd.DataFrame:
    """The real metadata sorted into per-patient scan sequences, each scan ranked within its patient."""
    meta = read_metadata(real_metadata_path())
    meta = meta.sort_values(["patient_id", "follow_up"], kind="stable").reset_index(drop=True)
    meta["rank"] = meta.groupby("patient_id").cumcount()
    return meta[["patient_id", "rank", "age", "sex", "view", *LABELS]]


def sample_metadata(n_patients: int, max_followups: int, size: int, seed: int) -> pd.DataFrame:
    """Metadata of a phantom: real patients drawn at random (seeded), each with its first
    ``max_followups`` scans (ages, view positions and findings as recorded), renumbered 1..N.
    Columns as :func:`cxrlib.data.chestxray14.read_metadata` returns them."""
    real = _real_scans()
    real = real[real["rank"] < max_followups]
    ids = real["patient_id"].to_numpy()
    unique = np.unique(ids)
    rng = _rng(seed, _META)
    chosen = unique[rng.choice(len(unique), size=n_patients, replace=n_patients > len(unique))]
    start, end = np.searchsorted(ids, chosen, "left"), np.searchsorted(ids, chosen, "right")
    rows = np.concatenate([np.arange(s, e) for s, e in zip(start, end)])
    scans = real.iloc[rows].reset_index(drop=True)
    patient_id = np.repeat(np.arange(1, n_patients + 1), end - start)
    # one sex per patient (a few real patients change it between scans)
    sex = np.repeat(real["sex"].to_numpy()[start], end - start)
    labels = scans[list(LABELS)].to_numpy(dtype=np.uint8)
    spacing = FIELD_OF_VIEW_MM / size
    meta = pd.DataFrame({
        "image": [f"{p:08d}_{f:03d}.png" for p, f in zip(patient_id, scans["rank"])],
        "finding_labels": findings_string(labels),
        "follow_up": scans["rank"].to_numpy(),
        "patient_id": patient_id,
        "age": scans["age"].to_numpy(),
        "sex": sex,
        "view": scans["view"].to_numpy(),
        "width": size, "height": size, "spacing_x": spacing, "spacing_y": spacing,
    })
    meta[list(LABELS)] = labels
    return meta


# --------------------------------------------------------------------------------------------------
# Writing a phantom
# --------------------------------------------------------------------------------------------------

def draw_scans(meta: pd.DataFrame, seed: int) -> Iterator[tuple[int, Patient, dict, dict, dict]]:
    """Everything random about each image of ``meta`` (rows grouped by patient, in order):
    ``(row, patient, anatomy at that age, scan, findings)``, ready for :func:`render`."""
    labels = meta[list(LABELS)].to_numpy()
    for patient_id, rows in meta.groupby("patient_id", sort=True).indices.items():
        first = meta.iloc[rows[0]]
        patient = draw_patient(_rng(seed, _ANATOMY, patient_id), first["sex"], float(first["age"]))
        usual = draw_usual_acquisition(_rng(seed, _HABIT, patient_id))
        for row in rows:
            follow_up = int(meta.at[row, "follow_up"])
            yield (int(row), patient, patient.anatomy_at(float(meta.at[row, "age"])),
                   draw_scan(_rng(seed, _SCAN, patient_id, follow_up), meta.at[row, "view"], usual),
                   draw_findings(_rng(seed, _FINDINGS, patient_id, follow_up), labels[row]))


def _check_arguments(out_dir: Path, n_patients: int, size: int, max_followups: int, overwrite: bool) -> None:
    def whole(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not whole(n_patients) or n_patients < 1:
        raise ValueError(f"n_patients must be a whole number >= 1, got {n_patients!r}")
    if not whole(size) or size < 8 or size % 8 or size > MAX_SIZE:
        raise ValueError(f"size must be a positive multiple of 8 and at most {MAX_SIZE} pixels, got {size!r}")
    if not whole(max_followups) or max_followups < 1:
        raise ValueError(f"max_followups must be a whole number >= 1, got {max_followups!r}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir}: output path exists and is not a folder")
        if any(out_dir.iterdir()):
            if not overwrite:
                raise ValueError(f"{out_dir}: output folder exists and is not empty; pass overwrite=True "
                                 "(--overwrite) to replace it")
            if not (out_dir / PHANTOM_TRUTH).is_file():
                raise ValueError(f"{out_dir}: refusing to overwrite a folder that is not a phantom "
                                 f"(no {PHANTOM_TRUTH} in it)")


def _write_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _truth_row(name: str, patient: Patient, anatomy: dict, seen: dict, scan: dict, findings: dict,
               boxes: list[list[int]]) -> dict:
    row = {"image": name, "text_boxes": json.dumps(boxes), "marker": scan["marker"], "vendor": scan["vendor"],
           "cardiothoracic_ratio": cardiothoracic_ratio(seen)}
    row.update({f"scan_{k}": v for k, v in scan.items() if not isinstance(v, (list, str))})
    row.update({f"severity_{label}": findings[label]["severity"] if label in findings else 0.0
                for label in LABELS})
    row.update({f"anat_{k}": anatomy[k] for k in patient.base})
    row.update({f"mark_{k}": patient.marks.get(k, np.nan) for k in _MARK_COLUMNS})
    return row


_MARK_COLUMNS = ("granuloma_side", "granuloma_a", "granuloma_v", "granuloma_r", "rib_fracture_side",
                 "rib_fracture_rib", "rib_fracture_a", "sternotomy_wires", "sternotomy_top", "port_side",
                 "port_a", "port_v", "pacemaker_a", "pacemaker_v", "pacemaker_leads")


def generate_phantom(out_dir: str | Path, *, n_patients: int, size: int, seed: int, max_followups: int = 8,
                     overwrite: bool = False, progress: bool | None = None) -> Path:
    """Write a phantom in the ChestX-ray14 layout to ``out_dir`` and return the folder.

    The folder is built beside ``out_dir`` in a uniquely named ``<name>.partial-*`` folder and
    renamed when complete, so an interrupted run never leaves a folder that looks complete (and two
    processes generating the same phantom do not collide). The same arguments give byte-identical
    files.
    """
    out_dir = Path(out_dir)
    _check_arguments(out_dir, n_patients, size, max_followups, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.partial-", dir=out_dir.parent))
    partial.chmod(0o755)  # mkdtemp makes it private; the finished phantom is an ordinary folder
    try:
        (partial / "images").mkdir()
        meta = sample_metadata(n_patients, max_followups, size, seed)
        textures = Textures(size, seed)
        truth = []
        scans = tqdm(draw_scans(meta, seed), total=len(meta), desc="phantom", unit="img",
                     disable=None if progress is None else not progress)
        for row, patient, anatomy, scan, findings in scans:
            name = meta.at[row, "image"]
            image, boxes, seen = render(anatomy, scan, findings, size, textures)
            _write_png(image, partial / "images" / name)
            truth.append(_truth_row(name, patient, anatomy, seen, scan, findings, boxes))
        keep, held = split_patients(meta["patient_id"].to_numpy(), TEST_FRACTION, seed)
        for split, patients in (("train_val", keep), ("test", held)):
            names = meta.loc[meta["patient_id"].isin(patients), "image"]
            (partial / SPLIT_FILES[split]).write_text("".join(f"{n}\n" for n in names))
        pd.DataFrame(truth).to_csv(partial / PHANTOM_TRUTH, index=False, float_format="%.6g")
        write_metadata(meta, partial / METADATA_FILE)  # last: the file the loader looks for
        _move_into_place(partial, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def _move_into_place(partial: Path, out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        partial.rename(out_dir)
        return
    if not overwrite:
        raise ValueError(f"{out_dir}: output folder appeared while generating; not replaced")
    retired = partial.with_name(partial.name.replace(".partial-", ".replaced-"))
    out_dir.rename(retired)
    partial.rename(out_dir)
    shutil.rmtree(retired)


def read_truth(data_dir: str | Path) -> pd.DataFrame | None:
    """The phantom's ground truth (one row per image; ``text_boxes`` parsed into lists of
    [x0, y0, x1, y1]), or None for a folder without it (the real data)."""
    path = Path(data_dir) / PHANTOM_TRUTH
    if not path.is_file():
        return None
    try:
        truth = pd.read_csv(path, keep_default_na=True)
        truth["text_boxes"] = truth["text_boxes"].map(json.loads)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as err:
        raise DataError(path, f"unreadable phantom ground truth ({err})") from err
    truth["marker"] = truth["marker"].fillna("")
    return truth


def finding_examples(size: int, seed: int, severity: float = 0.85) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One patient's PA scan without findings, and the same scan (same pose, exposure, noise) with
    each of the 14 findings alone, for teaching. No text, markers or distinctive marks."""
    patient = draw_patient(_rng(seed, _EXAMPLE, 0), "M", 55.0, marks=False)
    anatomy = patient.anatomy_at(55.0)
    scan = draw_scan(_rng(seed, _EXAMPLE, 1), "PA")
    scan.update(text=[], marker="", rotation_deg=0.0, shift_x=0.0, shift_y=0.0, ecg_leads=0)
    scan.update({f"collimation_{side}": 0.0 for side in ("left", "right", "top", "bottom")})
    textures = Textures(size, seed)
    plain, _, _ = render(anatomy, scan, {}, size, textures)
    examples = {}
    for i, label in enumerate(LABELS):
        findings = draw_findings(_rng(seed, _EXAMPLE, 2, i), np.asarray([lab == label for lab in LABELS]))
        findings[label]["severity"] = severity
        examples[label], _, _ = render(anatomy, scan, findings, size, textures)
    return plain, examples

