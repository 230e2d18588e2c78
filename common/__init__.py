"""robust-bundles shared library: attacks, losses, margins, thresholds, adversarial training iterations, handlers,
transforms and metrics used by every bundle in ``bundles/``.

Its source is the repository folder ``common/``; it is installed (``pip install -e .``) and imported as
``robust_bundles``, and a bundle zip carries the modules it needs under the same name (``<bundle>/robust_bundles``,
see ``scripts/bundles.py``). Submodules load on first use, so ``import robust_bundles`` followed by
``robust_bundles.data.msd.load_slices(...)`` works (bundle configs write ``"$import robust_bundles"``), and a bundle's copy
of the library needs only the modules its configs use.
"""

import importlib
import os

# OpenMP threads that wait at the end of a parallel region sleep instead of spinning (GNU OpenMP, which torch's CPU
# wheels use, spins 300,000 times first). On a machine busier than its cores (CI, shared machines) the spinning
# threads take the cores from the ones with work: an AMAT iteration (10 attack passes plus a per-sample loss loop of
# many small parallel regions) at batch 16 on a 2D 96 x 96 UNet took 54-79 s with 2 torch threads at load 8 on 2
# cores, 7-8 s with this setting (issue 23). OpenMP reads it when torch loads, so it applies to the commands that
# import this package first (``robust_bundles audit|robustify``, ``python -m robust_bundles``) and to the processes
# they start; a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

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
