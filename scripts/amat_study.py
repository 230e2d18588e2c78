"""AMAT calibration study against the VAT frontier, on the validation split (the engine: :mod:`robust_bundles.study`).

    python scripts/amat_study.py --bundle bundles/hippocampus_mri_segmentation \\
        --dataset_dir ../shared/data/msd_hippocampus --output_root runs/amat_study
    python scripts/amat_study.py ... --dry_run                 # the plan and the commands

Options: ``python scripts/amat_study.py --help``; what runs and the criterion: the docstring of
``robust_bundles.study``.
"""

import sys

from robust_bundles.study import cli, main  # noqa: F401  (main: the command line's options)

if __name__ == "__main__":
    sys.exit(cli())
