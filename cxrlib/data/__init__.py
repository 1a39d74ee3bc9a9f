"""Data layer: ChestX-ray14 metadata and images, the phantom, pairs, the image cache, datasets.

Imports nothing from the rest of cxrlib.
"""
