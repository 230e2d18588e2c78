"""The model-zoo bundle brats_mri_segmentation (temporary copy, unchanged), trained briefly with its own train config
on synthetic data in its layout (``tests/foreign_zoo``): ``robust_bundles audit`` writes a report and ``robustify``
(AMAT) gains robustness over the trained start. In its own file, the costliest of the zoo, so that the xdist workers
(which take whole files) share the work; the other segmentation bundles are in test_foreign_zoo_segmentation.py.
Skipped when ../shared is absent."""

from __future__ import annotations

from foreign_zoo.checks import zoo_tests

SEGMENTATION = ["brats_mri_segmentation"]


test_audit, test_robustify_gains_robustness = zoo_tests(SEGMENTATION)
