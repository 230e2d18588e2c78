"""robust-bundles shared library: attacks, losses, margins, thresholds, adversarial training iterations, handlers,
transforms and metrics used by every bundle in ``bundles/``.

Its source is the repository folder ``common/``; it is installed (``pip install -e .``) and imported as
``robust_bundles``, and a bundle zip carries a copy under the same name (``<bundle>/robust_bundles``).
``import robust_bundles`` makes every submodule available (bundle configs write ``"$import robust_bundles"`` and then
``robust_bundles.msd.load_slices(...)``).
"""

if __name__ != "robust_bundles":  # e.g. "import common" from the repository root: a second copy of every class
    raise ImportError(
        f"The folder {__path__[0]} is the source of the package robust_bundles: import it as robust_bundles "
        f"(pip install -e . in the repository root), not as {__name__!r}."
    )

__version__ = "0.1.0"

from . import io, layout, losses, attacks, metrics, margins, thresholds, transforms, msd, bundle, adversarial, handlers  # noqa: E402,F401
