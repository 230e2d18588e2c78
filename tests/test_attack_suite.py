"""Named attack suites (robust_bundles.attack_suite) and what the robustness report says about them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from robust_bundles.attack_losses import CosineWeightedCE, TermLoss
from robust_bundles.attack_suite import RandomNoise, suite_attacks
from robust_bundles.attacks import L2IFGSM, L2PGD
from robust_bundles.handlers import RobustnessEvaluationHandler
from robust_bundles.metrics import MetricSpec, TaskMetric, nanmean
from robust_bundles.tasks.segmentation import DiceCELoss, SliceDice, slice_dice
from robust_bundles.toy import make_toy_segmentation, run_toy
from robust_bundles.transfer import transfer_warnings


def test_suites_hold_the_named_attacks():
    loss = DiceCELoss()
    quick = suite_attacks("quick", loss, pgd_steps=20, ifgsm_steps=10, clamp=[0, 1])
    assert list(quick) == ["PGD", "IFGSM", "noise"]
    assert isinstance(quick["IFGSM"], L2IFGSM) and isinstance(quick["noise"], RandomNoise)
    std = suite_attacks("standard", loss, pgd_steps=20, objectives={"cosine_ce": CosineWeightedCE()})
    assert list(std) == ["PGD", "APGD", "APGD_dice", "APGD_ce", "APGD_cosine_ce", "noise"]
    assert std["APGD"].loss_fn is None and isinstance(std["APGD_dice"].loss_fn, TermLoss)
    assert std["APGD_ce"].loss_fn.term_names == ("ce",) and isinstance(std["APGD_cosine_ce"].loss_fn, CosineWeightedCE)
    strong = suite_attacks("strong", loss, pgd_steps=20, strong_pgd=True)
    assert all(strong[a].steps == 100 and strong[a].restarts == 3 for a in strong if a.startswith("APGD"))
    assert strong["PGD_strong"].steps == 50 and strong["PGD_strong"].restarts == 3
    # the same PGD in every suite
    for suite in (quick, std, strong):
        p = suite["PGD"]
        assert type(p) is L2PGD and (p.steps, p.alpha, p.restarts) == (20, 4.0, None)
    assert quick["PGD"].clamp == (0, 1)
    with pytest.raises(ValueError, match=r"Unknown attack suite 'fast'.*'quick', 'standard', 'strong'"):
        suite_attacks("fast", loss)


@pytest.fixture(scope="module")
def trained():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    net, _ = run_toy("std", make_toy_segmentation(32, size=16, seed=0), epochs=5, batch_size=8, seed=0)
    yield net, make_toy_segmentation(6, size=16, seed=7)
    torch.set_num_threads(n)


def _run(net, data, suite, path):
    loss = DiceCELoss()
    attacks = suite_attacks(suite, loss, pgd_steps=4, ifgsm_steps=3, objectives={"cosine_ce": CosineWeightedCE()})
    h = RobustnessEvaluationHandler(loss, attacks, eps=[1.0, 3.0], output_dir=path, metric=SliceDice(name="dice"),
                                    id_keys=("sample_id",))
    SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(data), batch_size=3), net, val_handlers=[h]).run()
    return h


@pytest.fixture(scope="module")
def suites(trained, tmp_path_factory):
    """The quick and the standard suite on the same model and data (written under ``path``)."""
    net, data = trained
    path = tmp_path_factory.mktemp("suites")
    return _run(net, data, "quick", path / "q"), _run(net, data, "standard", path / "s"), path


def test_standard_suite_is_never_better_than_pgd_and_reports_who_found_the_worst(suites):
    quick, std, tmp_path = suites

    def per_sample(h, attack):
        return {(r["index"], r["eps"]): r["dice"] for r in h.rows if r["attack"] == attack}

    pgd_alone, pgd_in_suite = per_sample(quick, "PGD"), per_sample(std, "PGD")
    assert pgd_alone == pgd_in_suite  # the same PGD, sample for sample, whatever else the suite runs
    values = {a: per_sample(std, a) for a in std.attacks}
    worst = {k: min(v[k] for v in values.values()) for k in pgd_alone}
    assert all(worst[k] <= pgd_alone[k] for k in worst if not math.isnan(pgd_alone[k]))
    s = std.summary
    for e in ("1", "3"):
        assert s["worst"][e] <= quick.summary["attacks"]["PGD"][e] + 1e-9
    # the suite does find worse cases than PGD alone on some samples (APGD on one of the losses)
    assert any(worst[k] < pgd_alone[k] - 1e-6 for k in worst)
    # worst_found_by: per eps, the samples whose worst Dice each attack reached (ties count for each)
    for e, eps in (("1", 1.0), ("3", 3.0)):
        expected = {a: sum(values[a][(i, eps)] == worst[(i, eps)] for i in range(6)) for a in std.attacks}
        assert s["worst_found_by"][e] == expected
        assert sum(expected.values()) >= 6
    md = (tmp_path / "s" / "robustness.md").read_text()
    assert "Worst case found by" in md and "| APGD_cosine_ce |" in md


def test_cost_counts_the_passes(suites):
    """PGD-4: 4 passes with input gradient per sample and eps; APGD-4: 4 with gradient and the last iterate's forward;
    noise: one forward; I-FGSM-3: 3 + its final check."""
    h, std_handler, tmp_path = suites
    per = h.summary["cost"]["passes_per_sample_and_eps"]
    assert per["PGD"] == {"gradient": 4.0, "forward": 1.0}  # perturb's final check of x_adv
    assert per["IFGSM"] == {"gradient": 3.0, "forward": 1.0}
    assert per["noise"] == {"gradient": 0.0, "forward": 1.0}
    assert h.summary["cost"]["total"] == 10.0 and h.summary["cost"]["relative_to_PGD"] == 2.0
    std = std_handler.summary["cost"]
    assert std["passes_per_sample_and_eps"]["APGD_dice"] == {"gradient": 4.0, "forward": 1.0}
    assert std["total"] == 5 * 5 + 1  # PGD and four APGD runs at 5 passes each, noise 1
    js = json.loads((tmp_path / "s" / "robustness.json").read_text())
    assert js["settings"]["attacks"]["APGD_ce"]["loss"] == "TermLoss"
    assert js["settings"]["attacks"]["APGD"]["loss"] == "DiceCELoss"


# ------------------------------------------------------------------------------------------------- transfer check
class Saturated(torch.nn.Module):
    """The network with its logits scaled by 1e4: the same argmax (the same Dice), but a saturated softmax whose input
    gradient vanishes on every pixel it classifies correctly: gradient masking by construction."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) * 1e4


