"""Every bundle zip runs alone: in a fresh virtual environment that holds only the packages the bundles' metadata.json
list (no robust-bundles install, no checkout on the path), downloaded with ``monai.bundle download --url file://...``,
from another working directory: the model-zoo checks its README shows (verify_metadata offline with the shipped
schema, verify_net_in_out, ckpt_export), training, thresholds, AMAT, evaluation with the robustness report, and
inference with the shipped weights (and the TorchScript export where the bundle exports one) on the bundle's synthetic
default data.

The environment costs a few minutes (PyTorch is installed from the local wheel cache), so it is made once for all
bundles, from the union of their requirements (which must agree on versions). Its ``python -m monai.bundle`` runs are
forked from a server of that environment that imported torch, MONAI and ignite once (tests/forkserver.py, started
outside the checkout; the project's modules come from the extracted zip in each run); ``python -c`` runs are fresh. A new bundle adds its entry to SPECS.

One bundle of each family runs the whole zip test (FAMILY_RUNS): the heart and prostate bundles render their configs
from the same segmentation base as the hippocampus one and zip the same library modules, so a second and third run of
that family (2-6 minutes each on the 2-core CI machine) would test the same code again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bundle_run import REPO, Bundle, forkserver, last_error, run

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Spec:
    """How to run one bundle tiny, standalone.

    Attributes:
        tiny: overrides of every run (small data, one epoch, one-step attacks).
        evaluate: extra overrides of the evaluation + robustness run.
        predictions: glob of the files inference writes into ``--output_dir`` and how many it writes on the synthetic
            default data.
        torchscript: whether the packaged zip holds ``models/model.ts``.
        network: overrides of the network size, for training the shipped weights and for inference with them
            (bundles whose default network is too large for a test); the TorchScript export, traced from the
            default network, then fails and the zip holds model.pt only.
        misspelt: a misspelt override and the valid key its error must suggest.
        zoo_checks: the model-zoo commands its README shows besides ``run`` (``verify_metadata``,
            ``verify_net_in_out``, ``ckpt_export``), each run from another directory on the extracted zip, the network
            by ``net_config``.
        net_config: the config that defines ``network_def`` for the checks.
    """

    tiny: dict[str, str]
    evaluate: dict[str, str] = field(default_factory=dict)
    predictions: tuple[str, int] = ("*", 1)
    torchscript: bool = True
    network: dict[str, str] = field(default_factory=dict)
    misspelt: tuple[str, str] = ("data_dir", "dataset_dir")
    zoo_checks: tuple[str, ...] = ("verify_metadata", "verify_net_in_out", "ckpt_export")
    net_config: str = "inference"


#: the MRI segmentation bundles: 2 training cases, 1 epoch, one-step attacks, one test case
SEG_TINY = {"batch_size": "16", "max_cases": "2", "max_val_cases": "1", "epochs": "1", "val_interval": "1",
            "attack_steps": "1"}
SEG_EVALUATE = {"max_test_cases": "1", "foreground_slices_only": "true", "pgd_steps": "2", "ifgsm_steps": "1"}
TINY_NET = {"filters": "[8,16,32,64]", "patch_size": "[32,32]"}
SPECS = {
    "hippocampus_mri_segmentation": Spec(tiny=SEG_TINY, evaluate=SEG_EVALUATE, predictions=("*_seg.nii.gz", 12)),
    **{
        name: Spec(  # nnU-Net's 7-level network on 320 x 256 / 320 x 320 patches by default: a tiny one here
            tiny={**SEG_TINY, **TINY_NET}, evaluate=SEG_EVALUATE, predictions=("*_seg.nii.gz", 12), torchscript=False,
            network=TINY_NET,
        )
        for name in ("heart_mri_segmentation", "prostate_mri_segmentation")
    },
    "cephalometric_xray_landmarks": Spec(  # the default network (shipped weights, TorchScript) on small images
        tiny={"batch_size": "2", "max_cases": "2", "max_val_cases": "1", "epochs": "1", "val_interval": "1",
              "attack_steps": "1", "image_size": "[64,48]", "heatmap_radius": "3"},
        evaluate={"max_test_cases": "1", "pgd_steps": "2", "ifgsm_steps": "1"},
        predictions=("*_landmarks.json", 9),  # the synthetic Test1 set
        net_config="train",  # as its README shows
    ),
    "bccd_blood_cell_detection": Spec(
        # the default network (ResNet10-FPN at 160 x 160) is small enough for a tiny epoch on 8 images
        tiny={"batch_size": "8", "max_cases": "8", "max_val_cases": "2", "epochs": "1", "val_interval": "1",
              "attack_steps": "1"},
        evaluate={"max_test_cases": "2", "pgd_steps": "2", "ifgsm_steps": "1"},
        predictions=("*_overlay.png", 40),
        torchscript=False,  # MONAI's RetinaNet returns a dict of lists of feature maps: no TorchScript export
        zoo_checks=("verify_metadata",),  # its README shows no network check (RetinaNet's output is a dict)
    ),
}


#: the bundle of each family that runs the whole zip test: MRI segmentation, landmarks, detection
FAMILY_RUNS = ("hippocampus_mri_segmentation", "cephalometric_xray_landmarks", "bccd_blood_cell_detection")


def _meta(bundle: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())


def _requirements() -> list[str]:
    """The union of what the bundles' metadata.json pin; a bundle that pins another version of a package fails here."""
    pins: dict[str, tuple[str, str]] = {}
    for bundle in SPECS:
        meta = _meta(bundle)
        wanted = {"torch": meta["pytorch_version"], "monai": meta["monai_version"], "numpy": meta["numpy_version"],
                  **meta.get("required_packages_version", {})}
        for package, version in wanted.items():
            seen = pins.setdefault(package, (version, bundle))
            assert seen[0] == version, f"{bundle} pins {package}=={version} but {seen[1]} pins {seen[0]}"
    return [f"{package}=={version}" for package, (version, _) in sorted(pins.items())]


