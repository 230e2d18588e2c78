"""Tests of robust_bundles.thresholds and robust_bundles.handlers.ThresholdEstimationHandler, with hand-checked numbers."""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from robust_bundles.handlers import ThresholdEstimationHandler
from robust_bundles.tasks.segmentation import DiceCELoss
from robust_bundles.thresholds import Thresholds, estimate_thresholds, from_values, load_thresholds, sha256_file

V = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
S = 1.4826  # MAD -> std factor


def est(values, **kw) -> float:
    return float(estimate_thresholds(values, **kw)[0])


# ---- rules
def test_mean():
    assert est(V, rule="mean") == pytest.approx(4.0, abs=1e-12)


def test_mean_std_population_std():
    # deviations [-3,-2,-1,0,6]: squares sum 50, / N=5 -> variance 10
    assert est(V, rule="mean_std", k=2.0) == pytest.approx(4.0 + 2.0 * math.sqrt(10.0), abs=1e-12)
    assert est(V, rule="mean_std", k=0.5) == pytest.approx(4.0 + 0.5 * math.sqrt(10.0), abs=1e-12)


def test_median_mad_odd():
    # median 3; |v - 3| = [2,1,0,1,7] -> MAD 1
    assert est(V, rule="median_mad", z=2.0) == pytest.approx(3.0 + 2.0 * S, abs=1e-12)


def test_median_mad_even_uses_average_of_middle_values():
    # [1,2,3,10]: median (2+3)/2 = 2.5; |v - 2.5| = [1.5,0.5,0.5,7.5] -> MAD (0.5+1.5)/2 = 1.0
    # (torch.median's lower median would give 2 + 2 * 1.4826 instead)
    assert est(torch.tensor([1.0, 2.0, 3.0, 10.0]), rule="median_mad", z=2.0) == pytest.approx(2.5 + 2 * S, abs=1e-12)


def test_quantile_linear():
    assert est(V, rule="quantile", q=0.5) == pytest.approx(3.0, abs=1e-12)
    # position 0.9 * 4 = 3.6 -> 4 + 0.6 * (10 - 4)
    assert est(V, rule="quantile", q=0.9) == pytest.approx(7.6, abs=1e-12)
    assert est(V, rule="quantile", q=1.0) == pytest.approx(10.0, abs=1e-12)


def test_huber_symmetric_equals_median_and_mean():
    sym = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # median = mean = 3, MAD 1
    assert est(sym, rule="huber", z=0.0) == pytest.approx(3.0, abs=1e-9)
    assert est(sym, rule="huber", z=2.0) == pytest.approx(3.0 + 2 * S, abs=1e-9)
    # [1,2,3,4,10]: 2,3,4 inside c*s = 1.994, 1 and 10 clipped at -/+ c*s -> psi sum 9 - 3 mu = 0, mu = 3
    assert est(V, rule="huber", z=0.0) == pytest.approx(3.0, abs=1e-9)


def test_huber_moves_less_than_mean_toward_outlier():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 30.0])
    # median 4; |v - 4| = [3,2,1,0,1,2,26] -> MAD 2, scale s = 2 * 1.4826, c * s = 3.988.
    # 1..6 lie within c*s of mu, 30 is clipped: sum(1..6) - 6 mu + c*s = 0 -> mu = (21 + c*s) / 6
    c = 1.345
    mu = (21.0 + c * 2 * S) / 6.0  # 4.16470
    assert est(v, rule="huber", z=0.0, huber_c=c) == pytest.approx(mu, abs=1e-6)
    assert est(v, rule="huber", z=2.0, huber_c=c) == pytest.approx(mu + 2 * 2 * S, abs=1e-6)
    median, mean = 4.0, 51.0 / 7.0
    assert median < mu < mean and mu - median < mean - mu


def test_huber_zero_mad_is_median():
    v = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.9])  # most per-sample Dice terms 0: MAD 0
    assert est(v, rule="huber") == 0.0
    assert est(v, rule="median_mad") == 0.0


def test_multi_term_per_column():
    values = torch.stack([V, 2 * V + 1], dim=1)  # (5, 2)
    assert estimate_thresholds(values, rule="mean").tolist() == pytest.approx([4.0, 9.0])
    assert estimate_thresholds(values, rule="mean_std", k=1.0).tolist() == pytest.approx(
        [4.0 + math.sqrt(10), 9.0 + 2 * math.sqrt(10)]
    )
    assert estimate_thresholds(values, rule="median_mad", z=1.0).tolist() == pytest.approx([3.0 + S, 7.0 + 2 * S])
    assert estimate_thresholds(values, rule="quantile", q=0.9).tolist() == pytest.approx([7.6, 16.2])
    assert estimate_thresholds(values, rule="huber", z=0.0).tolist() == pytest.approx([3.0, 7.0], abs=1e-9)
    assert estimate_thresholds(values).shape == (2,)


# ---- errors
def test_empty_input():
    with pytest.raises(ValueError, match="N = 0"):
        estimate_thresholds(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="K = 0"):
        estimate_thresholds(torch.zeros(3, 0))


