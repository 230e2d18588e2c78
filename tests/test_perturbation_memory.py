"""The perturbation memory (warm starts across epochs), the attack's warm start, fast training with T = 1 and 2, and the
pass counter's exact counts."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from test_adversarial import one_thread  # noqa: F401 - the autouse fixture: one torch thread

from robust_bundles.adversarial import (
    AMATIteration,
    TEATIteration,
    TemporalEnsemble,
    VATIteration,
)
from robust_bundles.attacks import L2PGD, perturb
from robust_bundles.handlers import MarginHandler, PassCounter
from robust_bundles.margins import MarginBook
from robust_bundles.perturbation_memory import (
    GeometryKeyd,
    PerturbationMemory,
    geometry_key,
)
from robust_bundles.tasks.segmentation import DiceCELoss
from robust_bundles.toy import (
    make_toy_segmentation,
    run_toy,
    toy_network,
    toy_robustness,
)


# ------------------------------------------------------------------------------------------------ the memory alone
def test_ids_range_and_split_digest():
    mem = PerturbationMemory(4, key_digest="a" * 64)
    x = torch.zeros(2, 1, 3, 3)
    with pytest.raises(IndexError, match="ids 0..3"):
        mem.recall(torch.tensor([0, 4]), 1.0, x)
    with pytest.raises(TypeError, match="integers"):
        mem.store(torch.tensor([0.0, 1.0]), x, 1.0)
    other = PerturbationMemory(4, key_digest="b" * 64)
    with pytest.raises(ValueError, match="other sample keys"):
        other.load_state_dict(mem.state_dict())
    with pytest.raises(ValueError, match="4 samples but the training set has 5"):
        PerturbationMemory(5).load_state_dict(mem.state_dict())


def test_rescaling_to_the_current_radius_hand_checked():
    """A perturbation of norm 3 (= 3 * e_0) stored at radius 4 comes back at norm 3 * r / 4 for radius r; ids are
    matched (not positions), a sample never stored and one stored at radius 0 start cold."""
    mem = PerturbationMemory(5, storage_dtype="float32")
    d = torch.zeros(2, 1, 2, 2)
    d[0, 0, 0, 0] = 3.0  # norm 3
    d[1, 0, 1, 1] = -0.5
    mem.store(torch.tensor([3, 1]), d, torch.tensor([4.0, 0.0]))
    x = torch.zeros(3, 1, 2, 2)
    delta, hit = mem.recall(torch.tensor([1, 3, 0]), torch.tensor([9.0, 2.0, 5.0]), x)
    assert hit.tolist() == [False, True, False]  # id 1 stored at radius 0, id 0 never stored
    assert delta[1, 0, 0, 0].item() == pytest.approx(1.5)  # 3 * 2 / 4
    assert delta[1].norm().item() == pytest.approx(1.5)
    assert delta[0].abs().sum().item() == 0 and delta[2].abs().sum().item() == 0
    assert mem.last_hit_fraction == pytest.approx(1 / 3)
    # a new store replaces the old perturbation; a repeated id in one batch keeps the last entry
    d2 = torch.ones(2, 1, 2, 2)
    d2[1] *= 2  # norm 4
    mem.store(torch.tensor([3, 3]), d2, torch.tensor([1.0, 8.0]))
    delta, hit = mem.recall(torch.tensor([3]), 2.0, x[:1])
    assert hit.tolist() == [True] and delta.norm().item() == pytest.approx(4 * 2 / 8)


def test_float16_round_trip_error():
    """float16 loses nothing measurable: relative L2 error of the stored perturbation < 3e-4 (2.1e-4 measured) at the
    input sizes of the three bundles (hippocampus, landmarks, BCCD paper profile)."""
    g = torch.Generator().manual_seed(0)
    for shape in ((1, 40, 56), (1, 200, 160), (3, 320, 320)):
        d = torch.randn((2, *shape), generator=g)
        d = d / d.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * 5.0  # on the sphere of radius 5
        mem = PerturbationMemory(2)
        mem.store(torch.arange(2), d, 5.0)
        back, hit = mem.recall(torch.arange(2), 5.0, torch.zeros_like(d))
        rel = ((back - d).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)).max().item()
        print(shape, "relative error", rel, "bytes/sample", mem.bytes_per_sample())
        assert hit.all() and rel < 3e-4
    assert mem.bytes_per_sample() == 3 * 320 * 320 * 2 + 17


def test_resume_is_bit_exact(tmp_path):
    mem = PerturbationMemory(6, key_digest="k")
    g = torch.Generator().manual_seed(1)
    mem.store(torch.tensor([0, 2, 5]), torch.randn(3, 1, 4, 4, generator=g), torch.tensor([1.0, 2.5, 3.0]),
              torch.tensor([0, 7, -3]))
    torch.save({"perturbation_memory": mem.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["perturbation_memory"]
    new = PerturbationMemory(6)
    new.load_state_dict(state)
    for name in ("values", "scale", "radius", "geometry", "filled"):
        assert torch.equal(getattr(new, name), getattr(mem, name)), name
    assert new.key_digest == "k" and new.values.dtype == torch.float16
    x = torch.zeros(3, 1, 4, 4)
    a, b = mem.recall(torch.tensor([5, 2, 1]), 2.0, x, torch.tensor([-3, 7, 0])), \
        new.recall(torch.tensor([5, 2, 1]), 2.0, x, torch.tensor([-3, 7, 0]))
    assert torch.equal(a[0], b[0]) and a[1].tolist() == b[1].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="memory_dtype"):
        PerturbationMemory(6, storage_dtype="float32").load_state_dict(state)


def test_geometry_mismatch_resets_the_sample():
    """Random crops/flips: the geometry key of GeometryKeyd changes with the crop, and a sample whose key differs
    from the stored one starts cold; the same crop is a hit. Another input shape resets the whole memory."""
    from monai.transforms import Compose, EnsureTyped, RandFlipd, RandSpatialCropd

    sample = {"image": torch.arange(64.0).reshape(1, 8, 8), "label": torch.zeros(1, 8, 8)}
    aug = Compose([EnsureTyped(keys=["image", "label"]),
                   RandSpatialCropd(keys=["image", "label"], roi_size=(4, 4), random_size=False),
                   RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0), GeometryKeyd()])
    aug.set_random_state(0)
    outs = [aug(dict(sample)) for _ in range(12)]
    keys = [int(o["geometry_key"]) for o in outs]
    # the key is a function of the crop position and the flip, seen in the pixels of the crop
    by_pixels = {}
    for o, k in zip(outs, keys):
        by_pixels.setdefault(tuple(o["image"].flatten().tolist()), set()).add(k)
    assert all(len(v) == 1 for v in by_pixels.values())
    assert len(set(keys)) == len(by_pixels) > 1
    assert geometry_key(torch.zeros(1, 4, 4)) == 0  # a plain tensor: no recorded geometry

    mem = PerturbationMemory(1, storage_dtype="float32")
    d = torch.ones(1, 1, 4, 4)
    mem.store(torch.tensor([0]), d, 1.0, torch.tensor([keys[0]]))
    other = next(k for k in keys if k != keys[0])
    _, hit_same = mem.recall(torch.tensor([0]), 1.0, d, torch.tensor([keys[0]]))
    delta, hit_other = mem.recall(torch.tensor([0]), 1.0, d, torch.tensor([other]))
    assert hit_same.tolist() == [True] and hit_other.tolist() == [False] and delta.abs().sum() == 0
    _, hit_shape = mem.recall(torch.tensor([0]), 1.0, torch.zeros(1, 1, 5, 5), torch.tensor([keys[0]]))
    assert hit_shape.tolist() == [False]
    mem.store(torch.tensor([0]), torch.ones(1, 1, 5, 5), 1.0)
    assert mem.shape == (1, 5, 5)


# ------------------------------------------------------------------------------------------------ the attack
class _Lin(torch.nn.Module):
    """out = w * sum(x) per sample (B, 1): with the losses below, a loss linear or quadratic in the input."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return (x.flatten(1) * self.w).sum(1, keepdim=True)


