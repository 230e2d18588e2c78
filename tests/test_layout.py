"""robust_bundles.layout: the one place that names an experiment's files."""

from __future__ import annotations

import os

from robust_bundles import layout


def test_paths_under_a_root_and_relative():
    assert layout.model_file("/out", "std") == os.path.join("/out", "models", "std", "model.pt")
    assert layout.model_file("", "vat_eps6") == "models/vat_eps6/model.pt"
    assert layout.checkpoint_file("", "amat") == "models/amat/checkpoint.pt"
    assert layout.best_model_file("", "amat") == "models/amat/model_best_val.pt"
    assert layout.thresholds_file("") == "models/std/thresholds.json"  # estimated on the STD model
    assert layout.margins_file("r", "amat") == "r/models/amat/margins.csv"
    assert layout.robustness_file("", "teat_eps2") == "eval/teat_eps2/robustness.json"
    assert layout.eval_dir("r", "std") == "r/eval/std"
    assert (layout.logs_dir(""), layout.report_dir("")) == ("logs", "report")


def test_the_experiment_tool_and_the_report_ask_the_layout():
    from robust_bundles import experiment as tool  # the engine behind scripts/experiment.py

    assert tool.model_file("amat") == layout.model_file("", "amat")
    assert tool.robustness_file("amat") == layout.robustness_file("", "amat")
    assert tool.THRESHOLDS_FILE == layout.thresholds_file("")
