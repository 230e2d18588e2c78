"""Exact tests of the attack objectives of robust_bundles.attack_losses (hand-computed values)."""

from __future__ import annotations

import math

import pytest
import torch

from robust_bundles.attack_losses import CosineWeightedCE, TermLoss
from robust_bundles.losses import PerSampleLoss
from robust_bundles.tasks.landmark_distance import LandmarkDistanceLoss
from robust_bundles.tasks.landmarks import landmark_targets


class TwoTerms(PerSampleLoss):
    term_names = ("a", "b")
    term_weights = (2.0, 3.0)

    def terms(self, pred, target):
        return torch.stack([pred.sum(1), (pred * target).sum(1)], 1)


def test_term_loss_keeps_one_term_unweighted():
    pred, target = torch.tensor([[1.0, 2.0], [3.0, -1.0]]), torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    b = TermLoss(TwoTerms(), "b")
    assert b.term_names == ("b",) and b.term_weights == (1.0,)
    assert torch.equal(b.terms(pred, target), torch.tensor([[1.0], [4.0]]))
    assert torch.equal(b(pred, target), torch.tensor([1.0, 4.0]))
    with pytest.raises(ValueError, match=r"no term 'c'; its terms are \['a', 'b'\]"):
        TermLoss(TwoTerms(), "c")


def test_cosine_weighted_ce_by_hand():
    """Pixel 0: logits (0, 0), label 0: p = (.5, .5), CE ln 2, weight .5 / sqrt(.5). Pixel 1: logits (ln 3, 0),
    label 1: p = (.75, .25), CE ln 4, weight .25 / sqrt(.625). The loss is the mean of weight * CE."""
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]], requires_grad=True)  # (1, 2, 1, 2)
    label = torch.tensor([[[[0, 1]]]])
    w0, w1 = 0.5 / math.sqrt(0.5), 0.25 / math.sqrt(0.625)
    value = CosineWeightedCE()(logits, label)
    assert value.shape == (1,)
    assert value.item() == pytest.approx((w0 * math.log(2) + w1 * math.log(4)) / 2, rel=1e-6)
    # the weight carries no gradient: d/dz = weight * (p - onehot) / (number of pixels)
    value.sum().backward()
    expected = torch.tensor([[[[w0 * -0.5, w1 * 0.75]], [[w0 * 0.5, w1 * -0.75]]]]) / 2
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    # a one-hot label gives the same
    onehot = torch.tensor([[[[1, 0]], [[0, 1]]]])
    assert torch.allclose(CosineWeightedCE()(logits, onehot), value)


def test_cosine_weight_moves_to_the_correct_pixels():
    """A certain correct voxel weighs ~1, a certain wrong one ~0: the correct ones dominate the objective."""
    logits = torch.tensor([[[[8.0, -8.0]], [[-8.0, 8.0]]]])
    label = torch.tensor([[[[0, 0]]]])  # pixel 0 correct, pixel 1 wrong
    ce = torch.nn.functional.cross_entropy(logits, label[:, 0], reduction="none")
    value = CosineWeightedCE()(logits, label)
    assert value.item() == pytest.approx((ce[0, 0, 0] * 1.0 + ce[0, 0, 1] * math.exp(-16)).item() / 2, rel=1e-3)
    with pytest.raises(ValueError, match="does not match"):
        CosineWeightedCE()(logits, torch.zeros(1, 1, 3, 3))


def test_landmark_targets_read_back_exactly():
    loss = LandmarkDistanceLoss(num_landmarks=2, radius=2.0)
    target = landmark_targets([[1.3, 0.6], [4.0, 2.5]], (5, 6), 2.0)[None]
    pts, present = loss.targets(target)
    assert torch.allclose(pts, torch.tensor([[[1.3, 0.6], [4.0, 2.5]]]), atol=1e-5)
    assert present.tolist() == [[True, True]]


def test_landmark_distance_by_hand():
    """One landmark, R = 2: the heatmap picks pixel (row 1, col 2) whose offsets (0.5, -0.25) vote for
    (2 + 2 * 0.5, 1 - 2 * 0.25) = (3, 0.5); the target landmark is (0, 0): distance sqrt(9 + 0.25)."""
    pred = torch.zeros(1, 3, 3, 3)
    pred[0, 0] = -100.0
    pred[0, 0, 1, 2] = 100.0
    pred[0, 1, 1, 2], pred[0, 2, 1, 2] = 0.5, -0.25
    target = landmark_targets([[0.0, 0.0]], (3, 3), 2.0)[None]
    loss = LandmarkDistanceLoss(num_landmarks=1, radius=2.0)
    assert torch.allclose(loss.points(pred), torch.tensor([[[3.0, 0.5]]]))
    assert loss(pred, target).item() == pytest.approx(math.sqrt(9.25), rel=1e-6)
    # uniform logits: the mean vote, (1, 1) without offsets: distance sqrt(2)
    assert loss(torch.zeros(1, 3, 3, 3), target).item() == pytest.approx(math.sqrt(2), rel=1e-6)
    # a landmark without a disk (outside the image) does not count
    two = LandmarkDistanceLoss(num_landmarks=2, radius=2.0)
    t2 = landmark_targets([[0.0, 0.0], [50.0, 50.0]], (3, 3), 2.0)[None]
    assert two(torch.zeros(1, 6, 3, 3), t2).item() == pytest.approx(math.sqrt(2), rel=1e-6)
