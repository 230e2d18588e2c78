"""TensorBoard event files, as model-zoo train configs write them: every bundle's training writes the trainer loss per
iteration, the trainer's epoch metrics (AMAT: the margin series) and the validation metric per validation, and the
evaluation and robustness stages their test metrics (clean and per attack and eps), under
``eval/<run_name>/tensorboard/`` (:func:`robust_bundles.layout.tensorboard_dir`). Without the tensorboard package a
training goes on without event files and says so once. Read back with TensorBoard's EventAccumulator.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_run import Bundle, env
from test_standalone import SPECS

import robust_bundles.bundle
import robust_bundles.layout

SEG = "hippocampus_mri_segmentation"


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files in ``folder``: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {folder}"
    out: dict[str, list[tuple[int, float]]] = {}
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_tensorboard_flag():
    assert robust_bundles.bundle.tensorboard_enabled("false") is False
    assert robust_bundles.bundle.tensorboard_enabled(0) is False
    with pytest.raises(ValueError, match="--tensorboard 'maybe' is not a yes/no value"):
        robust_bundles.bundle.tensorboard_enabled("maybe")
    assert robust_bundles.layout.tensorboard_dir("", "amat") == "eval/amat/tensorboard"


@pytest.mark.slow
def test_training_and_robustness_write_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is a test dependency: pip install tensorboard")
    spec = SPECS[SEG]
    b = Bundle(f"bundles/{SEG}", spec.tiny)
    tiny = [*b.tiny(epochs="2"), "--output_root", str(tmp_path)]
    b.run(("train",), *tiny)
    b.run(("train", "thresholds"), *tiny)
    b.run(("train", "amat"), *tiny)

    std = _scalars(Path(robust_bundles.layout.tensorboard_dir(tmp_path, "std")))
    assert not [t for t in std if t.startswith("margin")]  # STD has no margins
    amat = _scalars(Path(robust_bundles.layout.tensorboard_dir(tmp_path, "amat")))
    for series in (std, amat):
        loss = series["train_loss"]
        assert len(loss) >= 2 and [s for s, _ in loss] == list(range(1, len(loss) + 1))  # per iteration
        assert all(v == v for _, v in loss)
        assert [s for s, _ in series["val_mean_dice"]] == [1, 2]  # validated after each of the two epochs
    names = ("margin_mean", "margin_median", "margin_q05", "margin_q95", "margin_max", "margin_expanded_fraction")
    for name in names:
        assert [s for s, _ in amat[name]] == [1, 2], name  # one value per epoch
    last = {name: amat[name][-1][1] for name in names}
    assert last["margin_q05"] <= last["margin_median"] <= last["margin_q95"] <= last["margin_max"]
    assert last["margin_mean"] > 0 and 0.0 <= last["margin_expanded_fraction"] <= 1.0

    attacks = [a for k, v in spec.evaluate.items() for a in (f"--{k}", v)]
    b.run(("train", "evaluate", "robustness"), *tiny, *attacks, "--run_name", "amat", "--robustness_eps", "[3]")
    summary = json.loads(Path(robust_bundles.layout.robustness_file(tmp_path, "amat")).read_text())["summary"]
    tested = {k: v for k, v in _scalars(Path(robust_bundles.layout.tensorboard_dir(tmp_path, "amat"))).items()
              if k not in amat}
    expected = {"test_mean_dice": summary["clean"], "dice_clean": summary["clean"], "worst_eps3": summary["worst"]["3"],
                "PGD_eps3": summary["attacks"]["PGD"]["3"], "IFGSM_eps3": summary["attacks"]["IFGSM"]["3"]}
    for name, value in expected.items():
        assert tested[name] == [(1, pytest.approx(value, rel=1e-6))], name  # float32 in the event file


@pytest.mark.slow
@pytest.mark.parametrize("bundle,val_metric", [("cephalometric_xray_landmarks", "val_MRE"),
                                               ("bccd_blood_cell_detection", "val_mAP")])
def test_hand_written_train_configs_write_tensorboard_events(bundle, val_metric, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is a test dependency: pip install tensorboard")
    b = Bundle(f"bundles/{bundle}", SPECS[bundle].tiny)
    b.run(("train",), *b.tiny(), "--output_root", str(tmp_path))
    series = _scalars(Path(robust_bundles.layout.tensorboard_dir(tmp_path, "std")))
    assert series["train_loss"] and all(v == v for _, v in series["train_loss"])  # the loss itself, finite
    assert [s for s, _ in series[val_metric]] == [1]  # the one tiny epoch was validated


@pytest.mark.slow
def test_training_without_tensorboard_warns_once_and_trains(tmp_path):
    hidden = tmp_path / "hide"
    (hidden / "tensorboard").mkdir(parents=True)
    (hidden / "tensorboard" / "__init__.py").write_text("raise ImportError('tensorboard hidden by the test')\n")
    b = Bundle(f"bundles/{SEG}", SPECS[SEG].tiny)
    root = tmp_path / "out"
    python_env = env(PYTHONPATH=str(hidden))
    proc = b.run(("train",), *b.tiny(), "--output_root", str(root), python_env=python_env)
    assert proc.stdout.count("TensorBoard is not available (tensorboard hidden by the test)") == 1, proc.stdout[-3000:]
    assert "--tensorboard false" in proc.stdout
    assert (root / "models" / "std" / "model.pt").is_file()
    assert not Path(robust_bundles.layout.tensorboard_dir(root, "std")).exists()
    # asked not to write them: no warning either
    quiet = b.run(("train",), *b.tiny(), "--output_root", str(root), "--run_name", "quiet", "--tensorboard", "false",
                  python_env=python_env)
    assert "TensorBoard is not available" not in quiet.stdout
    assert not Path(robust_bundles.layout.tensorboard_dir(root, "quiet")).exists()
