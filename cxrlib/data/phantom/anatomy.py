"""Anatomy: a patient's persistent parameters and distinctive marks, their drift with age, and the
anatomy as one scan sees it (inspiration, view and findings applied)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

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
        """The anatomy at ``age`` (drifted from the first scan's), with the distinctive marks: parameter
        name -> value, as :data:`ANATOMY_PARAMETERS` and :func:`_draw_marks` name them (a scan's drawing
        turns it into an :class:`Anatomy`)."""
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


#: the right atrium's centre lies this share of the heart's long radius to the right of the heart's centre
_ATRIUM_OFFSET = 0.6


@dataclass(frozen=True)
class Side:
    """One side's own parameters (:meth:`Anatomy.side`): the ``_r`` or ``_l`` fields of the anatomy."""

    lung_med: float
    dome_v: float
    dome_curv: float
    rib_phase: float
    clav_angle: float
    collapse: float
    fluid: float
    rim: float


@dataclass(frozen=True, kw_only=True)
class Anatomy:
    """The anatomy as one scan sees it (:func:`_apply_modifiers`), read by the drawing functions: the
    patient's parameters at the scan's age (names, units and meaning as in :data:`ANATOMY_PARAMETERS`;
    the domes, rib spacing and heart as inspiration, view and findings change them), the distinctive
    marks (None where the patient has none), and what only a scan or its findings set."""

    # the persistent parameters of ANATOMY_PARAMETERS, in its order
    thorax_w: float
    apex_v: float
    lung_box: float
    lung_taper: float
    lung_med_r: float
    lung_med_l: float
    dome_v_r: float
    dome_drop_l: float
    dome_curv_r: float
    dome_curv_l: float
    dome_peak: float
    heart_u: float
    heart_dv: float
    heart_rx: float
    heart_ry: float
    heart_tilt: float
    atrium_r: float
    med_w: float
    aorta_u: float
    aorta_v: float
    aorta_r: float
    trachea_u: float
    trachea_w: float
    carina_v: float
    spine_w: float
    spine_curve: float
    spine_wave: float
    vert_h: float
    rib_spacing: float
    rib_growth: float
    rib_rise: float
    rib_curv: float
    rib_thick: float
    rib_phase_r: float
    rib_phase_l: float
    rib_wobble: float
    rib_wobble_freq: float
    ant_rib_slope: float
    ant_rib_spacing: float
    ant_rib_phase: float
    ant_rib_cc: float
    clav_v: float
    clav_angle_r: float
    clav_angle_l: float
    clav_len: float
    clav_thick: float
    clav_s: float
    scap_v: float
    scap_size: float
    scap_angle: float
    body_margin: float
    neck_w: float
    shoulder_v: float
    soft_tissue: float
    bone_density: float
    lung_air: float
    breast_size: float
    breast_v: float
    hilum_v: float
    vessel_count: float
    vessel_twist: float
    vessel_phase: float
    rib_count: float

    # derived for the scan
    dome_v_l: float  # top of the left hemidiaphragm (dome_v_r + dome_drop_l, moved as dome_v_r is)
    heart_v: float  # heart centre: the heart rides on the left hemidiaphragm
    air: float  # how dark the lungs are: lung_air, raised by emphysema
    body_w: float  # lateral half-width of the body: thorax_w + body_margin
    # set by findings; the defaults are a healthy scan's
    vessels: float = 1.0  # visibility of the lung vessels (emphysema prunes them)
    haze: float = 0.0  # perihilar opacity of edema
    collapse_r: float = 1.0  # lung size left by a pneumothorax (1: none)
    collapse_l: float = 1.0
    fluid_r: float = 0.0  # height of a pleural effusion, share of the lung's height
    fluid_l: float = 0.0
    rim_r: float = 0.0  # width of pleural thickening
    rim_l: float = 0.0
    rim_apical: float = 0.0  # 1: pleural thickening at the apex rather than laterally

    # distinctive marks (:func:`_draw_marks`)
    granuloma_side: float | None = None
    granuloma_a: float | None = None
    granuloma_v: float | None = None
    granuloma_r: float | None = None
    rib_fracture_side: float | None = None
    rib_fracture_rib: float | None = None
    rib_fracture_a: float | None = None
    sternotomy_wires: float | None = None
    sternotomy_top: float | None = None
    port_side: float | None = None
    port_a: float | None = None
    port_v: float | None = None
    pacemaker_a: float | None = None
    pacemaker_v: float | None = None
    pacemaker_leads: float | None = None

    def side(self, side: float) -> Side:
        """The patient's right (``side`` < 0, the image left) or left side's own parameters."""
        sfx = "_r" if side < 0 else "_l"
        return Side(**{name: getattr(self, name + sfx) for name in _SIDE_FIELDS})

    def with_side(self, side: float, **changes: float) -> Anatomy:
        """A copy with ``changes`` (named as the fields of :class:`Side`) to one side's parameters."""
        sfx = "_r" if side < 0 else "_l"
        return replace(self, **{name + sfx: value for name, value in changes.items()})


_SIDE_FIELDS = tuple(field.name for field in fields(Side))


def _apply_modifiers(parameters: dict[str, float], scan: dict, findings: dict) -> Anatomy:
    """Anatomy as seen on this scan: pose-independent changes of inspiration, view and findings
    applied to the patient's parameters at the scan's age (:meth:`Patient.anatomy_at`)."""
    p = _as_scanned(parameters, scan)
    for label, f in findings.items():
        p = _with_finding(p, label, f)
    return p


def _as_scanned(parameters: dict[str, float], scan: dict) -> Anatomy:
    """The anatomy before findings: inspiration lowers and flattens the domes, widens the rib spacing
    and narrows the heart; an AP view magnifies the heart."""
    insp = scan["inspiration"]
    dome_v_l = parameters["dome_v_r"] + parameters["dome_drop_l"] + 0.035 * insp
    p = Anatomy(**parameters, dome_v_l=dome_v_l,
                heart_v=dome_v_l + parameters["heart_dv"],  # the heart rides on the left hemidiaphragm
                air=parameters["lung_air"], body_w=parameters["thorax_w"] + parameters["body_margin"])
    return replace(p, dome_v_r=p.dome_v_r + 0.035 * insp,
                   dome_curv_r=p.dome_curv_r * (1.0 - 0.06 * insp), dome_curv_l=p.dome_curv_l * (1.0 - 0.06 * insp),
                   rib_spacing=p.rib_spacing * (1.0 + 0.03 * insp),
                   heart_rx=p.heart_rx * (scan["heart_magnification"] * (1.0 - 0.03 * insp)),
                   heart_ry=p.heart_ry * scan["heart_magnification"])


def _with_finding(p: Anatomy, label: str, f: dict) -> Anatomy:
    """The anatomy changed by one finding (those that change shapes or densities the drawing of the
    lungs and heart reads; the others add opacities when drawn)."""
    sev = f["severity"]
    sides = (-1.0, 1.0) if f["bilateral"] else (f["side"],)
    if label == "Cardiomegaly":  # a cardiothoracic ratio of 0.52 to 0.66
        target = 0.52 + 0.14 * sev
        for _ in range(3):  # the ratio is nearly proportional to the heart's size
            grow = target / cardiothoracic_ratio(p)
            if grow <= 1.0:
                break
            p = replace(p, heart_rx=p.heart_rx * grow, atrium_r=p.atrium_r * grow,
                        heart_ry=p.heart_ry * math.sqrt(grow))
    elif label == "Emphysema":
        p = replace(p, air=p.air * (1.0 + 0.45 * sev), vessels=1.0 - 0.6 * sev)
        for side in (-1.0, 1.0):
            own = p.side(side)
            p = p.with_side(side, dome_v=own.dome_v + 0.14 * sev, dome_curv=own.dome_curv * (1.0 - 0.65 * sev))
    elif label in ("Atelectasis", "Fibrosis"):
        for side in sides:
            p = p.with_side(side, dome_v=p.side(side).dome_v - 0.06 * sev)
    elif label == "Pneumothorax":
        p = p.with_side(f["side"], collapse=0.85 - 0.3 * sev)
    elif label == "Effusion":
        for side in sides:
            p = p.with_side(side, fluid=0.06 + 0.3 * sev)
    elif label == "Pleural_Thickening":
        for side in sides:
            p = p.with_side(side, rim=0.02 + 0.04 * sev)
        p = replace(p, rim_apical=float(f["shape"] < 0.5))
    elif label == "Edema":
        p = replace(p, haze=0.1 + 0.15 * sev)
    return p


def cardiothoracic_ratio(p: Anatomy) -> float:
    """Widest heart silhouette (ventricles and right atrium) over the inner thoracic width."""
    ct, st = math.cos(p.heart_tilt), math.sin(p.heart_tilt)
    reach = math.hypot(p.heart_rx * ct, p.heart_ry * st)
    right_border = min(p.heart_u - reach, p.heart_u - _ATRIUM_OFFSET * p.heart_rx - p.atrium_r)
    return (p.heart_u + reach - right_border) / (2.0 * p.thorax_w)
