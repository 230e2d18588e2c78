"""The model-zoo bundles of ``../shared/foreign_bundles`` that are not segmentation (temporary copies, unchanged):
image classification (``classification_template``), landmark regression (``valve_landmarks``) and detection
(``lung_nodule_ct_detection``), each trained briefly with its own train config on synthetic data in its layout
(``tests/foreign_zoo``): ``robust_bundles audit`` writes a report and ``robustify`` (AMAT) gains robustness over the
trained start (not for detection). Skipped when ../shared is absent."""

from __future__ import annotations

import pytest
from foreign_zoo.checks import check_audit, check_robustify, params

OTHER = ["classification_template", "valve_landmarks", "lung_nodule_ct_detection"]


@pytest.mark.slow
@pytest.mark.parametrize("name", params("audit", OTHER))
def test_audit(name, zoo_cache, tmp_path):
    check_audit(name, zoo_cache, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", params("robustify", OTHER[:2]))
def test_robustify_gains_robustness(name, zoo_cache, tmp_path):
    check_robustify(name, zoo_cache, tmp_path)
