"""``python -m robust_bundles audit|robustify ...`` (see :mod:`robust_bundles.foreign.cli`)."""

from .foreign.cli import main

main()
