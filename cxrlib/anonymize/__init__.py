"""Anonymizers: one interface (:class:`Anonymizer`), several methods.

Importing this package registers every method, so :func:`load_anonymizer` can rebuild any saved one.
"""

from cxrlib.anonymize.base import REGISTRY, Anonymizer, Identity, check_images, load_anonymizer, register
from cxrlib.anonymize.flow_field import FlowFieldAnonymizer

__all__ = ["REGISTRY", "Anonymizer", "Identity", "FlowFieldAnonymizer", "check_images", "load_anonymizer",
           "register"]
