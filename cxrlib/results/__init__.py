"""The typed results behind the metrics files of the notebooks (``results/<profile>/*.json``): each
notebook computes its figures with the library, hands them to one function here, and saves what it returns
(``save(path, context=...)``). Their ``to_json`` is the file's schema, which :mod:`cxrlib.report` and the
committed results folders read by key; the modules are named after the files they write
(:mod:`~cxrlib.results.data`, :mod:`~cxrlib.results.reidentification`, :mod:`~cxrlib.results.prichexy_net`,
:mod:`~cxrlib.results.tradeoff`, :mod:`~cxrlib.results.synthesis`). Notebook 05's are
:class:`cxrlib.publish.comparison.PublishingResults`; notebook 06's :class:`cxrlib.transfer.TransferResult`.

They sit at the evaluation layer: they read what the methods and :mod:`cxrlib.evaluate` return, and
nothing below imports them.
"""
