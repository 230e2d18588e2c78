"""robust-bundles shared library: attacks, losses, margins, thresholds, adversarial training iterations, handlers,
transforms and metrics used by every bundle in ``bundles/``.

``import common`` makes every submodule available (bundle configs write ``"$import common"`` and then
``common.msd.load_slices(...)``).
"""

__version__ = "0.1.0"

from . import io, losses, attacks, metrics, margins, thresholds, transforms, msd, bundle, adversarial, handlers  # noqa: E402,F401
