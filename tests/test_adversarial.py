"""Adversarial training iterations (VAT, TEAT, AMAT) inside a real MONAI SupervisedTrainer, and the robustness gain."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointLoader, CheckpointSaver

from robust_bundles.adversarial import AMATIteration, TEATIteration, TemporalEnsemble, VATIteration, teat_weight
from robust_bundles.attacks import L2IFGSM, L2PGD
from robust_bundles.handlers import MarginHandler
from robust_bundles.margins import MarginBook
from robust_bundles.tasks.segmentation import DiceCELoss
from robust_bundles.toy import make_toy_segmentation, run_toy, toy_network, toy_robustness


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions are much faster on one thread here
    yield
    torch.set_num_threads(n)


def _trainer(update, data, net=None, epochs=1, handlers=(), batch_size=4, lr=0.0):
    net = net or toy_network(filters=(4, 8, 8))
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(Dataset(data), batch_size=batch_size, shuffle=False),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        loss_function=DiceCELoss(),
        iteration_update=update,
        train_handlers=list(handlers),
    )


def test_teat_weight_hand_values():
    # E = 10: 0 before epoch 5, 300 exp(-5 (1 - (e - 5) / 2)^2) between 5 and 7, 300 after
    assert teat_weight(4.99, 10) == 0.0
    assert teat_weight(5.0, 10) == pytest.approx(300 * math.exp(-5))
    assert teat_weight(6.0, 10) == pytest.approx(300 * math.exp(-1.25))
    assert teat_weight(7.0, 10) == 300.0
    assert teat_weight(9.5, 10) == 300.0


def test_temporal_ensemble_bias_correction_and_state():
    ens = TemporalEnsemble(3, momentum=0.9)
    v1 = torch.tensor([[1.0, 2.0]])
    v2 = torch.tensor([[3.0, 0.0]])
    ens.update(torch.tensor([1]), v1)
    t, seen = ens.targets(torch.tensor([1, 2]))
    assert torch.allclose(t[0], v1[0])  # 0.1 v1 / (1 - 0.9)
    assert seen.tolist() == [True, False]
    ens.update(torch.tensor([1]), v2)
    t, _ = ens.targets(torch.tensor([1]))
    assert torch.allclose(t[0], (0.09 * v1[0] + 0.1 * v2[0]) / 0.19)
    sd = ens.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    ens2 = TemporalEnsemble(3)
    ens2.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(ens2.ema, ens.ema) and torch.equal(ens2.count, ens.count)
    with pytest.raises(ValueError, match="same dataset"):
        TemporalEnsemble(4).load_state_dict(sd)
    with pytest.raises(IndexError, match="training samples"):
        ens.update(torch.tensor([3]), v1)


def test_vat_eps_zero_equals_standard_loss():
    data = make_toy_segmentation(8, size=16, seed=1)
    torch.manual_seed(0)
    net = toy_network(filters=(4, 8, 8))
    std_losses, vat_losses = [], []
    t_std = _trainer(None, data, net=net)
    t_std.add_event_handler(Events.ITERATION_COMPLETED, lambda e: std_losses.append(e.state.output[0]["loss"]))
    t_std.run()
    t_vat = _trainer(VATIteration(eps=0.0, attack=L2PGD(steps=2)), data, net=net)
    t_vat.add_event_handler(Events.ITERATION_COMPLETED, lambda e: vat_losses.append(e.state.output[0]["loss"]))
    t_vat.run()
    assert std_losses == pytest.approx(vat_losses, abs=1e-6) and len(std_losses) == 2


def test_amat_margin_update_through_trainer():
    data = make_toy_segmentation(8, size=16, seed=2)
    # xi huge: every sample passes -> E = A + Delta after one epoch; xi = 0: nobody passes -> E = max((E + norm)/2,
    # Delta) where PGD (alpha 4, 2 steps of 2 eps, projected) ends on the sphere: norm = eps = 1 -> E = 1
    for xi, expected in (([1e9, 1e9], 1.5), ([0.0, 0.0], 1.0)):
        book = MarginBook(8, expansion_step=0.5, initial_margin=1.0)
        it = AMATIteration(book, xi, attack=L2PGD(steps=2))
        tr = _trainer(it, data, handlers=[MarginHandler(book)], epochs=1)
        tr.run()
        assert book.margins.tolist() == pytest.approx([expected] * 8, abs=1e-5)
        assert tr.state.metrics["margin_mean"] == pytest.approx(expected)
        assert 0.0 <= tr.state.adversarial["robust_fraction"] <= 1.0


def test_amat_loss_is_beta_mix_and_ids_required():
    data = make_toy_segmentation(4, size=16, seed=3)
    book = MarginBook(4, expansion_step=0.5)
    # IFGSM with 0 steps: x_adv = x, so L = beta L0 + (1 - beta) L1 = mean total loss
    it = AMATIteration(book, [1.0, 1.0], attack=L2IFGSM(steps=0), beta=0.3)
    torch.manual_seed(0)
    net = toy_network(filters=(4, 8, 8))
    tr = _trainer(it, data, net=net, batch_size=4, handlers=[MarginHandler(book)])
    out = {}
    tr.add_event_handler(Events.ITERATION_COMPLETED, lambda e: out.setdefault("loss", e.state.output[0]["loss"]))
    tr.run()
    x = torch.stack([torch.as_tensor(d["image"]) for d in data])
    y = torch.stack([torch.as_tensor(d["label"]) for d in data])
    net.train()
    with torch.no_grad():
        expected = DiceCELoss()(net(x), y).mean()
    assert out["loss"] == pytest.approx(float(expected), rel=1e-5)
    no_ids = [{"image": d["image"], "label": d["label"]} for d in data]
    with pytest.raises(KeyError, match="sample_id"):
        _trainer(AMATIteration(MarginBook(4, 0.5), [1.0, 1.0]), no_ids).run()


def test_nan_loss_is_a_clear_error():
    data = make_toy_segmentation(4, size=16, seed=4)
    data[0]["image"] = data[0]["image"] * float("nan")
    with pytest.raises(FloatingPointError, match="Non-finite"):
        _trainer(VATIteration(eps=1.0, attack=L2PGD(steps=1)), data).run()


def test_teat_runs_and_fills_ensemble():
    data = make_toy_segmentation(8, size=16, seed=5)
    ens = TemporalEnsemble(8)
    it = TEATIteration(eps=0.5, ensemble=ens, max_epochs=2, attack=L2PGD(steps=1))
    tr = _trainer(it, data, epochs=2, lr=0.01)
    tr.run()
    assert ens.count.tolist() == [1] * 8  # updated from the middle of training (epoch 2 of 2) on
    assert ens.ema.shape == (8, 3, 16, 16)
    assert torch.allclose(ens.ema.sum(1) / 0.1, torch.ones(8, 16, 16), atol=1e-4)  # softmax targets
    assert tr.state.adversarial["teat_weight"] > 0


class _HeadedLoss(DiceCELoss):
    """DiceCE whose output has named heads: channel 0 ("a") and channels 1-2 ("b")."""

    def heads(self, out):
        return {"a": out[:, :1], "b": out[:, 1:]}


def test_teat_activation_by_head():
    data = make_toy_segmentation(4, size=16, seed=5)
    torch.manual_seed(0)
    net = toy_network(filters=(4, 8, 8))
    ens = TemporalEnsemble(4, storage_dtype="float16")
    it = TEATIteration(eps=0.5, ensemble=ens, max_epochs=1, start=0.0, attack=L2PGD(steps=1),
                       activation={"a": "sigmoid", "b": "none"})
    tr = _trainer(it, data, net=net, lr=0.0)  # lr 0: the network does not change, the targets are known exactly
    tr.loss_function = _HeadedLoss()
    tr.run()
    x = torch.stack([torch.as_tensor(d["image"]) for d in data])
    net.eval()
    with torch.no_grad():
        out = net(x)
    expected = torch.cat([out[:, :1].sigmoid().flatten(1), out[:, 1:].flatten(1)], 1)
    target, seen = ens.targets(torch.arange(4))
    assert ens.ema.dtype == torch.float16 and seen.all()
    assert torch.allclose(target, expected, rtol=2e-3, atol=2e-3)  # float16 storage
    restored = TemporalEnsemble(4, storage_dtype="float16")
    restored.load_state_dict(ens.state_dict())
    assert restored.ema.dtype == torch.float16 and torch.equal(restored.ema, ens.ema)


def test_teat_activation_errors():
    ens = TemporalEnsemble(4)
    with pytest.raises(ValueError, match="unknown activations"):
        TEATIteration(eps=0.5, ensemble=ens, max_epochs=1, activation={"a": "relu"})
    with pytest.raises(ValueError, match="storage_dtype"):
        TemporalEnsemble(4, storage_dtype="int8")
    data = make_toy_segmentation(4, size=16, seed=5)
    it = TEATIteration(eps=0.5, ensemble=ens, max_epochs=1, start=0.0, attack=L2PGD(steps=1),
                       activation={"heatmap": "sigmoid"})
    with pytest.raises(TypeError, match="has no heads"):
        _trainer(it, data).run()
    tr = _trainer(it, data)
    tr.loss_function = _HeadedLoss()
    with pytest.raises(KeyError, match=r"heads \['heatmap'\] that the output does not have"):
        tr.run()


def test_amat_resume_restores_margins_and_optimizer(tmp_path):
    data = make_toy_segmentation(8, size=16, seed=6)
    book = MarginBook(8, expansion_step=0.5)
    net = toy_network(filters=(4, 8, 8))
    tr = _trainer(AMATIteration(book, [1e9, 1e9], attack=L2PGD(steps=1)), data, net=net, epochs=2, lr=0.01,
                  handlers=[MarginHandler(book)])
    CheckpointSaver(str(tmp_path), {"net": net, "opt": tr.optimizer, "trainer": tr, "margins": book},
                    save_final=True, final_filename="final.pt").attach(tr)
    tr.run()
    assert book.margins.tolist() == [1.5] * 8
    book2 = MarginBook(8, expansion_step=0.5)
    net2 = toy_network(filters=(4, 8, 8))
    tr2 = _trainer(AMATIteration(book2, [1e9, 1e9], attack=L2PGD(steps=1)), data, net=net2, epochs=3, lr=0.01,
                   handlers=[MarginHandler(book2)])
    CheckpointLoader(str(tmp_path / "final.pt"),
                     {"net": net2, "opt": tr2.optimizer, "trainer": tr2, "margins": book2}).attach(tr2)
    tr2.run()  # resumes at epoch 2 and trains epoch 3 only
    assert book2.margins.tolist() == [2.0] * 8
    assert tr2.state.epoch == 3


@pytest.mark.slow
def test_amat_gains_robustness_over_std(toy_std):
    """The headline: AMAT's Dice under L2 PGD clearly above STD's, clean Dice close (fixed seed, toy problem)."""
    train, test = toy_std["train"], toy_std["test"]
    amat, margins = run_toy("amat", train, epochs=20, thresholds=toy_std["xi"], expansion_step=1.0, attack_steps=5,
                            seed=0)
    s_std = toy_robustness(toy_std["net"], test, eps=(4.0,), pgd_steps=20, ifgsm_steps=10)
    s_amat = toy_robustness(amat, test, eps=(4.0,), pgd_steps=20, ifgsm_steps=10)
    print("STD", s_std["clean"], s_std["attacks"], "AMAT", s_amat["clean"], s_amat["attacks"], margins.summary())
    assert s_amat["attacks"]["PGD"]["4"] > s_std["attacks"]["PGD"]["4"] + 0.05
    assert abs(s_amat["clean"] - s_std["clean"]) < 0.03
    assert margins.summary()["max"] > 1.0  # margins did grow


@pytest.mark.slow
def test_finetuned_amat_gains_robustness_over_its_start(toy_std):
    """Robust fine-tuning: 5 AMAT epochs from the STD weights (schedule-aware margin, target 4) are clearly more
    robust than the STD model they started from AND than 5 more clean epochs from it (so the gain is not just longer
    training), with clean Dice within 0.03."""
    train, test = toy_std["train"], toy_std["test"]
    amat, margins = run_toy("amat", train, epochs=5, thresholds=toy_std["xi"], attack_steps=5, seed=0,
                            init_from=str(toy_std["path"]), target_margin=4.0, reach_fraction=0.5)
    more_std, _ = run_toy("std", train, epochs=5, seed=0, init_from=str(toy_std["path"]))
    s = {name: toy_robustness(net, test, eps=(4.0,), pgd_steps=20, ifgsm_steps=10)
         for name, net in (("std", toy_std["net"]), ("std+5", more_std), ("amat_ft", amat))}
    print({k: (v["clean"], v["attacks"]["PGD"]) for k, v in s.items()}, margins.summary())
    assert margins.expansion_step == pytest.approx(4.0 / 2.5)  # M / (rho E)
    assert s["amat_ft"]["attacks"]["PGD"]["4"] > s["std"]["attacks"]["PGD"]["4"] + 0.05
    assert s["amat_ft"]["attacks"]["PGD"]["4"] > s["std+5"]["attacks"]["PGD"]["4"] + 0.05
    assert abs(s["amat_ft"]["clean"] - s["std"]["clean"]) < 0.03
    assert margins.summary()["max"] > margins.initial_margin  # margins did grow
