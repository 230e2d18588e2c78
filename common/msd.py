"""Medical Segmentation Decathlon folders -> 2D slice samples: the names this module has always offered.

The code lives in :mod:`robust_bundles.data`, split by reason to change: :mod:`~robust_bundles.data.msd` (dataset.json,
slices, split summaries), :mod:`~robust_bundles.data.splits` (case splits), :mod:`~robust_bundles.data.nifti`
(volume reading and checks, z-score), :mod:`~robust_bundles.data.synthetic_msd` (synthetic data) and
:mod:`~robust_bundles.data.archives` (archives and URLs). Bundle configs and users keep writing
``robust_bundles.msd.load_slices`` and so on.
"""

from __future__ import annotations

from .data.archives import fetch_msd
from .data.msd import (
    foreground_only,
    image_datalist,
    load_slices,
    read_msd_datalist,
    slice_digest,
    split_summary,
    write_split_json,
)
from .data.nifti import load_volume_pair, zscore
from .data.splits import SPLITS, split_cases
from .data.synthetic_msd import synthetic_default, write_synthetic_msd

__all__ = [
    "synthetic_default",
    "image_datalist",
    "read_msd_datalist",
    "split_cases",
    "load_volume_pair",
    "zscore",
    "load_slices",
    "slice_digest",
    "foreground_only",
    "split_summary",
    "write_split_json",
    "write_synthetic_msd",
    "fetch_msd",
    "SPLITS",
]
