"""End-to-end tests of the hippocampus_mri_segmentation bundle: every config runs in its own process.

Each run is ``python -m monai.bundle run ...`` started with the repository root as working directory and a temporary
``--output_root`` (models/, eval/ and the bundle's default synthetic MSD data go there), with a tiny network, two
training cases and one-step attacks, so that each takes seconds. One module-scoped fixture trains STD once; the
thresholds, AMAT, evaluation, robustness, inference and model-zoo checks reuse it (fixtures run in dependency order).
The resume tests are in test_hippocampus_resume.py (a file of their own: xdist runs it on the other worker).

Subprocesses run with one OpenMP thread: on a shared two-core machine PyTorch's default of one thread per core,
spinning while another process holds a core, made an adversarial epoch 20-40 times slower.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_run import SHARED_DATA, Bundle, epoch_of, last_error, load, run
from contract_checks import *  # noqa: F401,F403 (the contract every bundle keeps, and its fixtures root/std/...)
from contract_checks import Contract

pytestmark = pytest.mark.slow

BUNDLE = "bundles/hippocampus_mri_segmentation"
CONFIGS = f"{BUNDLE}/configs"
META = f"{CONFIGS}/metadata.json"
REAL_HIPPOCAMPUS = SHARED_DATA / "msd_hippocampus"

#: shrinking overrides: tiny network, 2 training cases (72 slices), 1 validation case, 1 epoch, 1-step attacks
HIPPOCAMPUS = Bundle(BUNDLE, {
    "filters": "[8,16,32,64]",
    "batch_size": "16",
    "max_cases": "2",
    "max_val_cases": "1",
    "epochs": "1",
    "val_interval": "1",
    "attack_steps": "1",
})
tiny = HIPPOCAMPUS.tiny
run_bundle = HIPPOCAMPUS.run
CONTRACT = Contract(HIPPOCAMPUS, data="synthetic_msd", terms=("dice", "ce"), samples=72, target_margin=4.0,
                    workflow_kwargs={"filters": [8, 16, 32, 64], "max_cases": 2, "max_val_cases": 1})
"""2 training cases of the synthetic default: 72 slices."""

TEST_SPLIT = ["--max_test_cases", "1", "--foreground_slices_only", "true"]


# ----------------------------------------------------------------------------------------------------------------------
# shared runs
# ----------------------------------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------------------------------
# training configs
# ----------------------------------------------------------------------------------------------------------------------



def test_teat_training_keeps_its_ensemble_in_the_checkpoint(root, std):
    run_bundle(("train", "teat"), *tiny(), "--train_eps", "2", "--output_root", str(root))
    ckpt = load(root / "models" / "teat_eps2" / "checkpoint.pt")
    ensemble = ckpt["teat_ensemble"]
    assert ensemble["num_samples"] == 72
    # the ensemble starts half-way through training: the second half of the single epoch filled it
    assert 0 < int((ensemble["count"] > 0).sum()) < 72



def test_latest_checkpoint_reads_the_epoch_of_ignite_checkpoints(std, tmp_path):
    """--resume picks the newest of checkpoint.pt and checkpoint_checkpoint_epoch=N.pt by their trainer state."""
    from robust_bundles.checkpointing import latest_checkpoint

    ckpt = load(std / "checkpoint.pt")  # epoch 1: ignite stores iteration and epoch_length, not the epoch
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    later = {**ckpt, "trainer": {**ckpt["trainer"], "iteration": 3 * int(ckpt["trainer"]["epoch_length"])}}
    torch.save(later, tmp_path / "checkpoint_checkpoint_epoch=3.pt")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_checkpoint_epoch=3.pt")


# ----------------------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------------------


def _metrics_csv(path: Path) -> dict[str, float]:
    rows = [ln.split(",") for ln in path.read_text().splitlines() if ln.strip()]
    return {k: float(v) for k, v in rows}


def test_evaluate_std(root, std):
    proc = run_bundle(("train", "evaluate"), *tiny(), *TEST_SPLIT, "--output_root", str(root))
    assert f"Restored the network weights from {std / 'model.pt'}" in proc.stdout
    metrics = _metrics_csv(root / "eval" / "std" / "metrics.csv")
    assert 0.0 <= metrics["test_mean_dice"] <= 1.0


def test_robustness_of_the_amat_run(root, std, amat):
    """The quick suite, with the transfer check from the STD model (what the experiment's strong suite adds)."""
    proc = run_bundle(
        ("train", "evaluate", "robustness"), *tiny(), *TEST_SPLIT, "--run_name", "amat", "--pgd_steps", "2",
        "--ifgsm_steps", "1", "--transfer_surrogate", str(std / "model.pt"), "--output_root", str(root),
    )
    assert f"Restored the network weights from {amat / 'model.pt'}" in proc.stdout
    out = root / "eval" / "amat"
    report = json.loads((out / "robustness.json").read_text())
    assert report["settings"]["eps"] == [2.0, 6.0, 10.0]  # no eps 0 needed: the clean metric is always there
    assert list(report["summary"]["attacks"]) == ["PGD", "IFGSM", "noise", "transfer"]
    assert report["settings"]["suite"] == "quick" and "attack suite quick" in (out / "robustness.md").read_text()
    assert set(report["summary"]["attacks"]["PGD"]) == {"2", "6", "10", "avg"}
    # the handler's clean Dice is the evaluator's key metric, on the same slices
    assert report["summary"]["clean"] == pytest.approx(_metrics_csv(out / "metrics.csv")["test_mean_dice"], abs=1e-6)
    assert (out / "robustness.csv").is_file() and (out / "robustness.md").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------------------------


def _reference_prediction(model_file: Path, volume: np.ndarray) -> np.ndarray:
    """Slice-by-slice prediction the way training sees slices: z-score the volume, pad each (X, Y) slice to 40 x 56
    symmetrically (as ResizeWithPadOrCropd: (d // 2, d - d // 2)), argmax, and cut the padding off again."""
    from monai.networks.nets import DynUNet

    from robust_bundles.data.nifti import zscore

    net = DynUNet(
        2, 1, 3, [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 2]], [[2, 2]] * 3, filters=[8, 16, 32, 64],
        norm_name="instance", act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=True, deep_supr_num=2,
    )
    net.load_state_dict(load(model_file))
    net.eval()
    z = zscore(volume)
    (nx, ny), (px, py) = volume.shape[:2], (40, 56)
    assert nx <= px and ny <= py, "the reference handles slices up to the patch size"
    x0, y0 = (px - nx) // 2, (py - ny) // 2
    padded = np.zeros((volume.shape[2], 1, px, py), np.float32)
    padded[:, 0, x0 : x0 + nx, y0 : y0 + ny] = np.moveaxis(z, 2, 0)
    with torch.no_grad():
        pred = net(torch.from_numpy(padded)).argmax(1).numpy()
    return np.moveaxis(pred[:, x0 : x0 + nx, y0 : y0 + ny], 0, 2).astype(np.uint8)