def _lin_loss(out, y):
    return out[:, 0]  # per-sample, grows along +1


def test_warm_start_replaces_the_random_start_and_the_path_test_sees_it():
    x = torch.zeros(2, 1, 2, 2)
    warm = torch.full((2, 1, 2, 2), 0.5)  # norm 1, loss 2
    use = torch.tensor([True, False])
    res = perturb(_Lin(), _lin_loss, x, None, eps=1.0, steps=0, warm_start=(warm, use), final_check=True,
                  thresholds=[1.5], check="path")
    assert torch.equal(res.x_adv[0], warm[0])  # steps 0: x_adv is the warm start
    assert not torch.equal(res.x_adv[1], warm[1]) and res.norms[1] <= 1.0 + 1e-6  # random start, in the ball
    assert res.robust[0].tolist() == [False]  # loss 2 > 1.5 at the (warm) start point
    # T = 1, loss -sum(x): the warm start -0.5 everywhere (loss 2 > xi 1) fails the path test at its first point
    res = perturb(_Lin(), lambda out, y: -out[:, 0], x[:1], None, eps=1.0, steps=1,
                  warm_start=(-warm[:1], torch.tensor([True])), thresholds=[1.0], check="path", final_check=True)
    assert res.robust.tolist() == [[False]]
    with pytest.raises(ValueError, match="warm_start"):
        perturb(_Lin(), _lin_loss, x, None, eps=1.0, steps=1, warm_start=(warm[:1], use))


