"""End-to-end tests of the bccd_blood_cell_detection bundle: every config runs in its own process.

Each run is ``python -m monai.bundle run ...`` started in the repository root with a temporary ``--output_root``
(models/, eval/ and the bundle's default synthetic VOC dataset go there), a tiny RetinaNet (ResNet10 of width 8, FPN of
16 channels at strides 4, 8, 16), 64 x 64 inputs and one-step attacks, so that each takes seconds. One module-scoped
fixture trains STD once; the thresholds, AMAT, evaluation, robustness, inference and model-zoo checks reuse it.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from bundle_run import SHARED_DATA, Bundle, epoch_of, last_error, load, run
from contract_checks import *  # noqa: F401,F403 (the contract every bundle keeps, and its fixtures root/std/...)
from contract_checks import Contract

pytestmark = pytest.mark.slow

BUNDLE = "bundles/bccd_blood_cell_detection"
CONFIGS = f"{BUNDLE}/configs"
META = f"{CONFIGS}/metadata.json"
#: ROBUST_BUNDLES_SHARED_DATA names the shared data folder when the repository is not beside it (a git worktree)
REAL = Path(os.environ.get("ROBUST_BUNDLES_SHARED_DATA", SHARED_DATA)) / "bccd"

#: the network's shape: give it to every config that builds the detector
SHAPE = ["--width", "8", "--fpn_channels", "16", "--returned_layers", "[1,2]", "--anchor_shapes", "[[4,4],[6,6],[8,8]]",
         "--image_size", "[64,64]"]
#: shrinking overrides besides the shape: 24 training images (the synthetic default), 1 epoch, 1-step attacks
TINY = {"batch_size": "8", "epochs": "1", "val_interval": "1", "attack_steps": "1"}

BCCD = Bundle(BUNDLE, TINY)
CONTRACT = Contract(BCCD, data="synthetic_voc", terms=("classification", "box_regression"), samples=24,
                    target_margin=15.0, shape=tuple(SHAPE), workflow_kwargs={"width": 8, "fpn_channels": 16})


def run_bundle(configs: tuple[str, ...], *args: str, expect_ok: bool = True):
    return BCCD.run(configs, *args, expect_ok=expect_ok)


def tiny(**changes: str) -> list[str]:
    return [*BCCD.tiny(**changes), *SHAPE]


def _metrics_csv(path: Path) -> dict[str, float]:
    """MONAI MetricsSaver's metrics.csv as a dict."""
    return {k: float(v) for k, v in (ln.split(",") for ln in path.read_text().splitlines() if ln.strip())}


# ----------------------------------------------------------------------------------------------------------------------
# shared runs
# ----------------------------------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------------------------------
# training configs
# ----------------------------------------------------------------------------------------------------------------------


def test_std_checkpoint_data_and_confidence_reference(std, root):
    assert {"random_states", "validation"} <= set(load(std / "checkpoint.pt"))
    data = root / "data" / "synthetic_voc"
    assert (data / "SYNTHETIC_DATA.txt").is_file() and len(list((data / "JPEGImages").glob("*.jpg"))) == 40
    reference = json.loads((std / "confidence_reference.json").read_text())  # written at validation time
    assert reference["family"] == "detection" and set(reference["measures"]) == {"max_score", "boxes"}
    assert reference["measures"]["boxes"]["n"] >= 1


def test_teat_training_ensembles_class_probabilities_and_box_codes(root, std):
    # batch 4: 6 iterations, the last 3 in the second half of training, where the ensemble starts
    run_bundle(("train", "teat"), *tiny(batch_size="4"), "--train_eps", "2", "--output_root", str(root))
    ensemble = load(root / "models" / "teat_eps2" / "checkpoint.pt")["teat_ensemble"]
    anchors = 3 * (16 * 16 + 8 * 8 + 4 * 4)  # 3 anchors per location at strides 4, 8, 16 of a 64 x 64 input
    assert ensemble["num_samples"] == 24 and ensemble["ema"].dtype == torch.float16
    assert ensemble["ema"].shape == (24, anchors * (3 + 4))
    assert int((ensemble["count"] > 0).sum()) == 12



