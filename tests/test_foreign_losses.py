"""The per-sample wrapper of MONAI's batch-reduced losses: hand-checked values."""

import math

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from robust_bundles.attacks import L2IFGSM
from robust_bundles.foreign import PerSampleWrapper
from robust_bundles.losses import per_sample_terms


def test_batch_dice_per_sample_is_the_sample_alone():
    # 1 channel, 4 voxels, no activation, no smoothing: Dice loss = 1 - 2 sum(p y) / (sum p + sum y)
    loss = DiceLoss(include_background=True, batch=True, smooth_nr=0.0, smooth_dr=0.0)
    p = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.5, 0.5, 0.5, 0.5]]])
    y = torch.tensor([[[1.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 0.0, 0.0]]])
    w = PerSampleWrapper(loss)
    assert w.term_names == ("loss",)
    v = w(p, y)
    # sample 0: 1 - 2*1/(2+1) = 1/3; sample 1: 1 - 2*1/(2+2) = 1/2
    assert v.tolist() == pytest.approx([1 / 3, 1 / 2], abs=1e-6)
    # batch=True over both: 1 - 2*2/(3+4) = 3/7, not the mean of the per-sample values (5/12)
    assert float(loss(p, y)) == pytest.approx(3 / 7, abs=1e-6)
    assert float(v.mean()) == pytest.approx(5 / 12, abs=1e-6)
    for b in range(2):
        assert float(v[b]) == pytest.approx(float(loss(p[b:b + 1], y[b:b + 1])), abs=1e-7)


def test_dice_ce_split_into_its_terms():
    loss = DiceCELoss(include_background=True, to_onehot_y=True, softmax=True, batch=True, smooth_nr=0.0,
                      smooth_dr=0.0, lambda_dice=0.5, lambda_ce=0.5)
    w = PerSampleWrapper(loss)
    assert w.term_names == ("dice", "ce") and w.term_weights == (0.5, 0.5)
    # sample 0: logits (0, ln 3) at both voxels -> p1 = 0.75; labels 1, 1
    # sample 1: logits (ln 3, 0) at both voxels -> p0 = 0.75; labels 0, 1
    l3 = math.log(3.0)
    pred = torch.tensor([[[0.0, 0.0], [l3, l3]], [[l3, l3], [0.0, 0.0]]])
    label = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]])
    t = w.terms(pred, label)
    # sample 0: CE = -ln 0.75; Dice ch0: 1 - 0/(0.5+0) = 1, ch1: 1 - 2*1.5/(1.5+2) = 1/7 -> mean 4/7
    # sample 1: CE = (-ln 0.75 - ln 0.25)/2; Dice ch0: 1 - 2*0.75/(1.5+1) = 0.4, ch1: 1 - 2*0.25/(0.5+1) = 2/3
    ce1 = (-math.log(0.75) - math.log(0.25)) / 2
    assert t[0].tolist() == pytest.approx([4 / 7, -math.log(0.75)], abs=1e-6)
    assert t[1].tolist() == pytest.approx([(0.4 + 2 / 3) / 2, ce1], abs=1e-6)
    total = w(pred, label)
    for b in range(2):
        assert float(total[b]) == pytest.approx(float(loss(pred[b:b + 1], label[b:b + 1])), abs=1e-6)
    assert per_sample_terms(w, pred, label).shape == (2, 2)


def test_refuses_voxelwise_reduction_and_drives_an_attack():
    w = PerSampleWrapper(DiceLoss(reduction="none"))
    with pytest.raises(TypeError, match="scalar is needed"):
        w(torch.rand(2, 2, 4, 4), torch.ones(2, 2, 4, 4))  # (1, 2, 1, 1) per sample: one per class
    # the wrapped batch loss drives the project's attacks (they refused the batch-mean scalar)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    loss = PerSampleWrapper(DiceCELoss(to_onehot_y=True, softmax=True, batch=True))
    x = torch.rand(2, 1, 8, 8)
    y = (torch.rand(2, 1, 8, 8) > 0.5).float()
    res = L2IFGSM(net, loss, steps=3).run(x, y, eps=1.0)
    assert res.norms.tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    with torch.no_grad():
        assert (loss(net(res.x_adv), y) > loss(net(x), y)).all()