def _bump_loss(out, y):
    """-(s - 0.2)^2 of the 1-pixel input s: highest at 0.2, so a PGD step from 0.1 overshoots to the ball's edge."""
    return -((out[:, 0] - 0.2) ** 2)


def test_amat_path_check_includes_the_warm_start_point():
    """AMAT with T = 1 on a 1-pixel input, margin 1, xi -0.3: from the warm start s = 0.1 (loss -0.01, above xi)
    the step overshoots to s = 1 (loss -0.64, passes), so only a test that includes the start point fails the
    sample. Cold (random start at radius 1, s = +-1, loss <= -0.64) the sample passes; warm it fails."""
    data = [{"image": torch.zeros(1, 1, 1), "label": torch.zeros(1), "sample_id": 0}]
    for warm, robust in ((None, True), (0.1, False)):
        mem = PerturbationMemory(1, storage_dtype="float32")
        if warm is not None:
            mem.store(torch.tensor([0]), torch.full((1, 1, 1, 1), warm), torch.tensor([1.0]))
        book = MarginBook(1, expansion_step=1.0)
        net = _Lin()
        it = AMATIteration(book, [-0.3], attack=L2PGD(steps=1), memory=mem)
        tr = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, network=net,
                               train_data_loader=DataLoader(Dataset(data), batch_size=1),
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.0), loss_function=_bump_loss,
                               iteration_update=it, train_handlers=[MarginHandler(book)])
        tr.run()
        assert book.last_expanded == int(robust), warm
        assert tr.state.adversarial["memory_hit_fraction"] == (0.0 if warm is None else 1.0)
        assert mem.radius[0].item() == 1.0 and abs(abs(mem.values[0].item() * mem.scale[0].item()) - 1.0) < 1e-6


