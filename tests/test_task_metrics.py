"""robust_bundles.metrics task metrics (specs, accumulators) and their Ignite adapter on a MONAI evaluator."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from robust_bundles.handlers import TaskIgniteMetric
from robust_bundles.metrics import FunctionMetric, MetricSpec, PerSampleMetric, batch_value
from robust_bundles.tasks.segmentation import SliceDice, slice_dice


def _seg_batch():
    label = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    label[0, 0, :2, :2] = 1  # 4 foreground pixels
    label[1, 0, 0, 0] = 2  # 1 pixel of class 2
    pred = torch.zeros(3, 3, 4, 4)
    pred[:, 0] = 1.0  # background everywhere ...
    pred[0, 1, :2, :1] = 2.0  # ... but 2 of sample 0's 4 class-1 pixels
    return pred, {"label": label}


def test_spec_round_trip_and_label():
    spec = MetricSpec("MRE", "mm", False, "mean radial error")
    assert MetricSpec.from_dict(spec.to_dict()) == spec
    assert spec.label() == "MRE (mm, lower is better)"
    assert MetricSpec("dice").label() == "dice (higher is better)"
    with pytest.raises(ValueError, match="non-empty name"):
        MetricSpec("")


def test_slice_dice_accumulates_per_sample_values():
    pred, batch = _seg_batch()
    m = SliceDice()
    values = m.update(pred, batch)
    # sample 0: TP 2, FN 2 -> 4 / 6; sample 1: class 2 missed -> 0; sample 2: no foreground -> does not count
    assert values["dice"][0].item() == pytest.approx(2 / 3)
    assert values["dice"][1].item() == 0.0 and math.isnan(values["dice"][2].item())
    m.update(pred, batch)
    assert m.aggregate() == {"dice": pytest.approx(1 / 3)}
    assert m.values()["dice"].shape == (6,)
    m.reset()
    assert m.values()["dice"].numel() == 0
    assert torch.equal(values["dice"].isnan(), slice_dice(pred, batch["label"]).isnan())


def test_function_metric_and_missing_key():
    pred, batch = _seg_batch()
    m = FunctionMetric(slice_dice, name="d", higher_is_better=True)
    assert m.update(pred, batch)["d"][0].item() == pytest.approx(2 / 3)
    with pytest.raises(KeyError, match="needs 'label' in the batch, which has \\['image'\\]"):
        m.update(pred, {"image": pred})
    assert batch_value({"x": [1, 2]}, "x").tolist() == [1, 2]


def test_per_sample_metric_checks_its_values():
    class Bad(PerSampleMetric):
        specs = (MetricSpec("a"), MetricSpec("b"))

        def compute(self, output, batch):
            return {"a": torch.zeros(2)}

    with pytest.raises(ValueError, match="no values for \\['b'\\]"):
        Bad().update(None, None)


def test_deep_copies_are_independent():
    pred, batch = _seg_batch()
    a = SliceDice()
    b = copy.deepcopy(a)
    a.update(pred, batch)
    assert b.values()["dice"].numel() == 0


def test_task_ignite_metric_on_an_evaluator_with_a_lower_is_better_spec():
    class Errors(PerSampleMetric):
        """Mean absolute error of the output against the batch's 'target' (lower is better), and its negative."""

        specs = (MetricSpec("mae", "px", False), MetricSpec("neg", "px", True))

        def compute(self, output, batch):
            err = (output - batch["target"].to(output.device)).abs().flatten(1).mean(1)
            return {"mae": err, "neg": -err}

    data = [{"image": torch.full((1, 2, 2), float(i)), "label": torch.zeros(1, 2, 2),
             "target": torch.zeros(1, 2, 2)} for i in range(5)]
    net = torch.nn.Identity()
    ev = SupervisedEvaluator(
        torch.device("cpu"), DataLoader(Dataset(data), batch_size=2), net,
        key_val_metric={"val_mae": TaskIgniteMetric(Errors())},
        metric_cmp_fn=lambda current, best: current < best,
    )
    ev.run()
    assert ev.state.metrics["val_mae"] == pytest.approx(2.0)  # mean of 0..4
    assert ev.state.metrics["val_mae_neg"] == pytest.approx(-2.0)
    assert ev.state.best_metric == pytest.approx(2.0)
    with pytest.raises(KeyError, match="has no metric 'x'"):
        TaskIgniteMetric(Errors(), name="x")
