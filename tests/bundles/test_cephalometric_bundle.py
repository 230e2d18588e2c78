"""End-to-end tests of the cephalometric_xray_landmarks bundle: every config runs in its own process.

Each run is ``python -m monai.bundle run ...`` started in the repository root with a temporary ``--output_root``
(models/, eval/ and the bundle's default synthetic dataset, official ISBI layout, go there), a tiny network, 64 x 48
inputs, four training images and one-step attacks, so that each takes seconds. One module-scoped fixture trains STD
once; the thresholds, AMAT, evaluation, robustness, inference and model-zoo checks reuse it.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from bundle_run import SHARED_DATA, Bundle, epoch_of, last_error, load, run
from contract_checks import *  # noqa: F401,F403 (the contract every bundle keeps, and its fixtures root/std/...)
from contract_checks import Contract

pytestmark = pytest.mark.slow

BUNDLE = "bundles/cephalometric_xray_landmarks"
CONFIGS = f"{BUNDLE}/configs"
META = f"{CONFIGS}/metadata.json"
#: ROBUST_BUNDLES_SHARED_DATA names the shared data folder when the repository is not beside it (a git worktree)
REAL = Path(os.environ.get("ROBUST_BUNDLES_SHARED_DATA", SHARED_DATA)) / "isbi2015_ceph"

FEATURES = "[4,4,8,8,16,4]"
#: shrinking overrides: tiny network and input, 4 training images, 2 validation images, 1 epoch, 1-step attacks
TINY = {
    "features": FEATURES,
    "image_size": "[64,48]",
    "heatmap_radius": "3",
    "batch_size": "4",
    "max_cases": "4",
    "max_val_cases": "2",
    "epochs": "1",
    "val_interval": "1",
    "attack_steps": "1",
}
SHAPE = ["--features", FEATURES, "--image_size", "[64,48]", "--heatmap_radius", "3"]


CEPH = Bundle(BUNDLE, TINY)
tiny = CEPH.tiny
CONTRACT = Contract(CEPH, data="synthetic_ceph", terms=("heatmap", "offset_x", "offset_y"), samples=4,
                    target_margin=2.0, workflow_kwargs={"features": [4, 4, 8, 8, 16, 4], "max_cases": 2,
                                                        "max_val_cases": 1})


def run_bundle(configs: tuple[str, ...], *args: str, expect_ok: bool = True):
    return CEPH.run(configs, *args, expect_ok=expect_ok)


def _metrics_csv(path: Path) -> dict[str, float]:
    """MONAI MetricsSaver's metrics.csv as a dict."""
    return {k: float(v) for k, v in (ln.split(",") for ln in path.read_text().splitlines() if ln.strip())}


# ----------------------------------------------------------------------------------------------------------------------
# shared runs
# ----------------------------------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------------------------------
# training configs
# ----------------------------------------------------------------------------------------------------------------------


def test_std_writes_the_confidence_reference_on_the_official_layout(std, root):
    assert (root / "data" / "synthetic_ceph" / "RawImage" / "TrainingData").is_dir()  # the official layout
    reference = json.loads((std / "confidence_reference.json").read_text())  # written at validation time
    assert reference["family"] == "landmarks" and reference["source"] == "validation split of synthetic data"
    assert {k: v["n"] for k, v in reference["measures"].items()} == {"peak": 2, "agreement": 2}


def test_teat_training_keeps_a_float16_ensemble_of_all_heads(root, std):
    # batch 2: the second of the two iterations is in the second half of training, where the ensemble starts
    run_bundle(("train", "teat"), *tiny(batch_size="2"), "--train_eps", "2", "--output_root", str(root))
    ensemble = load(root / "models" / "teat_eps2" / "checkpoint.pt")["teat_ensemble"]
    assert ensemble["num_samples"] == 4 and ensemble["ema"].dtype == torch.float16
    assert ensemble["ema"].shape == (4, 3 * 19 * 64 * 48)  # sigmoid heatmaps and raw offsets, concatenated
    assert int((ensemble["count"] > 0).sum()) == 2



def test_finetuned_vat(root, std):
    run_bundle(("train", "vat", "finetune"), *tiny(), "--train_eps", "2", "--run_name", "vat_eps2_ft",
               "--output_root", str(root))
    assert json.loads((root / "models" / "vat_eps2_ft" / "init_from.json").read_text())["skipped"] == []


def test_std_with_the_bce_heatmap_loss_and_the_csv_layout(tmp_path):
    from robust_bundles.data.ceph import write_synthetic_ceph

    data = write_synthetic_ceph(tmp_path / "isbi2015_ceph", num_train=4, num_test1=3, layout="csv", size=(120, 96))
    run_bundle(("train",), *tiny(), "--heatmap_loss", "bce", "--run_name", "std_bce", "--dataset_dir", str(data),
               "--output_root", str(tmp_path / "out"))
    assert (tmp_path / "out" / "models" / "std_bce" / "model.pt").is_file()
    assert not (tmp_path / "out" / "data").exists()  # no synthetic data written when dataset_dir is given


