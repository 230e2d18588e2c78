"""Tests of robust_bundles.attacks (perturb, project, the attack classes) against the checklist of
../shared/docs/evaluation.md, section "Tests the attack code must pass".

Everything runs on CPU with small toy models and fixed seeds. Expected values come from hand computation, from
properties that must hold whatever the implementation, or from an independent plain-torch L2 PGD written here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from robust_bundles.attacks import (
    L2IFGSM,
    L2PGD,
    AttackResult,
    LinfIFGSM,
    LinfPGD,
    batch_norms,
    gradient_masking_warning,
    perturb,
    preserve_model_state,
    project,
)
from robust_bundles.metrics import nanmean
from robust_bundles.tasks.segmentation import DiceCELoss, slice_dice

REL = 1e-5  # relative slack allowed on the L2 bound


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions are much faster single-threaded (and deterministic); restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------- helpers
def conv(dims: int):
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]


def make_net(dims: int = 2, channels: int = 1, classes: int = 2, norm: str | None = None, seed: int = 0) -> nn.Module:
    """A small segmentation net without batch coupling (no norm, or instance norm)."""
    torch.manual_seed(seed)
    C = conv(dims)
    layers: list[nn.Module] = [C(channels, 6, 3, padding=1)]
    if norm == "instance":
        layers.append({1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims](6, affine=True))
    layers += [nn.Tanh(), C(6, 6, 3, padding=1), nn.Tanh(), C(6, classes, 1)]
    return nn.Sequential(*layers).eval()


def make_batch(batch: int = 4, shape=(8, 8), channels: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, *shape, generator=g)
    y = (torch.rand(batch, 1, *shape, generator=g) > 0.5).float()
    return x, y


def l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).double().norm(dim=1)


def linf(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).abs().amax(dim=1)


def gen(seed: int = 123) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TupleNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return out, out.detach() * 0 + 7.0  # the loss must read the first item only


class DictNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return {"seg": out, "aux": out.mean()}


class ConstNet(nn.Module):
    """Output ignores the input entirely (not even connected to it in the graph)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2]).view(1, 2, 1, 1))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 2, *x.shape[2:])


# ---------------------------------------------------------------------------------------------------------- bound
@pytest.mark.parametrize("random_start", [True, False], ids=["pgd", "ifgsm"])
def test_l2_bound_per_sample_eps(random_start):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(5)
    eps = torch.tensor([0.0, 0.05, 0.5, 2.0, 10.0])
    r = perturb(net, loss, x, y, eps, steps=7, random_start=random_start, generator=gen())
    n = l2(r.x_adv - x)
    assert (n <= eps.double() * (1 + REL)).all(), (n, eps)
    assert n[0] == 0 and (n[1:] > 0).all()  # eps 0 stays put, the others move
    assert torch.allclose(r.norms.double(), n, rtol=1e-5, atol=1e-7)  # reported norms are the true ones
    # alpha=4 steps are large: the iterates end on the sphere
    assert torch.allclose(n[1:], eps[1:].double(), rtol=1e-4)


@pytest.mark.parametrize("random_start", [True, False], ids=["pgd", "ifgsm"])
def test_linf_bound_per_sample_eps(random_start):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(4)
    eps = torch.tensor([0.0, 0.01, 0.1, 0.3])
    r = perturb(net, loss, x, y, eps, steps=5, norm="linf", random_start=random_start, generator=gen())
    d = linf(r.x_adv - x)
    assert (d <= eps * (1 + REL)).all(), (d, eps)
    assert d[0] == 0 and (d[1:] > 0).all()
    assert torch.allclose(r.norms, d)


@pytest.mark.parametrize("norm,eps", [("l2", 20.0), ("linf", 0.8)])
@pytest.mark.parametrize("random_start", [True, False])
def test_clamp_value_range(norm, eps, random_start):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(4)  # x in [0, 1)
    r = perturb(net, loss, x, y, eps, steps=5, norm=norm, random_start=random_start, clamp=(0.0, 1.0), generator=gen())
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert ((r.x_adv == 0) | (r.x_adv == 1)).any()  # the clamp was actually active
    bound = eps * (1 + REL)
    assert ((l2(r.x_adv - x) if norm == "l2" else linf(r.x_adv - x)) <= bound).all()
    # one-sided clamp
    r = perturb(net, loss, x, y, eps, steps=5, norm=norm, random_start=random_start, clamp=(0.0, None), generator=gen())
    assert r.x_adv.min() >= 0 and r.x_adv.max() > 1


# ------------------------------------------------------------------------------------------- exactness, no in-place
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("random_start", [True, False], ids=["pgd", "ifgsm"])
def test_eps_zero_returns_x_exactly(norm, random_start):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(3)
    for eps in (0.0, torch.zeros(3)):
        r = perturb(net, loss, x, y, eps, steps=4, norm=norm, random_start=random_start, generator=gen())
        assert torch.equal(r.x_adv, x)
        assert torch.equal(r.norms, torch.zeros(3))
        # eps = 0 reproduces the clean loss and metric exactly
        with torch.no_grad():
            clean = net(x)
        assert torch.equal(r.loss, loss.terms(clean, y))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_steps_zero_without_random_start_returns_x_exactly(norm):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(3)
    r = perturb(net, loss, x, y, 5.0, steps=0, norm=norm, random_start=False)
    assert torch.equal(r.x_adv, x) and r.steps == 0
    assert (r.zero_grad_steps == 0).all()
    # with a random start, steps=0 does move (sanity check of the test itself)
    r = perturb(net, loss, x, y, 5.0, steps=0, norm=norm, random_start=True, generator=gen())
    assert not torch.equal(r.x_adv, x)


