"""TRADES (robust_bundles.adversarial.TRADESIteration): its divergence and loss on hand-checked tiny examples, the
attack that maximises the divergence, and a robustness gain on the toy problem."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robust_bundles import methods
from robust_bundles.adversarial import TRADESIteration, output_divergence
from robust_bundles.attacks import L2PGD
from robust_bundles.losses import PerSampleLoss
from robust_bundles.toy import run_toy, toy_robustness

KL = 0.5 * math.log(4 / 3)  # KL((1/2, 1/2) || (3/4, 1/4)) = 1/2 ln(2/3) + 1/2 ln 2


class CE(PerSampleLoss):
    """Per-sample cross-entropy, averaged over pixels; heads "a" and "b" are its two channels."""

    def terms(self, pred, target):
        return F.cross_entropy(pred, target, reduction="none").flatten(1).mean(1)[:, None]

    def heads(self, pred):
        return {"a": pred[:, :1], "b": pred[:, 1:]}


def test_divergence_hand_values_per_output_kind():
    clean = torch.tensor([[[[0.0]], [[0.0]]]])  # (1, 2, 1, 1) logits: p = (1/2, 1/2)
    adv = torch.tensor([[[[math.log(3)]], [[0.0]]]])  # q = (3/4, 1/4)
    loss = CE()
    assert output_divergence(loss, clean, adv, "softmax").item() == pytest.approx(KL, abs=1e-6)
    assert output_divergence(loss, clean, clean, "softmax").item() == pytest.approx(0.0, abs=1e-7)
    # sigmoid: channel 0 is Bernoulli 1/2 vs 3/4 (the same KL), channel 1 is equal; averaged over the 2 elements
    assert output_divergence(loss, clean, adv, "sigmoid").item() == pytest.approx(KL / 2, abs=1e-6)
    assert output_divergence(loss, clean, adv, "none").item() == pytest.approx(math.log(3) ** 2 / 2, abs=1e-6)
    # by head: Bernoulli KL of head a plus the squared difference of head b (0), summed over heads
    assert output_divergence(loss, clean, adv, {"a": "sigmoid", "b": "none"}).item() == pytest.approx(KL, abs=1e-6)
    # two pixels, one changed: the per-pixel KL is averaged over the pixels
    clean2, adv2 = torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)
    adv2[0, 0, 0, 0] = math.log(3)
    assert output_divergence(loss, clean2, adv2, "softmax").item() == pytest.approx(KL / 2, abs=1e-6)
    with pytest.raises(KeyError, match=r"heads \['c'\]"):
        output_divergence(loss, clean, adv, {"c": "sigmoid"})
    with pytest.raises(ValueError, match="callable output gives no distribution"):
        TRADESIteration(1.0, activation=lambda out: out)


def _net() -> nn.Module:
    """Two output channels: (3 x, 0): logits (ln 3, 0) at x = ln(3) / 3, equal logits at x = 0."""
    net = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([3.0, 0.0]).view(2, 1, 1, 1))
    return net


def test_loss_is_clean_loss_plus_beta_times_the_divergence_by_hand():
    net, loss = _net(), CE()
    engine = SimpleNamespace(loss_function=loss)
    x, x_adv = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), math.log(3) / 3)
    y = torch.zeros(1, 1, 1, dtype=torch.long)
    info = SimpleNamespace(pred_adv=None)
    for beta, expected in ((6.0, math.log(2) + 6 * KL), (0.0, math.log(2))):  # CE of (1/2, 1/2) is ln 2
        it = TRADESIteration(1.0, beta=beta)
        total, pred, stats = it.objective(engine, x, y, x_adv, None, info, net)
        assert total.item() == pytest.approx(expected, abs=1e-6)
        assert stats["trades_divergence"] == pytest.approx(KL, abs=1e-6)
        assert stats["loss_clean"] == pytest.approx(math.log(2), abs=1e-6)
    total.backward()  # the gradient flows through the clean output (beta 0: the clean loss only)
    assert net.weight.grad is not None


def test_the_attack_maximises_the_divergence_within_eps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1))
    engine = SimpleNamespace(loss_function=CE(), network=net, state=SimpleNamespace(epoch=1))
    x = torch.randn(2, 1, 6, 6)
    it = TRADESIteration(1.0, attack=L2PGD(steps=5, alpha=2.0))
    x_adv, info = it.adversarial(engine, x, None, None, net)
    assert torch.all(info.norms <= 1.0 + 1e-5) and torch.all(info.norms > 0.5)
    with torch.no_grad():
        clean = net(x)
        found = output_divergence(engine.loss_function, clean, net(x_adv))
        noise = torch.randn_like(x)
        noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # random points at radius 1
        random = output_divergence(engine.loss_function, clean, net(x + noise))
    assert torch.all(found > 3 * random)


@pytest.mark.slow
def test_finetuned_trades_gains_robustness_over_std(toy_std):
    """5 TRADES epochs from the toy STD model (eps 4, T = 5, beta 6): clearly more robust under PGD-20 at eps 4, clean
    Dice close (2026-12-07, 1 thread: STD clean 0.892, PGD 0.457; TRADES clean 0.848, PGD 0.621)."""
    train, test = toy_std["train"], toy_std["test"]
    assert methods.get("TRADES").run_name(4) == "trades_eps4"
    trades, _ = run_toy("trades", train, epochs=5, eps=4.0, attack_steps=5, seed=0, init_from=str(toy_std["path"]))
    s_std = toy_robustness(toy_std["net"], test, eps=(4.0,), pgd_steps=20, ifgsm_steps=10)
    s_trades = toy_robustness(trades, test, eps=(4.0,), pgd_steps=20, ifgsm_steps=10)
    print("STD", s_std["clean"], s_std["attacks"], "TRADES", s_trades["clean"], s_trades["attacks"])
    assert s_trades["attacks"]["PGD"]["4"] > s_std["attacks"]["PGD"]["4"] + 0.05
    assert abs(s_trades["clean"] - s_std["clean"]) < 0.06
