"""Experiment tracking with MONAI's own switch, ``python -m monai.bundle run ... --tracking mlflow``: a tiny training
stage of each bundle records the trainer loss and the validation metric, and an AMAT stage also our margin series
(the distribution and the fraction of samples whose margin grew), the evaluation its test metric and the robustness
stage the clean and per-attack, per-eps metrics of its report, into the SQLite file MLflow 3 uses by default,
``<output_dir>/mlruns.db`` (``eval/<run_name>/`` of the run), read back here with MLflow's client. Training is the
MLflow experiment ``monai_experiment`` (MONAI's default), the evaluation ``evaluate``, the robustness stage
``robustness``; the run is named after ``--run_name``.

MLflow is the optional extra ``tracking`` (``pip install -e ".[tracking]"``); without it these tests skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_run import Bundle
from test_standalone import SPECS

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow", reason="mlflow is the optional extra 'tracking': pip install -e '.[tracking]'")

#: the validation metric each bundle's trainer validates with (its key metric)
VAL_METRIC = {
    "hippocampus_mri_segmentation": "val_mean_dice",
    "cephalometric_xray_landmarks": "val_MRE",
    "bccd_blood_cell_detection": "val_mAP",
}


def _logged(root: Path, run_name: str, experiment: str = "monai_experiment") -> dict[str, list[float]]:
    """Every metric series of the MLflow run ``run_name`` of ``experiment`` under ``<root>/eval/<run_name>/mlruns.db``."""
    from mlflow.tracking import MlflowClient

    db = root / "eval" / run_name / "mlruns.db"
    assert db.is_file(), f"no tracking file at {db}"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {db}"
    runs = client.search_runs([found.experiment_id])
    assert [r.info.run_name for r in runs] == [run_name]
    run = runs[0]
    return {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}


@pytest.mark.parametrize("bundle", sorted(VAL_METRIC))
def test_training_is_tracked_by_mlflow(bundle, tmp_path):
    b = Bundle(f"bundles/{bundle}", SPECS[bundle].tiny)
    tiny = [*b.tiny(epochs="2"), "--output_root", str(tmp_path)]
    b.run(("train",), *tiny, "--tracking", "mlflow")
    series = _logged(tmp_path, "std")
    assert len(series["train_loss"]) >= 2 and all(v == v for v in series["train_loss"])  # per iteration, finite
    assert len(series[VAL_METRIC[bundle]]) == 2  # validated after each of the two epochs


def test_amat_margins_are_tracked_by_mlflow(tmp_path):
    b = Bundle("bundles/hippocampus_mri_segmentation", SPECS["hippocampus_mri_segmentation"].tiny)
    tiny = [*b.tiny(epochs="2"), "--output_root", str(tmp_path)]
    b.run(("train",), *tiny)
    b.run(("train", "thresholds"), *tiny)
    b.run(("train", "amat"), *tiny, "--tracking", "mlflow")
    series = _logged(tmp_path, "amat")
    for name in ("margin_mean", "margin_median", "margin_q05", "margin_q95", "margin_max", "margin_expanded_fraction"):
        assert len(series[name]) == 2, name  # one value per epoch
    assert all(0.0 <= v <= 1.0 for v in series["margin_expanded_fraction"])
    assert series["margin_q05"][-1] <= series["margin_median"][-1] <= series["margin_q95"][-1] <= series["margin_max"][-1]
    assert "train_loss" in series and "val_mean_dice" in series


def test_evaluation_and_robustness_are_tracked_by_mlflow(tmp_path):
    spec = SPECS["hippocampus_mri_segmentation"]
    b = Bundle("bundles/hippocampus_mri_segmentation", spec.tiny)
    tiny = [*b.tiny(), "--output_root", str(tmp_path)]
    b.run(("train",), *tiny)
    test = ["--max_test_cases", "1", "--foreground_slices_only", "true"]
    b.run(("train", "evaluate"), *tiny, *test, "--tracking", "mlflow")
    evaluated = _logged(tmp_path, "std", "evaluate")
    assert list(evaluated) == ["test_mean_dice"] and len(evaluated["test_mean_dice"]) == 1

    attacks = [a for k, v in spec.evaluate.items() for a in (f"--{k}", v)]
    b.run(("train", "evaluate", "robustness"), *tiny, *attacks, "--robustness_eps", "[0,3]", "--tracking", "mlflow")
    series = _logged(tmp_path, "std", "robustness")
    summary = json.loads((tmp_path / "eval" / "std" / "robustness.json").read_text())["summary"]
    expected = {"dice_clean": summary["clean"], "test_mean_dice": evaluated["test_mean_dice"][0]}
    for attack in ("PGD", "IFGSM"):
        expected |= {f"{attack}_eps{e}": summary["attacks"][attack][e] for e in ("0", "3", "avg")}
    expected |= {f"worst_eps{e}": summary["worst"][e] for e in ("0", "3")}
    assert set(expected) <= set(series), sorted(set(expected) - set(series))
    for name, value in expected.items():
        assert series[name] == [pytest.approx(value, rel=1e-12)], name  # one value, the report's
    assert series["PGD_eps0"] == series["dice_clean"]  # eps 0 is the clean input
