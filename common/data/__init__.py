"""Dataset readers: from the layouts users have on disk to datalists of samples with stable ids.

One module per dataset family, split by reason to change (a layout, a file format, a synthetic generator), e.g.
:mod:`robust_bundles.data.voc` for Pascal VOC detection folders (``JPEGImages``, ``Annotations/*.xml``,
``ImageSets/Main/*.txt``, BCCD blood cells) and a synthetic generator of the same layout.

Submodules are imported on demand (``import robust_bundles.data.voc``), so a reader's dependencies are only needed by
the bundles that use it.
"""

from .. import _lazy_submodules

__getattr__ = _lazy_submodules(__name__)
