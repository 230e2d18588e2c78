"""robust_bundles.tasks.landmarks: frames, targets, decoding, the three-term loss, MRE/SDR and the inference writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from robust_bundles.tasks.landmarks import (
    LandmarkLoss,
    LandmarkMetric,
    LandmarkTargetsd,
    LandmarkWriter,
    decode_landmarks,
    init_heatmap_bias,
    landmark_targets,
    split_heads,
    to_network_frame,
    to_original_frame,
)

L, H, W, R = 19, 200, 160, 8.0
ORIG = (2400, 1935)  # (H0, W0) of the ISBI images


def _perfect_output(targets: torch.Tensor, margin: float = 20.0) -> torch.Tensor:
    """The output of a perfect network: heatmap logits +-margin on/off the disks, exact offsets."""
    n = targets.shape[0] // 3
    logits = torch.where(targets[:n] > 0, torch.tensor(margin), torch.tensor(-margin))
    return torch.cat([logits, targets[n:]], 0)


def test_frames_map_pixel_centres_and_round_trip():
    # the centre of original pixel column 0 maps to -0.5 + 0.5 * 160 / 1935; the image edges map to the edges
    edges = torch.tensor([[-0.5, -0.5], [1934.5, 2399.5]])
    assert torch.allclose(to_network_frame(edges, ORIG, (H, W)), torch.tensor([[-0.5, -0.5], [159.5, 199.5]]).double())
    x = torch.tensor([[0.0, 0.0]])
    assert to_network_frame(x, ORIG, (H, W))[0, 0].item() == pytest.approx(0.5 * 160 / 1935 - 0.5)
    pts = torch.rand(3, L, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1934.0, 2399.0])
    sizes = torch.tensor([ORIG] * 3)
    back = to_original_frame(to_network_frame(pts, sizes, (H, W)), sizes, (H, W))
    assert torch.allclose(back, pts.double(), atol=1e-9)


def test_targets_by_hand():
    t = landmark_targets([[2.0, 1.0]], (4, 5), radius=1.5)  # one landmark at x=2, y=1
    heat, ox, oy = t[0], t[1], t[2]
    # pixels within 1.5 of (2, 1): (x, y) in {(1..3, 0..2)} minus the corners at distance sqrt(2) < 1.5: all 9 in
    expected = torch.zeros(4, 5)
    expected[0:3, 1:4] = 1
    expected[1, 0] = expected[1, 4] = 0  # distance 2 > 1.5
    assert torch.equal(heat, expected)
    assert ox[1, 1].item() == pytest.approx(1 / 1.5) and oy[1, 1].item() == 0.0  # (2 - 1) / R, (1 - 1) / R
    assert oy[0, 2].item() == pytest.approx(1 / 1.5) and ox[0, 2].item() == 0.0
    assert ox[3, 0].item() == 0.0  # off the disk
    with pytest.raises(ValueError, match="radius must be > 0"):
        landmark_targets([[0.0, 0.0]], (4, 4), 0.0)


def test_targets_then_decoding_round_trip_within_half_a_pixel():
    gen = torch.Generator().manual_seed(1)
    for radius in (3.0, 8.0):
        # anywhere in the image, near the borders too (part of the disk outside)
        pts = torch.rand(L, 2, generator=gen) * torch.tensor([W - 1.0, H - 1.0])
        pts[0] = torch.tensor([0.2, 0.3])
        pts[1] = torch.tensor([W - 1.0, H - 1.2])
        out = _perfect_output(landmark_targets(pts, (H, W), radius))[None]
        decoded = decode_landmarks(out, L, radius)[0].double()
        err = (decoded - pts.double()).norm(dim=-1)
        assert err.max().item() < 0.5, radius
        assert err.max().item() < 1e-3  # exact offsets vote exactly


def test_decoding_ignores_outlier_votes():
    pts = torch.tensor([[50.0, 60.0]])
    t = landmark_targets(pts, (100, 100), 5.0)
    out = _perfect_output(t)
    out[1, 60, 50] = 3.0  # one pixel's x offset votes 15 pixels off
    decoded = decode_landmarks(out[None], 1, 5.0)[0, 0]
    assert torch.allclose(decoded, pts[0], atol=1e-4)


def test_loss_terms_by_hand():
    target = landmark_targets([[1.0, 1.0]], (3, 3), 1.0)  # a plus-shaped disk of 5 pixels
    out = torch.zeros(3, 3, 3)  # logits 0 -> p = 0.5 everywhere; offsets 0
    bce = LandmarkLoss(1, "bce").terms(out[None], target[None])[0]
    assert bce[0].item() == pytest.approx(math.log(2))  # -log(0.5) at every pixel
    # offsets: |t| on the disk is 1 at the 4 arms (x offsets at 2 of them, y offsets at the other 2): mean 2/5
    assert bce[1].item() == pytest.approx(2 / 5) and bce[2].item() == pytest.approx(2 / 5)
    dice = LandmarkLoss(1, "dice", smooth=1.0).terms(out[None], target[None])[0]
    # soft Dice: (2 * 0.5 * 5 + 1) / (0.5 * 9 + 5 + 1)
    assert dice[0].item() == pytest.approx(1 - 6 / 10.5)
    perfect = LandmarkLoss(1, "dice").terms(_perfect_output(target)[None], target[None])[0]
    assert perfect.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    loss = LandmarkLoss(1, "bce", heatmap_weight=2.0, offset_weight=0.5)
    assert loss(out[None], target[None]).item() == pytest.approx(2 * math.log(2) + 0.5 * 0.8)
    assert loss.term_names == ("heatmap", "offset_x", "offset_y") and loss.num_terms == 3
    assert set(loss.heads(out[None])) == {"heatmap", "offset_x", "offset_y"}
    with pytest.raises(ValueError, match="out_channels to 6"):
        split_heads(torch.zeros(1, 5, 3, 3), 2)
    with pytest.raises(ValueError, match="'bce' or 'dice'"):
        LandmarkLoss(1, "mse")


def test_metric_mre_and_sdr_by_hand():
    # two images of 2 landmarks; truth in original pixels, spacing 0.1 mm
    truth = torch.tensor([[[100.0, 200.0], [300.0, 400.0]], [[500.0, 600.0], [700.0, 800.0]]])
    # predictions 15, 24 (image 1) and 35, 0 (image 2) pixels off: 1.5, 2.4, 3.5, 0 mm (no error on an SDR radius)
    pred_orig = truth + torch.tensor([[[15.0, 0.0], [0.0, 24.0]], [[21.0, 28.0], [0.0, 0.0]]])
    net = to_network_frame(pred_orig, torch.tensor([ORIG, ORIG]), (H, W))
    out = torch.stack([_perfect_output(landmark_targets(net[b], (H, W), R)) for b in range(2)])
    batch = {"landmarks": truth, "spacing": torch.tensor([[0.1, 0.1]] * 2), "orig_size": torch.tensor([ORIG] * 2)}
    m = LandmarkMetric(2, R, landmark_names=["a", "b"])
    values = m.update(out, batch)
    assert values["MRE"].tolist() == pytest.approx([1.95, 1.75], abs=1e-3)
    assert values["SDR_2mm"].tolist() == [50.0, 50.0]
    assert values["SDR_2.5mm"].tolist() == [100.0, 50.0]
    assert values["SDR_4mm"].tolist() == [100.0, 100.0]
    agg = m.aggregate()
    assert agg["MRE"] == pytest.approx(1.85, abs=1e-3) and agg["SDR_3mm"] == 75.0
    d = m.details()["per_landmark"]
    assert d["a"]["MRE"] == pytest.approx(2.5, abs=1e-3) and d["b"]["MRE"] == pytest.approx(1.2, abs=1e-3)
    assert d["a"]["SDR_2mm"] == 50.0 and d["b"]["SDR_4mm"] == 100.0
    assert [s.name for s in m.specs] == ["MRE", "SDR_2mm", "SDR_2.5mm", "SDR_3mm", "SDR_4mm"]
    assert not m.specs[0].higher_is_better and m.specs[1].higher_is_better and m.specs[0].unit == "mm"
    with pytest.raises(KeyError, match="needs 'spacing'"):
        m.update(out, {"landmarks": truth, "orig_size": batch["orig_size"]})


def test_targets_transform_uses_the_original_size():
    sample = {"image": np.zeros((1, H, W), np.float32), "landmarks": np.array([[967.0, 1199.5]] * L, np.float32),
              "orig_size": np.array(ORIG)}
    out = LandmarkTargetsd(radius=R)(sample)
    assert out["label"].shape == (3 * L, H, W)
    decoded = decode_landmarks(_perfect_output(out["label"])[None], L, R)[0]
    expected = to_network_frame(torch.tensor([[967.0, 1199.5]]), ORIG, (H, W)).float()
    assert torch.allclose(decoded, expected.expand(L, 2), atol=1e-3)


def test_writer_outputs_json_csv_and_overlay(tmp_path):
    from PIL import Image

    image = tmp_path / "x.bmp"
    Image.fromarray(np.full((120, 90), 128, np.uint8)).save(image)
    w = LandmarkWriter(str(tmp_path / "out"), 2, R, landmark_names=["sella", "nasion"], overlay_size=60)
    w.write_one(str(image), torch.tensor([[10.0, 20.0], [30.5, 40.25]]), torch.tensor([0.1, 0.2]),
                torch.tensor([120, 90]))
    record = json.loads((tmp_path / "out" / "x_landmarks.json").read_text())
    assert record["height_px"] == 120 and record["width_px"] == 90 and record["spacing_mm"] == [0.1, 0.2]
    assert record["landmarks"][1] == {"landmark": 2, "name": "nasion", "x_px": 30.5, "y_px": 40.25, "x_mm": 3.05,
                                      "y_mm": 8.05}
    lines = (tmp_path / "out" / "x_landmarks.csv").read_text().splitlines()
    assert lines[0] == "landmark,name,x_px,y_px,x_mm,y_mm" and lines[1] == "1,sella,10.0,20.0,1.0,4.0"
    with Image.open(tmp_path / "out" / "x_overlay.png") as im:
        assert im.size == (45, 60)  # scaled to overlay_size pixels high


def test_init_heatmap_bias():
    from monai.networks.nets import BasicUNet

    net = init_heatmap_bias(BasicUNet(2, 1, 6, features=(2, 2, 2, 2, 2, 2)), 2, prior=0.02)
    assert net.final_conv.bias[:2].tolist() == pytest.approx([math.log(0.02 / 0.98)] * 2)
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 32, 32))
    assert torch.sigmoid(out[:, :2]).mean().item() < 0.1
    with pytest.raises(ValueError, match="no convolution with 9 output channels"):
        init_heatmap_bias(net, 3)