@pytest.mark.parametrize("steps,random_start,eps", [(0, False, 1.0), (0, True, 1.0), (3, True, 1.0), (3, False, 0.0)])
def test_input_never_modified_in_place(steps, random_start, eps):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(3)
    x_copy, y_copy = x.clone(), y.clone()
    ptr, version = x.data_ptr(), x._version
    r = perturb(net, loss, x, y, eps, steps=steps, random_start=random_start, clamp=(0.0, 1.0), generator=gen())
    assert x.data_ptr() == ptr and x._version == version  # no in-place op touched x
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert not x.requires_grad and x.grad is None
    # x_adv does not alias x: writing into it leaves x alone
    assert r.x_adv.data_ptr() != x.data_ptr()
    r.x_adv.add_(1.0)
    assert torch.equal(x, x_copy)


def test_input_requiring_grad_is_left_alone():
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(2)
    x = x.requires_grad_(True)
    r = perturb(net, loss, x, y, 1.0, steps=3, generator=gen())
    assert x.grad is None and not r.x_adv.requires_grad


# ------------------------------------------------------------------------------------------------ batch consistency
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dims,norm_layer", [(2, "instance"), (2, None), (3, "instance")])
def test_batch_equals_per_sample(norm, dims, norm_layer):
    net, loss = make_net(dims, norm=norm_layer, seed=1), DiceCELoss()
    shape = (8, 8) if dims == 2 else (4, 5, 6)
    x, y = make_batch(4, shape=shape, seed=2)
    eps = torch.tensor([0.3, 1.0, 2.5, 0.0]) if norm == "l2" else torch.tensor([0.02, 0.05, 0.2, 0.0])
    xi = torch.tensor([0.5, 0.7])
    whole = perturb(net, loss, x, y, eps, steps=6, norm=norm, random_start=False, thresholds=xi)
    for b in range(4):
        one = perturb(net, loss, x[b : b + 1], y[b : b + 1], eps[b : b + 1], steps=6, norm=norm, random_start=False,
                      thresholds=xi)
        assert torch.allclose(whole.x_adv[b : b + 1], one.x_adv, atol=1e-5, rtol=0)
        assert torch.allclose(whole.loss[b : b + 1], one.loss, atol=1e-5)
        assert torch.equal(whole.robust[b : b + 1], one.robust)


# ------------------------------------------------------------------------------------------ eps vector vs scalar
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("random_start", [True, False], ids=["pgd", "ifgsm"])
def test_identical_eps_vector_equals_scalar(norm, random_start):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(4)
    e = 1.5 if norm == "l2" else 0.1
    a = perturb(net, loss, x, y, e, steps=5, norm=norm, random_start=random_start, generator=gen(7))
    b = perturb(net, loss, x, y, torch.full((4,), e), steps=5, norm=norm, random_start=random_start, generator=gen(7))
    c = perturb(net, loss, x, y, [e] * 4, steps=5, norm=norm, random_start=random_start, generator=gen(7))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.x_adv, c.x_adv)
    assert torch.equal(a.loss, b.loss)
    if random_start:  # same seed, same start; a different seed gives a different point
        d = perturb(net, loss, x, y, e, steps=5, norm=norm, random_start=True, generator=gen(8))
        assert not torch.equal(a.x_adv, d.x_adv)