def test_non_finite_names_term_and_count():
    values = torch.ones(4, 2)
    values[1, 1] = float("nan")
    values[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"term 'ce' has 2 non-finite"):
        estimate_thresholds(values, term_names=["dice", "ce"])
    with pytest.raises(ValueError, match=r"term 'ce' has 2 non-finite"):
        from_values(values, ["dice", "ce"])
    with pytest.raises(ValueError, match=r"term #1 has 2 non-finite"):
        estimate_thresholds(values)


def test_unknown_rule_and_bad_params():
    with pytest.raises(ValueError, match=r"Unknown threshold rule 'avg'.*'mean_std'"):
        estimate_thresholds(V, rule="avg")
    with pytest.raises(ValueError, match="q"):
        estimate_thresholds(V, rule="quantile", q=1.5)
    with pytest.raises(ValueError, match="huber_c"):
        estimate_thresholds(V, rule="huber", huber_c=0.0)
    with pytest.raises(ValueError, match="Unknown threshold parameter"):
        from_values(V, ["dice"], rule="mean_std", kk=3.0)


# ---- file format
def test_json_round_trip_with_provenance(tmp_path):
    ckpt = tmp_path / "std.pt"
    ckpt.write_bytes(os.urandom(3_000_000))  # more than one read chunk
    values = torch.stack([V, 2 * V + 1], dim=1)
    th = from_values(values, ("dice", "ce"), rule="mean_std", checkpoint=str(ckpt), k=2.0, q=0.5)
    assert th.checkpoint_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest() == sha256_file(ckpt)
    assert th.params == {"k": 2.0}  # only what the rule used
    assert th.num_samples == 5 and th.term_names == ["dice", "ce"]
    assert th.stats["median"] == [3.0, 7.0] and th.stats["max"] == [10.0, 21.0]
    assert th.stats["std"] == pytest.approx([math.sqrt(10), 2 * math.sqrt(10)])

    out = tmp_path / "sub" / "dir" / "thresholds.json"  # parent folders are created
    th.save(out)
    assert os.listdir(out.parent) == ["thresholds.json"]  # no temp file left
    text = out.read_text()
    assert text.startswith('{\n  "xi": [')  # indent 2
    back = Thresholds.load(out, expected_terms=["dice", "ce"])
    assert back == th
    assert back.to_dict() == json.loads(text)
    assert torch.equal(back.as_tensor(), torch.tensor(th.xi, dtype=torch.float32))
    assert back.as_tensor(dtype=torch.float64).tolist() == pytest.approx([4 + 2 * math.sqrt(10), 9 + 4 * math.sqrt(10)])
    assert Thresholds.load(out, expected_terms=2).xi == th.xi

    th.save(out)  # overwrite in place
    assert os.listdir(out.parent) == ["thresholds.json"]
    xi = load_thresholds(out, DiceCELoss())
    assert xi.shape == (2,) and xi.dtype == torch.float32


def test_missing_file_message(tmp_path):
    path = tmp_path / "nope" / "thresholds.json"
    with pytest.raises(FileNotFoundError) as e:
        Thresholds.load(path)
    msg = str(e.value)
    assert str(path) in msg and "configs/thresholds.json" in msg and "thresholds_file" in msg
    with pytest.raises(FileNotFoundError, match="std.pt"):
        from_values(V, ["dice"], checkpoint=tmp_path / "std.pt")


def test_corrupt_json_names_file(tmp_path):
    path = tmp_path / "xi.json"
    path.write_text('{"xi": [0.1, ')
    with pytest.raises(ValueError, match="xi.json.*not valid JSON"):
        Thresholds.load(path)


def test_missing_keys_and_bad_values(tmp_path):
    path = tmp_path / "xi.json"
    path.write_text(json.dumps({"xi": [0.1], "term_names": ["loss"]}))
    with pytest.raises(ValueError, match=r"xi.json.*lacks the key\(s\) \['rule', 'num_samples'\]"):
        Thresholds.load(path)
    for bad in ([-0.1, 0.2], [0.1, None], [0.1, "0.2"]):
        path.write_text(json.dumps({"xi": bad, "term_names": ["dice", "ce"], "rule": "manual", "num_samples": 0}))
        with pytest.raises(ValueError, match="xi.json"):
            Thresholds.load(path)
    path.write_text('{"xi": [0.1, Infinity], "term_names": ["dice", "ce"], "rule": "manual", "num_samples": 0}')
    with pytest.raises(ValueError, match=r"finite and >= 0; got ce=inf"):
        Thresholds.load(path)
    path.write_text(json.dumps({"xi": [0.1], "term_names": ["dice", "ce"], "rule": "manual", "num_samples": 0}))
    with pytest.raises(ValueError, match="1 value"):
        Thresholds.load(path)


