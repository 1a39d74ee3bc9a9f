"""What the phantom's modules share: its version, units and random streams."""

from __future__ import annotations

import numpy as np

#: bump whenever the same arguments would give different files: it names the profile's phantom folder
PHANTOM_VERSION = 4
#: detector width; sets OriginalImagePixelSpacing and the size of findings in millimetres
FIELD_OF_VIEW_MM = 430.0
MM = 2.0 / FIELD_OF_VIEW_MM  # one millimetre in patient units

# Random streams: every patient, scan and finding has its own generator keyed by (seed, stream, ...),
# so no draw shifts another (a finding added to a scan leaves its pose and the patient's anatomy).
_META, _ANATOMY, _SCAN, _FINDINGS, _TEXTURE, _EXAMPLE, _HABIT = range(7)


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])
