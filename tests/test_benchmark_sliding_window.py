"""Smoke test of scripts/benchmark_sliding_window.py (tiny configuration; timings are never asserted)."""

import json

from script_loader import load_script


def test_tiny_run_writes_the_ratio(tmp_path, capsys):
    mod = load_script("benchmark_sliding_window")
    out = tmp_path / "sw.json"
    res = mod.main(tiny=True, iters=1, warmup=0, steps=1, out=str(out))
    assert json.loads(out.read_text())["ratio"] == res["ratio"] > 0
    assert res["inferer"] == "SlidingWindowInferer" and res["shape"] == [16, 16, 12]
    assert "ratio" in capsys.readouterr().out
