"""The report's cost table (counted passes relative to STD) and its strong-attack check (catastrophic overfitting)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_report import write_run

from robust_bundles import layout, report
from robust_bundles.attacks import L2PGD
from robust_bundles.handlers import RobustnessEvaluationHandler


def _with_strong(root: Path, run: str, strong: tuple[float, ...]) -> None:
    path = root / "eval" / run / "robustness.json"
    data = json.loads(path.read_text())
    clean = data["summary"]["clean"]
    by = {"0": clean, **dict(zip(("2", "6", "10"), strong))}
    by["avg"] = sum(by.values()) / len(by)
    data["summary"]["attacks"]["PGD_strong"] = by
    path.write_text(json.dumps(data))


def _cost(root: Path, run: str, fwd: float, bwd: float, seconds: float, samples: int = 100) -> None:
    path = Path(layout.cost_file(root, run))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"forward": fwd * samples, "backward": bwd * samples, "samples": samples,
                                "forward_per_sample": fwd, "backward_per_sample": bwd,
                                "passes_per_sample": fwd + bwd, "iteration_time_s": seconds,
                                "wall_time_s": seconds + 1.0, "epochs": []}))


def test_strong_attack_flags_a_gap_above_0_02_only(tmp_path):
    write_run(tmp_path, "std", 0.75, (0.5, 0.1, 0.01), (0.6, 0.1, 0.01))
    write_run(tmp_path, "amat", 0.73, (0.68, 0.54, 0.37), (0.7, 0.58, 0.41))
    write_run(tmp_path, "vat_eps6", 0.70, (0.68, 0.62, 0.53), (0.7, 0.6, 0.5))
    _with_strong(tmp_path, "std", (0.49, 0.095, 0.005))  # gaps 0.01, 0.005, 0.005: fine
    _with_strong(tmp_path, "amat", (0.67, 0.50, 0.30))  # gap 0.04 at 6, 0.07 at 10: catastrophic overfitting
    # vat_eps6 evaluated without the strong attack: not checked
    results = report.collect(tmp_path, ["std", "amat", "vat_eps6"])
    flags = report.strong_attack_flags(results)
    assert len(flags) == 1 and flags[0].startswith("AMAT: the strong attack (PGD_strong) is worse than the report's "
                                                   "PGD by 0.070 at eps 10")
    assert "eps 6, 10" in flags[0]
    md, _, table = report.paper_table(results)
    assert "catastrophic overfitting" in md and table["warnings"] == flags
    # a lower-is-better metric (landmark MRE in mm): the strong attack is worse when it is higher, so the lower
    # strong values above are no gap at all, and a higher one by 0.03 is flagged
    for r in results:
        r["settings"]["higher_is_better"] = False
    assert report.strong_attack_flags(results) == []
    results[0]["summary"]["attacks"]["PGD_strong"]["6"] = 0.13
    assert [f.split(":")[0] for f in report.strong_attack_flags(results)] == ["STD"]


def test_cost_table_relative_to_std(tmp_path):
    for run in ("std", "amat", "amat_fast"):
        write_run(tmp_path, run, 0.7, (0.5, 0.3, 0.1), (0.5, 0.3, 0.1))
    _cost(tmp_path, "std", 1, 1, 10.0)
    _cost(tmp_path, "amat", 7, 7, 60.0)  # T = 5, beta 0.5
    _cost(tmp_path, "amat_fast", 3, 3, 27.0)  # T = 1 with memory
    files = report.write_report(tmp_path, ["std", "amat", "amat_fast"])
    md = files["markdown"].read_text()
    assert "Training cost" in md
    rows = {r["run"]: r for r in json.loads(files["json"].read_text())["cost"]}
    assert rows["std"]["passes_vs_std"] == 1.0 and rows["amat"]["passes_vs_std"] == 7.0
    assert rows["amat_fast"]["passes_vs_std"] == 3.0 and rows["amat_fast"]["time_vs_std"] == pytest.approx(2.7)
    assert "| AMAT (fast) | 3.000 | 3.000 | 3.000 | 27.000 | 2.700 | 28.000 |" in md
    assert report.cost_table(report.collect(tmp_path, ["std"]))[0].count("\n| STD |") == 1


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.w


def test_a_strong_attack_with_its_own_restarts_and_a_disabled_one():
    """The robustness handler drops a disabled (None) attack and runs an attack's own restarts."""
    calls = []

    class Counting(L2PGD):
        def run(self, *a, **k):
            calls.append(self.steps)
            return super().run(*a, **k)

    h = RobustnessEvaluationHandler(lambda out, y: out.flatten(1).sum(1),
                                    {"PGD": Counting(steps=2), "PGD_strong": Counting(steps=3, restarts=3),
                                     "off": None}, eps=[1.0], metric_fn=lambda p, y: p.flatten(1).mean(1))
    assert list(h.attacks) == ["PGD", "PGD_strong"]
    assert h.settings()["attacks"]["PGD_strong"]["restarts"] == 3 and h.settings()["attacks"]["PGD"]["restarts"] == 1
    x = torch.zeros(2, 1, 2, 2)
    for attack in h.attacks.values():
        h._attack(attack, 1.0, x, None, {"label": torch.zeros(2, 1, 2, 2)}, _Net(), _Net(),
                  torch.Generator().manual_seed(0))
    assert calls == [2, 3, 3, 3]