# ------------------------------------------------------------------------------------------------ counting passes
def _count(update, data, epochs=1, batch_size=4, handlers=()):
    net = toy_network(filters=(4, 8, 8))
    counter = PassCounter()
    tr = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs,
                           train_data_loader=DataLoader(Dataset(data), batch_size=batch_size, shuffle=False),
                           network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
                           loss_function=DiceCELoss(), iteration_update=update, train_handlers=[counter, *handlers])
    tr.run()
    return counter.summary()


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_pass_counts_are_exact(steps):
    """Batch-weighted counts over 10 samples (batches 4, 4, 2): STD 1 + 1 per sample; VAT T steps T+1 + T+1; AMAT
    beta 0.5 T+2 + T+2; AMAT beta 0 T+1 + T+1; TEAT with its ensemble active one more forward."""
    data = make_toy_segmentation(10, size=16, seed=3)
    std = _count(None, data, epochs=2)
    assert (std["forward"], std["backward"], std["samples"]) == (20, 20, 20)
    assert std["passes_per_sample"] == 2.0 and len(std["epochs"]) == 2 and std["epochs"][1]["forward"] == 10
    vat = _count(VATIteration(2.0, attack=L2PGD(steps=steps)), data)
    assert (vat["forward"], vat["backward"]) == (10 * (steps + 1), 10 * (steps + 1))
    assert (vat["attack_forward"], vat["attack_backward"]) == (10 * steps, 10 * steps)
    assert std["attack_forward"] == std["attack_backward"] == 0
    mem = PerturbationMemory(10)
    vat_mem = _count(VATIteration(2.0, attack=L2PGD(steps=steps), memory=mem), data)
    assert (vat_mem["forward"], vat_mem["backward"]) == (10 * (steps + 1), 10 * (steps + 1))
    for beta, extra in ((0.5, 2), (0.0, 1)):
        book = MarginBook(10, expansion_step=1.0)
        amat = _count(AMATIteration(book, [1e9, 1e9], attack=L2PGD(steps=steps), beta=beta,
                                    memory=PerturbationMemory(10)), data, handlers=[MarginHandler(book)])
        assert (amat["forward"], amat["backward"]) == (10 * (steps + extra), 10 * (steps + extra)), beta
    teat = _count(TEATIteration(2.0, TemporalEnsemble(10), max_epochs=1, attack=L2PGD(steps=steps), start=0.0,
                                ramp=0.0, memory=PerturbationMemory(10)), data)
    assert (teat["forward"], teat["backward"]) == (10 * (steps + 2), 10 * (steps + 1))


def test_memory_off_is_bit_identical_and_memory_on_warm_starts():
    """No memory: the iteration calls the attack exactly as before (same weights after training with the same seed
    as an explicit memory=None); with a memory every visit after the first epoch is a hit."""
    from monai.utils import set_determinism

    data = make_toy_segmentation(8, size=16, seed=4)

    def train(memory):
        set_determinism(0)
        net = toy_network(filters=(4, 8, 8))
        it = VATIteration(1.0, attack=L2PGD(steps=1), memory=memory)
        hits = []
        tr = SupervisedTrainer(device=torch.device("cpu"), max_epochs=2, network=net,
                               train_data_loader=DataLoader(Dataset(data), batch_size=4, shuffle=False),
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=DiceCELoss(),
                               iteration_update=it)
        from ignite.engine import Events

        tr.add_event_handler(Events.ITERATION_COMPLETED,
                             lambda e: hits.append(e.state.adversarial.get("memory_hit_fraction")))
        tr.run()
        return net, hits

    a, hits_off = train(None)
    b, _ = train(None)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert hits_off == [None] * 4
    _, hits = train(PerturbationMemory(8))
    assert hits == [0.0, 0.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_fast_amat_t1_with_memory_gains_robustness_over_std(toy_std):
    """Fast AMAT (T = 1, perturbation memory) on the toy problem: clearly more robust than STD under PGD-20."""
    train, test, std, xi = toy_std["train"], toy_std["test"], toy_std["net"], toy_std["xi"]
    counter = PassCounter()
    fast, margins = run_toy("amat", train, epochs=20, thresholds=xi, expansion_step=1.0, attack_steps=1, seed=0,
                            memory=True, extra_handlers=[counter])
    s_std = toy_robustness(std, test, eps=(4.0,), pgd_steps=20, ifgsm_steps=10)
    s_fast = toy_robustness(fast, test, eps=(4.0,), pgd_steps=20, ifgsm_steps=10)
    print("STD", s_std["clean"], s_std["attacks"], "fast AMAT", s_fast["clean"], s_fast["attacks"],
          margins.summary(), counter.summary()["passes_per_sample"])
    assert counter.summary()["passes_per_sample"] == 6.0  # (1 + 2) forward + (1 + 2) backward
    assert s_fast["attacks"]["PGD"]["4"] > s_std["attacks"]["PGD"]["4"] + 0.05
    assert abs(s_fast["clean"] - s_std["clean"]) < 0.05
    assert not math.isnan(s_fast["clean"])