def test_inference_writes_label_maps_with_the_input_grid(root, std, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    src = nib.load(str(root / "data" / "synthetic_msd" / "imagesTr" / "synthetichippocampus_001.nii.gz"))
    # an oblique grid, 1.2 x 0.9 x 2 mm, an odd shape smaller than the patch, uint8 storage as in the real data
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 0.9, 2.0])
    affine[:3, 3] = [-10.0, 25.5, 3.0]
    oblique = np.clip(np.asarray(src.dataobj)[1:34, 2:49, 5:25] / 4, 0, 255).astype(np.uint8)
    nib.save(nib.Nifti1Image(oblique, affine), str(inputs / "oblique.nii.gz"))
    plain = rng.normal(100, 20, size=(30, 44, 7)).astype(np.float32)
    nib.save(nib.Nifti1Image(plain, np.diag([1.0, 1.0, 1.0, 1.0])), str(inputs / "plain.nii"))
    out = tmp_path / "out"

    run_bundle(
        ("inference",), "--filters", "[8,16,32,64]", "--input_dir", str(inputs), "--model_path", str(std / "model.pt"),
        "--output_dir", str(out), "--output_root", str(root),
    )
    for name, stem in (("oblique.nii.gz", "oblique"), ("plain.nii", "plain")):
        image = nib.load(str(inputs / name))
        pred = nib.load(str(out / f"{stem}_seg.nii.gz"))
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        labels = np.asarray(pred.dataobj)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
        reference = _reference_prediction(std / "model.pt", np.asarray(image.dataobj, dtype=np.float32))
        assert (labels == reference).mean() > 0.999, name

    # --datalist instead of a folder, and --model_path for the weights
    out2 = tmp_path / "out2"
    run_bundle(
        ("train", "inference"), "--filters", "[8,16,32,64]",
        "--datalist", f"[{{'image': '{inputs / 'plain.nii'}'}}]", "--model_path", str(std / "model_best_val.pt"),
        "--output_dir", str(out2), "--output_root", str(root),
    )
    assert sorted(p.name for p in out2.iterdir()) == ["plain_confidence.json", "plain_seg.nii.gz"]


