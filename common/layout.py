"""Where an experiment's files live: the one place that spells out the run layout.

Every bundle config, ``scripts/experiment.py`` and :mod:`robust_bundles.report` ask this module, so that a file is
named in one place only. Under an experiment's output root::

    models/<run>/model.pt                 the trained network (state dict), written at the end of training
    models/<run>/checkpoint.pt            the training state to resume from (network, optimizer, margins, ...)
    models/<run>/model_best_val.pt        the network with the best validation key metric
    models/std/thresholds.json            xi, estimated on the STD model (robust_bundles.thresholds)
    models/<run>/margins.csv              AMAT's final per-sample margins (sample_id, margin)
    models/<run>/cost.json                the training's counted network passes and wall time (PassCounter)
    eval/<run>/robustness.json, .csv, .md the robustness evaluation (robust_bundles.handlers.RobustnessEvaluationHandler)
    eval/<run>/metrics.csv                the plain evaluation (MONAI's MetricsSaver)
    eval/<run>/tensorboard/               TensorBoard event files of the run's stages (MONAI's TensorBoardStatsHandler)
    eval/<run>/mlruns.db                  MLflow tracking of the run's stages, with --tracking mlflow (MONAI's default)
    logs/<stage>.log, logs/<stage>.json   the experiment tool's stage logs and records
    report/results.md, .csv, .json, *.png the paper's table and figures (robust_bundles.report)

Every function takes the output root first and returns a ``str`` (what MONAI configs and handlers take). With
``root=""`` the paths are relative to the output root (``model_file("", "std") == "models/std/model.pt"``), which is how
the experiment tool records what a stage reads and writes. Configs write, e.g.::

    "ckpt_dir": "$robust_bundles.layout.run_dir(@output_root, @run_name)"
"""

from __future__ import annotations

import os

__all__ = [
    "MODELS",
    "EVAL",
    "LOGS",
    "REPORT",
    "STD_RUN",
    "MODEL_FILE",
    "CHECKPOINT_FILE",
    "BEST_MODEL_FILE",
    "THRESHOLDS_FILE",
    "MARGINS_FILE",
    "COST_FILE",
    "ROBUSTNESS_FILE",
    "TENSORBOARD",
    "run_dir",
    "model_file",
    "checkpoint_file",
    "best_model_file",
    "thresholds_file",
    "margins_file",
    "cost_file",
    "eval_dir",
    "robustness_file",
    "tensorboard_dir",
    "logs_dir",
    "report_dir",
]

MODELS, EVAL, LOGS, REPORT = "models", "eval", "logs", "report"
STD_RUN = "std"
"""The run whose model the thresholds are estimated on (``robust_bundles.methods.reference().run_name()``; the layout
is core, below the registry, so it names it; ``tests/test_layers.py`` checks the two agree)."""
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_MODEL_FILE = "model_best_val.pt"
THRESHOLDS_FILE = "thresholds.json"
MARGINS_FILE = "margins.csv"
COST_FILE = "cost.json"
ROBUSTNESS_FILE = "robustness.json"
TENSORBOARD = "tensorboard"


def _join(*parts: str | os.PathLike) -> str:
    return os.path.join(*[os.fspath(p) for p in parts])


def run_dir(root: str | os.PathLike, run: str) -> str:
    """``<root>/models/<run>``: the run's model, checkpoints and margins."""
    return _join(root, MODELS, run)


def model_file(root: str | os.PathLike, run: str) -> str:
    """``<root>/models/<run>/model.pt``: the trained network's state dict."""
    return _join(run_dir(root, run), MODEL_FILE)


def checkpoint_file(root: str | os.PathLike, run: str) -> str:
    """``<root>/models/<run>/checkpoint.pt``: the final training state."""
    return _join(run_dir(root, run), CHECKPOINT_FILE)


def best_model_file(root: str | os.PathLike, run: str) -> str:
    """``<root>/models/<run>/model_best_val.pt``: the network with the best validation key metric."""
    return _join(run_dir(root, run), BEST_MODEL_FILE)


def thresholds_file(root: str | os.PathLike, run: str = STD_RUN) -> str:
    """``<root>/models/std/thresholds.json``: xi, estimated on the model of ``run``."""
    return _join(run_dir(root, run), THRESHOLDS_FILE)


def margins_file(root: str | os.PathLike, run: str) -> str:
    """``<root>/models/<run>/margins.csv``: AMAT's per-sample margins at the end of training."""
    return _join(run_dir(root, run), MARGINS_FILE)


def cost_file(root: str | os.PathLike, run: str) -> str:
    """``<root>/models/<run>/cost.json``: the training's counted forward/backward passes and wall time."""
    return _join(run_dir(root, run), COST_FILE)


def eval_dir(root: str | os.PathLike, run: str) -> str:
    """``<root>/eval/<run>``: the evaluation and robustness results of the run's model."""
    return _join(root, EVAL, run)


def robustness_file(root: str | os.PathLike, run: str) -> str:
    """``<root>/eval/<run>/robustness.json``."""
    return _join(eval_dir(root, run), ROBUSTNESS_FILE)


def tensorboard_dir(root: str | os.PathLike, run: str) -> str:
    """``<root>/eval/<run>/tensorboard``: TensorBoard event files of the run's training, evaluation and robustness."""
    return _join(eval_dir(root, run), TENSORBOARD)


def logs_dir(root: str | os.PathLike) -> str:
    """``<root>/logs``: the experiment tool's stage logs."""
    return _join(root, LOGS)


def report_dir(root: str | os.PathLike) -> str:
    """``<root>/report``: the paper's table and figures."""
    return _join(root, REPORT)