def test_resume_continues_the_run(root, std, tmp_path):
    out = ["--output_root", str(tmp_path), "--dataset_dir", str(root / "data" / "synthetic_voc")]
    run_bundle(("train",), *tiny(), *out)
    run_bundle(("train",), *tiny(epochs="2"), *out, "--resume", "true")
    assert epoch_of(load(tmp_path / "models" / "std" / "checkpoint.pt")) == 2


# ----------------------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------------------


def test_evaluate_and_robustness(root, amat):
    run_bundle(("train", "evaluate"), *tiny(), "--run_name", "amat", "--max_test_cases", "4", "--output_root",
               str(root))
    metrics = _metrics_csv(root / "eval" / "amat" / "metrics.csv")
    assert 0 <= metrics["test_mAP"] <= 1 and {"test_mAP_mAP50", "test_mAP_AP_RBC", "test_mAP_AP_Platelets"} <= set(metrics)
    run_bundle(("train", "evaluate", "robustness"), *tiny(), "--run_name", "amat", "--max_test_cases", "4",
               "--pgd_steps", "2", "--ifgsm_steps", "1", "--attack_suite", "standard", "--output_root", str(root))
    report = json.loads((root / "eval" / "amat" / "robustness.json").read_text())
    settings = report["settings"]
    assert settings["eps"] == [5.0, 10.0, 15.0] and settings["input_shape"] == [3, 64, 64]
    assert [m["name"] for m in settings["metrics"]] == ["mAP", "mAP50", "AP_RBC", "AP_WBC", "AP_Platelets"]
    assert settings["per_sample"] is False and settings["higher_is_better"] is True
    assert settings["dataset"]["synthetic"] is True
    s = report["summary"]
    assert s["metric"] == "mAP" and s["clean"] == pytest.approx(metrics["test_mAP"], abs=1e-6)
    rows = list(csv.DictReader((root / "eval" / "amat" / "robustness.csv").open()))
    # the standard suite: PGD, APGD on the loss, on its classification and box-regression terms apart, noise
    assert list(s["attacks"]) == ["PGD", "APGD", "APGD_classification", "APGD_box_regression", "noise"]
    assert sum(s["worst_found_by"]["15"].values()) == 4  # dataset-level mAP: the highest-loss input of each image
    assert len(rows) == 4 * (1 + 5 * 3) and {"loss", "norm", "name"} <= set(rows[0])  # per image: clean, attacks x eps
    for r in rows:
        assert float(r["norm"]) <= float(r["eps"]) * (1 + 1e-4) + 1e-6


# ----------------------------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------------------------


def test_inference_writes_boxes_in_the_original_frame(root, std, tmp_path):
    from PIL import Image

    inputs = tmp_path / "in"
    inputs.mkdir()
    source = root / "data" / "synthetic_voc" / "JPEGImages" / "synthetic_0005.jpg"
    with Image.open(source) as im:
        im.save(inputs / "a.png")
        im.resize((320, 240)).save(inputs / "b.jpg")  # another size
    out = tmp_path / "out"
    # a low score threshold: a one-epoch model has low scores, and the JSON must hold boxes to check
    run_bundle(("inference",), *SHAPE, "--input_dir", str(inputs), "--output_dir", str(out), "--model_path",
               str(std / "model.pt"), "--score_threshold", "0.0", "--output_root", str(root))
    for stem, size in (("a", [160, 120]), ("b", [320, 240])):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["image_size"] == size and record["classes"] == ["RBC", "WBC", "Platelets"]
        assert record["network_input_size"] == [64, 64] and record["detections"]
        scores = [d["score"] for d in record["detections"]]
        assert scores == sorted(scores, reverse=True)
        for d in record["detections"]:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= size[0] + 0.01 and 0 <= y0 <= y1 <= size[1] + 0.01
        with Image.open(out / f"{stem}_overlay.png") as ov:
            assert list(ov.size) == size
        confidence = json.loads((out / f"{stem}_confidence.json").read_text())  # compared with std's reference
        assert confidence["measures"] == {"max_score": scores[0], "boxes": float(len(scores))}
        assert "is its confidence" in confidence["note"] and confidence["reference"]["file"].endswith(
            "std/confidence_reference.json")
    # a uniform grey image is refused, naming the file; nothing is written for it
    Image.new("RGB", (160, 120), (128, 128, 128)).save(inputs / "grey.png")
    proc = run_bundle(("inference",), *SHAPE, "--datalist", f"['{inputs / 'grey.png'}']", "--output_dir", str(out),
                      "--model_path", str(std / "model.pt"), "--output_root", str(root), expect_ok=False)
    assert f"{inputs / 'grey.png'} holds one value everywhere" in last_error(proc)
    assert not list(out.glob("grey*"))


