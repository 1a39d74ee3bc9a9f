"""Acquisition: what varies from one scan to the next (pose, inspiration, exposure, the vendor's
processing, annotation), the patient's usual acquisition, and the findings of each scan."""

from __future__ import annotations

import numpy as np

from cxrlib.data.chestxray14 import LABELS

#: how closely the detector frames the chest, as a magnification of every scan: real radiographs are
#: collimated closer to the chest than the detector's field of view (``FIELD_OF_VIEW_MM``). 1.15 makes
#: the phantom's median lung-field share of the image match the 517 real masks in torchxrayvision (0.365
#: against 0.363 on 300 scans at 128 px; 0.276 without it), see cxrlib/data/lung_fields.py
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
