"""cxrlib: patient privacy in chest radiographs.

Re-identification (siamese verification, retrieval), PriCheXy-Net deformation-field anonymization
with Privacy-Net and DP-Pix baselines, and latent diffusion synthesis with privacy-enhancing
sampling; on ChestX-ray14 or on the embedded phantom.
"""

__version__ = "0.1.0"
