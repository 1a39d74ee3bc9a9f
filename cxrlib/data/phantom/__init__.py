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

Modules, by job: :mod:`~cxrlib.data.phantom.anatomy` (patients, their drift with age, the anatomy as a
scan sees it), :mod:`~cxrlib.data.phantom.acquisition` (pose, exposure, vendor, findings of one scan),
:mod:`~cxrlib.data.phantom.canvas` (supersampling, noise tiles, the posed canvas),
:mod:`~cxrlib.data.phantom.rendering` (drawing the anatomy, the lung-field mask),
:mod:`~cxrlib.data.phantom.detector` (exposure, noise, processing, burned-in text) and
:mod:`~cxrlib.data.phantom.writing` (metadata, the output folder, its ground truth); shared units,
version and random streams in :mod:`~cxrlib.data.phantom.common`.
"""

from cxrlib.data.phantom.acquisition import (
    FRAMING, POSE_SPREAD, USUAL_ACQUISITION_SHARE, USUAL_ACQUISITION_SPREAD, VENDORS, draw_acquisition,
    draw_findings, draw_scan, draw_usual_acquisition,
)
from cxrlib.data.phantom.anatomy import (
    ANATOMY_PARAMETERS, MARKS, POPULATION_SPREAD, Anatomy, Patient, cardiothoracic_ratio, draw_patient,
)
from cxrlib.data.phantom.canvas import Textures, supersampling
from cxrlib.data.phantom.common import FIELD_OF_VIEW_MM, MM, PHANTOM_VERSION
from cxrlib.data.phantom.rendering import AIR, lung_field_mask, render
from cxrlib.data.phantom.writing import (
    MAX_SIZE, METADATA_FILE, PHANTOM_TRUTH, PNG_COMPRESS_LEVEL, TEST_FRACTION, draw_scans, finding_examples,
    generate_phantom, read_truth, sample_metadata,
)

__all__ = [
    "AIR", "ANATOMY_PARAMETERS", "Anatomy", "FIELD_OF_VIEW_MM", "FRAMING", "MARKS", "MAX_SIZE", "METADATA_FILE", "MM",
    "PHANTOM_TRUTH", "PHANTOM_VERSION", "PNG_COMPRESS_LEVEL", "POPULATION_SPREAD", "POSE_SPREAD",
    "TEST_FRACTION", "USUAL_ACQUISITION_SHARE", "USUAL_ACQUISITION_SPREAD", "VENDORS", "Patient", "Textures",
    "cardiothoracic_ratio", "draw_acquisition", "draw_findings", "draw_patient", "draw_scan", "draw_scans",
    "draw_usual_acquisition", "finding_examples", "generate_phantom", "lung_field_mask", "read_truth", "render",
    "sample_metadata", "supersampling",
]
