"""A bundle zip runs alone: in a fresh virtual environment that holds only the packages its metadata.json lists (no
robust-bundles install, no checkout on the path), downloaded with ``monai.bundle download --url file://...``, from
another working directory: training, thresholds, AMAT, evaluation with the robustness report, and inference with the
shipped weights (and the TorchScript export, where the network has one) on the bundle's synthetic default data.

The environment costs a few minutes (PyTorch is installed from the local wheel cache), so it is made once per session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from bundle_run import REPO, Bundle, last_error, run

pytestmark = pytest.mark.slow

#: per bundle: the shrinking overrides of every run, the extra arguments of the robustness run, and what inference on
#: the bundle's default synthetic data writes (a glob pattern and the number of files)
SPECS = {
    "hippocampus_mri_segmentation": {
        "tiny": {"batch_size": "16", "max_cases": "2", "max_val_cases": "1", "epochs": "1", "val_interval": "1",
                 "attack_steps": "1"},
        "shape": [],
        "robustness": ["--max_test_cases", "1", "--foreground_slices_only", "true"],
        "predictions": ("*_seg.nii.gz", 12),
        "torchscript": True,
    },
    "bccd_blood_cell_detection": {
        "tiny": {"batch_size": "8", "max_images": "8", "max_val_images": "4", "epochs": "1", "val_interval": "1",
                 "attack_steps": "1"},
        "shape": ["--width", "8", "--fpn_channels", "16", "--returned_layers", "[1,2]", "--anchor_shapes",
                  "[[4,4],[6,6],[8,8]]", "--image_size", "[64,64]"],
        "robustness": ["--max_test_images", "2"],
        "predictions": ("*_overlay.png", 40),
        "torchscript": False,  # MONAI's RetinaNet returns a dict of lists of maps: no TorchScript export
    },
}
BUNDLES = sorted(SPECS)


def _requirements(meta: dict) -> list[str]:
    reqs = [f"torch=={meta['pytorch_version']}", f"monai=={meta['monai_version']}",
            f"numpy=={meta['numpy_version']}"]
    return reqs + [f"{k}=={v}" for k, v in meta.get("required_packages_version", {}).items()]


@pytest.fixture(scope="module", params=BUNDLES)
def bundle(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def bare_python(bundle, tmp_path_factory) -> str:
    """A fresh venv with exactly the packages of the bundle's metadata.json."""
    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    folder = tmp_path_factory.mktemp("bare_venv")
    venv.create(folder, with_pip=True, clear=True)
    python = str(folder / "bin" / "python")
    proc = subprocess.run([python, "-m", "pip", "install", "-q", *_requirements(meta)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"cannot install the packages of metadata.json {_requirements(meta)}:\n{proc.stdout[-3000:]}")
    return python


@pytest.fixture(scope="module")
def bundle_zip(bundle, tmp_path_factory) -> Path:
    """The bundle zipped by scripts/bundles.py with weights of the bundle's tiny network (trained for one tiny epoch
    here, in the project's own environment)."""
    work = tmp_path_factory.mktemp("package")
    spec = SPECS[bundle]
    b = Bundle(f"bundles/{bundle}", spec["tiny"])
    b.run(("train",), *b.tiny(), *spec["shape"], "--output_root", str(work / "train"))
    out = work / "dist"
    run([sys.executable, "scripts/bundles.py", "package", "--bundles", f"[{bundle}]", "--out_dir", str(out),
         "--weights", str(work / "train" / "models" / "std" / "model.pt")])
    return out / f"{bundle}.zip"


def test_zip_runs_alone_in_a_fresh_environment(bundle, bare_python, bundle_zip, tmp_path):
    spec = SPECS[bundle]
    elsewhere = tmp_path / "somewhere_else"
    elsewhere.mkdir()
    bare_env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HOME": str(tmp_path)}
    proc = run([bare_python, "-c", "import robust_bundles"], expect_ok=False, cwd=elsewhere, python_env=bare_env)
    assert "No module named 'robust_bundles'" in proc.stdout  # nothing of the project is installed

    run([bare_python, "-m", "monai.bundle", "download", "--name", bundle, "--url", bundle_zip.as_uri(),
         "--bundle_dir", str(tmp_path / "bundles")], cwd=elsewhere, python_env=bare_env)
    root = tmp_path / "bundles" / bundle
    assert (root / "models" / "model.pt").is_file()
    assert (root / "models" / "model.ts").is_file() == spec["torchscript"]
    b = Bundle(str(root), spec["tiny"])
    common = dict(cwd=elsewhere, configs_dir=str(root / "configs"), python=bare_python, python_env=bare_env)
    tiny = [*b.tiny(), *spec["shape"]]

    train = b.run(("train",), *tiny, **common)
    assert "SYNTHETIC DATA" in train.stdout and (root / "models" / "std" / "model.pt").is_file()
    b.run(("train", "thresholds"), *tiny, **common)
    b.run(("train", "amat"), *tiny, **common)
    b.run(("train", "evaluate", "robustness"), *tiny, "--run_name", "amat", *spec["robustness"], "--pgd_steps", "2",
          "--ifgsm_steps", "1", **common)
    report = json.loads((root / "eval" / "amat" / "robustness.json").read_text())
    assert report["settings"]["dataset"]["synthetic"] is True
    infer = b.run(("inference",), *spec["shape"], "--output_dir", str(tmp_path / "pred"), **common)  # shipped weights
    assert f"Restored the network weights from {root / 'models' / 'model.pt'}" in infer.stdout
    pattern, count = spec["predictions"]
    assert len(list((tmp_path / "pred").glob(pattern))) == count

    where = run([bare_python, "-c", "import sys; sys.path.insert(1, sys.argv[1]); import robust_bundles; "
                 "print(robust_bundles.__file__)", str(root)], cwd=elsewhere, python_env=bare_env)
    assert where.stdout.strip() == str(root / "robust_bundles" / "__init__.py")

    err = b.run(("train",), "--data_dir", "/nowhere", expect_ok=False, **common)
    assert "did you mean --dataset_dir" in last_error(err)