# ----------------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_error_not_a_dataset(tmp_path):
    (tmp_path / "data" / "JPEGImages").mkdir(parents=True)
    proc = run_bundle(("train",), *tiny(), "--dataset_dir", str(tmp_path / "data"), "--output_root", str(tmp_path),
                      expect_ok=False)
    assert str(tmp_path / "data") in last_error(proc)



def test_error_model_of_another_shape(root, std, tmp_path):
    proc = run_bundle(("inference",), "--output_dir", str(tmp_path), "--model_path", str(std / "model.pt"),
                      "--output_root", str(root), expect_ok=False)  # default shape, tiny weights
    err = last_error(proc)
    assert "--fpn_channels" in err and "profile" in err


# ----------------------------------------------------------------------------------------------------------------------
# model-zoo checks, several processes, the experiment tool
# ----------------------------------------------------------------------------------------------------------------------



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_amat_on_two_processes(root, thresholds, tmp_path):
    """multi_gpu_train.json: two processes (gloo on the CPU) train AMAT with the perturbation memory; process 0 saves
    the bare network, the margins and the perturbation of every training image, gathered from both processes
    (BatchNorm statistics are per process, so the margins are not compared with a one-process run as the hippocampus
    test does)."""
    data = ["--dataset_dir", str(root / "data" / "synthetic_voc"), "--output_root", str(root)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "monai.bundle", "run", "--config_file",
           BCCD.config_list("train", "amat", "multi_gpu_train"), *tiny(batch_size="4"), *data, "--run_name", "amat_two",
           "--perturbation_memory", "true"]
    run(cmd)
    ckpt = load(root / "models" / "amat_two" / "checkpoint.pt")
    assert ckpt["trainer"]["iteration"] == 3  # 24 images on 2 processes, 4 per batch
    assert ckpt["margins"]["num_samples"] == 24 and int(ckpt["margins"]["epochs_completed"]) == 1
    assert set(ckpt["model"]) == set(load(root / "models" / "std" / "model.pt"))  # no "module." prefix
    memory = ckpt["perturbation_memory"]
    assert bool(memory["filled"].all()) and tuple(memory["values"].shape) == (24, 3, 64, 64)


