"""Tests of robust_bundles.apgd (L2 / Linf APGD) against the checklist of ../shared/docs/evaluation.md, and against
torchattacks' APGD (an independent implementation) on a small classifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from test_attacks import _assert_same, _snapshot, _state_net, gen, make_batch, make_net

from robust_bundles.apgd import APGD, apgd, checkpoint_intervals
from robust_bundles.attacks import Attack, perturb
from robust_bundles.tasks.segmentation import DiceCELoss

REL = 1e-5


def test_checkpoints_are_the_papers():
    """Croce & Hein: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); checkpoints ceil(p_j T)."""
    ends = torch.tensor(checkpoint_intervals(100)).cumsum(0).tolist()
    assert ends == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoint_intervals(10) == [2] + [1] * 8
    assert checkpoint_intervals(1) == [1]
    assert checkpoint_intervals(0) == []


class Linear(nn.Module):
    """f(x) = <w, x> per sample: the L2 maximiser of f over the ball is x + eps w / ||w||."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


def _identity_loss(out, y):
    return out


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("steps", [1, 10])
def test_linear_model_reaches_the_exact_maximiser(norm, steps):
    w = torch.tensor([[[3.0, -4.0], [0.0, 0.0]]])
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    eps = torch.tensor([0.5, 0.0])
    r = apgd(Linear(w), _identity_loss, x, None, eps, steps=steps, norm=norm, random_start=False)
    move = w / 5.0 if norm == "l2" else w.sign()  # ||w||_2 = 5
    expected = x + eps.view(-1, 1, 1, 1) * move
    assert torch.allclose(r.x_adv, expected, atol=1e-6, rtol=0)
    assert torch.equal(r.x_adv[1], x[1])  # eps 0: exactly x
    # f(x) + eps ||w||_dual: 1*3 + 2*(-4) = -5, plus 0.5 * 5 (L2) or 0.5 * 7 (Linf: ||w||_1)
    gain = 5.0 if norm == "l2" else 7.0
    assert torch.allclose(r.loss[:, 0], torch.tensor([-5.0 + 0.5 * gain, 0.0]), atol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_bound_and_clamp_per_sample_eps(norm):
    net, loss = make_net(seed=3), DiceCELoss()
    x, y = make_batch(4, seed=4)
    eps = torch.tensor([0.3, 1.0, 4.0, 0.0]) if norm == "l2" else torch.tensor([0.02, 0.05, 0.5, 0.0])
    r = apgd(net, loss, x, y, eps, steps=12, norm=norm, clamp=(0.0, 1.0), generator=gen())
    d = (r.x_adv - x).flatten(1)
    size = d.double().norm(dim=1) if norm == "l2" else d.abs().amax(1)
    assert (size <= eps * (1 + REL) + 1e-7).all()
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert torch.equal(r.x_adv[3], x[3])
    assert torch.allclose(r.norms, size.float(), atol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_batch_equals_per_sample(norm):
    net, loss = make_net(3, norm="instance", seed=1), DiceCELoss()
    x, y = make_batch(3, shape=(4, 5, 6), seed=2)
    eps = torch.tensor([0.3, 2.5, 0.0]) if norm == "l2" else torch.tensor([0.02, 0.2, 0.0])
    whole = apgd(net, loss, x, y, eps, steps=8, norm=norm, random_start=False)
    for b in range(3):
        one = apgd(net, loss, x[b : b + 1], y[b : b + 1], eps[b : b + 1], steps=8, norm=norm, random_start=False)
        assert torch.allclose(whole.x_adv[b : b + 1], one.x_adv, atol=1e-5, rtol=0)
        assert torch.allclose(whole.loss[b : b + 1], one.loss, atol=1e-5)


def test_input_untouched_and_model_left_as_found():
    net, loss = _state_net("train"), DiceCELoss()
    net.conv.weight.grad = torch.randn_like(net.conv.weight)
    x, y = make_batch(4)
    x0 = x.clone()
    before = _snapshot(net)
    seen = []
    hook = net.bn.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    r = APGD(net, loss, eps=1.0, steps=5, train=False).run(x, y, generator=gen())
    hook.remove()
    _assert_same(before, _snapshot(net))
    assert torch.equal(x, x0) and not r.x_adv.requires_grad
    assert seen == [False] * 6  # eval mode forced; T forward-backward passes plus one forward pass


def test_returns_the_best_point_and_beats_its_start():
    """The loss at x_adv is the highest seen: at least the start's, and what a forward pass at x_adv gives."""
    net, loss = make_net(seed=5), DiceCELoss()
    x, y = make_batch(4, seed=6)
    r = apgd(net, loss, x, y, 1.5, steps=10, random_start=False)
    start = loss(net(x), y)
    again = loss(net(r.x_adv), y)
    assert torch.allclose(loss.forward(net(r.x_adv), y), again)
    assert torch.allclose((r.loss * torch.tensor(loss.term_weights)).sum(1), again, atol=1e-5)
    assert (again > start).all()


def test_no_step_to_tune_beats_pgd_with_a_bad_step():
    """PGD with a step far too small (alpha 0.05: 5 % of eps in total) barely moves; APGD needs no step."""
    net, loss = make_net(seed=5), DiceCELoss()
    x, y = make_batch(4, seed=6)
    a = apgd(net, loss, x, y, 2.0, steps=10, random_start=False)
    p = perturb(net, loss, x, y, 2.0, steps=10, alpha=0.05, random_start=False)
    assert (loss(net(a.x_adv), y) > loss(net(p.x_adv), y)).all()


def test_sliding_window_inferer_path():
    """Attacking through MONAI's sliding-window inferer (windows smaller than the image) gives a bounded attack that
    raises the loss of the inferer's output."""
    net, loss = make_net(seed=7), DiceCELoss()
    x, y = make_batch(2, shape=(12, 12), seed=8)
    inferer = SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=2, overlap=0.25)

    def forward(t):
        return inferer(t, net)

    r = APGD(eps=1.0, steps=6).run(x, y, model=net, loss_fn=loss, forward=forward, generator=gen())
    assert (r.norms <= 1.0 * (1 + REL)).all()
    with torch.no_grad():
        assert (loss(forward(r.x_adv), y) > loss(forward(x), y)).all()


def test_zero_gradient_counted():
    """A model whose output ignores the input: every step has a zero gradient, x stays at its start."""

    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.zeros(1, 2, 1, 1))

        def forward(self, t):
            return self.b.expand(t.shape[0], 2, *t.shape[2:])

    x, y = make_batch(3)
    r = apgd(Const(), DiceCELoss(), x, y, 1.0, steps=5, random_start=False)
    assert r.zero_grad_steps.tolist() == [5, 5, 5]
    assert torch.equal(r.x_adv, x)