def test_sigmoid_dice_on_a_collated_metatensor_batch():
    from monai.data import MetaTensor, list_data_collate

    # 2 channels (overlapping labels), 2 voxels, sigmoid of logits 0 -> 0.5 everywhere; no smoothing
    loss = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=0.0)
    items = [{"image": MetaTensor(torch.zeros(2, 2)), "label": MetaTensor(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))},
             {"image": MetaTensor(torch.zeros(2, 2)), "label": MetaTensor(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))}]
    for i, it in enumerate(items):
        it["image"].meta["filename_or_obj"] = f"case_{i}.nii.gz"
    batch = list_data_collate(items)
    v = PerSampleWrapper(loss)(batch["image"], batch["label"])
    # sample 0: ch0 1 - 2*0.5/(1+1) = 1/2, ch1 1 - 2*1/(1+2) = 1/3 -> 5/12; sample 1: ch0 1 - 2*1/(1+2) = 1/3,
    # ch1 1 - 0/(1+0) = 1 -> 2/3
    assert v.tolist() == pytest.approx([5 / 12, 2 / 3], abs=1e-6)
    # boolean masks (BraTS' label transform), with squared_pred as in the BraTS bundle: sum p^2 = 0.5 per channel
    bool_label = batch["label"].bool()
    sq = PerSampleWrapper(DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0.0, smooth_dr=0.0))
    # sample 0: ch0 1 - 2*0.5/(0.5+1) = 1/3, ch1 1 - 2*1/(0.5+2) = 1/5; sample 1: ch0 1/5, ch1 1 - 0 = 1
    assert sq(batch["image"], bool_label).tolist() == pytest.approx([(1 / 3 + 1 / 5) / 2, (1 / 5 + 1) / 2], abs=1e-6)


def test_torch_losses_per_sample_equal_each_sample_alone():
    pred = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    label = torch.tensor([1, 0])
    # CE with reduction='sum' (classification_template): -ln(3/4) and -ln(1/2)
    ce = PerSampleWrapper(torch.nn.CrossEntropyLoss(reduction="sum"))
    assert ce(pred, label).tolist() == pytest.approx([-math.log(0.75), math.log(2.0)], abs=1e-6)
    # regression of 2 points (B, 2, 2): L1 mean of |d| and MSE mean of d^2 per sample
    p = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    y = torch.tensor([[[1.0, 2.0], [3.0, 0.0]], [[1.0, 1.0], [1.0, -1.0]]])
    assert PerSampleWrapper(torch.nn.L1Loss())(p, y).tolist() == pytest.approx([1.0, 1.0])
    assert PerSampleWrapper(torch.nn.MSELoss())(p, y).tolist() == pytest.approx([4.0, 1.0])
    for fn in (torch.nn.L1Loss(), torch.nn.MSELoss()):
        w = PerSampleWrapper(fn)(p, y)
        assert [float(fn(p[b:b + 1], y[b:b + 1])) for b in range(2)] == pytest.approx(w.tolist())


def test_dice_focal_with_onehot_and_no_background_is_split_exactly():
    from monai.losses import DiceFocalLoss

    # the endoscopic bundle's loss: to_onehot_y, no background, softmax, jaccard
    loss = DiceFocalLoss(include_background=False, to_onehot_y=True, softmax=True, jaccard=True)
    torch.manual_seed(0)
    pred = torch.randn(2, 2, 4, 4)
    label = (torch.rand(2, 1, 4, 4) > 0.5).float()
    w = PerSampleWrapper(loss)
    t = w.terms(pred, label)
    assert w.term_names == ("dice", "focal") and t.shape == (2, 2)
    for b in range(2):
        assert float(w(pred, label)[b]) == pytest.approx(float(loss(pred[b:b + 1], label[b:b + 1])), abs=1e-6)


def test_a_split_that_does_not_add_up_falls_back_to_one_term():
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    w = PerSampleWrapper(loss)
    w._fns = [lambda p, t: loss.dice(p, t), lambda p, t: torch.tensor(5.0)]  # a wrong second term
    pred, label = torch.randn(2, 2, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    v = w(pred, label)
    assert w.term_names == ("loss",)
    assert v.tolist() == pytest.approx([float(loss(pred[b:b + 1], label[b:b + 1])) for b in range(2)], abs=1e-6)


def test_dict_outputs_and_targets_per_sample():
    """HoVerNet's shape: the network returns a dict of branches, the bundle's prepare_batch a dict of targets, and
    the loss takes both dicts. Each sample's value is the loss of its slices alone (by hand: squared errors)."""
    def loss(p, t):
        return ((p["np"] - t["np"]) ** 2).mean() + 2 * ((p["hv"] - t["hv"]) ** 2).mean()

    pred = {"np": torch.tensor([[[1.0, 1.0]], [[0.0, 2.0]]]), "hv": torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]]])}
    target = {"np": torch.zeros(2, 1, 2), "hv": torch.zeros(2, 1, 2)}
    w = PerSampleWrapper(loss)
    # sample 0: np mean 1, hv 0 -> 1; sample 1: np (0 + 4) / 2 = 2, hv 2 * 1 = 2 -> 4
    assert w.terms(pred, target)[:, 0].tolist() == [1.0, 4.0]
    assert w.term_names == ("loss",)