def test_fast_vat_with_the_memory_and_the_strong_attack(root, std):
    """VAT with T = 1 and the perturbation memory (float16 perturbation of every image in the checkpoint, 2 + 2
    counted passes per image), evaluated with the strong check besides the report's attacks."""
    run_bundle(("train", "vat"), *tiny(), "--train_eps", "2", "--run_name", "vat_fast", "--perturbation_memory",
               "true", "--output_root", str(root))
    run_dir = root / "models" / "vat_fast"
    memory = load(run_dir / "checkpoint.pt")["perturbation_memory"]
    assert memory["values"].dtype == torch.float16 and bool(memory["filled"].all())
    assert float(memory["radius"].max()) == 2.0
    cost = json.loads((run_dir / "cost.json").read_text())
    assert (cost["forward_per_sample"], cost["backward_per_sample"], cost["samples"]) == (2.0, 2.0, 24)
    run_bundle(("train", "evaluate", "robustness"), *tiny(), "--run_name", "vat_fast", "--max_test_cases", "2",
               "--pgd_steps", "1", "--ifgsm_steps", "1", "--strong_attack", "true", "--strong_pgd_steps", "2",
               "--output_root", str(root))
    report = json.loads((root / "eval" / "vat_fast" / "robustness.json").read_text())
    assert report["settings"]["attacks"]["PGD_strong"]["restarts"] == 3
    assert report["settings"]["attacks"]["PGD_strong"]["steps"] == 2
    assert set(report["summary"]["attacks"]) == {"PGD", "IFGSM", "noise", "PGD_strong"}  # the quick suite + strong


def test_experiment_plan_of_the_quick_profile(tmp_path):
    proc = run([sys.executable, "scripts/experiment.py", "--bundle", BUNDLE, "--profile", "quick", "--output_root",
                str(tmp_path), "--dry_run"])
    for stage in ("std", "thresholds", "vat_eps10", "teat_eps10", "amat", "robustness_amat", "report"):
        assert f" {stage} " in proc.stdout or f" {stage}:" in proc.stdout, stage


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL / "BCCD" / "Annotations").is_dir(),
                    reason=f"the BCCD data is not at {REAL} (../shared/data/bccd beside the repo)")
def test_one_short_epoch_on_the_real_images(tmp_path):
    proc = run_bundle(("train",), *tiny(image_size="[160,160]"), "--max_cases", "8", "--max_val_cases", "4",
                      "--dataset_dir", str(REAL.resolve()), "--output_root", str(tmp_path))
    assert epoch_of(load(tmp_path / "models" / "std" / "checkpoint.pt")) == 1
    assert "SYNTHETIC DATA" not in proc.stdout and not (tmp_path / "data").exists()


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL / "BCCD" / "Annotations").is_dir(),
                    reason=f"the BCCD data is not at {REAL} (../shared/data/bccd beside the repo)")
def test_the_shipped_weights_give_their_eval_metrics_and_confident_boxes_on_real_images(tmp_path):
    """models/model.pt (default network) on the first 24 real test images gives the mAP that metadata.json's
    eval_metrics state, and on real validation images boxes with a confidence that the shipped reference accepts."""
    meta = json.loads(Path(META).read_text())
    proc = run_bundle(("train", "evaluate"), "--dataset_dir", str(REAL.resolve()), "--max_test_cases", "24",
                      "--model_path", f"{BUNDLE}/models/model.pt", "--output_root", str(tmp_path))
    best = [ln for ln in proc.stdout.splitlines() if "Key metric: test_mAP best value:" in ln]
    assert best and float(best[-1].split("best value:")[1].split()[0]) == pytest.approx(
        meta["eval_metrics"]["mAP"], abs=0.0006)

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    names = (REAL / "BCCD" / "ImageSets" / "Main" / "val.txt").read_text().split()[:2]
    for name in names:
        (inputs / f"{name}.jpg").write_bytes((REAL / "BCCD" / "JPEGImages" / f"{name}.jpg").read_bytes())
    proc = run_bundle(("inference",), "--input_dir", str(inputs), "--output_dir", str(out), "--output_root",
                      str(tmp_path))
    for name in names:
        record = json.loads((out / f"{name}_confidence.json").read_text())
        assert record["measures"]["max_score"] > 0.9 and not record["low_confidence"]
        assert record["reference"]["source"].startswith("the validation split (43 images of BCCD val.txt)")
        assert len(json.loads((out / f"{name}.json").read_text())["detections"]) > 10
    assert "LOW CONFIDENCE" not in proc.stdout