def test_class_interface_and_errors():
    a = APGD(eps=0.5, steps=3)
    assert a.name == "APGD-L2" and isinstance(a, Attack)
    with pytest.raises(ValueError, match="no loss"):
        a.run(*make_batch(1))
    with pytest.raises(ValueError, match="rho"):
        APGD(rho=0.0)
    with pytest.raises(ValueError, match="steps"):
        apgd(make_net(), DiceCELoss(), *make_batch(1), 1.0, steps=-1)


# ------------------------------------------------------------------------------- torchattacks as the reference
class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def test_matches_torchattacks_apgd_l2():
    """Same model, CE loss, eps, 20 steps, one run and the same random start (torchattacks draws it with torch.randn
    after the seed; it is given to ours as a warm start): the best points and losses agree."""
    torchattacks = pytest.importorskip("torchattacks")
    model = TinyClassifier().eval()
    g = torch.Generator().manual_seed(12)
    x = torch.rand(16, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    eps, steps = 1.0, 20
    ref = torchattacks.APGD(model, norm="L2", eps=eps, steps=steps, n_restarts=1, loss="ce")
    torch.manual_seed(0)
    ref_loss, ref_x = ref.perturb(x, y, best_loss=True)
    torch.manual_seed(0)
    t = torch.randn(x.shape)
    start = eps * t / (t.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
    ours = apgd(model, _ce, x, y, eps, steps=steps, clamp=(0.0, 1.0), warm_start=(start, torch.ones(16, dtype=bool)))
    assert (ref_loss > _ce(model(x), y)).all()  # the reference did attack
    assert torch.allclose(ours.loss[:, 0], ref_loss, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours.x_adv, ref_x, atol=1e-4)
