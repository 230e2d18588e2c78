"""The task contract in code: the three adapters implement robust_bundles.tasks.TaskAdapter, their parts work on a
tiny batch, and the outputs they declare as distributions are the ones the bundles' rendered overlays use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robust_bundles.metrics import MetricSpec
from robust_bundles.tasks import TaskAdapter
from robust_bundles.tasks.landmarks import LandmarkAdapter, landmark_targets
from robust_bundles.tasks.segmentation import SegmentationAdapter

REPO = Path(__file__).resolve().parents[1]


def _declared(bundle: str) -> object:
    """The output_activation of a bundle's rendered TRADES overlay (the registry's default or its task.json value)."""
    return json.loads((REPO / "bundles" / bundle / "configs" / "trades.json").read_text())["output_activation"]


def _check_contract(adapter, pred, target, batch, bundle: str, higher_is_better: bool) -> None:
    assert isinstance(adapter, TaskAdapter)
    loss = adapter.loss()
    terms = loss.terms(pred, target)
    assert terms.shape == (2, len(loss.term_names)) and torch.allclose(
        loss(pred, target), (terms * torch.tensor(loss.term_weights)).sum(1))
    spec = adapter.metric().specs[0]
    assert isinstance(spec, MetricSpec) and spec.higher_is_better is higher_is_better
    assert adapter.id_keys[0] == "sample_id"
    measures = adapter.confidence()(pred, batch)
    assert measures and all(v.shape == (2,) for v in measures.values())
    assert adapter.output_activation == _declared(bundle)


def test_segmentation_adapter():
    adapter = SegmentationAdapter(num_classes=3)
    pred = torch.zeros(2, 3, 4, 4)
    pred[:, 1, :2] = 5.0  # class 1 in the top half
    label = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    _check_contract(adapter, pred, label, {"label": label}, "hippocampus_mri_segmentation", True)
    assert adapter.loss().term_names == ("dice", "ce") and adapter.collate_fn() is None
    decoded = adapter.decode(pred)
    assert decoded.shape == (2, 4, 4) and decoded[:, :2].eq(1).all() and decoded[:, 2:].eq(0).all()
    conf = adapter.confidence()(pred)
    assert conf["foreground_volume_mm3"].tolist() == [8.0, 8.0]  # 8 pixels of class 1 per image
    assert conf["foreground_confidence"][0].item() == pytest.approx(torch.softmax(torch.tensor([0.0, 5, 0]), 0)[1])


def test_landmark_adapter():
    adapter = LandmarkAdapter(num_landmarks=1, radius=1.5, heatmap_loss="bce")
    target = landmark_targets([[2.0, 1.0]], (4, 5), radius=1.5)[None].repeat(2, 1, 1, 1)
    pred = torch.where(target[:, :1] > 0, 6.0, -6.0)
    pred = torch.cat([pred, target[:, 1:]], 1)  # the heatmap logits of the disk and the exact offsets
    _check_contract(adapter, pred, target, None, "cephalometric_xray_landmarks", False)
    assert adapter.decode(pred)[0, 0].tolist() == pytest.approx([2.0, 1.0])


def test_detection_adapter():
    pytest.importorskip("torchvision")
    from robust_bundles.tasks import detection as D

    torch.manual_seed(0)
    det = D.build_detector(3, backbone="resnet10", returned_layers=(1, 2), fpn_channels=16, width=8,
                           base_anchor_shapes=((8, 8), (16, 16)))
    adapter = D.DetectionAdapter(det, ["a", "b", "c"], (32, 32), sampling_seed=0)  # the same anchors each call
    assert isinstance(adapter, TaskAdapter) and adapter.output_activation == _declared("bccd_blood_cell_detection")
    images = torch.rand(2, 3, 32, 32)
    targets = [{"boxes": torch.tensor([[2.0, 2.0, 14.0, 14.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    det.network.eval()
    with torch.no_grad():
        pred = det.network(images)
    _check_contract(adapter, pred, targets, None, "bccd_blood_cell_detection", True)
    assert adapter.loss().term_names == ("classification", "box_regression")
    assert adapter.collate_fn() is D.collate_detection and len(adapter.decode(pred)) == 2
    heads = adapter.loss().heads(pred)  # the heads output_activation names
    assert set(adapter.output_activation) <= set(heads) and heads["classification"].shape[:1] == (2,)