# ------------------------------------------------------------------------------------------------------ projection
def test_project_l2_large_and_small():
    g = gen(0)
    delta = torch.randn(4, 2, 5, 5, generator=g)
    delta = delta / l2(delta).float().view(-1, 1, 1, 1) * torch.tensor([10.0, 3.0, 0.2, 1e-3]).view(-1, 1, 1, 1)
    eps = torch.tensor([1.0, 2.5, 0.5, 1.0])
    p = project(delta, eps, "l2")
    n = l2(p)
    assert torch.allclose(n[:2], eps[:2].double(), rtol=1e-5, atol=0)  # large ones land on the sphere
    # same direction (a positive multiple)
    cos = (p[:2] * delta[:2]).flatten(1).sum(1).double() / (n[:2] * l2(delta[:2]))
    assert torch.allclose(cos, torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert torch.equal(p[2:], delta[2:])  # small ones are unchanged
    # zero perturbation, zero radius: no NaN
    z = project(torch.zeros(2, 3), torch.zeros(2), "l2")
    assert torch.equal(z, torch.zeros(2, 3))
    # exactly on the sphere: unchanged
    on = torch.tensor([[3.0, 4.0]])
    assert torch.equal(project(on, torch.tensor([5.0]), "l2"), on)


def test_project_linf_clips():
    delta = torch.tensor([[0.5, -0.5, 0.05, -0.05], [2.0, -3.0, 0.0, 0.1]])
    p = project(delta, torch.tensor([0.1, 1.0]), "linf")
    assert torch.equal(p, torch.tensor([[0.1, -0.1, 0.05, -0.05], [1.0, -1.0, 0.0, 0.1]]))
    small = torch.tensor([[0.01, -0.02]])
    assert torch.equal(project(small, torch.tensor([0.1]), "linf"), small)


def test_batch_norms():
    d = torch.tensor([[[3.0, 0.0], [0.0, -4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert torch.equal(batch_norms(d, "l2"), torch.tensor([5.0, 0.0]))
    assert torch.equal(batch_norms(d, "linf"), torch.tensor([4.0, 0.0]))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_random_start_inside_ball(norm):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(64, shape=(3, 3))
    eps = torch.linspace(0.1, 2.0, 64)
    r = perturb(net, loss, x, y, eps, steps=0, norm=norm, random_start=True, generator=gen(3))
    d = r.x_adv - x
    if norm == "l2":
        n = l2(d)
        assert (n <= eps.double() * (1 + REL)).all()
        ratio = n / eps.double()
        assert ratio.min() < 0.2 and ratio.max() > 0.9  # inside the ball, not only on the sphere
    else:
        assert (linf(d) <= eps * (1 + REL)).all()
        assert (linf(d) > 0.5 * eps).float().mean() > 0.9  # fills the cube
    assert r.loss is not None and r.loss.shape == (64, 2)  # final check ran on the start point


def test_l2_random_start_radius_is_uniform_in_high_dimension():
    """A 40 x 56 input (2240 values, the hippocampus slice): the start radius is uniform in [0, eps]. A point uniform in
    the ball would lie at radius eps * u^(1/2240) > 0.99 eps for 99.999 % of the draws (on the sphere), which made
    PGD-100 weaker than I-FGSM."""
    x = torch.zeros(2000, 1, 40, 56)
    eps = 3.0
    r = perturb(nn.Identity(), lambda o, t: o.flatten(1).sum(1), x, None, eps, steps=0, random_start=True,
                final_check=False, generator=gen(8))
    ratio = l2(r.x_adv - x) / eps
    assert (ratio <= 1 + REL).all()
    assert ratio.mean().item() == pytest.approx(0.5, abs=0.03)  # U[0, 1]: mean 1/2, 2000 draws: sd 0.0065
    assert (ratio < 0.5).float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert ratio.min() < 0.01 and ratio.max() > 0.99
    # the direction is still uniform: the normalised draws are (nearly) orthogonal to each other in 2240 dimensions
    d = (r.x_adv - x).flatten(1)
    d = d / d.norm(dim=1, keepdim=True)
    assert (d[:100] @ d[100:200].T).abs().max() < 0.15


def test_random_start_with_radius_on_sphere():
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(6)
    eps = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    radius = torch.tensor([0.5, 1.0, 0.1, 3.9, 2.0, 0.0])
    r = perturb(net, loss, x, y, eps, steps=0, random_start=True, start_radius=radius, generator=gen(4))
    assert torch.allclose(l2(r.x_adv - x), radius.double(), rtol=1e-5, atol=1e-7)
    # a scalar radius; a radius above eps is projected onto the eps sphere
    r = perturb(net, loss, x, y, eps, steps=0, random_start=True, start_radius=10.0, generator=gen(4))
    assert torch.allclose(l2(r.x_adv - x), eps.double(), rtol=1e-5)


def test_random_start_is_normalised_gaussian_draw():
    """With start_radius r and a generator, the start is r * d / ||d||_2 with d the generator's next N(0, 1) draw."""
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(3)
    r = torch.tensor([0.3, 0.7, 1.1])
    res = perturb(net, loss, x, y, 2.0, steps=0, random_start=True, start_radius=r, generator=gen(11))
    d = torch.randn(x.shape, generator=gen(11))
    expected = r.view(-1, 1, 1, 1) * d / l2(d).float().view(-1, 1, 1, 1)
    assert torch.allclose(res.x_adv - x, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------- independent implementation
def reference_l2_pgd(model, loss_fn, x, y, eps, steps, alpha, start):
    """Plain L2 PGD written from the textbook definition (not from robust_bundles.attacks)."""
    e = eps.view(-1, *([1] * (x.ndim - 1)))

    def ball(d):
        n = d.flatten(1).norm(dim=1).view_as(e)
        return d * torch.clamp(e / torch.clamp(n, min=1e-12), max=1.0)

    delta = ball(start.clone())
    for _ in range(steps):
        xa = (x + delta).requires_grad_(True)
        total = loss_fn(model(xa), y).sum()  # sum of the per-sample losses
        (g,) = torch.autograd.grad(total, xa)
        g = g / g.flatten(1).norm(dim=1).view_as(e)
        delta = ball(delta + alpha * e / steps * g)
    return x + delta


@pytest.mark.parametrize("start", ["sphere", "ball", "none"])
def test_matches_hand_written_l2_pgd(start):
    net, loss = make_net(seed=5), DiceCELoss(lambda_ce=0.7)
    x, y = make_batch(3, shape=(6, 7), seed=6)
    eps = torch.tensor([0.5, 1.0, 2.0])
    r0 = torch.tensor([0.25, 0.4, 1.5])
    g = gen(21)
    d = torch.randn(x.shape, generator=g)
    d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    if start == "sphere":
        delta0 = r0.view(-1, 1, 1, 1) * d
        kwargs = dict(random_start=True, start_radius=r0)
    elif start == "ball":  # default: a random direction at radius eps * u, u the next uniform draw
        u = torch.rand(3, generator=g)
        delta0 = (eps * u).view(-1, 1, 1, 1) * d
        kwargs = dict(random_start=True)
    else:
        delta0 = torch.zeros_like(x)
        kwargs = dict(random_start=False)
    expected = reference_l2_pgd(net, loss, x, y, eps, steps=3, alpha=4.0, start=delta0)
    got = perturb(net, loss, x, y, eps, steps=3, alpha=4.0, generator=gen(21), **kwargs)
    assert torch.allclose(got.x_adv, expected, atol=1e-5, rtol=0), (got.x_adv - expected).abs().max()
    # and it really moved away from the start (the comparison is not trivial)
    assert (l2(got.x_adv - x - delta0) > 0.1).all()


# ------------------------------------------------------------------------------------------------------ strength
def disks(n: int, size: int, g: torch.Generator):
    """Bright disks on Gaussian noise; label 1 inside the disk."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.rand(n, 2, generator=g) * (size - 12) + 6
    rad = torch.rand(n, generator=g) * 3 + 3
    d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
    lab = (d2 <= rad[:, None, None] ** 2).float()[:, None]
    return lab + 0.3 * torch.randn(n, 1, size, size, generator=g), lab


@pytest.fixture(scope="module")
def trained():
    """A tiny undefended 2D segmentation net trained for 200 Adam steps (about 2 s on one CPU thread)."""
    g = gen(0)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)
    )
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    loss = DiceCELoss()
    for _ in range(200):
        x, y = disks(16, 24, g)
        opt.zero_grad()
        loss(net(x), y).mean().backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    x, y = disks(16, 24, g)
    return net, loss, x, y


def _mean_loss(net, loss, x, y):
    with torch.no_grad():
        return loss(net(x), y)


def test_clean_model_is_good(trained):
    net, loss, x, y = trained
    with torch.no_grad():
        assert nanmean(slice_dice(net(x), y)) > 0.8


def test_pgd_beats_random_noise_of_same_norm(trained):
    net, loss, x, y = trained
    eps = 2.0
    r = perturb(net, loss, x, y, eps, steps=10, generator=gen(1))
    noise = torch.randn(x.shape, generator=gen(2))
    noise = noise / l2(noise).float().view(-1, 1, 1, 1) * eps
    adv, rnd, clean = (_mean_loss(net, loss, z, y) for z in (r.x_adv, x + noise, x))
    assert adv.mean() > 2 * rnd.mean()
    assert (adv > rnd).float().mean() >= 0.9
    assert adv.mean() > clean.mean()


def test_more_steps_never_end_lower(trained):
    net, loss, x, y = trained
    for eps in (1.0, 2.0, 4.0):
        final = []
        for steps in (1, 5, 20):
            r = perturb(net, loss, x, y, eps, steps=steps, generator=gen(1))
            final.append(_mean_loss(net, loss, r.x_adv, y).mean().item())
            assert torch.allclose(r.loss.sum(1), _mean_loss(net, loss, r.x_adv, y), atol=1e-5)  # reported = x_adv's
        assert final[0] <= final[1] <= final[2], (eps, final)


def test_final_loss_monotone_in_eps(trained):
    net, loss, x, y = trained
    means = []
    for eps in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
        r = perturb(net, loss, x, y, eps, steps=10, generator=gen(1))
        means.append(r.loss.sum(1).mean().item())
    assert means[0] == _mean_loss(net, loss, x, y).mean().item()
    assert all(a <= b for a, b in zip(means, means[1:])), means


def test_large_eps_drives_dice_to_zero(trained):
    net, loss, x, y = trained
    with torch.no_grad():
        clean = nanmean(slice_dice(net(x), y))
    assert clean > 0.8
    eps = math.sqrt(x[0].numel()) * 3
    r = perturb(net, loss, x, y, eps, steps=30, generator=gen(1))
    with torch.no_grad():
        attacked = nanmean(slice_dice(net(r.x_adv), y))
    assert attacked < 0.05, attacked
    # eps = 0 reproduces the clean metric exactly
    r0 = perturb(net, loss, x, y, 0.0, steps=30, generator=gen(1))
    with torch.no_grad():
        assert nanmean(slice_dice(net(r0.x_adv), y)) == clean


# ------------------------------------------------------------------------------ spatial dims, multi-term losses, outputs
@pytest.mark.parametrize("dims,shape", [(1, (16,)), (2, (8, 8)), (3, (4, 6, 5))])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_any_number_of_spatial_dims(dims, shape, norm):
    net, loss = make_net(dims, channels=2), DiceCELoss(spatial_dims=dims)
    x, y = make_batch(3, shape=shape, channels=2)
    eps = torch.tensor([0.5, 1.0, 2.0]) if norm == "l2" else torch.tensor([0.05, 0.1, 0.2])
    r = perturb(net, loss, x, y, eps, steps=4, norm=norm, thresholds=[0.9, 0.9], generator=gen())
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == x.dtype
    assert r.robust.shape == (3, 2) and r.robust.dtype == torch.bool
    assert r.loss.shape == (3, 2) and r.norms.shape == (3,) and r.zero_grad_steps.shape == (3,)
    bound = eps * (1 + REL)
    assert ((l2(r.x_adv - x).float() if norm == "l2" else linf(r.x_adv - x)) <= bound).all()
    assert (r.loss.sum(1) > _mean_loss(net, loss, x, y)).all()  # it attacked


def test_multi_term_loss_weights_and_shapes():
    net = make_net()
    x, y = make_batch(4)
    loss = DiceCELoss(lambda_dice=0.0, lambda_ce=1.0)  # objective: CE only
    r = perturb(net, loss, x, y, 1.0, steps=5, random_start=False, thresholds=torch.tensor([1.0, 10.0]))
    assert r.robust.shape == (4, 2) and r.loss.shape == (4, 2)
    # the objective is the weighted sum: with lambda_dice=0 it is the same attack as on CE alone
    ce_only = perturb(net, lambda o, t: DiceCELoss().terms(o, t)[:, 1], x, y, 1.0, steps=5, random_start=False)
    assert torch.allclose(r.x_adv, ce_only.x_adv, atol=1e-6)


@pytest.mark.parametrize("wrapper", [TupleNet, DictNet])
def test_tuple_and_dict_outputs(wrapper):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(3)
    plain = perturb(net, loss, x, y, 1.0, steps=4, thresholds=[0.5, 0.5], generator=gen(5))
    wrapped = perturb(wrapper(net), loss, x, y, 1.0, steps=4, thresholds=[0.5, 0.5], generator=gen(5))
    assert torch.equal(plain.x_adv, wrapped.x_adv)
    assert torch.equal(plain.loss, wrapped.loss) and torch.equal(plain.robust, wrapped.robust)
    # the forward= hook (e.g. an inferer) is used instead of model(x)
    calls = []

    def fwd(z):
        calls.append(1)
        return wrapper(net)(z)

    via = perturb(net, loss, x, y, 1.0, steps=4, forward=fwd, generator=gen(5))
    assert torch.equal(via.x_adv, plain.x_adv) and len(calls) == 5  # 4 steps + final check


# -------------------------------------------------------------------------------------------- model left as found
class StateNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.Conv2d(4, 4, 1)
        self.frozen.requires_grad_(False)
        self.bn2 = nn.BatchNorm2d(4, momentum=None)  # cumulative average: uses num_batches_tracked
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn2(self.frozen(torch.relu(self.bn(self.conv(x)))))))


def _state_net(mode: str) -> StateNet:
    torch.manual_seed(0)
    net = StateNet().train()
    with torch.no_grad():  # non-default running statistics
        for _ in range(3):
            net(torch.randn(4, 1, 8, 8) * 2 + 1)
    if mode == "eval":
        net.eval()
    elif mode == "mixed":
        net.bn2.eval()
    return net


def _snapshot(net):
    return (
        {k: v.clone() for k, v in net.state_dict().items()},
        {n: m.training for n, m in net.named_modules()},
        {n: p.requires_grad for n, p in net.named_parameters()},
        {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()},
    )


def _assert_same(before, after):
    sd0, modes0, rg0, g0 = before
    sd1, modes1, rg1, g1 = after
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k  # parameters, running_mean/var, num_batches_tracked
    assert modes0 == modes1
    assert rg0 == rg1
    for k in g0:
        assert (g0[k] is None and g1[k] is None) or torch.equal(g0[k], g1[k]), k


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
@pytest.mark.parametrize("train", [None, True, False])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_model_left_as_found(mode, train, norm):
    net, loss = _state_net(mode), DiceCELoss()
    x, y = make_batch(4)
    before = _snapshot(net)
    assert all(g is None for g in before[3].values())
    seen = []
    hook = net.bn.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    r = perturb(net, loss, x, y, 1.0, steps=3, norm=norm, train=train, thresholds=[1.0, 1.0], generator=gen())
    hook.remove()
    _assert_same(before, _snapshot(net))
    assert not torch.equal(r.x_adv, x)
    # the forced mode was in effect during the attack
    expected_mode = {"train": True, "eval": False, "mixed": True}[mode] if train is None else train
    assert seen and all(s == expected_mode for s in seen)


def test_existing_parameter_grads_unchanged():
    net, loss = _state_net("train"), DiceCELoss()
    net.conv.weight.grad = torch.randn_like(net.conv.weight)
    net.head.bias.grad = torch.zeros_like(net.head.bias)
    before = _snapshot(net)
    perturb(net, loss, *make_batch(4), 1.0, steps=3, generator=gen())
    _assert_same(before, _snapshot(net))


def test_forced_eval_equals_attacking_eval_model():
    """train=False really runs BatchNorm on running statistics (the attack does not see batch statistics)."""
    loss = DiceCELoss()
    x, y = make_batch(4)
    a = perturb(_state_net("train"), loss, x, y, 1.0, steps=4, random_start=False, train=False)
    b = perturb(_state_net("eval"), loss, x, y, 1.0, steps=4, random_start=False)
    assert torch.equal(a.x_adv, b.x_adv)


def test_preserve_model_state_restores_on_error():
    net = _state_net("eval")
    before = _snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        with preserve_model_state(net, train=True):
            assert net.training and net.bn.training
            net(torch.randn(4, 1, 8, 8) * 5)  # updates running statistics
            raise RuntimeError("boom")
    _assert_same(before, _snapshot(net))
    with preserve_model_state(None):
        pass


# ---------------------------------------------------------------------------------------------- robustness test
class Recorder(nn.Module):
    """Two terms: 'up' = mean(out) (the objective, weight 1) and 'down' = -mean(out) (weight 0). Records every call."""

    term_names = ("up", "down")
    term_weights = (1.0, 0.0)

    def __init__(self):
        super().__init__()
        self.calls: list[torch.Tensor] = []

    def terms(self, out, y):
        m = out.flatten(1).mean(1)
        t = torch.stack([m, -m], 1)
        self.calls.append(t.detach().clone())
        return t


def _controlled_attack(check="path", final_check=True, steps=4, xi=(1.5, -0.5), test_fn=None):
    # identity model, 16 pixels per sample, constant images: every step adds exactly 0.25 to every pixel (L2 step
    # alpha * eps / steps = 1, direction 1/sqrt(16) per pixel), so the means are c, c+.25, ..., c+1 exactly.
    c = torch.tensor([0.0, 0.5, 1.0, -1.0])
    x = c.view(4, 1, 1, 1).expand(4, 1, 4, 4).clone()
    rec = Recorder()
    r = perturb(nn.Identity(), rec, x, None, 4.0, steps=steps, alpha=1.0, random_start=False, thresholds=xi,
                check=check, final_check=final_check, test_fn=test_fn)
    return r, rec, x


def test_robust_is_and_over_path_iterates():
    T_, F_ = True, False
    r, rec, x = _controlled_attack("path")
    assert len(rec.calls) == 5  # start, 3 inner iterates, x_adv
    means = torch.stack([t[:, 0] for t in rec.calls], 1)
    assert torch.equal(means, torch.tensor([[0.0, .25, .5, .75, 1.0], [.5, .75, 1.0, 1.25, 1.5],
                                            [1.0, 1.25, 1.5, 1.75, 2.0], [-1.0, -.75, -.5, -.25, 0.0]]))
    xi = torch.tensor([1.5, -0.5])
    expected = torch.stack([t <= xi for t in rec.calls]).all(0)
    assert torch.equal(r.robust, expected)
    # by hand; sample 1 sits exactly on both thresholds at some iterate: equality counts as robust
    assert r.robust.tolist() == [[T_, F_], [T_, T_], [F_, T_], [T_, F_]]
    assert torch.equal(r.loss, rec.calls[-1])


def test_robust_final_mode_checks_only_x_adv():
    T_, F_ = True, False
    r, rec, _ = _controlled_attack("final")
    assert torch.equal(r.robust, rec.calls[-1] <= torch.tensor([1.5, -0.5]))
    assert r.robust.tolist() == [[T_, T_], [T_, T_], [F_, T_], [T_, F_]]


def test_robust_without_final_check():
    r, rec, _ = _controlled_attack("path", final_check=False)
    assert len(rec.calls) == 4  # x_adv is not evaluated
    assert torch.equal(r.robust, torch.stack([t <= torch.tensor([1.5, -0.5]) for t in rec.calls]).all(0))
    assert torch.equal(r.loss, rec.calls[-1])  # loss of the last evaluated iterate
    r, _, _ = _controlled_attack("final", final_check=False)
    assert r.robust is None  # the caller tests x_adv itself
    r, _, _ = _controlled_attack("path", steps=0, final_check=False)
    assert r.robust is None and r.loss is None


def test_robust_equality_with_constant_model():
    x, y = make_batch(3)
    const = ConstNet()
    terms = DiceCELoss().terms(const(x), y).detach()
    for check in ("path", "final"):
        r = perturb(const, DiceCELoss(), x, y, 1.0, steps=3, thresholds=terms[0], check=check, generator=gen())
        expected = terms <= terms[0]
        assert torch.equal(r.robust, expected) and r.robust[0].all()  # equality is robust
        below = torch.nextafter(terms[0], torch.full_like(terms[0], -math.inf))
        r = perturb(const, DiceCELoss(), x, y, 1.0, steps=3, thresholds=below, check=check, generator=gen())
        assert not r.robust[0].any()


def test_test_fn_is_used_for_the_robustness_test():
    seen = []

    def test_fn(out, y):
        seen.append((out, y))
        return torch.zeros(out.shape[0], 2)

    r, rec, _ = _controlled_attack("path", xi=(-5.0, -5.0), test_fn=test_fn)
    assert len(seen) == 5 and all(y is None for _, y in seen)
    assert r.robust.tolist() == [[False, False]] * 4  # 0 > -5
    r, rec, _ = _controlled_attack("path", xi=(0.0, 0.0), test_fn=test_fn)
    assert r.robust.all()  # the objective's terms (up to 2.0) are not what is tested
    # the objective is unchanged by test_fn
    assert torch.equal(r.loss, rec.calls[-1])


def test_wrong_number_of_thresholds():
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(2)
    for xi in ([0.5], [0.5, 0.5, 0.5]):
        with pytest.raises(ValueError, match="threshold"):
            perturb(net, loss, x, y, 1.0, steps=2, thresholds=xi, generator=gen())
        with pytest.raises(ValueError, match="threshold"):
            perturb(net, loss, x, y, 1.0, steps=0, thresholds=xi, check="final", generator=gen())


def test_unknown_check_mode():
    net, loss = make_net(), DiceCELoss()
    with pytest.raises(ValueError, match="check"):
        perturb(net, loss, *make_batch(2), 1.0, steps=2, thresholds=[1, 1], check="every")


# -------------------------------------------------------------------------------- gradient masking, non-finite
def test_zero_gradient_counted_and_warned():
    x, y = make_batch(4)
    steps = 5
    r = perturb(ConstNet(), DiceCELoss(), x, y, 1.0, steps=steps, random_start=False)
    assert r.zero_grad_steps.tolist() == [steps] * 4
    assert torch.equal(r.x_adv, x)  # no gradient, no move
    msg = gradient_masking_warning(r.zero_grad_steps, steps)
    assert isinstance(msg, str) and "gradient masking" in msg and "100%" in msg
    # a model connected to the input but with zero gradient (x * 0) counts the same
    r = perturb(lambda z: z * 0, lambda o, t: o.flatten(1).mean(1), x, y, 1.0, steps=steps, random_start=False)
    assert r.zero_grad_steps.tolist() == [steps] * 4

    # only sample 0 is masked: counted per sample, no warning for 1/4 of the batch
    net = make_net()
    mask = torch.tensor([0.0, 1.0, 1.0, 1.0]).view(4, 1, 1, 1)
    r = perturb(lambda z: net(z * mask), DiceCELoss(), x, y, 1.0, steps=steps, random_start=False)
    assert r.zero_grad_steps.tolist() == [steps, 0, 0, 0]
    assert gradient_masking_warning(r.zero_grad_steps, steps) is None
    assert gradient_masking_warning(r.zero_grad_steps, steps, fraction=0.25) is not None
    # healthy model
    r = perturb(net, DiceCELoss(), x, y, 1.0, steps=steps, generator=gen())
    assert r.zero_grad_steps.tolist() == [0] * 4
    assert gradient_masking_warning(r.zero_grad_steps, steps) is None
    assert gradient_masking_warning(torch.tensor([0, 0]), 0) is None
    # boundaries: a sample counts when zero in at least half of the steps; warn when at least `fraction` count
    assert gradient_masking_warning(torch.tensor([2, 2]), 4) is not None
    assert gradient_masking_warning(torch.tensor([1, 1]), 4) is None
    assert gradient_masking_warning(torch.tensor([2, 0]), 4, fraction=0.5) is not None
    assert gradient_masking_warning(torch.tensor([2, 0, 0]), 4, fraction=0.5) is None


def test_tiny_l2_gradient_is_followed_not_counted_as_zero():
    """A saturated loss has float32 input gradients of about 1e-23, whose squares underflow to 0: the L2 direction must
    still be the unit gradient direction, and the step must not count as a zero-gradient step."""
    x = torch.zeros(2, 1, 8, 8)
    w = torch.randn(2, 1, 8, 8, generator=gen(9))
    assert w.mul(1e-23).flatten(1).norm(dim=1).eq(0).all()  # the underflow this guards against
    for scale in (1e-23, 1e-38, 1.0):
        loss = lambda o, t, s=scale: s * (o * w).flatten(1).sum(1)  # noqa: E731, gradient s * w
        r = perturb(nn.Identity(), loss, x, None, 2.0, steps=1, alpha=0.5, random_start=False, final_check=False)
        assert r.zero_grad_steps.tolist() == [0, 0], scale
        step = 0.5 * 2.0  # alpha * eps / steps, inside the ball: no projection
        expected = step * w / l2(w).float().view(-1, 1, 1, 1)
        assert torch.allclose(r.x_adv - x, expected, atol=1e-6, rtol=0), scale
        assert not gradient_masking_warning(r.zero_grad_steps, 1)


def test_input_outside_clamp_range_is_refused():
    """Clamping an input that lies outside the range would move it even at eps 0 (the noise bound breaks)."""
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(3)  # in [0, 1)
    x[1, 0, 2, 3] = 1.5
    for eps in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"outside the clamp range \[0.0, 1.0\].*sample\(s\) \[1\]"):
            perturb(net, loss, x, y, eps, steps=2, clamp=(0.0, 1.0), generator=gen())
    with pytest.raises(ValueError, match="clamp range"):
        perturb(net, loss, x - 0.6, y, 1.0, steps=2, clamp=(0.0, None), generator=gen())
    # on the range's edge is inside; a one-sided range only checks its side
    x[1, 0, 2, 3] = 1.0
    r = perturb(net, loss, x, y, 0.0, steps=2, clamp=(0.0, 1.0), generator=gen())
    assert torch.equal(r.x_adv, x)
    perturb(net, loss, x + 5.0, y, 1.0, steps=2, clamp=(0.0, None), generator=gen())


def test_nonfinite_gradient_counted_and_not_followed():
    x = torch.rand(3, 1, 4, 4) + 0.1
    x[0] = 0.0  # d sqrt(x)/dx = inf at 0
    loss = lambda o, t: o.flatten(1).mean(1)  # noqa: E731
    r = perturb(torch.sqrt, loss, x, None, 1.0, steps=4, random_start=False)
    assert r.zero_grad_steps.tolist() == [4, 0, 0]
    assert torch.equal(r.x_adv[0], x[0]) and torch.isfinite(r.x_adv).all()
    assert torch.isfinite(r.loss).all()


def test_nonfinite_loss_raises_naming_the_term():
    class BadCE(nn.Module):
        term_names = ("dice", "ce")
        term_weights = (1.0, 1.0)

        def terms(self, out, y):
            m = out.flatten(1).mean(1)
            ce = torch.where(torch.arange(len(m)) == 1, torch.full_like(m, math.inf), m)
            return torch.stack([m, ce], 1)

    x, y = make_batch(3)
    with pytest.raises(FloatingPointError, match=r"\['ce'\]") as info:
        perturb(nn.Identity(), BadCE(), x, y, 1.0, steps=3, generator=gen())
    assert "dice" not in str(info.value) and "1 sample" in str(info.value)
    with pytest.raises(FloatingPointError, match=r"\['ce'\]"):  # caught during the steps, not only at the end
        perturb(nn.Identity(), BadCE(), x, y, 1.0, steps=3, final_check=False, generator=gen())
    with pytest.raises(FloatingPointError, match=r"\['ce'\]"):  # the final check also tests
        perturb(nn.Identity(), BadCE(), x, y, 1.0, steps=0, random_start=False)
    # NaN voxels in the input with the real loss
    x[1, 0, 2, 2] = math.nan
    with pytest.raises(FloatingPointError, match="Non-finite"):
        perturb(make_net(), DiceCELoss(), x, y, 1.0, steps=2, generator=gen())


# --------------------------------------------------------------------------------------------------- attack classes
@pytest.mark.parametrize(
    "cls,norm,random_start,name",
    [(L2PGD, "l2", True, "PGD-L2"), (L2IFGSM, "l2", False, "IFGSM-L2"), (LinfPGD, "linf", True, "PGD-LINF"),
     (LinfIFGSM, "linf", False, "IFGSM-LINF")],
)
def test_attack_classes(cls, norm, random_start, name):
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(3)
    eps = 1.0 if norm == "l2" else 0.1
    atk = cls(net, loss, eps=eps, steps=4, alpha=2.0)
    assert atk.name == name and atk.norm == norm and atk.random_start == random_start
    assert cls.__name__ in repr(atk)
    res = atk.run(x, y, generator=gen(9))
    assert isinstance(res, AttackResult) and res.steps == 4
    ref = perturb(net, loss, x, y, eps, steps=4, alpha=2.0, norm=norm, random_start=random_start, generator=gen(9))
    assert torch.equal(res.x_adv, ref.x_adv)
    assert torch.equal(atk(x, y, generator=gen(9)), res.x_adv)  # __call__ returns x_adv
    # eps override per call, scalar or per sample
    e2 = torch.tensor([0.0, eps / 2, 2 * eps])
    over = atk.run(x, y, eps=e2, generator=gen(9))
    measured = l2(over.x_adv - x).float() if norm == "l2" else linf(over.x_adv - x)
    assert (measured <= e2 * (1 + REL)).all() and measured[0] == 0 and measured[2] > eps
    assert atk.eps == eps  # the default is not changed by an override
    # model / loss at call time, other perturb options through kwargs
    bare = cls(eps=eps, steps=4, alpha=2.0)
    assert torch.equal(bare(x, y, model=net, loss_fn=loss, generator=gen(9)), res.x_adv)
    with pytest.raises(ValueError, match="loss"):
        bare(x, y, model=net)
    clamped = cls(net, loss, eps=5 * eps, steps=4, clamp=(0.0, 1.0))(x, y, generator=gen(9))
    assert clamped.min() >= 0 and clamped.max() <= 1


def test_attack_class_overrides():
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(2)
    atk = L2PGD(net, loss, eps=1.0, steps=3, random_start=False, norm="linf")
    assert atk.name == "IFGSM-LINF"
    assert torch.equal(atk(x, y, eps=0.1), perturb(net, loss, x, y, 0.1, steps=3, norm="linf", random_start=False).x_adv)
    # steps=0 through run kwargs
    assert torch.equal(atk(x, y, steps=0), x)


@pytest.mark.parametrize("bad", [-0.1, [1.0, -1.0, 1.0], [1.0, 1.0], [[1.0], [1.0], [1.0]], math.nan, math.inf])
def test_bad_eps_raises(bad):
    """Negative, non-finite, or wrong-shape eps (the batch has 3 samples): a ValueError naming eps."""
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(3)
    with pytest.raises(ValueError, match="eps"):
        perturb(net, loss, x, y, bad, steps=2)
    with pytest.raises(ValueError, match="eps"):  # per-call override of a class
        L2PGD(net, loss, eps=1.0)(x, y, eps=torch.tensor(bad))
    if not isinstance(bad, list):
        with pytest.raises(ValueError, match="eps"):  # a bad default, found when the attack runs
            LinfIFGSM(net, loss, eps=bad)(x, y)


def test_other_argument_errors():
    net, loss = make_net(), DiceCELoss()
    x, y = make_batch(2)
    with pytest.raises(ValueError, match="norm"):
        perturb(net, loss, x, y, 1.0, steps=2, norm="l1")
    with pytest.raises(ValueError, match="norm"):
        L2PGD(net, loss, norm="l1")
    with pytest.raises(ValueError, match="norm"):
        project(x, torch.ones(2), "l1")
    with pytest.raises(ValueError, match="norm"):
        batch_norms(x, "l0")
    with pytest.raises(ValueError, match="steps"):
        perturb(net, loss, x, y, 1.0, steps=-1)
    with pytest.raises(ValueError, match="steps"):
        perturb(net, loss, x, y, 1.0, steps=1.5)
    with pytest.raises(ValueError, match="steps"):
        L2PGD(net, loss, steps=-2)
    with pytest.raises(ValueError, match="start_radius"):
        perturb(net, loss, x, y, 1.0, steps=1, start_radius=-1.0)
    with pytest.raises(TypeError):
        perturb(net, loss, (x * 10).long(), y, 1.0, steps=1)
    with pytest.raises(ValueError):
        perturb(net, loss, torch.rand(4), y, 1.0, steps=1)
    with pytest.raises(ValueError, match="model"):
        perturb(None, loss, x, y, 1.0, steps=1)
