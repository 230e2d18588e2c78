"""Smoke test of scripts/benchmark_sliding_window.py (tiny configuration; timings are never asserted)."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_run_writes_the_ratio(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_sw", os.path.join(ROOT, "scripts", "benchmark_sliding_window.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "sw.json"
    res = mod.main(tiny=True, iters=1, warmup=0, steps=1, out=str(out))
    assert json.loads(out.read_text())["ratio"] == res["ratio"] > 0
    assert res["inferer"] == "SlidingWindowInferer" and res["shape"] == [16, 16, 12]
    assert "ratio" in capsys.readouterr().out
