"""The model-zoo segmentation bundles of ``../shared/foreign_bundles`` (temporary copies, unchanged), each trained
briefly with its own train config on synthetic data in its layout (``tests/foreign_zoo``): ``robust_bundles audit``
writes a report and ``robustify`` (AMAT) gains robustness over the trained start. Skipped when ../shared is absent."""

from __future__ import annotations

from foreign_zoo.checks import zoo_tests

# brats_mri_segmentation, the costliest, has its own file (test_foreign_zoo_brats.py) so that the xdist workers,
# which take whole files, share the work
SEGMENTATION = ["spleen_ct_segmentation", "swin_unetr_btcv_segmentation", "prostate_mri_anatomy",
                "endoscopic_tool_segmentation"]


test_audit, test_robustify_gains_robustness = zoo_tests(SEGMENTATION)
