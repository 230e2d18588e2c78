"""RobustnessEvaluationHandler on a real MONAI SupervisedEvaluator."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from robust_bundles.attacks import L2IFGSM, L2PGD
from robust_bundles.handlers import RobustnessEvaluationHandler
from robust_bundles.metrics import MetricSpec, PerSampleMetric, TaskMetric, nanmean
from robust_bundles.tasks.segmentation import DiceCELoss, SliceDice, slice_dice
from robust_bundles.toy import make_toy_segmentation, run_toy


@pytest.fixture(scope="module")
def trained():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    data = make_toy_segmentation(48, size=24, seed=0)
    net, _ = run_toy("std", data, epochs=6, batch_size=8, seed=0)
    yield net, make_toy_segmentation(12, size=24, seed=7)
    torch.set_num_threads(n)


def _evaluate(net, data, tmp_path, **kw):
    h = RobustnessEvaluationHandler(
        DiceCELoss(), {"PGD": L2PGD(steps=5), "IFGSM": L2IFGSM(steps=3)}, output_dir=tmp_path,
        metric=kw.pop("metric", SliceDice(name="dice")), id_keys=("sample_id", "case", "slice"), **kw
    )
    ev = SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(data), batch_size=5), net, val_handlers=[h])
    ev.run()
    return h, ev


def test_eps_zero_reproduces_clean_and_reports(trained, tmp_path):
    net, data = trained
    h, ev = _evaluate(net, data, tmp_path, eps=[0.0, 2.0, 8.0])
    s = h.summary
    # eps = 0 is exactly the clean metric, for both attacks
    assert s["attacks"]["PGD"]["0"] == s["clean"] and s["attacks"]["IFGSM"]["0"] == s["clean"]
    # the clean metric equals slice Dice of the eval-mode network computed by hand
    x = torch.stack([torch.as_tensor(d["image"]) for d in data])
    y = torch.stack([torch.as_tensor(d["label"]) for d in data])
    net.eval()
    with torch.no_grad():
        assert s["clean"] == pytest.approx(nanmean(slice_dice(net(x), y)), abs=1e-6)
    # the worst case over attacks is at most each attack, and the metric falls with eps
    for e in ("2", "8"):
        assert s["worst"][e] <= min(s["attacks"]["PGD"][e], s["attacks"]["IFGSM"][e]) + 1e-9
    assert s["attacks"]["PGD"]["8"] < s["attacks"]["PGD"]["2"] < s["clean"]
    assert ev.state.metrics["PGD_eps8"] == s["attacks"]["PGD"]["8"]
    # files: JSON summary, one CSV row per sample x (clean + attacks x eps), Markdown table
    js = json.loads((tmp_path / "robustness.json").read_text())
    assert js["summary"]["clean"] == s["clean"] and js["settings"]["eps"] == [0.0, 2.0, 8.0]
    assert js["settings"]["input_shape"] == [1, 24, 24]  # eps units depend on it
    rows = list(csv.DictReader((tmp_path / "robustness.csv").open()))
    assert len(rows) == len(data) * (1 + 2 * 3)
    assert {r["sample_id"] for r in rows} == {str(i) for i in range(len(data))}
    assert all(float(r["norm"]) <= float(r["eps"]) * (1 + 1e-5) + 1e-6 for r in rows)
    assert "| clean |" in (tmp_path / "robustness.md").read_text()


def test_deterministic_and_restarts_never_better(trained, tmp_path):
    net, data = trained
    a, _ = _evaluate(net, data, tmp_path / "a", eps=[4.0])
    b, _ = _evaluate(net, data, tmp_path / "b", eps=[4.0])
    assert a.summary == b.summary  # fixed seed: the same numbers twice
    c, _ = _evaluate(net, data, tmp_path / "c", eps=[4.0], restarts=3)
    assert c.summary["attacks"]["PGD"]["4"] <= a.summary["attacks"]["PGD"]["4"] + 1e-9


def test_an_attack_of_zero_steps_is_left_out_not_reported_as_clean(trained, tmp_path):
    # IFGSM with 0 steps returns the clean input; the report must not print clean figures under "IFGSM"
    net, data = trained
    h = RobustnessEvaluationHandler(DiceCELoss(), {"PGD": L2PGD(steps=2), "IFGSM": L2IFGSM(steps=0)},
                                    eps=[2.0], output_dir=tmp_path, metric=SliceDice())
    assert list(h.attacks) == ["PGD"]
    SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(data[:4]), batch_size=4), net, val_handlers=[h]).run()
    js = json.loads((tmp_path / "robustness.json").read_text())
    assert list(js["summary"]["attacks"]) == ["PGD"]
    assert "IFGSM" not in (tmp_path / "robustness.md").read_text()
    # PGD with 0 steps still has its random start (a noise baseline): kept
    assert "PGD" in RobustnessEvaluationHandler(DiceCELoss(), {"PGD": L2PGD(steps=0)}, eps=[1.0],
                                                metric=SliceDice()).attacks
    with pytest.raises(ValueError, match="0 steps and no random start"):
        RobustnessEvaluationHandler(DiceCELoss(), {"IFGSM": L2IFGSM(steps=0)}, eps=[1.0], metric=SliceDice())


def test_bad_settings():
    with pytest.raises(ValueError, match="Noise levels"):
        RobustnessEvaluationHandler(DiceCELoss(), [L2PGD()], eps=[-1.0])
    with pytest.raises(ValueError, match="at least one attack"):
        RobustnessEvaluationHandler(DiceCELoss(), {}, eps=[1.0])
    # no default task: the metric is given (a segmentation default would score landmarks or boxes as Dice)
    with pytest.raises(ValueError, match="no default task"):
        RobustnessEvaluationHandler(DiceCELoss(), [L2PGD()], eps=[1.0])


class _TwoDirections(PerSampleMetric):
    """Slice Dice twice: once as higher-is-better, once declared lower-is-better (its worst case is the maximum)."""

    specs = (MetricSpec("dice", "", True), MetricSpec("dice_down", "", False))

    def compute(self, output, batch):
        d = slice_dice(output, batch["label"].to(output.device))
        return {"dice": d, "dice_down": d}


class _PooledLoss(TaskMetric):
    """A dataset-level metric: the mean task loss over the dataset, only known at the end."""

    specs = (MetricSpec("pooled_loss", "", False),)
    per_sample = False

    def __init__(self):
        self.loss = DiceCELoss()
        self.reset()

    def reset(self):
        self.sum, self.n = 0.0, 0

    def update(self, output, batch):
        self.sum += float(self.loss(output, batch["label"].to(output.device)).sum())
        self.n += output.shape[0]
        return None

    def aggregate(self):
        return {"pooled_loss": self.sum / self.n}


def _rows(path):
    return list(csv.DictReader((path / "robustness.csv").open()))


def test_worst_case_follows_each_metrics_direction(trained, tmp_path):
    net, data = trained
    h, ev = _evaluate(net, data, tmp_path, eps=[3.0], metric=_TwoDirections())
    s = h.summary
    assert s["metric"] == "dice" and set(s["metrics"]) == {"dice", "dice_down"}
    rows = _rows(tmp_path)
    by = {}
    for r in rows:
        if r["dice"] != "nan":
            by.setdefault(r["index"], {})[r["attack"]] = float(r["dice"])
    lows = [min(v["PGD"], v["IFGSM"]) for v in by.values()]
    highs = [max(v["PGD"], v["IFGSM"]) for v in by.values()]
    assert any(v["PGD"] != v["IFGSM"] for v in by.values())  # the two attacks disagree on some sample
    assert s["metrics"]["dice"]["worst"]["3"] == pytest.approx(sum(lows) / len(lows), abs=1e-6)
    assert s["metrics"]["dice_down"]["worst"]["3"] == pytest.approx(sum(highs) / len(highs), abs=1e-6)
    assert s["metrics"]["dice_down"]["worst"]["3"] > s["metrics"]["dice"]["worst"]["3"]
    # same values, so the same per-attack means; the specs travel with the results
    assert s["metrics"]["dice_down"]["attacks"] == s["metrics"]["dice"]["attacks"]
    js = json.loads((tmp_path / "robustness.json").read_text())
    assert js["settings"]["metrics"][1] == {"name": "dice_down", "unit": "", "higher_is_better": False,
                                            "description": ""}
    assert ev.state.metrics["dice_down_PGD_eps3"] == s["metrics"]["dice_down"]["attacks"]["PGD"]["3"]
    assert "dice_down (lower is better)" in (tmp_path / "robustness.md").read_text()


def test_dataset_level_metric_worst_takes_the_highest_loss_input(trained, tmp_path):
    net, data = trained
    h, _ = _evaluate(net, data, tmp_path, eps=[0.0, 3.0], metric=_PooledLoss())
    s = h.summary
    rows = _rows(tmp_path)
    assert "pooled_loss" not in rows[0]  # no per-sample value
    clean = [float(r["loss"]) for r in rows if r["attack"] == "clean"]
    assert s["clean"] == pytest.approx(sum(clean) / len(clean), rel=1e-5)
    assert s["attacks"]["PGD"]["0"] == s["clean"] == s["attacks"]["IFGSM"]["0"]  # eps 0 is the clean input
    by = {}
    for r in rows:
        if r["eps"] == "3.0":
            by.setdefault(r["index"], []).append(float(r["loss"]))
    worst = [max(v) for v in by.values()]
    assert s["worst"]["3"] == pytest.approx(sum(worst) / len(worst), rel=1e-5)
    assert s["worst"]["3"] >= max(s["attacks"]["PGD"]["3"], s["attacks"]["IFGSM"]["3"]) - 1e-6
    assert s["num_counted"] == s["num_samples"] == len(data)


def test_metric_and_metric_fn_exclusive():
    with pytest.raises(ValueError, match="either metric"):
        RobustnessEvaluationHandler(DiceCELoss(), [L2PGD()], eps=[1.0], metric=SliceDice(), metric_fn=slice_dice)


def test_metric_on_targets_takes_the_prepared_target():
    """A foreign evaluator's prepare_batch gives the target (another key, or HoVerNet's dict of branch targets):
    with metric_on_targets the metric reads it under its label key (the first branch of a dict)."""
    h = RobustnessEvaluationHandler(lambda p, t: p.sum(), {"PGD": L2PGD(steps=1)}, [1.0], metric=SliceDice(),
                                    metric_on_targets=True)
    seg = torch.ones(1, 1, 2, 2)
    out = h._with_targets({"img": torch.zeros(1, 1, 2, 2)}, seg)
    assert out["label"] is seg and "img" in out
    nested = h._with_targets({"image": 0}, {"nucleus_prediction": seg, "horizontal_vertical": torch.zeros(1)})
    assert nested["label"] is seg
    with pytest.raises(ValueError, match="gave no target"):
        h._with_targets({"image": 0}, None)
