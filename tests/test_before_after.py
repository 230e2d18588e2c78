"""scripts/before_after.py: the bit-for-bit comparison of two runs' weights, thresholds and margins."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from script_loader import SCRIPTS, load_script

before_after = load_script("before_after")


def _root(path: Path, weight: float, margins: list[float], xi: list[float]) -> Path:
    for run in ("std", "amat"):
        (path / "models" / run).mkdir(parents=True)
        torch.save({"w": torch.full((2, 2), weight), "b": torch.zeros(2)}, path / "models" / run / "model.pt")
    torch.save({"margins": {"margins": torch.tensor(margins)}}, path / "models" / "amat" / "checkpoint.pt")
    (path / "models" / "std" / "thresholds.json").write_text(json.dumps({"xi": xi}))
    return path


def test_equal_runs_compare_equal_and_any_bit_differs(tmp_path):
    a = _root(tmp_path / "a", 0.5, [1.0, 2.0], [0.3, 0.1])
    assert before_after.compare(a, _root(tmp_path / "b", 0.5, [1.0, 2.0], [0.3, 0.1])) == {
        "STD weights": True, "thresholds": True, "AMAT weights": True, "margins": True, "samples": 2}
    c = _root(tmp_path / "c", 0.5 + 2**-20, [1.0, 2.0 + 2**-20], [0.3, 0.1000001])  # one ulp-sized change each
    assert before_after.compare(a, c) == {"STD weights": False, "thresholds": False, "AMAT weights": False,
                                          "margins": False, "samples": 2}
    assert set(before_after.TINY) == {p.name for p in (SCRIPTS.parent / "bundles").iterdir()
                                      if (p / "configs").is_dir()}  # every bundle has its tiny run
