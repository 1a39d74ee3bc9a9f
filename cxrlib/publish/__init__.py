"""For data publishers: de-identify a release (DICOM or PNG) and audit how linkable it is.

Modules: :mod:`~cxrlib.publish.dicom` (pixels of DICOM and PNG files), :mod:`~cxrlib.publish.deidentify`
(the PS3.15 basic profile with keyed pseudonyms), :mod:`~cxrlib.publish.burned_in` (text detection),
:mod:`~cxrlib.publish.pipeline` (one file through header, text and pixel steps),
:mod:`~cxrlib.publish.batch` (the resumable runner, its manifest in a state folder outside OUT),
:mod:`~cxrlib.publish.audit` (read a release, embed it, search it), :mod:`~cxrlib.publish.linkage` (the
audit's attacks, its verdict and the suspected-link threshold, on the project's one panel of linkage
attacks, :mod:`cxrlib.linkage`), :mod:`~cxrlib.publish.report` (the audit as JSON and HTML, verdict first),
:mod:`~cxrlib.publish.phantom_dicom` (a release as DICOM with synthetic PHI: the phantom's, or any
ChestX-ray14 folder's own pixels, for tests and notebook 05).
"""
