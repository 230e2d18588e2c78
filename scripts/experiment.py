"""Run a bundle's whole experiment, the paper's table at the end (the engine: :mod:`robust_bundles.experiment`).

    python scripts/experiment.py --bundle bundles/hippocampus_mri_segmentation --profile quick
    python scripts/experiment.py --bundle bundles/hippocampus_mri_segmentation --profile quick --dry_run

Options: ``python scripts/experiment.py --help``; stages, resume and fine-tuning: the docstring of
``robust_bundles.experiment``.
"""

import sys

from robust_bundles.experiment import cli, main  # noqa: F401  (main: the command line's options)

if __name__ == "__main__":
    sys.exit(cli())
