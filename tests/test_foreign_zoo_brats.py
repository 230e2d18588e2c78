"""The model-zoo bundle brats_mri_segmentation (temporary copy, unchanged), trained briefly with its own train config
on synthetic data in its layout (``tests/foreign_zoo``): ``robust_bundles audit`` writes a report and ``robustify``
(AMAT) gains robustness over the trained start. In its own file, the costliest of the zoo, so that the xdist workers
(which take whole files) share the work; the other segmentation bundles are in test_foreign_zoo_segmentation.py.
Skipped when ../shared is absent."""

from __future__ import annotations

import pytest
from foreign_zoo.checks import check_audit, check_robustify, params

SEGMENTATION = ["brats_mri_segmentation"]


@pytest.mark.slow
@pytest.mark.parametrize("name", params("audit", SEGMENTATION))
def test_audit(name, zoo_cache, tmp_path):
    check_audit(name, zoo_cache, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", params("robustify", SEGMENTATION))
def test_robustify_gains_robustness(name, zoo_cache, tmp_path):
    check_robustify(name, zoo_cache, tmp_path)