# ----------------------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------------------


def test_evaluate_and_robustness(root, amat):
    run_bundle(("train", "evaluate"), *tiny(), "--run_name", "amat", "--max_test_cases", "3", "--output_root",
               str(root))
    metrics = _metrics_csv(root / "eval" / "amat" / "metrics.csv")
    assert metrics["test_MRE"] > 0 and 0 <= metrics["test_MRE_SDR_4mm"] <= 100
    run_bundle(("train", "evaluate", "robustness"), *tiny(), "--run_name", "amat", "--max_test_cases", "3",
               "--pgd_steps", "2", "--ifgsm_steps", "1", "--attack_suite", "standard", "--output_root", str(root))
    report = json.loads((root / "eval" / "amat" / "robustness.json").read_text())
    assert report["settings"]["eps"] == [0.5, 1.0, 2.0]
    assert report["settings"]["input_shape"] == [1, 64, 48]
    assert [m["name"] for m in report["settings"]["metrics"]] == ["MRE", "SDR_2mm", "SDR_2.5mm", "SDR_3mm", "SDR_4mm"]
    assert report["settings"]["metrics"][0]["unit"] == "mm" and report["settings"]["higher_is_better"] is False
    s = report["summary"]
    assert s["metric"] == "MRE" and s["clean"] == pytest.approx(metrics["test_MRE"], rel=1e-5)
    assert s["metrics"]["SDR_2mm"]["clean"] == pytest.approx(metrics["test_MRE_SDR_2mm"], rel=1e-5)
    assert set(s["details"]["clean@0"]["per_landmark"]) >= {"sella", "articulare"}
    rows = list(csv.DictReader((root / "eval" / "amat" / "robustness.csv").open()))
    # the standard suite: PGD, APGD on the loss, on its three terms and on the landmark distance, noise
    attacks = ["PGD", "APGD", "APGD_heatmap", "APGD_offset_x", "APGD_offset_y", "APGD_distance", "noise"]
    assert list(s["attacks"]) == attacks and report["settings"]["attacks"]["APGD_distance"]["loss"] == \
        "LandmarkDistanceLoss"
    assert len(rows) == 3 * (1 + 7 * 3) and {"MRE", "SDR_4mm", "case"} <= set(rows[0])
    assert sum(s["worst_found_by"]["2"].values()) >= 3 and s["cost"]["relative_to_PGD"] > 1


# ----------------------------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------------------------


def test_inference_writes_landmarks_in_the_original_frame(root, std, tmp_path):
    from monai.networks.nets import BasicUNet
    from PIL import Image

    from robust_bundles.data.ceph import read_xray
    from robust_bundles.tasks.landmarks import predict_landmarks

    inputs = tmp_path / "in"
    inputs.mkdir()
    source = sorted((root / "data" / "synthetic_ceph" / "RawImage" / "Test1Data").glob("*.bmp"))[0]
    with Image.open(source) as im:
        im.convert("RGB").save(inputs / "rgb.png")  # another format, RGB
        im.crop((0, 0, 300, 400)).save(inputs / "crop.jpg")  # another size
    out = tmp_path / "out"
    run_bundle(("inference",), *SHAPE, "--input_dir", str(inputs), "--output_dir", str(out),
               "--model_path", str(std / "model.pt"), "--output_root", str(root))
    net = BasicUNet(2, 1, 57, features=(4, 4, 8, 8, 16, 4))
    net.load_state_dict(load(std / "model.pt"))
    net.eval()
    for stem in ("crop", "rgb"):
        record = json.loads((out / f"{stem}_landmarks.json").read_text())
        assert len(record["landmarks"]) == 19 and record["landmarks"][0]["name"] == "sella"
        image, orig = read_xray(next(inputs.glob(f"{stem}.*")), (64, 48))
        assert (record["height_px"], record["width_px"]) == orig
        with torch.no_grad():
            ref = predict_landmarks(net(torch.from_numpy(image)[None, None]), torch.tensor([orig]), 19, 3.0)[0]
        got = torch.tensor([[r["x_px"], r["y_px"]] for r in record["landmarks"]], dtype=torch.float64)
        assert torch.allclose(got, ref, atol=0.01)  # 2 decimals in the file
        assert record["landmarks"][3]["x_mm"] == pytest.approx(record["landmarks"][3]["x_px"] * 0.1, abs=1e-3)
        rows = list(csv.DictReader((out / f"{stem}_landmarks.csv").open()))
        assert len(rows) == 19 and float(rows[0]["x_px"]) == record["landmarks"][0]["x_px"]
        with Image.open(out / f"{stem}_overlay.png") as ov:
            assert ov.height == min(800, orig[0])


