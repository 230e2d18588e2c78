"""A bundle zip runs alone: in a fresh virtual environment that holds only the packages its metadata.json lists (no
robust-bundles install, no checkout on the path), downloaded with ``monai.bundle download --url file://...``, from
another working directory: training, thresholds, AMAT, evaluation with the robustness report, and inference with the
shipped weights (and the TorchScript export) on the bundle's synthetic default data.

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

BUNDLE = "hippocampus_mri_segmentation"
META = json.loads((REPO / "bundles" / BUNDLE / "configs" / "metadata.json").read_text())

TINY = {"batch_size": "16", "max_cases": "2", "max_val_cases": "1", "epochs": "1", "val_interval": "1",
        "attack_steps": "1"}


def _requirements(meta: dict) -> list[str]:
    reqs = [f"torch=={meta['pytorch_version']}", f"monai=={meta['monai_version']}",
            f"numpy=={meta['numpy_version']}"]
    return reqs + [f"{k}=={v}" for k, v in meta.get("required_packages_version", {}).items()]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A fresh venv with exactly the packages of the bundle's metadata.json."""
    folder = tmp_path_factory.mktemp("bare_venv")
    venv.create(folder, with_pip=True, clear=True)
    python = str(folder / "bin" / "python")
    proc = subprocess.run([python, "-m", "pip", "install", "-q", *_requirements(META)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"cannot install the packages of metadata.json {_requirements(META)}:\n{proc.stdout[-3000:]}")
    return python


@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory) -> Path:
    """The bundle zipped by scripts/bundles.py with weights of the bundle's default network (trained for one tiny
    epoch here, in the project's own environment)."""
    work = tmp_path_factory.mktemp("package")
    Bundle(f"bundles/{BUNDLE}", TINY).run(("train",), *Bundle(f"bundles/{BUNDLE}", TINY).tiny(),
                                           "--output_root", str(work / "train"))
    out = work / "dist"
    run([sys.executable, "scripts/bundles.py", "package", "--bundles", f"[{BUNDLE}]", "--out_dir", str(out),
         "--weights", str(work / "train" / "models" / "std" / "model.pt")])
    return out / f"{BUNDLE}.zip"


def test_zip_runs_alone_in_a_fresh_environment(bare_python, bundle_zip, tmp_path):
    elsewhere = tmp_path / "somewhere_else"
    elsewhere.mkdir()
    bare_env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HOME": str(tmp_path)}
    proc = run([bare_python, "-c", "import robust_bundles"], expect_ok=False, cwd=elsewhere, python_env=bare_env)
    assert "No module named 'robust_bundles'" in proc.stdout  # nothing of the project is installed

    run([bare_python, "-m", "monai.bundle", "download", "--name", BUNDLE, "--url", bundle_zip.as_uri(),
         "--bundle_dir", str(tmp_path / "bundles")], cwd=elsewhere, python_env=bare_env)
    root = tmp_path / "bundles" / BUNDLE
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "model.ts").is_file()
    b = Bundle(str(root), TINY)
    common = dict(cwd=elsewhere, configs_dir=str(root / "configs"), python=bare_python, python_env=bare_env)

    train = b.run(("train",), *b.tiny(), **common)
    assert "SYNTHETIC DATA" in train.stdout and (root / "models" / "std" / "model.pt").is_file()
    b.run(("train", "thresholds"), *b.tiny(), **common)
    b.run(("train", "amat"), *b.tiny(), **common)
    b.run(("train", "evaluate", "robustness"), *b.tiny(), "--run_name", "amat", "--max_test_cases", "1",
          "--foreground_slices_only", "true", "--pgd_steps", "2", "--ifgsm_steps", "1", **common)
    report = json.loads((root / "eval" / "amat" / "robustness.json").read_text())
    assert report["settings"]["dataset"]["synthetic"] is True
    infer = b.run(("inference",), "--output_dir", str(tmp_path / "pred"), **common)  # the shipped weights
    assert f"Restored the network weights from {root / 'models' / 'model.pt'}" in infer.stdout
    assert len(list((tmp_path / "pred").glob("*_seg.nii.gz"))) == 12

    where = run([bare_python, "-c", "import sys; sys.path.insert(1, sys.argv[1]); import robust_bundles; "
                 "print(robust_bundles.__file__)", str(root)], cwd=elsewhere, python_env=bare_env)
    assert where.stdout.strip() == str(root / "robust_bundles" / "__init__.py")

    err = b.run(("train",), "--data_dir", "/nowhere", expect_ok=False, **common)
    assert "did you mean --dataset_dir" in last_error(err)
