"""robust-bundles shared library: attacks, losses, margins, thresholds, adversarial training iterations, handlers,
transforms and metrics used by every bundle in ``bundles/``.

Its source is the repository folder ``common/``; it is installed (``pip install -e .``) and imported as
``robust_bundles``, and a bundle zip carries the modules it needs under the same name (``<bundle>/robust_bundles``,
see ``scripts/bundles.py``). Submodules load on first use, so ``import robust_bundles`` followed by
``robust_bundles.data.msd.load_slices(...)`` works (bundle configs write ``"$import robust_bundles"``), and a bundle's copy
of the library needs only the modules its configs use.
"""

import importlib

if __name__ != "robust_bundles":  # e.g. "import common" from the repository root: a second copy of every class
    raise ImportError(
        f"The folder {__path__[0]} is the source of the package robust_bundles: import it as robust_bundles "
        f"(pip install -e . in the repository root), not as {__name__!r}."
    )

__version__ = "0.1.0"

def _lazy_submodules(package: str):
    """A module ``__getattr__`` for ``package`` that imports the submodule ``name`` on first access
    (``robust_bundles.data``, ``robust_bundles.data.voc`` ...)."""

    def __getattr__(name: str):
        if name.startswith("_"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise  # the submodule exists but needs something that is missing: say what
            raise AttributeError(f"module {package!r} has no attribute or submodule {name!r}") from None

    return __getattr__


__getattr__ = _lazy_submodules(__name__)