def test_inference_confidence_with_the_shipped_weights_flags_noise_and_refuses_a_blank_image(tmp_path):
    """The shipped weights and their reference (models/confidence_reference.json, the real validation split): every
    image gets <stem>_confidence.json; a noise image gets a LOW CONFIDENCE warning; a uniform grey PNG is refused,
    naming the file, and nothing is written for it."""
    import numpy as np
    from PIL import Image

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 387)).astype(np.uint8)).save(inputs / "noise.png")
    proc = run_bundle(("inference",), "--input_dir", str(inputs), "--output_dir", str(out), "--overlay_size", "0",
                      "--output_root", str(tmp_path))
    record = json.loads((out / "noise_confidence.json").read_text())
    assert set(record["measures"]) == {"peak", "agreement"} and len(record["per_landmark"]) == 19
    assert set(record["per_landmark"][0]) == {"landmark", "name", "peak", "agreement"}
    assert record["reference"]["source"].startswith("the validation split (50 images of Test1")
    assert record["low_confidence"] and record["warnings"][0].startswith("agreement")
    assert f"LOW CONFIDENCE: {inputs / 'noise.png'}: agreement" in proc.stdout

    Image.fromarray(np.full((480, 387), 128, np.uint8)).save(inputs / "grey.png")
    proc = run_bundle(("inference",), "--datalist", f"['{inputs / 'grey.png'}']", "--output_dir", str(tmp_path / "o2"),
                      "--output_root", str(tmp_path), expect_ok=False)
    err = last_error(proc)
    assert f"{inputs / 'grey.png'} holds one value everywhere" in err and "nothing was written for it" in err
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").glob("grey*"))


# ----------------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_error_not_a_dataset(tmp_path):
    (tmp_path / "data" / "ISBI" / "RawImage").mkdir(parents=True)
    (tmp_path / "data" / "ISBI" / "AnnotationsByMD").mkdir()
    proc = run_bundle(("train",), *tiny(), "--dataset_dir", str(tmp_path / "data"), "--output_root", str(tmp_path),
                      expect_ok=False)
    err = last_error(proc)
    assert "is not an ISBI 2015 cephalometric dataset" in err and f"did you mean {tmp_path / 'data' / 'ISBI'}" in err



# ----------------------------------------------------------------------------------------------------------------------
# model-zoo checks and the experiment tool
# ----------------------------------------------------------------------------------------------------------------------


def test_verify_net_in_out():
    proc = run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", META,
                "--config_file", f"{CONFIGS}/train.json", "--features", FEATURES])
    assert "data shape of network is verified with no error" in proc.stdout


def test_ckpt_export_torchscript(std, tmp_path):
    ts = tmp_path / "model.ts"
    run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
         str(std / "model.pt"), "--meta_file", META, "--config_file", f"{CONFIGS}/train.json", "--features", FEATURES])
    exported = torch.jit.load(str(ts), map_location="cpu")
    with torch.no_grad():
        assert exported(torch.zeros(1, 1, 200, 160)).shape == (1, 57, 200, 160)



def _planned(profile: str, root: Path) -> str:
    return run([sys.executable, "scripts/experiment.py", "--bundle", BUNDLE, "--profile", profile, "--output_root",
                str(root), "--dry_run"]).stdout


def _has_stage(plan: str, stage: str) -> bool:
    return f" {stage} " in plan or f" {stage}:" in plan


def test_experiment_plans_of_the_profiles(tmp_path):
    quick = _planned("quick", tmp_path / "quick")
    for stage in ("std", "thresholds", "vat_eps3", "teat_eps3", "amat", "robustness_std", "robustness_amat", "report"):
        assert _has_stage(quick, stage), stage
    assert not _has_stage(quick, "std_bce")  # the STD (BCE) row costs another STD training: paper profile only
    # the quick profile fine-tunes VAT, TEAT and AMAT from its STD model for 10 epochs (paper: from scratch)
    assert "fine-tuned: VAT from std, TEAT from std, AMAT from std (10 epochs)" in quick
    paper = _planned("paper", tmp_path / "paper")
    for stage in ("std_bce", "vat_eps5", "teat_eps5", "robustness_std_bce"):
        assert _has_stage(paper, stage), stage


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL / "train_senior.csv").is_file(),
                    reason=f"the ISBI 2015 data is not at {REAL} (../shared/data/isbi2015_ceph beside the repo)")
def test_one_short_epoch_on_the_real_xrays(tmp_path):
    run_bundle(("train",), *tiny(image_size="[200,160]", heatmap_radius="8"), "--dataset_dir", str(REAL.resolve()),
               "--output_root", str(tmp_path))
    assert epoch_of(load(tmp_path / "models" / "std" / "checkpoint.pt")) == 1
    assert not (tmp_path / "data").exists()