def test_term_mismatch_messages(tmp_path):
    path = from_values(torch.ones(3, 2), ["dice", "ce"]).save(tmp_path / "xi.json")
    with pytest.raises(ValueError, match=r"the file has 2 term\(s\) \[dice, ce\] but the loss has 3"):
        Thresholds.load(path, expected_terms=3)
    with pytest.raises(ValueError, match=r"the file has terms \[dice, ce\] but the loss has \[heatmap, offset_x, off"):
        Thresholds.load(path, expected_terms=["heatmap", "offset_x", "offset_y"])
    with pytest.raises(ValueError, match="different order"):
        Thresholds.load(path, expected_terms=["ce", "dice"])

    class HeatmapLoss:
        term_names = ("heatmap", "offset_x", "offset_y")

    with pytest.raises(ValueError, match=r"\[heatmap, offset_x, offset_y\]"):
        load_thresholds(path, HeatmapLoss())


# ---- handler
def _toy_data(n: int = 5) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    data = []
    for i in range(n):
        image = torch.randn(1, 8, 8, generator=g)
        label = (torch.rand(1, 8, 8, generator=g) > 0.6).float()
        if i == 2:
            label.zero_()  # a slice without foreground
        data.append({"image": image, "label": label})
    return data


def _toy_net() -> torch.nn.Module:
    net = torch.nn.Conv2d(1, 2, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[[[-1.5]]], [[[2.0]]]]))
        net.bias.copy_(torch.tensor([0.3, -0.4]))
    return net


@pytest.mark.parametrize("decollate", [True, False])
@pytest.mark.parametrize("rule", ["mean", "mean_std"])
def test_handler_on_supervised_evaluator(tmp_path, decollate, rule):
    data, net, loss = _toy_data(), _toy_net(), DiceCELoss()
    ckpt = tmp_path / "std.pt"
    torch.save(net.state_dict(), ckpt)
    with torch.no_grad():  # by hand, over the same samples
        images = torch.stack([d["image"] for d in data])
        labels = torch.stack([d["label"] for d in data])
        values = loss.terms(net(images), labels).double()  # (5, 2)
    expected = values.mean(0) if rule == "mean" else values.mean(0) + 2.0 * values.std(0, unbiased=False)
    assert values.shape == (5, 2)

    out = tmp_path / "models" / "thresholds.json"
    handler = ThresholdEstimationHandler(loss, str(out), rule=rule, k=2.0, checkpoint=str(ckpt))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=2, shuffle=False, num_workers=0),
        network=net,
        decollate=decollate,
        val_handlers=[handler],
    )
    evaluator.run()

    th = Thresholds.load(out, expected_terms=loss.term_names)
    assert th.num_samples == 5 and th.rule == rule
    assert th.checkpoint_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert th.xi == pytest.approx(expected.tolist(), abs=1e-6)
    assert evaluator.state.metrics["xi_dice"] == pytest.approx(float(expected[0]), abs=1e-6)
    assert evaluator.state.metrics["xi_ce"] == pytest.approx(float(expected[1]), abs=1e-6)

    evaluator.run()  # a second run starts afresh (STARTED resets), it does not double the samples
    assert Thresholds.load(out).num_samples == 5


def test_handler_refuses_empty_run_and_bad_rule(tmp_path):
    with pytest.raises(ValueError, match="Unknown threshold rule"):
        ThresholdEstimationHandler(DiceCELoss(), str(tmp_path / "xi.json"), rule="max")
    handler = ThresholdEstimationHandler(DiceCELoss(), str(tmp_path / "xi.json"))

    class State:
        metrics: dict = {}

    class FakeEngine:
        state = State()

    with pytest.raises(ValueError, match="collected no sample"):
        handler.complete(FakeEngine())
    assert not (tmp_path / "xi.json").exists()


def test_threshold_test_ands_the_verdicts_of_every_observed_iterate():
    from robust_bundles.thresholds import ThresholdTest

    test = ThresholdTest([0.2, 0.4], term_names=("dice", "ce"))
    assert test.robust is None
    test.observe(None, None, torch.tensor([[0.1, 0.5], [0.3, 0.2], [0.2, 0.4]]))
    assert test.robust.tolist() == [[True, False], [False, True], [True, True]]  # "at or under" xi
    test.observe(None, None, torch.tensor([[0.1, 0.1], [0.1, 0.1], [0.25, 0.1]]))
    assert test.robust.tolist() == [[True, False], [False, True], [False, True]]  # once broken, broken
    # test_fn: the tested terms come from the output, not the objective's terms
    main_only = ThresholdTest([1.0], test_fn=lambda out, y: out[:, :1])
    main_only.observe(torch.tensor([[0.5, 9.0], [2.0, 0.0]]), None, torch.zeros(2, 2))
    assert main_only.robust.tolist() == [[True], [False]]
    with pytest.raises(ValueError, match=r"The loss has 3 term\(s\) \['dice', 'ce'\] but 2 threshold\(s\)"):
        ThresholdTest([0.2, 0.4], term_names=("dice", "ce")).observe(None, None, torch.zeros(1, 3))