def test_inference_confidence_with_the_shipped_weights_flags_noise_and_refuses_a_blank_volume(tmp_path):
    """The shipped weights and their reference (models/confidence_reference.json, the real validation split): every
    volume gets <stem>_confidence.json; a noise volume gets a LOW CONFIDENCE warning (its foreground volume is far
    outside the validation's); an all-zero volume is refused, naming the file, and nothing is written for it."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    noise = np.random.default_rng(0).normal(100, 20, (35, 50, 35)).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, np.eye(4)), str(inputs / "noise.nii.gz"))
    proc = run_bundle(("inference",), "--input_dir", str(inputs), "--output_dir", str(out), "--output_root",
                      str(tmp_path))
    record = json.loads((out / "noise_confidence.json").read_text())
    assert set(record["measures"]) == {"foreground_confidence", "foreground_volume_mm3"}
    assert set(record["volume_mm3_per_label"]) == {"1", "2"} and record["classes"] == 3
    assert record["reference"]["source"].startswith("the validation split") and record["low_confidence"]
    assert f"LOW CONFIDENCE: {inputs / 'noise.nii.gz'}: foreground_volume_mm3" in proc.stdout
    assert (out / "noise_seg.nii.gz").is_file()

    nib.save(nib.Nifti1Image(np.zeros((35, 50, 35), np.float32), np.eye(4)), str(tmp_path / "zero.nii.gz"))
    proc = run_bundle(("inference",), "--datalist", f"['{tmp_path / 'zero.nii.gz'}']", "--output_dir",
                      str(tmp_path / "o2"), "--output_root", str(tmp_path), expect_ok=False)
    err = last_error(proc)
    assert f"{tmp_path / 'zero.nii.gz'} holds one value everywhere (0 in each channel)" in err
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").glob("zero*"))


# ----------------------------------------------------------------------------------------------------------------------
# bad input: one clear error, naming the file or key and the fix, as the last line of the output
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def msd_copy(root, std):
    """A function returning a fresh copy of the synthetic MSD folder (3 cases) that a test may break."""
    import shutil

    source = root / "data" / "synthetic_msd"
    meta = json.loads((source / "dataset.json").read_text())

    def make(dest: Path) -> Path:
        shutil.copytree(source, dest)
        meta_small = {**meta, "training": meta["training"][:3]}
        meta_small.pop("synthetic")
        (dest / "dataset.json").write_text(json.dumps(meta_small))
        return dest

    return make


def test_error_missing_label_file(root, msd_copy, tmp_path):
    data = msd_copy(tmp_path / "Task04")
    (data / "labelsTr" / "synthetichippocampus_002.nii.gz").unlink()
    proc = run_bundle(("train",), *tiny(), "--dataset_dir", str(data), "--output_root", str(tmp_path), expect_ok=False)
    err = last_error(proc)
    assert "FileNotFoundError" in err and "labelsTr/synthetichippocampus_002.nii.gz" in err
    assert "remove the case from" in err


def test_error_wrong_layout(root, msd_copy, tmp_path):
    data = msd_copy(tmp_path / "download" / "Task04_Hippocampus")
    proc = run_bundle(
        ("train",), *tiny(), "--dataset_dir", str(tmp_path / "download"), "--output_root", str(tmp_path),
        expect_ok=False,
    )
    err = last_error(proc)
    assert "dataset.json does not exist" in err and f"did you mean {data}" in err


def test_error_image_label_shape_mismatch(root, msd_copy, tmp_path):
    data = msd_copy(tmp_path / "Task04")
    label = data / "labelsTr" / "synthetichippocampus_001.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((35, 50, 30), np.uint8), np.eye(4)), str(label))
    proc = run_bundle(
        ("train",), *tiny(max_cases="3"), "--split_fractions", "[1.0,0.0,0.0]", "--dataset_dir", str(data),
        "--output_root", str(tmp_path), expect_ok=False,
    )
    err = last_error(proc)
    assert "ValueError" in err and "has shape (35,50,36) but label" in err and "(35,50,30)" in err
    assert "resample the label onto the image" in err



def test_error_inference_without_input(root, std, tmp_path):
    proc = run_bundle(
        ("inference",), "--filters", "[8,16,32,64]", "--input_dir", str(tmp_path / "nowhere"),
        "--output_root", str(root), expect_ok=False,
    )
    err = last_error(proc)
    assert f"The input folder {tmp_path / 'nowhere'} does not exist" in err and "--datalist" in err


def test_error_bad_flag_and_resume_without_checkpoint(root, std, tmp_path):
    data = ["--dataset_dir", str(root / "data" / "synthetic_msd"), "--output_root", str(tmp_path)]
    proc = run_bundle(("train",), *tiny(), "--resume", "maybe", *data, expect_ok=False)
    assert "--resume 'maybe' is not a yes/no value" in last_error(proc)
    proc = run_bundle(("train",), *tiny(), "--resume", "true", *data, expect_ok=False)
    assert "No checkpoint to resume from" in last_error(proc)
    assert not (tmp_path / "models").exists()  # a failed resume leaves no (empty) run folder behind


def test_error_misspelt_override_names_the_nearest_key(root, tmp_path):
    """A misspelt key would silently add an unused key and train on the synthetic default data."""
    proc = run_bundle(("train",), *tiny(), "--data_dir", str(tmp_path), "--output_root", str(tmp_path),
                      expect_ok=False)
    err = last_error(proc)
    assert "--data_dir" in err and "did you mean --dataset_dir" in err
    proc = run_bundle(("train", "amat"), *tiny(), "--epoch", "3", "--expansion_stp", "2",
                      "--output_root", str(tmp_path), expect_ok=False)
    err = last_error(proc)
    assert "--epoch:" in err and "did you mean --epochs" in err and "--expansion_step" in err
    assert not (tmp_path / "models").exists() and not (tmp_path / "data").exists()  # stopped before any work
    proc = run_bundle(("train",), *tiny(), "--train#dataloader#batchsize", "4", "--output_root", str(tmp_path),
                      expect_ok=False)  # a new argument of a component is allowed; this one fails when built
    assert "batchsize" in last_error(proc)


def test_synthetic_default_data_is_announced(tmp_path):
    proc = run_bundle(("train",), *tiny(max_cases="1"), "--output_root", str(tmp_path))
    assert "SYNTHETIC DATA: no --dataset_dir was given" in proc.stdout
    assert (tmp_path / "data" / "synthetic_msd" / "SYNTHETIC_DATA.txt").is_file()


def _write_volume(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_error_inference_refuses_bad_images_and_names_them(root, std, tmp_path):
    """NaN voxels, a truncated file and a 4D two-channel image each stop inference, name the file and write
    nothing for it; a model of another network size is explained."""
    rng = np.random.default_rng(0)
    good = rng.normal(100, 20, size=(30, 44, 7)).astype(np.float32)
    cases = {}
    nan = good.copy()
    nan[3, 4, 5] = np.nan
    cases["nan"] = _write_volume(tmp_path / "nan.nii.gz", nan)
    full = _write_volume(tmp_path / "full.nii.gz", good)
    cases["truncated"] = tmp_path / "truncated.nii.gz"
    cases["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cases["4d"] = _write_volume(tmp_path / "two_channels.nii.gz", np.stack([good, good], axis=-1))
    expected = {"nan": "non-finite voxel", "truncated": "Cannot read the image", "4d": "2 channel(s)"}
    for kind, image in cases.items():
        out = tmp_path / f"out_{kind}"
        proc = run_bundle(
            ("inference",), "--filters", "[8,16,32,64]", "--datalist", f"['{image}']",
            "--model_path", str(std / "model.pt"), "--output_dir", str(out), "--output_root", str(root),
            expect_ok=False,
        )
        err = last_error(proc)
        assert str(image) in err and expected[kind] in err, (kind, err)
        assert not out.exists() or not any(out.iterdir()), kind

    proc = run_bundle(  # the default network ([16, ...]) with the tiny model ([8, ...])
        ("inference",), "--datalist", f"['{full}']", "--model_path", str(std / "model.pt"),
        "--output_dir", str(tmp_path / "out_size"), "--output_root", str(root), expect_ok=False,
    )
    err = last_error(proc)
    assert "was trained with another network than this config builds" in err and str(std / "model.pt") in err
    assert "file 8x1x3x3, network 16x1x3x3" in err and "--filters" in err and "profiles/paper.json" in err
    assert "size mismatch" not in err


def test_error_training_on_a_truncated_volume_names_it(msd_copy, tmp_path):
    data = msd_copy(tmp_path / "Task04")
    image = data / "imagesTr" / "synthetichippocampus_002.nii.gz"
    image.write_bytes(image.read_bytes()[:2000])
    proc = run_bundle(
        ("train",), *tiny(max_cases="3"), "--split_fractions", "[1.0,0.0,0.0]", "--dataset_dir", str(data),
        "--output_root", str(tmp_path), expect_ok=False,
    )
    err = last_error(proc)
    assert "synthetichippocampus_002.nii.gz" in err and "cannot be read" in err and "EOFError" in err


@pytest.mark.parametrize("change,expected", [
    ({"xi": [float("nan"), 0.1]}, "Thresholds must be finite"),
    ({"xi": [0.1], "term_names": ["dice"]}, "the file has terms [dice] but the loss has [dice, ce]"),
])
def test_error_bad_thresholds_file_names_it(std, root, tmp_path, change, expected):
    bad = tmp_path / "thresholds.json"
    bad.write_text(json.dumps({"xi": [0.1, 0.1], "term_names": ["dice", "ce"], "rule": "mean", "num_samples": 72,
                               **change}))
    proc = run_bundle(("train", "amat"), *tiny(), "--thresholds_file", str(bad), "--output_root", str(tmp_path),
                      expect_ok=False)
    err = last_error(proc)
    assert str(bad) in err and expected in err


# ----------------------------------------------------------------------------------------------------------------------
# model-zoo checks
# ----------------------------------------------------------------------------------------------------------------------



def test_verify_net_in_out():
    proc = run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", META,
         "--config_file", f"{CONFIGS}/train.json", "--filters", "[8,16,32,64]"]
    )
    assert "data shape of network is verified with no error" in proc.stdout


def test_ckpt_export_torchscript(std, tmp_path):
    ts = tmp_path / "model.ts"
    # DynUNet with deep supervision cannot be scripted (it assigns into a list of heads): trace the eval-mode model
    run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
         "--ckpt_file", str(std / "model.pt"), "--meta_file", META, "--config_file", f"{CONFIGS}/inference.json",
         "--filters", "[8,16,32,64]", "--use_trace", "True"]
    )
    exported = torch.jit.load(str(ts), map_location="cpu")
    x = torch.randn(2, 1, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = exported(x)
    assert y.shape == (2, 3, 40, 56)



# ----------------------------------------------------------------------------------------------------------------------
# real data
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(
    not (REAL_HIPPOCAMPUS / "dataset.json").is_file(),
    reason=f"the MSD hippocampus data is not at {REAL_HIPPOCAMPUS} (../shared/data/msd_hippocampus beside the repo)",
)
def test_one_short_epoch_on_the_real_hippocampus_data(tmp_path):
    run_bundle(
        ("train",), *tiny(), "--dataset_dir", str(REAL_HIPPOCAMPUS.resolve()), "--output_root", str(tmp_path)
    )
    ckpt = load(tmp_path / "models" / "std" / "checkpoint.pt")
    assert epoch_of(ckpt) == 1
    assert not (tmp_path / "data").exists()  # no synthetic data written when dataset_dir is given
