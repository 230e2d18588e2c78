"""scripts/benchmark_detection.py: the budget arithmetic (hand-checked) and a tiny smoke run. Timings are never asserted."""

from __future__ import annotations

import pytest
from script_loader import load_script

pytest.importorskip("torchvision", reason="MONAI's RetinaNet needs torchvision: pip install -e '.[detection]'")



@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark_detection")


STEPS = {"std_step": 1.0, "vat_step": 2.0, "amat_step": 3.0, "eval_step": 0.5, "attack_step": 0.25}


def test_budget_arithmetic(bench):
    b = bench.budget(STEPS, train_images=16, val_images=8, test_images=8, batch=8, epochs=2, val_every=1)
    # 2 iterations per epoch, 2 epochs, one validation batch per epoch (2 x 0.5 s)
    assert b["STD"] == 2 * 2 * 1.0 + 1.0
    assert b["thresholds"] == 2 * 0.5
    assert b["VAT"] == 2 * 2 * 2.0 + 1.0
    assert b["TEAT"] == 2 * 2 * (2.0 + 0.5) + 1.0
    assert b["AMAT"] == 2 * 2 * 3.0 + 1.0
    # one test batch per model: 3 levels x (100 + 10) attack steps, 1 + 2 x 3 metric passes; 4 models
    assert b["robustness"] == 4 * (3 * 110 * 0.25 + 7 * 0.5)
    assert b["total"] == pytest.approx(sum(v for k, v in b.items() if k != "total"))
    longer = bench.budget(STEPS, train_images=16, val_images=8, test_images=8, batch=8, epochs=2, val_every=1,
                          train_steps=5, measured_steps=3)
    assert longer["VAT"] == 2 * 2 * (2.0 + 2 * 0.25) + 1.0 and longer["AMAT"] == 2 * 2 * (3.0 + 2 * 0.25) + 1.0


def test_tiny_smoke_run(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    r = bench.time_config("tiny", bench.TINY, batch_size=2, steps=1, iters=1, warmup=0,
                          dataset_dir=str(tmp_path / "absent"), width=8)
    assert r["data"] == "synthetic" and r["input_size"] == 64
    for key in ("std_step", "vat_step", "amat_step", "eval_step", "attack_step"):
        assert r[key] >= 0.0
    assert "| tiny |" in bench.report([r], 1, {"epochs": 1})
