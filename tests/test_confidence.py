"""robust_bundles.confidence and the task measures: hand-checked values, the far-below rule, the files and the log of
an inference run, the reference's round trip, and the refusal of blank images."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from robust_bundles.confidence import ConfidenceReference, ConfidenceReport, Measure, result_stem
from robust_bundles.tasks.landmarks import LandmarkConfidence, decode_landmarks
from robust_bundles.tasks.segmentation import SegmentationConfidenced, segmentation_confidence, segmentation_measures
from robust_bundles.transforms import RefuseUninformatived, refuse_uninformative

MEASURES = [Measure("p", "a probability of 3 classes", "higher", 0.5), Measure("v", "a volume", "size")]


def test_landmark_peak_and_vote_agreement_by_hand():
    # one landmark, a 1 x 5 output, R = 1, top 3 pixels: 0, 1 and 4 at probability 0.5 (logit 0), the rest ~0;
    # their votes: 0 + 2 = 2, 1 + 1 = 2, 4 + 0 = 4. Votes within 1 pixel of the winner (2): weight 1.0 of 1.5
    pred = torch.zeros(1, 3, 1, 5)
    pred[0, 0] = torch.tensor([0.0, 0.0, -100.0, -100.0, 0.0])
    pred[0, 1] = torch.tensor([2.0, 1.0, 0.0, 0.0, 0.0])
    measure = LandmarkConfidence(1, radius=1.0, top_k=3)
    peak, agreement = measure.per_landmark(pred)
    assert peak.tolist() == [[0.5]] and agreement.tolist() == [[pytest.approx(2 / 3)]]
    assert measure(pred) == {"peak": pytest.approx(torch.tensor([0.5])), "agreement": pytest.approx(torch.tensor([2 / 3]))}
    assert decode_landmarks(pred, 1, 1.0, top_k=3).tolist() == [[[2.0, 0.0]]]  # the decoding is unchanged


def test_segmentation_confidence_by_hand():
    probs = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]]).T.reshape(3, 2, 2)
    out = segmentation_confidence(probs.log(), voxel_volume_mm3=2.0)
    # foreground: voxel 0 (label 1, 0.7) and voxel 1 (label 2, 0.8): mean 0.75, 2 voxels of 2 mm^3
    assert out["foreground_confidence"] == pytest.approx(0.75)
    assert out["foreground_volume_mm3"] == 4.0 and out["volume_mm3_per_label"] == {1: 2.0, 2: 2.0}
    assert segmentation_confidence(torch.zeros(3, 2, 2).index_fill_(0, torch.tensor([0]), 5.0))[
        "foreground_confidence"] is None  # no foreground
    assert segmentation_measures(4)[0].floor == 0.25


def test_far_below_rule_and_reference_round_trip(tmp_path):
    ref = ConfidenceReference("seg", MEASURES)
    for p, v in ((0.8, 100.0), (0.9, 150.0), (1.0, 200.0)):
        ref.update({"p": p, "v": torch.tensor([v])})
    ref.finish()
    assert ref.stats["p"]["median"] == pytest.approx(0.9) and ref.stats["v"]["n"] == 3
    ref.stats = {"p": {"n": 3, "p05": 0.8, "median": 0.9}, "v": {"n": 3, "p05": 100.0, "p95": 200.0}}
    # higher: flagged when v - floor < 0.5 (p05 - floor) = 0.15, i.e. below 0.65; size: below 50 or above 400
    assert ref.warnings({"p": 0.66, "v": 50.0}) == []
    low = ref.warnings({"p": 0.64, "v": 401.0})
    assert [w.split()[0] for w in low] == ["p", "v"] and "far below" in low[0] and "far outside" in low[1]
    assert ref.warnings({"p": 0.7, "v": 49.0}, warn_fraction=0.5)[0].startswith("v 49")
    assert ref.warnings({"p": float("nan"), "v": 100.0})[0].startswith("p nan")
    path = ref.save(tmp_path / "r.json")
    back = ConfidenceReference.load(path, "seg", MEASURES)
    assert back.stats["p"]["p05"] == 0.8 and back.warnings({"p": 0.64}) == low[:1]
    with pytest.raises(ValueError, match="r.json is of family 'seg'.*needs 'landmarks'"):
        ConfidenceReference.load(path, "landmarks", MEASURES)


def test_report_writes_files_logs_and_records(tmp_path, caplog):
    reference = tmp_path / "models" / "confidence_reference.json"
    recorder = ConfidenceReport("seg", MEASURES, tmp_path / "val", reference, record=True, source="two images")
    recorder.started()
    recorder.add("/d/a.nii.gz", {"p": 0.9, "v": 100.0})
    recorder.add("/d/b.nii.gz", {"p": 0.9, "v": 100.0})
    recorder.completed()
    saved = json.loads(reference.read_text())
    assert saved["source"] == "two images" and saved["measures"]["p"]["p05"] == pytest.approx(0.9)

    report = ConfidenceReport("seg", MEASURES, tmp_path / "out", reference)
    with caplog.at_level(logging.INFO, logger="robust_bundles.confidence"):
        report.started()
        report.add("/d/good.nii.gz", {"p": 0.88, "v": 100.0})
        report.add("/d/noise.nii.gz", {"p": 0.6, "v": 100.0})
        report.completed()
    good = json.loads((tmp_path / "out" / "good_confidence.json").read_text())
    noise = json.loads((tmp_path / "out" / "noise_confidence.json").read_text())
    assert good["measures"] == {"p": 0.88, "v": 100.0} and not good["low_confidence"]
    assert good["reference"]["p"]["p05"] == pytest.approx(0.9) and good["meaning"]["v"] == "a volume"
    assert noise["low_confidence"] and noise["warnings"][0].startswith("p 0.6 is far below")
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("LOW CONFIDENCE: /d/noise.nii.gz: p 0.6") for m in lines)
    assert not any("good.nii.gz" in m and "LOW" in m for m in lines)
    assert "confidence: 1 of 2 images far below the validation reference: /d/noise.nii.gz" in lines
    assert result_stem("/x/a.b.nii.gz") == "a.b" and result_stem("c.png") == "c"


def test_segmentation_postprocessing_transform(tmp_path):
    from monai.data import MetaTensor

    report = ConfidenceReport("segmentation", segmentation_measures(3), tmp_path)
    logits = torch.zeros(3, 2, 2, 2)
    logits[1, 0] = 4.0  # 4 voxels of label 1
    pred = MetaTensor(logits, affine=torch.diag(torch.tensor([2.0, 1.0, 1.5, 1.0])),
                      meta={"filename_or_obj": "/in/case_1.nii.gz"})
    out = SegmentationConfidenced("pred", report)({"pred": pred})
    assert out["pred"] is pred
    record = json.loads((tmp_path / "case_1_confidence.json").read_text())
    p = math.exp(4) / (math.exp(4) + 2)
    assert record["measures"]["foreground_confidence"] == pytest.approx(p, abs=1e-6)
    assert record["measures"]["foreground_volume_mm3"] == 4 * 3.0 and record["volume_mm3_per_label"] == {"1": 12.0,
                                                                                                          "2": 0.0}


def test_blank_images_are_refused():
    refuse_uninformative(np.array([[[0, 1]]]), "ok.png")
    for image in (np.zeros((1, 4, 4)), np.full((3, 4, 4), 128.0), torch.full((1, 2, 2, 2), 7.0)):
        with pytest.raises(ValueError, match="blank.nii holds one value everywhere"):
            refuse_uninformative(image, "blank.nii")
    rgb = np.stack([np.full((4, 4), 10.0), np.full((4, 4), 20.0), np.arange(16.0).reshape(4, 4)])
    refuse_uninformative(rgb, "one informative channel.png")
    with pytest.raises(ValueError, match="under 'image' holds one value"):
        RefuseUninformatived("image")({"image": np.zeros((1, 3, 3))})
