"""For data publishers: de-identify a release (DICOM or PNG) and audit how linkable it is.

Modules: :mod:`~cxrlib.publish.dicom` (pixels of DICOM and PNG files), :mod:`~cxrlib.publish.deidentify`
(the PS3.15 basic profile with keyed pseudonyms), :mod:`~cxrlib.publish.burned_in` (text detection),
:mod:`~cxrlib.publish.pipeline` (one file through header, text and pixel steps),
:mod:`~cxrlib.publish.batch` (the resumable runner), :mod:`~cxrlib.publish.audit` and
:mod:`~cxrlib.publish.report` (linkage audit, JSON and HTML), :mod:`~cxrlib.publish.phantom_dicom`
(the phantom as DICOM with synthetic PHI, for tests).
"""
