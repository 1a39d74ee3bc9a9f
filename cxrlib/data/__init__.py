"""Data layer: ChestX-ray14 metadata and images, the phantom, pairs, the image cache, datasets.

Imports nothing from the rest of cxrlib, with one exception: ``pairs.py`` writes pair files through
:func:`cxrlib.artifacts.partial_path` (the per-process temporary name that makes a write atomic), and
importing :mod:`cxrlib.artifacts` loads torch and safetensors.
"""
