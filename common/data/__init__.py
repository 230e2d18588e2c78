"""Dataset readers: folders in the layouts their users know -> MONAI datalists (lists of dicts) with stable sample ids.

- :mod:`robust_bundles.data.voc`: Pascal VOC detection folders (``JPEGImages``, ``Annotations/*.xml``,
  ``ImageSets/Main/*.txt``), e.g. BCCD blood cells, and a synthetic generator of the same layout.

Submodules are imported on demand (``import robust_bundles.data.voc``), so a reader's dependencies are only needed by
the bundles that use it.
"""
