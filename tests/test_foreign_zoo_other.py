"""The model-zoo bundles of ``../shared/foreign_bundles`` that are not segmentation (temporary copies, unchanged):
image classification (``classification_template``), landmark regression (``valve_landmarks``) and detection
(``lung_nodule_ct_detection``), each trained briefly with its own train config on synthetic data in its layout
(``tests/foreign_zoo``): ``robust_bundles audit`` writes a report and ``robustify`` (AMAT) gains robustness over the
trained start (not for detection). Skipped when ../shared is absent."""

from __future__ import annotations

from foreign_zoo.checks import zoo_tests

OTHER = ["classification_template", "valve_landmarks", "lung_nodule_ct_detection"]


# detection (the lung bundle) is audited only
test_audit, test_robustify_gains_robustness = zoo_tests(OTHER, OTHER[:2])
