"""End-to-end checks shared by the heart and prostate MRI segmentation bundles (MSD Task02, Task05).

``test_heart_bundle.py`` and ``test_prostate_bundle.py`` set ``SPEC`` (a :class:`Spec`) and import these tests,
so each bundle is its own test file (pytest-xdist runs one file per worker). Every config runs in its own
process (``python -m monai.bundle run``) on the bundle's synthetic default data (MSD layout, written into
``--output_root/data``), with a tiny network, 32 x 32 center crops, two training cases and one-step attacks, so
that each run takes seconds. No real Heart or Prostate images exist on these machines.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_run import Bundle, epoch_of, last_error, load, run
from contract_checks import *  # noqa: F401,F403 (the contract every bundle keeps, and its fixtures)
from contract_checks import Contract

FILTERS = "[8,16,32,64]"
#: a 32 x 32 crop gives a 4-level plan, matching FILTERS
TINY = {"filters": FILTERS, "patch_size": "[32,32]", "batch_size": "16", "max_cases": "2", "max_val_cases": "1",
        "epochs": "1", "val_interval": "1", "attack_steps": "1"}
TEST_SPLIT = ["--max_test_cases", "1", "--foreground_slices_only", "true"]


@dataclass(frozen=True)
class Spec:
    """What differs between the bundles, as the tests need it."""

    name: str  #: bundle folder name
    channels: tuple[str, ...]  #: modality names
    num_classes: int
    slices_per_case: int  #: of the synthetic default volumes
    eps: tuple[float, ...]  #: robustness levels of the paper
    first_case: str  #: file name of the first synthetic case

    @property
    def bundle(self) -> Bundle:
        return Bundle(f"bundles/{self.name}", TINY)

    @property
    def configs(self) -> str:
        return f"bundles/{self.name}/configs"

    @property
    def contract(self) -> Contract:
        return Contract(self.bundle, data="synthetic_msd", terms=("dice", "ce"), samples=2 * self.slices_per_case,
                        target_margin=4.0, workflow_kwargs={"filters": [8, 16, 32, 64], "patch_size": [32, 32],
                                                            "max_cases": 2, "max_val_cases": 1})


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spec(request) -> Spec:
    """The ``SPEC`` of the test file that imports these tests."""
    return request.module.SPEC


@pytest.fixture(scope="module")
def contract(spec) -> Contract:  # noqa: F811 (the contract's fixture, from the SPEC)
    return spec.contract



def _data(root: Path) -> Path:
    return root / "data" / "synthetic_msd"


# ----------------------------------------------------------------------------------------------------------------------
# the synthetic default data has the real task's MSD layout
# ----------------------------------------------------------------------------------------------------------------------


def test_default_data_has_the_msd_layout_of_the_task(spec, std, root):
    data = _data(root)
    meta = json.loads((data / "dataset.json").read_text())
    assert meta["modality"] == {str(i): m for i, m in enumerate(spec.channels)}
    assert len(meta["labels"]) == spec.num_classes and meta["numTraining"] == 12
    assert meta["tensorImageSize"] == ("4D" if len(spec.channels) > 1 else "3D")
    assert (data / "imagesTr" / f"._{spec.first_case}").is_file()  # an AppleDouble file, as in the real archives
    image = nib.load(str(data / "imagesTr" / spec.first_case))
    assert image.shape[2] == spec.slices_per_case
    assert image.ndim == (4 if len(spec.channels) > 1 else 3)
    if len(spec.channels) > 1:
        assert image.shape[3] == len(spec.channels)


# ----------------------------------------------------------------------------------------------------------------------
# every config
# ----------------------------------------------------------------------------------------------------------------------



def test_network_takes_the_task_channels(spec, std):
    weight = load(std / "model.pt")["input_block.conv1.conv.weight"]
    assert weight.shape == (8, len(spec.channels), 3, 3)


def test_teat_training(spec, root, std):
    b = spec.bundle
    b.run(("train", "teat"), *b.tiny(), "--output_root", str(root))
    default_eps = format(json.loads(Path(f"{spec.configs}/teat.json").read_text())["train_eps"], "g")
    assert epoch_of(load(root / "models" / f"teat_eps{default_eps}" / "checkpoint.pt")) == 1


def test_robustness_at_the_paper_noise_levels(spec, root, amat):
    b = spec.bundle
    b.run(("train", "evaluate", "robustness"), *b.tiny(), *TEST_SPLIT, "--run_name", "amat", "--pgd_steps", "2",
          "--ifgsm_steps", "1", "--output_root", str(root))
    report = json.loads((root / "eval" / "amat" / "robustness.json").read_text())
    assert report["settings"]["eps"] == [float(e) for e in spec.eps]
    assert set(report["summary"]["attacks"]["PGD"]) == {*(format(e, "g") for e in spec.eps), "avg"}
    assert report["settings"]["dataset"]["synthetic"] is True


def test_inference_on_the_default_images(spec, root, std, tmp_path):
    """The default input (imagesTr of the synthetic data, with its ._ file skipped): one label map per image, on
    the image's grid (the spatial part of a 4D image)."""
    out = tmp_path / "out"
    spec.bundle.run(("inference",), "--filters", FILTERS, "--patch_size", "[32,32]", "--model_path",
                    str(std / "model.pt"), "--output_dir", str(out), "--output_root", str(root))
    images = sorted(p for p in (_data(root) / "imagesTr").glob("*.nii.gz") if not p.name.startswith("._"))
    preds = sorted(out.glob("*_seg.nii.gz"))
    assert len(preds) == len(images) == 12
    image, pred = nib.load(str(images[0])), nib.load(str(preds[0]))
    assert pred.shape == image.shape[:3]
    assert np.allclose(pred.affine, image.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= set(range(spec.num_classes))


# ----------------------------------------------------------------------------------------------------------------------
# bad input: another number of channels stops the run and names the file
# ----------------------------------------------------------------------------------------------------------------------


def _other_task_image(spec, tmp_path: Path) -> Path:
    """An image with the wrong number of channels for this bundle: 3D for prostate (one modality, e.g. a heart
    image), 4D with two modalities for heart."""
    rng = np.random.default_rng(0)
    shape = (40, 40, 6) if len(spec.channels) > 1 else (40, 40, 6, 2)
    path = tmp_path / "wrong_channels.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(100, 20, size=shape).astype(np.float32), np.eye(4)), str(path))
    return path


def test_error_inference_names_the_image_and_the_expected_channels(spec, root, std, tmp_path):
    image = _other_task_image(spec, tmp_path)
    proc = spec.bundle.run(("inference",), "--filters", FILTERS, "--patch_size", "[32,32]", "--datalist",
                           f"['{image}']", "--model_path", str(std / "model.pt"), "--output_dir",
                           str(tmp_path / "out"), "--output_root", str(root), expect_ok=False)
    err = last_error(proc)
    assert str(image) in err and f"{len(spec.channels)} channel(s) ({', '.join(spec.channels)})" in err, err


def test_error_training_on_a_dataset_with_other_channels(spec, root, std, tmp_path):
    """A dataset of the other task (prostate: a one-modality image; heart: a 4D two-modality image), with a
    dataset.json that agrees with its images, stops training with the file named and the expected channel count."""
    data = tmp_path / "Task_other"
    shutil.copytree(_data(root), data)
    meta = json.loads((data / "dataset.json").read_text())
    meta["modality"] = {"0": "MRI"} if len(spec.channels) > 1 else {"0": "T2", "1": "ADC"}
    (data / "dataset.json").write_text(json.dumps(meta))
    for entry in meta["training"]:
        img = nib.load(str(data / entry["image"]))
        arr = np.asarray(img.dataobj)
        arr = arr[..., 0] if arr.ndim == 4 else np.stack([arr, arr], axis=-1)
        nib.save(nib.Nifti1Image(arr, img.affine), str(data / entry["image"]))
    proc = spec.bundle.run(("train",), *spec.bundle.tiny(), "--dataset_dir", str(data), "--output_root",
                           str(tmp_path / "o"), expect_ok=False)
    err = last_error(proc)
    expected = f"this bundle expects {len(spec.channels)} ({', '.join(spec.channels)})"
    assert expected in err and str(data / "imagesTr") in err, err


# ----------------------------------------------------------------------------------------------------------------------
# model-zoo checks
# ----------------------------------------------------------------------------------------------------------------------


def test_verify_net_in_out(spec):
    proc = run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
                f"{spec.configs}/metadata.json", "--config_file", f"{spec.configs}/train.json", "--filters",
                "[4,8,16,16,16,16,16]"])
    assert "data shape of network is verified with no error" in proc.stdout


