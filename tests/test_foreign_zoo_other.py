"""The model-zoo bundles of ``../shared/foreign_bundles`` that are not segmentation (temporary copies, unchanged):
image classification (``classification_template``) and landmark regression (``valve_landmarks``), each trained
briefly with its own train config on synthetic data in its layout (``tests/foreign_zoo``): ``robust_bundles audit``
writes a report and ``robustify`` (AMAT) gains robustness over the trained start. Detection
(``lung_nodule_ct_detection``): both commands refuse it and say why, before any training or data is needed.
Skipped when ../shared is absent."""

from __future__ import annotations

import shutil

import pytest
from foreign_zoo.checks import skip_reason, zoo_tests
from foreign_zoo.zoo import BUNDLES, run

OTHER = ["classification_template", "valve_landmarks"]

test_audit, test_robustify_gains_robustness = zoo_tests(OTHER)


@pytest.mark.parametrize("command", ["audit", "robustify"])
def test_detection_is_refused_with_the_reason(command, tmp_path):
    """The lung bundle's DetectionTrainer computes its losses inside the RetinaNet detector from box labels: there
    is no per-sample loss on an image label to attack, and its metric is mAP over boxes. Both commands stop at once
    with that reason (an untrained, unchanged copy: the refusal comes before weights and data)."""
    name = "lung_nodule_ct_detection"
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)
    bundle = shutil.copytree(BUNDLES[name].source, tmp_path / name)
    proc = run(["-m", "robust_bundles", command, str(bundle), "--dataset_dir", str(tmp_path / "data")], cwd=tmp_path)
    assert proc.returncode != 0
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert f"robust_bundles {command} does not handle detection bundles yet: the trainer 'train#trainer' runs the " \
           "detector 'detector', whose loss is computed inside it from box labels" in last, last
