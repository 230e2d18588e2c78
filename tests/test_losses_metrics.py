"""Tests of robust_bundles.losses (DiceCELoss, per_sample_terms, primary_output) and robust_bundles.metrics (slice_dice,
SliceDiceMetric) against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from robust_bundles.losses import per_sample_terms, primary_output
from robust_bundles.metrics import nanmean
from robust_bundles.tasks.segmentation import DiceCELoss, SliceDiceMetric, as_class_indices, slice_dice


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ------------------------------------------------------------------------------------------ DiceCELoss: 2 classes
def two_class_case():
    """2 classes, one 2x2 image; class-0 logits 0, class-1 logits [[2, -1], [0, 1]], label [[1, 0], [0, 1]]."""
    l1 = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    logits = torch.stack([torch.zeros(2, 2), l1])[None]  # (1, 2, 2, 2)
    label = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[None, None]  # (1, 1, 2, 2)
    return logits, label


def test_ce_term_by_hand():
    logits, label = two_class_case()
    # -log softmax of the true class; with class-0 logit 0: p1 = sigmoid(l1)
    per_pixel = [-math.log(sig(2.0)), -math.log(1 - sig(-1.0)), -math.log(1 - sig(0.0)), -math.log(sig(1.0))]
    ce = sum(per_pixel) / 4
    terms = DiceCELoss().terms(logits, label)
    assert terms.shape == (1, 2)
    assert terms[0, 1].item() == pytest.approx(ce, abs=1e-6)
    # numbers: log(1+e^-2), log(1+e^-1), log 2, log(1+e^-1)
    assert ce == pytest.approx((math.log1p(math.exp(-2)) + 2 * math.log1p(math.exp(-1)) + math.log(2)) / 4)


def test_dice_term_by_hand():
    logits, label = two_class_case()
    p1 = [sig(2.0), sig(-1.0), sig(0.0), sig(1.0)]
    y1 = [1, 0, 0, 1]
    inter = sum(p * y for p, y in zip(p1, y1))
    denom = sum(p1) + sum(y1)
    dice_term = DiceCELoss().terms(logits, label)[0, 0].item()
    assert dice_term == pytest.approx(1 - 2 * inter / denom, abs=1e-5)  # within the smoothing
    s = 1e-5
    assert dice_term == pytest.approx(1 - (2 * inter + s) / (denom + s), abs=1e-6)  # exact formula
    # include_background: mean over classes 0 and 1
    p0 = [1 - p for p in p1]
    y0 = [1 - y for y in y1]
    d0 = 2 * sum(p * y for p, y in zip(p0, y0)) / (sum(p0) + sum(y0))
    both = DiceCELoss(include_background=True).terms(logits, label)[0, 0].item()
    assert both == pytest.approx(1 - (d0 + 2 * inter / denom) / 2, abs=1e-5)


# ----------------------------------------------------------------------------------- DiceCELoss: 3 classes, 4x4
L6 = math.log(6.0)  # winner logit log 6, others 0: softmax (0.75, 0.125, 0.125) for 3 classes


def logits_from_map(cls_map: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """(B, H, W) class map -> logits (B, C, H, W) with log(6) on the winner: p = 0.75 winner, 0.125 others."""
    return F.one_hot(cls_map.long(), num_classes).movedim(-1, 1).float() * L6


def three_class_case():
    pred_a = torch.zeros(4, 4)
    pred_a[0:2, 1:3] = 1  # 4 pixels of class 1
    lab_a = torch.zeros(4, 4)
    lab_a[0, 1:3] = 1
    lab_a[1, 1] = 1  # 3 pixels of class 1, all inside the prediction
    pred_b = pred_a.clone()
    pred_b[3, 3] = 2  # one false-positive pixel of class 2
    pred_c = torch.zeros(4, 4)  # no foreground anywhere
    preds = torch.stack([pred_a, pred_b, pred_c])
    labels = torch.stack([lab_a, lab_a, torch.zeros(4, 4)])[:, None]
    return logits_from_map(preds), labels


def test_dice_term_over_present_classes_by_hand():
    logits, labels = three_class_case()
    t = DiceCELoss().terms(logits, labels)
    # sample a: class 1: sum p1 = 0.75*4 + 0.125*12 = 4.5, sum y1 = 3, sum p1*y1 = 0.75*3 = 2.25 -> Dice 4.5/7.5 = 0.6;
    #           class 2 absent in label and prediction -> not averaged: term 1 - 0.6
    assert t[0, 0].item() == pytest.approx(0.4, abs=1e-5)
    # sample b: class 1 unchanged (0.6); class 2 predicted (1 pixel), not in label: Dice 0 -> mean 0.3
    assert t[1, 0].item() == pytest.approx(0.7, abs=1e-5)
    # sample c: no foreground in label nor prediction -> exactly 0
    assert t[2, 0].item() == 0.0
    # CE: -log 0.75 on agreeing pixels, -log 0.125 on disagreeing ones
    ok, bad = -math.log(0.75), -math.log(0.125)
    assert t[0, 1].item() == pytest.approx((15 * ok + bad) / 16, abs=1e-6)
    assert t[1, 1].item() == pytest.approx((14 * ok + 2 * bad) / 16, abs=1e-6)
    assert t[2, 1].item() == pytest.approx(ok, abs=1e-6)
    # include_background on the empty sample: class 0: sum p0 = 0.75*16 = 12, sum y0 = 16, inter 12 -> 24/28
    tb = DiceCELoss(include_background=True).terms(logits, labels)
    assert tb[2, 0].item() == pytest.approx(1 - 24 / 28, abs=1e-5)


def test_dice_term_zero_is_exact_for_empty_samples_with_any_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 5, 5, generator=g)
    logits[:, 0] += 10  # argmax background everywhere
    t = DiceCELoss().terms(logits, torch.zeros(3, 1, 5, 5))
    assert torch.equal(t[:, 0], torch.zeros(3))
    assert (t[:, 1] > 0).all()


def test_one_hot_label_and_forward_weights():
    logits, labels = three_class_case()
    onehot = F.one_hot(labels[:, 0].long(), 3).movedim(-1, 1).float()
    loss = DiceCELoss(lambda_dice=0.3, lambda_ce=2.0)
    t = loss.terms(logits, labels)
    assert torch.allclose(loss.terms(logits, onehot), t)
    assert loss.term_names == ("dice", "ce") and loss.term_weights == (0.3, 2.0) and loss.num_terms == 2
    assert torch.allclose(loss(logits, labels), 0.3 * t[:, 0] + 2.0 * t[:, 1])
    assert loss(logits, labels).shape == (3,)
    # class indices without the channel dim (B, H, W) are accepted too; a spatial mismatch is not
    assert torch.allclose(loss.terms(logits, labels[:, 0]), t)
    with pytest.raises(ValueError, match="shape"):
        loss.terms(logits, labels[:, 0, :, :1])


def test_terms_are_differentiable_and_3d():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 3, 4, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 3, 4, 5), generator=g).float()
    t = DiceCELoss(spatial_dims=3).terms(logits, labels)
    assert t.shape == (2, 2) and torch.isfinite(t).all()
    t.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------------ deep supervision
def test_deep_supervision_weighted_heads():
    g = torch.Generator().manual_seed(2)
    stack = torch.randn(2, 3, 3, 4, 4, generator=g)  # (B, S, C, H, W)
    labels = torch.randint(0, 3, (2, 1, 4, 4), generator=g).float()
    plain = DiceCELoss()
    per_head = [plain.terms(stack[:, s], labels) for s in range(3)]
    w = [1.0, 0.5, 0.25]
    expected = sum(wi / 1.75 * h for wi, h in zip(w, per_head))
    ds = DiceCELoss(deep_supervision=True, lambda_ce=0.5)
    assert torch.allclose(ds.terms(stack, labels), expected, atol=1e-6)
    assert torch.allclose(ds(stack, labels), expected[:, 0] + 0.5 * expected[:, 1], atol=1e-6)
    # a single-head stack equals the plain loss; a tuple holding the stack works too
    assert torch.allclose(ds.terms(stack[:, :1], labels), per_head[0], atol=1e-6)
    assert torch.allclose(ds.terms((stack, "aux"), labels), expected, atol=1e-6)
    # a plain output under a deep-supervision loss is not treated as a stack
    assert torch.allclose(ds.terms(stack[:, 0], labels), per_head[0])
    # without deep_supervision a stack does not match the label
    with pytest.raises(ValueError):
        plain.terms(stack, labels)


def test_primary():
    g = torch.Generator().manual_seed(3)
    stack = torch.randn(2, 3, 2, 4, 4, generator=g)
    ds = DiceCELoss(deep_supervision=True, spatial_dims=2)
    assert torch.equal(ds.primary(stack), stack[:, 0])
    assert torch.equal(ds.primary((stack, None)), stack[:, 0])
    plain_out = stack[:, 0]
    assert ds.primary(plain_out) is plain_out
    assert DiceCELoss().primary(plain_out) is plain_out
    assert DiceCELoss().primary(stack) is stack  # without deep supervision nothing is unstacked
    ds3 = DiceCELoss(deep_supervision=True, spatial_dims=3)
    assert ds3.primary(stack) is stack  # a 3D plain output has the same ndim as a 2D stack


def test_label_errors():
    logits = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match="Label values"):
        DiceCELoss().terms(logits, torch.full((1, 1, 3, 3), 2.0))
    with pytest.raises(ValueError, match="Label values"):
        DiceCELoss().terms(logits, torch.full((1, 1, 3, 3), -1.0))
    with pytest.raises(ValueError, match="shape"):
        DiceCELoss().terms(logits, torch.zeros(1, 1, 4, 3))
    with pytest.raises(ValueError, match="shape"):
        DiceCELoss().terms(logits, torch.zeros(2, 3, 3, 3))


# --------------------------------------------------------------------------------- primary_output, per_sample_terms
def test_primary_output():
    a, b = torch.zeros(1), torch.ones(1)
    assert primary_output(a) is a
    assert primary_output((a, b)) is a and primary_output([a, b]) is a
    assert primary_output({"x": a, "y": b}) is a and primary_output({"x": a, "y": b}, key="y") is b
    assert primary_output(((a, b), b)) is a
    assert primary_output((a, b), key=1) is b
    with pytest.raises(ValueError):
        primary_output({})
    with pytest.raises(ValueError):
        primary_output(())
    with pytest.raises(TypeError):
        primary_output("logits")


def test_per_sample_terms():
    out = per_sample_terms(lambda p, t: p.flatten(1).mean(1), torch.ones(3, 2, 2), None)
    assert out.shape == (3, 1)
    out = per_sample_terms(lambda p, t: torch.stack([p.sum((1, 2)), p.amax((1, 2))], 1), torch.ones(3, 2, 2), None)
    assert out.tolist() == [[4.0, 1.0]] * 3
    with pytest.raises(ValueError, match="per-sample"):
        per_sample_terms(lambda p, t: p, torch.ones(3, 2, 2), None)
    with pytest.raises(TypeError):
        per_sample_terms(lambda p, t: 1.0, torch.ones(3, 2, 2), None)
    logits, labels = three_class_case()
    assert torch.equal(per_sample_terms(DiceCELoss(), logits, labels), DiceCELoss().terms(logits, labels))


# ------------------------------------------------------------------------------------------------------ slice_dice
def maps():
    """Five 4x4 slices, classes {0, 1, 2}; per-slice Dice by hand in the comments."""
    P = torch.zeros(5, 4, 4, dtype=torch.long)
    L = torch.zeros(5, 4, 4, dtype=torch.long)
    # A: class 1 label 3 px, prediction 3 px, overlap 2 -> 2*2/(3+3) = 2/3; class 2 absent in both -> 2/3
    L[0, 0, 0:3] = 1
    P[0, 0, 1:4] = 1
    # B: class 1 perfect (1); class 2 in label (2 px) but not predicted (0) -> 0.5
    L[1, 1, 0:2] = 1
    P[1, 1, 0:2] = 1
    L[1, 3, 0:2] = 2
    # C: class 1 label 2 px, prediction 2 px, overlap 1 -> 0.5; class 2 label 2 px = prediction -> 1 -> 0.75
    L[2, 0, 0:2] = 1
    P[2, 0, 1:3] = 1
    L[2, 2, 2:4] = 2
    P[2, 2, 2:4] = 2
    # D: no foreground in label nor prediction -> NaN, or 1 with include_empty
    # E: no foreground in the label, a false positive of class 2 -> NaN, or 0 with include_empty
    P[4, 3, 3] = 2
    return P, L


HAND = [2 / 3, 0.5, 0.75]


def test_slice_dice_by_hand():
    P, L = maps()
    d = slice_dice(P[:, None].float(), L[:, None].float(), num_classes=3)
    assert d[:3].tolist() == pytest.approx(HAND, abs=1e-7)
    assert math.isnan(d[3]) and math.isnan(d[4])
    de = slice_dice(P[:, None].float(), L[:, None].float(), num_classes=3, include_empty=True)
    assert de.tolist() == pytest.approx(HAND + [1.0, 0.0], abs=1e-7)


def test_slice_dice_input_forms_agree():
    P, L = maps()
    logits = F.one_hot(P, 3).movedim(-1, 1).float() * 5 - 1  # argmax = P
    onehot_label = F.one_hot(L, 3).movedim(-1, 1).float()
    ref = slice_dice(P[:, None].float(), L[:, None].float(), num_classes=3, include_empty=True)
    assert torch.equal(slice_dice(logits, L[:, None].float(), include_empty=True), ref)
    assert torch.equal(slice_dice(logits, onehot_label, include_empty=True), ref)
    assert torch.equal(slice_dice((logits, None), onehot_label, include_empty=True), ref)  # tuple output
    assert torch.equal(slice_dice({"seg": logits}, onehot_label, include_empty=True), ref)  # dict output
    assert torch.equal(as_class_indices(logits), P)


def test_slice_dice_false_positive_class_counts():
    """A class present only in the prediction is averaged in (Dice 0 for it)."""
    L = torch.zeros(1, 1, 4, 4)
    L[0, 0, 0, 0:2] = 1
    P = L.clone()
    P[0, 0, 3, 3] = 2
    assert slice_dice(P, L, num_classes=3).tolist() == [0.5]


def test_slice_dice_errors():
    P, L = maps()
    with pytest.raises(ValueError, match="num_classes"):
        slice_dice(P[:, None].float(), L[:, None].float())
    with pytest.raises(ValueError):
        slice_dice(P[:, None, :3].float(), L[:, None].float(), num_classes=3)


def test_slice_dice_metric_aggregates_nanmean():
    P, L = maps()
    logits = F.one_hot(P, 3).movedim(-1, 1).float()
    lab = L[:, None].float()
    m = SliceDiceMetric(num_classes=3)
    m(logits[[0, 1, 3]], lab[[0, 1, 3]])  # A, B, D
    m(logits[[2, 4]], lab[[2, 4]])  # C, E
    assert m.aggregate().item() == pytest.approx(sum(HAND) / 3, abs=1e-6)
    buf = m.get_buffer()
    assert buf.shape == (5, 1) and torch.isnan(buf).sum() == 2
    assert m.aggregate().item() == pytest.approx(nanmean(buf.flatten()), abs=1e-7)
    m.reset()
    with pytest.raises(ValueError):
        m.aggregate()
    me = SliceDiceMetric(num_classes=3, include_empty=True)
    me(logits[[0, 1, 3]], lab[[0, 1, 3]])
    me(logits[[2, 4]], lab[[2, 4]])
    assert me.aggregate().item() == pytest.approx((sum(HAND) + 1.0 + 0.0) / 5, abs=1e-6)
    with pytest.raises(ValueError, match="labels"):
        SliceDiceMetric(num_classes=3)(logits)


def test_nanmean():
    assert nanmean(torch.tensor([1.0, float("nan"), 3.0])) == 2.0
    assert math.isnan(nanmean(torch.tensor([float("nan")])))
    assert math.isnan(nanmean(torch.tensor([])))
