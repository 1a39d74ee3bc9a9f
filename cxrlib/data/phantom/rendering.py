"""Rendering: the anatomy of one scan drawn as attenuation on a supersampled canvas (body, lungs and
rib cage, mediastinum and heart, spine, shoulder girdle, breasts, findings, marks and devices), then
passed through the detector; also the scan's lung-field mask."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from cxrlib.data.phantom.anatomy import _ATRIUM_OFFSET, Anatomy, _apply_modifiers
from cxrlib.data.phantom.canvas import Textures, _Canvas, _downsample, _step, supersampling
from cxrlib.data.phantom.common import MM
from cxrlib.data.phantom.detector import _detector

#: attenuation removed by a full lung depth of air (soft tissue through the whole body is 0.55)
AIR = 0.45

# Zones where each finding usually sits: (a_lo, a_hi, h_lo, h_hi) in lung-relative units
_ZONES = {
    "Atelectasis": (0.2, 0.8, 0.6, 0.85), "Infiltration": (0.15, 0.85, 0.3, 0.9),
    "Mass": (0.25, 0.75, 0.2, 0.75), "Nodule": (0.15, 0.85, 0.1, 0.85),
    "Pneumonia": (0.25, 0.8, 0.45, 0.85), "Consolidation": (0.2, 0.8, 0.35, 0.85),
    "Fibrosis": (0.55, 0.9, 0.55, 0.9),
}


def _body(cv: _Canvas, p: Anatomy) -> None:
    """Soft tissue of neck, shoulders and trunk: the thickness of an elliptic cylinder."""
    density = 0.55 * p.soft_tissue
    shoulders_end = p.shoulder_v + 0.3
    # the neck widening into rounded shoulders, in the rows that reach above the shoulders' end
    top = cv.window(-1.6, 1.6, -1.6, shoulders_end)
    rows = top[0][0].stop if top is not None else 0
    if top is not None:
        sl, u, v = top
        shoulders = np.clip((v - p.shoulder_v) * (1.0 / 0.3), 0.0, 1.0)
        shoulders *= 2.0 - shoulders
        np.sqrt(shoulders, out=shoulders)
        half_width = p.neck_w + (p.body_w - p.neck_w) * shoulders
        _add_cylinder(cv.attenuation[sl], u / half_width, density)
    bottom = cv.window(-1.6, 1.6, shoulders_end, 1.6)
    if bottom is not None:  # rows below the top window: the trunk has one width
        (rs, cs), u, _ = bottom
        start = max(rs.start, rows)
        if start < rs.stop:
            _add_cylinder(cv.attenuation[start:rs.stop, cs], u[start - rs.start:] * (1.0 / p.body_w), density)


def _add_cylinder(out: np.ndarray, x: np.ndarray, density: float) -> None:
    x *= x
    np.subtract(1.0, x, out=x)
    np.clip(x, 0.0, 1.0, out=x)
    np.sqrt(x, out=x)
    x *= density
    out += x


def _hemithorax(cv: _Canvas, p: Anatomy, side: float, tex: Textures, scan: dict) -> None:
    """One lung with its vessels and the findings that change its shape, and its half of the rib
    cage. Ribs are computed over the whole cage, the lung over its own smaller window."""
    cage = _cage(cv, p, side)
    if cage is None:
        return
    weight = _rib_weight(cage)
    # sharp at high resolution, blending into the fundamental where a rib period spans few pixels
    # (otherwise small images alias into a mesh)
    smooth = min(max(3.0 * cv.pixel / p.rib_spacing - 0.3, 0.0), 1.0)
    _posterior_ribs(cv, p, cage, weight, smooth)
    _anterior_ribs(cv, p, cage, weight, smooth)
    found = _lung(cv, p, cage)
    if found is None:
        return
    lung_cage, lung, air = found
    _vessels(cv, p, lung_cage, lung, tex, scan)
    _pleural_findings(cv, p, lung_cage, lung, air, tex, scan)


@dataclass(frozen=True)
class _Cage:
    """One side of the rib cage on a canvas window ``sl``: ``a`` runs laterally from the midline, ``v``
    down; ``r`` is the cage's superellipse radius (r < 1 is lung), ``q`` the height in it (-1 at its
    top), ``top`` the squared height in its upper half (the narrowing toward the apex), ``below`` 1
    above the hemidiaphragm and 0 under it. The scalars place the cage: half-width ``tw``, medial
    border ``med``, apex and dome ``bottom``, centre ``ac``, ``vc`` and half-extents ``aw``, ``vh``."""

    side: float
    sl: tuple[slice, slice]
    a: np.ndarray
    v: np.ndarray
    q: np.ndarray
    top: np.ndarray
    r: np.ndarray
    below: np.ndarray
    tw: float
    med: float
    apex: float
    bottom: float
    ac: float
    aw: float
    vc: float
    vh: float

    def part(self, cv: _Canvas, inner: tuple[slice, slice]) -> _Cage:
        """The cage in ``inner``, a window given relative to this one (:meth:`_Canvas.subwindow`)."""
        return replace(self, sl=cv.shift(self.sl, inner), a=self.a[inner], v=self.v[inner], q=self.q[inner],
                       top=self.top[inner], r=self.r[inner], below=self.below[inner])


def _cage(cv: _Canvas, p: Anatomy, side: float) -> _Cage | None:
    """The cage: a superellipse narrowing to the apex; r < 1 is lung, cut below by the dome."""
    own = p.side(side)
    tw, med, apex = p.thorax_w, own.lung_med, p.apex_v
    dome, curv = own.dome_v, own.dome_curv
    peak = p.dome_peak * tw
    bottom = dome + curv * (tw - peak) ** 2
    lo_u, hi_u = (-tw - 0.09, 0.0) if side < 0 else (0.0, tw + 0.09)
    found = cv.window(lo_u, hi_u, apex - 0.2, bottom + 0.12)
    if found is None:
        return None
    sl, u, v = found
    a = u if side > 0 else -u
    ac, aw = 0.5 * (tw + med), 0.5 * (tw - med)
    vc, vh = 0.5 * (apex + bottom + 0.2), 0.5 * (bottom + 0.2 - apex)
    q = (v - vc) * (1.0 / vh)
    top = np.clip(q, -1.0, 0.0)
    top *= top
    narrowing = 1.0 - p.lung_taper * top
    pu = (a - ac) / (aw * narrowing)
    pu2, q2 = pu * pu, q * q
    box = p.lung_box
    r = pu2 + q2
    r *= 1.0 - box
    r += box * (pu2 * pu2 + q2 * q2)
    dome_curve = a - peak
    dome_curve *= dome_curve
    dome_curve *= curv
    dome_curve += dome - v
    below = _step(dome_curve, cv.eps)
    return _Cage(side=side, sl=sl, a=a, v=v, q=q, top=top, r=r, below=below, tw=tw, med=med, apex=apex,
                 bottom=bottom, ac=ac, aw=aw, vc=vc, vh=vh)


def _rib_weight(cage: _Cage) -> np.ndarray:
    """Ribs are seen edge-on (denser) at the lateral chest wall (r about 1.08) and end just outside
    it; medially they run under the spine; below the domes they overlie the abdomen and fade."""
    weight = np.clip(cage.r, 0.9, 1.08)
    weight -= 0.9 - 1.0 / 6.7
    wall = np.clip(cage.r, 1.08, 1.29)
    wall -= 1.08
    wall *= 10.5 / 6.7  # the density rises 1 -> 2.2 over r 0.9 -> 1.08 and falls to 0 at r 1.29
    weight -= wall
    weight *= 6.7
    np.maximum(weight, 0.0, out=weight)
    fade = cage.below * 0.6
    fade += 0.4
    weight *= fade
    return weight


def _posterior_ribs(cv: _Canvas, p: Anatomy, cage: _Cage, weight: np.ndarray, smooth: float) -> None:
    """Posterior ribs: a phase field whose level sets are the rib centre lines; clipping the phase
    to the rib count leaves cos = -1 (no rib) beyond the first and the last rib."""
    a, v, side = cage.a, cage.v, cage.side
    bone = p.bone_density
    ribs_phase = p.side(side).rib_phase
    s = (p.rib_rise - p.rib_curv * a) * a + v
    s -= cage.apex - 0.04 + ribs_phase * p.rib_spacing
    phi = s * (1.0 / p.rib_spacing)
    phi *= 1.0 - p.rib_growth * s
    phi += (p.rib_wobble / p.rib_spacing) * np.sin(p.rib_wobble_freq * a + (3.0 * side + ribs_phase))
    if p.rib_fracture_side == side:  # None without a fracture
        # healed fracture: a step in one rib and a callus
        k, fa = p.rib_fracture_rib, p.rib_fracture_a
        near = np.exp(-((phi - k) ** 2) * 8.0)
        phi += 0.2 * near * _step(a - fa, cv.eps)
        cv.attenuation[cage.sl] += 0.3 * bone * near * np.exp(-((a - fa) ** 2) * (1.0 / 0.002))
    np.clip(phi, -0.5, p.rib_count - 0.5, out=phi)
    wave = np.cos(phi * (2.0 * np.pi))
    t = math.cos(math.pi * p.rib_thick)
    rib = np.sqrt(np.clip((wave - t) * (1.0 / (1.0 - t)), 0.0, 1.0))
    if smooth > 0.0:
        rib *= 1.0 - smooth
        rib += smooth * (0.35 + 0.35 * wave)
    rib *= weight
    cv.attenuation[cage.sl] += (0.1 * bone) * rib


def _anterior_ribs(cv: _Canvas, p: Anatomy, cage: _Cage, weight: np.ndarray, smooth: float) -> None:
    """Anterior ribs: sloping down toward the midline, ending at the costochondral junction."""
    a = cage.a
    phi_a = (cage.v - p.ant_rib_slope * (cage.tw - a) - (cage.apex + 0.05 + p.ant_rib_phase * p.ant_rib_spacing))
    phi_a *= 1.0 / p.ant_rib_spacing
    np.clip(phi_a, -0.5, 6.5, out=phi_a)
    wave = np.cos(phi_a * (2.0 * np.pi))
    rib = np.clip((wave - 0.1) * (1.0 / 0.9), 0.0, 1.0)
    if smooth > 0.0:
        rib *= 1.0 - smooth
        rib += smooth * (0.3 + 0.3 * wave)
    rib *= weight
    rib *= _step(a - p.ant_rib_cc * cage.tw, 0.05)
    cv.attenuation[cage.sl] += (0.06 * p.bone_density) * rib


def _lung(cv: _Canvas, p: Anatomy, cage: _Cage) -> tuple[_Cage, np.ndarray, np.ndarray] | None:
    """The lung, in its own window: its air (``cv.air``) and its outline as a segmentation sees it
    (``cv.lung``). Returns the cage in that window, the lung's share (0 where a pneumothorax left pure
    air) and its air, or None where the lung lies outside the image."""
    tw, med, side = cage.tw, cage.med, cage.side
    inner = cv.subwindow(cage.sl, -tw if side < 0 else med - 0.02, tw if side > 0 else -med + 0.02, cage.apex,
                         cage.bottom + 0.02)
    if inner is None:
        return None
    cage = cage.part(cv, inner)
    sl, r, below = cage.sl, cage.r, cage.below
    depth = np.clip((1.0 - r) * 1.5, 0.0, 1.0)
    np.sqrt(depth, out=depth)
    depth *= below
    field = _step(1.0 - r, cv.eps)
    field *= below
    field *= cv.solid[sl] < 0.5
    np.maximum(cv.lung[sl], field, out=cv.lung[sl])
    hidden = 1.0 - 0.9 * cv.solid[sl]
    depth *= hidden
    collapse = p.side(side).collapse
    if collapse < 1.0:
        # pneumothorax: the lung shrinks toward the hilum, denser for the air it lost; the pleural
        # space is pure air, without vessels
        ac, aw, vc, vh, box = cage.ac, cage.aw, cage.vc, cage.vh, p.lung_box
        cu_ = (cage.a - (ac - aw * (1.0 - collapse) * 0.6)) / (aw * collapse * (1.0 - p.lung_taper * cage.top))
        cq = (cage.v - (vc + vh * (1.0 - collapse) * 0.5)) * (1.0 / (vh * collapse))
        rc = (1.0 - box) * (cu_ * cu_ + cq * cq) + box * (cu_**4 + cq**4)
        lung = _step(1.0 - rc, 0.04) * below * hidden
        pleural_line = np.clip(1.0 - np.abs(1.0 - rc) * (0.5 / (cv.pixel + 0.004)), 0.0, 1.0) * below
        air = depth * (0.75 * lung + 1.4 * (1.0 - lung)) * p.air
        cv.attenuation[sl] += 0.4 * pleural_line
    else:
        lung = np.clip(depth * 3.0, 0.0, 1.0)
        air = depth * p.air
    cv.air[sl] += air
    return cage, lung, air


def _from_hilum(p: Anatomy, cage: _Cage) -> tuple[np.ndarray, np.ndarray]:
    """Lateral and vertical offsets from the hilum."""
    ha, hv = cage.med + 0.05, p.hilum_v
    return cage.a - ha, cage.v - hv


def _vessels(cv: _Canvas, p: Anatomy, cage: _Cage, lung: np.ndarray, tex: Textures, scan: dict) -> None:
    """Vessels radiating from the hilum, fading to the periphery, broken up by a random field."""
    da, dv = _from_hilum(p, cage)
    rr = da * da
    rr += dv * dv
    theta = np.arctan2(dv, da)
    theta *= p.vessel_count * 2.0
    theta += p.vessel_twist * rr + (p.vessel_phase + cage.side)
    vessels = np.cos(theta)
    vessels *= 4.0
    vessels -= 3.0
    np.clip(vessels, 0.0, 1.0, out=vessels)
    broken = tex.window(tex.coarse, vessels.shape, scan["noise_offset"] // 3) * 0.7 + 0.7
    vessels *= np.clip(broken, 0.0, 1.2, out=broken)
    fade = np.exp(rr * -5.0)
    fade *= 0.08 * p.vessels
    vessels *= fade
    vessels *= lung
    cv.attenuation[cage.sl] += vessels


def _pleural_findings(cv: _Canvas, p: Anatomy, cage: _Cage, lung: np.ndarray, air: np.ndarray, tex: Textures,
                      scan: dict) -> None:
    """Edema's haze in the lung, an effusion's fluid and pleural thickening at the chest wall."""
    sl, a, r, below = cage.sl, cage.a, cage.r, cage.below
    own = p.side(cage.side)
    if p.haze > 0.0:  # edema: perihilar (bat-wing) haze
        da, dv = _from_hilum(p, cage)
        haze = np.exp(-(da * da * (1.0 / 0.12) + dv * dv * (1.0 / 0.15)))
        texture = 1.0 + 0.35 * tex.window(tex.coarse, haze.shape, scan["noise_offset"] // 7)
        cv.attenuation[sl] += p.haze * haze * texture * lung
    fluid = own.fluid
    if fluid > 0.0:  # effusion: dependent fluid with a meniscus rising laterally, blunting the angle
        med, tw, bottom = cage.med, cage.tw, cage.bottom
        rise = np.clip((a - med) * (1.0 / (tw - med)), 0.0, 1.0)
        level = bottom - fluid * (bottom - cage.apex) * (0.5 + rise * rise)
        water = _step(cage.v - level, 2.0 * cv.eps) * _step(1.05 - r, 0.05) * below
        cv.attenuation[sl] += water * (AIR * air + 0.1)
    rim = own.rim
    if rim > 0.0:  # pleural thickening: a dense band inside the chest wall, apical or lateral
        band = _step(r - (1.0 - 3.0 * rim), 0.02) * _step(1.02 - r, 0.02)
        zone = (np.clip(-cage.q * 2.0, 0.0, 1.0) if p.rim_apical
                else np.clip((a - cage.ac) * (4.0 / cage.aw), 0.0, 1.0))
        cv.attenuation[sl] += 0.3 * band * zone * below


def _mediastinum(cv: _Canvas, p: Anatomy, scan: dict) -> None:
    """Upper mediastinum, aortic knob and heart: soft tissue that hides the lung behind it (marked
    in ``cv.solid`` for the lungs), and the air of trachea and main bronchi."""
    ob, eps = scan["obliquity"], cv.eps
    found = cv.window(-0.25 + ob, 0.25 + ob, -1.2, p.heart_v)
    if found is not None:  # upper mediastinum, widening toward the heart
        sl, u, v = found
        width = p.med_w * (1.0 + 0.6 * np.clip((v - p.carina_v) * 3.0, 0.0, 1.0))
        np.maximum(cv.solid[sl], _step(width - np.abs(u - (ob + 0.01)), eps), out=cv.solid[sl])
    r = p.aorta_r
    found = cv.window(p.aorta_u + ob - r, p.aorta_u + ob + r, p.aorta_v - r, p.aorta_v + r)
    if found is not None:
        sl, u, v = found
        ku, kv = u - (p.aorta_u + ob), v - p.aorta_v
        np.maximum(cv.solid[sl], _step(r - np.sqrt(ku * ku + kv * kv), eps), out=cv.solid[sl])
    # heart: a tilted ellipse (ventricles) and a circle (right atrium, the right heart border)
    hu, hv, rx, ry = p.heart_u + ob, p.heart_v, p.heart_rx, p.heart_ry
    au, av, ar = hu - _ATRIUM_OFFSET * rx, hv - 0.05 * ry, p.atrium_r
    reach = max(rx, ry)
    found = cv.window(min(hu - reach, au - ar), hu + reach, hv - reach, hv + reach)
    if found is not None:
        sl, u, v = found
        du, dv = u - hu, v - hv
        ct, st = math.cos(p.heart_tilt), math.sin(p.heart_tilt)
        hx = (du * ct - dv * st) * (1.0 / rx)
        hy = (du * st + dv * ct) * (1.0 / ry)
        heart = np.sqrt(np.clip((1.0 - hx * hx - hy * hy) * 6.0, 0.0, 1.0))
        du, dv = u - au, v - av
        atrium = np.sqrt(np.clip((1.0 - (du * du + dv * dv) * (1.0 / ar**2)) * 6.0, 0.0, 1.0))
        np.maximum(cv.solid[sl], np.maximum(heart, atrium, out=heart), out=cv.solid[sl])
    found = cv.window(-0.12 + ob, 0.12 + ob, -1.2, p.carina_v + 0.13)
    if found is not None:  # trachea and main bronchi
        sl, u, v = found
        uc = u - (ob + p.trachea_u)
        above = v < p.carina_v
        trachea = _step(p.trachea_w - np.abs(uc - 0.15 * (v - p.carina_v) * above), eps)
        trachea *= above
        dvb = v - p.carina_v
        bronchi = _step(0.7 * p.trachea_w - np.abs(np.abs(uc) - 0.9 * dvb), eps) * (dvb > 0.0)
        cv.attenuation[sl] -= 0.12 * (trachea + bronchi)


def _spine(cv: _Canvas, p: Anatomy) -> None:
    found = cv.window(-0.25, 0.25, -1.3, 1.3)
    if found is None:
        return
    sl, u, v = found
    centre = p.spine_curve * np.sin((v + 1.0) * (np.pi * p.spine_wave))
    du = np.abs(u - centre)
    body = _step(p.spine_w - du, cv.eps)
    vertebrae = 0.75 + 0.25 * np.cos(v * (2.0 * np.pi / p.vert_h))
    # pedicles: brighter ovals at the lateral edges of each body
    pedicles = np.clip(1.0 - np.abs(du - 0.75 * p.spine_w) * (1.0 / (0.18 * p.spine_w)), 0.0, 1.0)
    cv.attenuation[sl] += p.bone_density * body * (0.09 * vertebrae + 0.06 * pedicles * (vertebrae > 0.8))


def _shoulder_girdle(cv: _Canvas, p: Anatomy, scan: dict, side: float) -> None:
    bone = p.bone_density
    # clavicle: an S-shaped bar rising laterally from the sternal notch
    cl_v, length = p.clav_v + scan["clavicle_lift"], p.clav_len
    angle = p.side(side).clav_angle * (0.6 if scan["heart_magnification"] > 1.0 else 1.0)
    ob = scan["obliquity"]
    lo, hi = (-length - 0.08 + ob, ob) if side < 0 else (ob, length + 0.08 + ob)
    found = cv.window(lo, hi, cl_v - length * np.tan(angle) - 0.12, cl_v + 0.1)
    if found is not None:
        sl, u, v = found
        a = (u - ob) * side
        centre = cl_v - np.tan(angle) * a + p.clav_s * np.sin(a * (2.0 * np.pi / length))
        dist = np.abs(v - centre)
        bar = np.sqrt(np.clip(1.0 - dist * (1.0 / p.clav_thick), 0.0, 1.0))
        cv.attenuation[sl] += 0.2 * bone * bar * _step(length - a, 0.02) * _step(a - 0.03, 0.02)
    # scapula: a tilted plate at the lateral chest wall, over the lung on AP views
    size = p.scap_size
    cu = side * (p.thorax_w + 0.1 - scan["scapula_shift"])
    cv_ = p.scap_v
    found = cv.window(cu - size, cu + size, cv_ - 1.4 * size, cv_ + 1.4 * size)
    if found is not None:
        sl, u, v = found
        ca, sa = float(np.cos(p.scap_angle)), float(np.sin(p.scap_angle)) * side
        du, dv = u - cu, v - cv_
        x = (du * ca + dv * sa) * (1.0 / (0.55 * size))
        y = (-du * sa + dv * ca) * (1.0 / (1.3 * size))
        rad = x * x + y * y + 0.6 * x * y * side
        plate = _step(1.0 - rad, 0.15) * (1.0 + 0.8 * np.clip(1.0 - np.abs(x + 0.8 * side) * 3.0, 0.0, 1.0))
        cv.attenuation[sl] += 0.08 * bone * plate
    # humeral head at the top corner
    head = 0.12
    cv.blob(side * (p.body_w + 0.08), p.shoulder_v + 0.3, head, head, 0.18 * bone)


def _breasts(cv: _Canvas, p: Anatomy) -> None:
    """Breast shadows over the lower lung fields: a sharp curved lower border, fading upward."""
    size = p.breast_size
    for side in (-1.0, 1.0):
        cu, cv_ = side * 0.6 * p.thorax_w, p.breast_v + 0.5 * size
        found = cv.window(cu - 0.9 * size, cu + 0.9 * size, cv_ - size, cv_ + size)
        if found is None:
            continue
        sl, u, v = found
        x = (u - cu) * (1.0 / (0.9 * size))
        y = (v - cv_) * (1.0 / size)
        shadow = np.sqrt(np.clip(1.0 - x * x - y * y, 0.0, 1.0)) * np.clip(0.5 + y, 0.0, 1.0)
        cv.attenuation[sl] += 0.16 * shadow


def _marks(cv: _Canvas, p: Anatomy, scan: dict) -> None:
    """Distinctive marks (lateral positions as shares of the thorax half-width); metal is far denser
    than bone."""
    ob = scan["obliquity"]
    if p.granuloma_a is not None:
        cv.blob(p.granuloma_side * p.granuloma_a * p.thorax_w, p.granuloma_v,
                p.granuloma_r, p.granuloma_r, 1.0, profile="flat")
    if p.sternotomy_wires is not None:
        wires = int(p.sternotomy_wires)
        for i in range(wires):
            cu, cv_ = ob + 0.006 * (i % 2), p.sternotomy_top + i * 0.075
            cv.blob(cu, cv_, 0.03, 0.012, 0.9, profile="flat")
            cv.blob(cu, cv_, 0.018, 0.005, -0.9, profile="flat")
    if p.port_a is not None:
        side = p.port_side
        cu, cv_ = side * p.port_a + ob, p.port_v
        cv.blob(cu, cv_, 0.035, 0.03, 1.4, profile="flat")
        catheter = np.array([[cu, cv_], [cu - side * 0.12, cv_ + 0.02], [ob - 0.03, p.carina_v - 0.02],
                             [-0.05 + ob, p.heart_v - 0.08]])
        cv.curve(catheter, 0.006, 0.8)
    if p.pacemaker_a is not None:
        cu, cv_ = p.pacemaker_a + ob, p.pacemaker_v
        cv.blob(cu, cv_, 0.07, 0.05, 2.0, profile="flat", edge=0.02)
        for i in range(int(p.pacemaker_leads)):
            lead = np.array([[cu - 0.03, cv_ + 0.01], [0.12 + ob, cv_ - 0.01 * i], [-0.02 + ob, p.carina_v + 0.05],
                             [-0.03 + ob + 0.05 * i, p.heart_v + 0.04 + 0.06 * i],
                             [p.heart_u + ob + 0.04 * i, p.heart_v + 0.12]])
            cv.curve(lead, 0.007, 1.0)


def _support_devices(cv: _Canvas, scan: dict) -> None:
    """ECG electrodes of bedside (AP) scans: they belong to the scan, not to the patient."""
    if scan["ecg_leads"]:
        rng = np.random.default_rng(scan["lead_seed"])
        for _ in range(scan["ecg_leads"]):
            cu, cv_ = rng.uniform(-0.6, 0.6), rng.uniform(-0.55, 0.45)
            cv.blob(cu, cv_, 0.03, 0.03, 0.6, profile="flat")
            cv.blob(cu, cv_, 0.02, 0.02, -0.45, profile="flat")


def _lung_point(p: Anatomy, side: float, a: float, h: float) -> tuple[float, float]:
    """Patient coordinates of a lung-relative position (a: medial 0 .. lateral 1, h: apex 0 .. base 1)."""
    own = p.side(side)
    med, tw = own.lung_med, p.thorax_w
    lateral = med + a * (tw - med)
    v = p.apex_v + 0.1 + h * (own.dome_v - p.apex_v - 0.1)
    return side * lateral, v


def _lesions(cv: _Canvas, p: Anatomy, findings: dict, tex: Textures) -> None:
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
                hu, hv = 0.03 + 0.04 * f["a"], p.dome_v_l - 0.25 * size
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


def _gastric_bubble(cv: _Canvas, p: Anatomy, scan: dict) -> None:
    size = scan["gastric_bubble"]
    if size > 0.0:
        cu, cv_ = 0.3 * p.thorax_w + 0.05, p.dome_v_l + 0.1 + size
        cv.blob(cu, cv_, 1.3 * size, size, -0.35, profile="dome")


def _draw(patient_anatomy: dict[str, float], scan: dict, findings: dict, size: int,
          textures: Textures) -> tuple[_Canvas, Anatomy]:
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
    if p.breast_size > 0.0:
        _breasts(cv, p)
    _gastric_bubble(cv, p, scan)
    _lesions(cv, p, findings, textures)
    _marks(cv, p, scan)
    _support_devices(cv, scan)
    return cv, p


def render(patient_anatomy: dict[str, float], scan: dict, findings: dict, size: int,
           textures: Textures) -> tuple[np.ndarray, list[list[int]], Anatomy]:
    """One radiograph: (uint8 image, burned-in text boxes, the anatomy as seen on this scan)."""
    cv, p = _draw(patient_anatomy, scan, findings, size, textures)
    image, boxes = _detector(_downsample(cv.attenuation, supersampling(size)), scan, textures)
    return image, boxes, p


def lung_field_mask(patient_anatomy: dict[str, float], scan: dict, findings: dict, size: int,
                    textures: Textures) -> np.ndarray:
    """The scan's lung fields at ``size`` px (bool), outlined as a segmentation would: the visible lung
    above the domes, not the part hidden behind heart and mediastinum."""
    cv, _ = _draw(patient_anatomy, scan, findings, size, textures)
    return _downsample(cv.lung, supersampling(size)) >= 0.5