def test_transfer_warnings_by_hand():
    summary = {"metric": "dice", "attacks": {"PGD": {"1": 0.5, "2": 0.3, "avg": 0.4},
                                             "transfer": {"1": 0.6, "2": 0.2, "avg": 0.4}}}
    (w,) = transfer_warnings(summary)
    assert "eps 2" in w and "0.2000" in w and "worst 0.3000" in w
    assert transfer_warnings(summary, higher_is_better=False) == [transfer_warnings(
        {"metric": "dice", "attacks": {"PGD": {"1": 0.5}, "transfer": {"1": 0.6}}}, higher_is_better=False)[0]]
    assert transfer_warnings({"attacks": {"PGD": {"1": 0.5}}}) == []


def test_transfer_flags_a_masking_model_and_not_an_honest_one(trained, tmp_path):
    net, data = trained
    other, _ = run_toy("std", make_toy_segmentation(32, size=16, seed=1), epochs=5, batch_size=8, seed=1)

    def evaluate(model, surrogate, path):
        loss = DiceCELoss()
        attacks = suite_attacks("quick", loss, pgd_steps=4, ifgsm_steps=3, surrogate=surrogate)
        assert list(attacks) == ["PGD", "IFGSM", "noise", "transfer"]
        h = RobustnessEvaluationHandler(loss, attacks, eps=[3.0], output_dir=path, metric=SliceDice(name="dice"))
        SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(data), batch_size=3), model,
                            val_handlers=[h]).run()
        return h

    masked = evaluate(Saturated(net), net, tmp_path / "m")
    s = masked.summary
    assert s["attacks"]["transfer"]["3"] < min(s["attacks"][a]["3"] for a in ("PGD", "IFGSM", "noise"))
    assert any(w.startswith("gradient masking? At eps 3") for w in masked.warnings)
    assert s["worst"]["3"] <= s["attacks"]["transfer"]["3"]  # the worst case takes the transfer into account
    assert s["cost"]["passes_per_sample_and_eps"]["transfer"] == {"gradient": 4.0, "forward": 1.0}  # on the surrogate
    honest = evaluate(net, other, tmp_path / "h")
    assert not any("gradient masking?" in w for w in honest.warnings)
    assert honest.summary["attacks"]["transfer"]["3"] > honest.summary["attacks"]["PGD"]["3"]


class _PooledDice(TaskMetric):
    """A dataset-level metric (like mAP): the mean slice Dice, known only at the end; the task loss picks the
    'worst' input of an image by proxy, not by this metric."""

    specs = (MetricSpec("pooled_dice", "", True),)
    per_sample = False

    def reset(self):
        self.values = []

    def update(self, output, batch):
        self.values.append(slice_dice(output, batch["label"].to(output.device)))
        return None

    def aggregate(self):
        return {"pooled_dice": nanmean(torch.cat(self.values))}


def test_dataset_level_worst_is_never_better_than_an_attack(trained, tmp_path):
    net, data = trained
    metric = _PooledDice()
    metric.reset()
    loss = DiceCELoss()
    attacks = suite_attacks("standard", loss, pgd_steps=4, objectives={"cosine_ce": CosineWeightedCE()})
    h = RobustnessEvaluationHandler(loss, attacks, eps=[1.0, 3.0], metric=metric)
    SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(data), batch_size=3), net, val_handlers=[h]).run()
    s = h.summary
    for e in ("1", "3"):
        assert s["worst"][e] == min([h._accumulators[("worst", float(e))].aggregate()["pooled_dice"],
                                     *(s["attacks"][a][e] for a in attacks)])
        assert sum(s["worst_found_by"][e].values()) == len(data)  # the highest-loss input of every image
