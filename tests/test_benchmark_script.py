"""Smoke tests of scripts/benchmark.py in a tiny configuration. Timings are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from script_loader import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")
TINY = {"batch": 2, "steps": 1, "iters": 1, "warmup": 0, "tiny": True, "threads": 1, "device": "cpu"}


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """main() sets the thread count and the seeds (monai.utils.set_determinism): do not leak them to other tests."""
    import numpy as np
    import torch

    threads, rng, np_rng = torch.get_num_threads(), torch.random.get_rng_state(), np.random.get_state()
    yield
    torch.set_num_threads(threads)
    torch.random.set_rng_state(rng)
    np.random.set_state(np_rng)


@pytest.fixture(scope="module")
def benchmark():
    return load_script("benchmark")


def test_the_benchmark_network_is_the_bundle_planner_s_for_the_hippocampus_patch(benchmark):
    cfg = benchmark.network_config()
    # 56 x 40 -> 7 x 5: one more halving would go below 4 (robust_bundles.tasks.segmentation.nnunet_plan, as the bundle plans it)
    assert cfg["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2]] and cfg["kernel_size"] == [[3, 3]] * 4
    assert cfg["filters"] == [32, 64, 128, 256] and cfg["upsample_kernel_size"] == cfg["strides"][1:]


def test_main_prints_the_table_and_writes_the_json(benchmark, tmp_path, capsys):
    out = tmp_path / "sub" / "results.json"
    res = benchmark.main(**TINY, isolate=False, out=str(out))
    printed = capsys.readouterr()
    text = printed.out
    assert "| method | s/iter (mean ± std) | ratio to STD | ratio to VAT | peak RSS MB |" in text
    for label in ("| STD |", "| VAT |", "| TEAT |", "| AMAT |", "| VAT beta 0.5 (control) |"):
        assert label in text
    assert "one attack step:" in text and "forward+input-backward (frozen params):" in text
    assert "AMAT / VAT s/iter at equal T = 1 <= 1.05:" in text
    assert "one attack step / forward+input-backward (frozen params) <= 1.1:" in text
    assert "[1/6]" in printed.err and "[6/6]" in printed.err  # progress lines

    data = json.loads(out.read_text())
    assert set(data) >= {"config", "methods", "attack_step", "goals", "notes", "report"}
    assert data["report"] == res["report"]
    assert list(data["methods"]) == ["STD", "VAT", "TEAT", "AMAT", "VAT_B05"]
    for r in data["methods"].values():
        assert {"s_per_iter_mean", "s_per_iter_std", "ratio_to_std", "ratio_to_vat", "peak_rss_mb", "times"} <= set(r)
        assert len(r["times"]) == 1 and r["times"][0] > 0
    assert data["methods"]["STD"]["ratio_to_std"] == pytest.approx(1.0)
    assert data["methods"]["TEAT"]["adversarial"]["teat_weight"] == pytest.approx(300.0)  # the ensemble was active
    assert "robust_fraction" in data["methods"]["AMAT"]["adversarial"]
    assert {"attack_step_ms", "fwd_bwd_ms", "ratio", "amat_attack_step_ms", "fwd_bwd_params_ms"} <= set(
        data["attack_step"]
    )
    for goal in data["goals"].values():
        assert {"name", "value", "limit", "pass"} <= set(goal) and goal["pass"] in (True, False)
    assert data["config"]["network"]["strides"] == [[1, 1], [2, 2], [2, 2]]
    assert not [p for p in os.listdir(out.parent) if p.startswith(".benchmark-")]  # no temporary file left


def test_method_subset_and_bad_method(benchmark, capsys):
    res = benchmark.main(**TINY, isolate=False, methods="std,amat")
    assert list(res["methods"]) == ["STD", "AMAT"]
    assert res["methods"]["AMAT"]["ratio_to_vat"] is None and res["goals"]["amat_over_vat"]["pass"] is None
    assert "n/a" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Unknown method"):
        benchmark.main(**TINY, isolate=False, methods="fgsm")


def test_child_process_protocol(tmp_path):
    """The per-method process the full benchmark starts (fire CLI, --only, --child_out)."""
    out = tmp_path / "child.json"
    args = [f"--{k}={v}" for k, v in TINY.items()]
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--only", "amat", "--child_out", str(out), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""  # fire must not print the returned dict
    data = json.loads(out.read_text())
    assert data["method"] == "AMAT" and data["peak_rss_mb"] > 0 and len(data["times"]) == 1
    assert "AMAT iteration 1/1" in proc.stderr


def test_fast_configurations_count_exact_passes(benchmark, capsys):
    """--fast: counted passes per sample (STD 1 + 1; AMAT T = 5 cold 7 + 7; T = 2 / 1 with memory 4 + 4 / 3 + 3;
    AMAT T = 1 beta 0 and VAT T = 1 with memory 2 + 2) and the goals' verdicts on the counts."""
    res = benchmark.main(**TINY, isolate=False, fast=True)
    passes = {n: r["passes"]["forward_per_sample"] for n, r in res["fast"].items()}
    assert passes == {"STD": 1.0, "AMAT_T5_COLD": 7.0, "AMAT_T2_MEM": 4.0, "AMAT_T1_MEM": 3.0,
                      "AMAT_T1_MEM_B0": 2.0, "VAT_T1_MEM": 2.0}
    assert all(r["passes"]["backward_per_sample"] == r["passes"]["forward_per_sample"] for r in res["fast"].values())
    assert res["goals"]["fast_amat_passes"]["pass"] is True and res["goals"]["amat_t1_passes"]["pass"] is False
    assert "| AMAT_T1_MEM | 3.00 | 3.00 | 3.00 |" in capsys.readouterr().out
