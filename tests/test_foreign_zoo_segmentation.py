"""The model-zoo segmentation bundles of ``../shared/foreign_bundles`` (temporary copies, unchanged), each trained
briefly with its own train config on synthetic data in its layout (``tests/foreign_zoo``): ``robust_bundles audit``
writes a report and ``robustify`` (AMAT) gains robustness over the trained start. Skipped when ../shared is absent."""

from __future__ import annotations

import pytest
from foreign_zoo.checks import check_audit, check_robustify, params

# brats_mri_segmentation, the costliest, has its own file (test_foreign_zoo_brats.py) so that the xdist workers,
# which take whole files, share the work
SEGMENTATION = ["spleen_ct_segmentation", "swin_unetr_btcv_segmentation", "prostate_mri_anatomy",
                "endoscopic_tool_segmentation"]


@pytest.mark.slow
@pytest.mark.parametrize("name", params("audit", SEGMENTATION))
def test_audit(name, zoo_cache, tmp_path):
    check_audit(name, zoo_cache, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", params("robustify", SEGMENTATION))
def test_robustify_gains_robustness(name, zoo_cache, tmp_path):
    check_robustify(name, zoo_cache, tmp_path)