def test_ckpt_export_torchscript(spec, std, tmp_path):
    ts = tmp_path / "model.ts"
    run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
         str(std / "model.pt"), "--meta_file", f"{spec.configs}/metadata.json", "--config_file",
         f"{spec.configs}/inference.json", "--filters", FILTERS, "--patch_size", "[32,32]", "--use_trace", "True"])
    exported = torch.jit.load(str(ts), map_location="cpu")
    with torch.no_grad():
        y = exported(torch.randn(2, len(spec.channels), 32, 32))
    assert y.shape == (2, spec.num_classes, 32, 32)


# ----------------------------------------------------------------------------------------------------------------------
# the experiment of the README, on the synthetic default, in its own process
# ----------------------------------------------------------------------------------------------------------------------

EXPERIMENT_TINY = {"max_cases": 1, "max_val_cases": 1, "max_test_cases": 1, "epochs": 1, "val_interval": 1,
                   "batch_size": 16, "patch_size": [32, 32], "filters": [8, 16, 32, 64], "attack_steps": 1,
                   "pgd_steps": 2, "ifgsm_steps": 1}


def test_experiment_quick_on_the_synthetic_default(spec, tmp_path):
    """scripts/experiment.py --profile quick (tiny overrides, one noise level for each method with eps): every stage
    and the paper-style table, with the bundle's noise levels and the quick suite's attacks."""
    from bundle_run import REPO, env, forkserver

    out = tmp_path / "runs"
    eps = spec.eps[0]
    cmd = [sys.executable, "scripts/experiment.py", "--bundle", f"bundles/{spec.name}", "--profile", "quick",
           "--output_root", str(out), "--vat_eps", f"[{eps:g}]", "--teat_eps", f"[{eps:g}]", "--trades_eps", f"[{eps:g}]",
           "--override", json.dumps(EXPERIMENT_TINY)]
    p = forkserver.run(cmd, REPO, env(), timeout=900, stderr_apart=True)  # its stages forked too
    assert p.returncode == 0, f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    table = json.loads((out / "report" / "results.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["STD", f"VAT (eps {eps:g})", f"TEAT (eps {eps:g})", "AMAT",
                                                  f"TRADES (eps {eps:g})"]
    # clean, then PGD, IFGSM and noise (the quick suite) at each of the bundle's 3 noise levels and their average
    assert table["columns"][:2] == ["clean", f"PGD {spec.eps[0]:g}"] and len(table["columns"]) == 13
    assert "SYNTHETIC" in (out / "report" / "results.md").read_text().upper()