def test_every_bundle_has_a_standalone_spec():
    bundles = sorted(p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/metadata.json"))
    assert bundles == sorted(SPECS), "add the new bundle to SPECS in tests/bundles/test_standalone.py"
    assert set(FAMILY_RUNS) <= set(SPECS)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A fresh venv with exactly the packages of the bundles' metadata.json."""
    folder = tmp_path_factory.mktemp("bare_venv")
    venv.create(folder, with_pip=True, clear=True)
    python = str(folder / "bin" / "python")
    proc = subprocess.run([python, "-m", "pip", "install", "-q", *_requirements()], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"cannot install the packages of metadata.json {_requirements()}:\n{proc.stdout[-3000:]}")
    forkserver.allow_python(python)  # its `-m monai.bundle` runs forked from a server of this venv (tests/forkserver.py)
    return python


def _package(bundle: str, spec: Spec, work: Path) -> Path:
    """The bundle zipped by scripts/bundles.py with weights of the bundle's default network (trained for one tiny
    epoch here, in the project's own environment)."""
    b = Bundle(f"bundles/{bundle}", spec.tiny)
    b.run(("train",), *b.tiny(), "--output_root", str(work / "train"))
    out = work / "dist"
    run([sys.executable, "scripts/bundles.py", "package", "--bundles", f"[{bundle}]", "--out_dir", str(out),
         "--weights", str(work / "train" / "models" / "std" / "model.pt")])
    return out / f"{bundle}.zip"


def _zoo_checks(bundle: str, root: Path, python: str, env: dict, cwd: Path, tmp_path: Path) -> None:
    """The README's model-zoo checks on the extracted zip, from another directory, offline (the schema shipped in
    docs/, jsonschema declared in metadata.json), before anything else ran in the bundle folder."""
    spec = SPECS[bundle]
    meta, config = str(root / "configs" / "metadata.json"), str(root / "configs" / f"{spec.net_config}.json")
    network = [a for k, v in spec.network.items() for a in (f"--{k}", v)]
    if "verify_metadata" in spec.zoo_checks:
        proc = run([python, "-m", "monai.bundle", "verify_metadata", "--meta_file", meta, "--filepath",
                    str(root / "docs" / "meta_schema.json")], cwd=cwd, python_env=env)
        assert "skipped downloading" in proc.stdout and "metadata is verified with no error" in proc.stdout
    if "verify_net_in_out" in spec.zoo_checks:
        proc = run([python, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", meta,
                    "--config_file", config, *network], cwd=cwd, python_env=env)
        assert "data shape of network is verified with no error" in proc.stdout
    if "ckpt_export" in spec.zoo_checks:
        image = _meta(bundle)["network_data_format"]["inputs"]["image"]
        size = json.loads(spec.network.get("patch_size", json.dumps(image["spatial_shape"])))
        shape = json.dumps([1, image["num_channels"], *size])
        ts = tmp_path / "exported" / "model.ts"
        ts.parent.mkdir()
        run([python, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
             str(root / "models" / "model.pt"), "--meta_file", meta, "--config_file", config, "--use_trace", "True",
             "--input_shape", shape, *network], cwd=cwd, python_env=env)
        assert ts.is_file()
    assert not (cwd / "models").exists() and not list(cwd.iterdir())  # nothing written to the working directory


@pytest.mark.parametrize("bundle", sorted(FAMILY_RUNS))
def test_zip_runs_alone_in_a_fresh_environment(bundle, bare_python, tmp_path):
    spec = SPECS[bundle]
    bundle_zip = _package(bundle, spec, tmp_path / "package")
    elsewhere = tmp_path / "somewhere_else"
    elsewhere.mkdir()
    bare_env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HOME": str(tmp_path)}
    proc = run([bare_python, "-c", "import robust_bundles"], expect_ok=False, cwd=elsewhere, python_env=bare_env)
    assert "No module named 'robust_bundles'" in proc.stdout  # nothing of the project is installed

    run([bare_python, "-m", "monai.bundle", "download", "--name", bundle, "--url", bundle_zip.as_uri(),
         "--bundle_dir", str(tmp_path / "bundles")], cwd=elsewhere, python_env=bare_env)
    root = tmp_path / "bundles" / bundle
    assert (root / "models" / "model.pt").is_file()
    assert (root / "models" / "model.ts").is_file() == spec.torchscript
    b = Bundle(str(root), spec.tiny)
    common = dict(cwd=elsewhere, configs_dir=str(root / "configs"), python=bare_python, python_env=bare_env)
    _zoo_checks(bundle, root, bare_python, bare_env, elsewhere, tmp_path)

    train = b.run(("train",), *b.tiny(), **common)
    assert "SYNTHETIC DATA" in train.stdout and (root / "models" / "std" / "model.pt").is_file()
    b.run(("train", "thresholds"), *b.tiny(), **common)
    b.run(("train", "amat"), *b.tiny(), **common)
    evaluate = [a for k, v in spec.evaluate.items() for a in (f"--{k}", v)]
    b.run(("train", "evaluate", "robustness"), *b.tiny(), "--run_name", "amat", *evaluate, **common)
    report = json.loads((root / "eval" / "amat" / "robustness.json").read_text())
    assert report["settings"]["dataset"]["synthetic"] is True
    network = [a for k, v in spec.network.items() for a in (f"--{k}", v)]
    infer = b.run(("inference",), "--output_dir", str(tmp_path / "pred"), *network, **common)  # the shipped weights
    assert f"Restored the network weights from {root / 'models' / 'model.pt'}" in infer.stdout
    pattern, count = spec.predictions
    assert len(list((tmp_path / "pred").glob(pattern))) == count

    where = run([bare_python, "-c", "import sys; sys.path.insert(1, sys.argv[1]); import robust_bundles; "
                 "print(robust_bundles.__file__)", str(root)], cwd=elsewhere, python_env=bare_env)
    assert where.stdout.strip() == str(root / "robust_bundles" / "__init__.py")

    wrong, right = spec.misspelt
    err = b.run(("train",), f"--{wrong}", "/nowhere", expect_ok=False, **common)
    assert f"did you mean --{right}" in last_error(err)
