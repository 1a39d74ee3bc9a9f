"""Anonymizers: one interface (:class:`Anonymizer`), several methods.

Importing this package registers every method, so :func:`load_anonymizer` can rebuild any saved one.
"""

from cxrlib.anonymize.base import REGISTRY, Anonymizer, Identity, check_images, load_anonymizer, register
from cxrlib.anonymize.dp_pix import DPPix
from cxrlib.anonymize.flow_field import FlowFieldAnonymizer
from cxrlib.anonymize.privacy_net import PrivacyNetAnonymizer

__all__ = ["REGISTRY", "Anonymizer", "Identity", "DPPix", "FlowFieldAnonymizer", "PrivacyNetAnonymizer",
           "check_images", "load_anonymizer", "register"]
