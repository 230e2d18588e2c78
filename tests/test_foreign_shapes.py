"""``audit`` and ``robustify`` on bundle shapes that ``../shared/foreign_bundles`` does not hold, written here as a
model-zoo author might (tiny 2D networks, trained with their own config in seconds):

- a bundle whose data items use other keys (``img``/``seg``) and whose trainer and evaluator read them with its own
  ``prepare_batch`` from the bundle's ``scripts/`` (flat YAML ids: ``trainer``, ``evaluator``, ``lossfn``);
- ``ventricular_short_axis_3label``'s data shape with ``renalStructures_CECT_segmentation``'s loss: one NPZ file
  read by ``NPZDictItemDataset``, split into ``Subset`` s, evaluated through a ``CacheDataset`` over the ``Subset``;
  ``DiceLoss(to_onehot_y=True, sigmoid=True, include_background=False)`` on a label of class indices;
- a binary classifier with one logit and ``BCEWithLogitsLoss`` (``pathology_tumor_detection``'s head), its key
  metric ignite's ``Accuracy``;
- the same bundle with the label appended to the image as a second input channel (``AddLabelAsGuidanced``, as the
  model zoo's ``pathology_nuclei_classification``): the attacks change the image channel only.

Each bundle is trained once per module with ``python -m monai.bundle run`` in its own process; the audits run
in-process through the Python API, the robustify through the command line as a user runs it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import forkserver
import pytest
from foreign_data import write_bundle, write_disks

from robust_bundles.foreign.audit import audit

pytestmark = pytest.mark.slow

ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    import os

    return forkserver.run([sys.executable, *args], cwd, {**os.environ, **ENV}, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + (proc.stderr or "")[-4000:]


def trained_bundle(tmp_path_factory, name: str, train_yaml: str, write_data, files: dict | None = None):
    """A bundle ``name`` (``configs/train.yaml`` and ``files``) with data written by ``write_data(folder)``, trained
    with ``python -m monai.bundle run`` in its own process; returns ``(bundle, data)``."""
    tmp = tmp_path_factory.mktemp(name)
    data = write_data(tmp / "data")
    bundle = write_bundle(tmp / name, train_yaml, files)
    _ok(_run(["-m", "monai.bundle", "run", "--config_file", "configs/train.yaml", "--bundle_root", ".",
              "--dataset_dir", str(data)], cwd=bundle))
    return bundle, data


def quick_audit(bundle: Path, data: Path, out: Path, eps: list[float], pgd_steps: int = 3, **kw) -> tuple[dict, dict]:
    """The audit with the quick suite, eps per value, no I-FGSM: ``(audit.json's info, robustness.json's summary)``."""
    info = audit(str(bundle), output_dir=str(out), eps=eps, eps_unit="rms", pgd_steps=pgd_steps, ifgsm_steps=0,
                 attack_suite="quick", dataset_dir=str(data), **kw)
    return info, json.loads((out / "robustness.json").read_text())["summary"]


# ------------------------------------------------------------------------------------ other keys, own prepare_batch
PREPARE_BATCH_PY = '''\
"""The bundle's own batch preparation: its items hold ``img`` and ``seg``, not MONAI's ``image``/``label``."""


class PrepareImgSeg:
    def __call__(self, batchdata, device=None, non_blocking=False, **kwargs):
        return (batchdata["img"].to(device=device, non_blocking=non_blocking),
                batchdata["seg"].to(device=device, non_blocking=non_blocking))
'''

KEYS_YAML = """\
imports:
  - $import glob
bundle_root: .
dataset_dir: /nonexistent
images: $list(sorted(glob.glob(@dataset_dir + '/images/*.nii.gz')))
labels: $list(sorted(glob.glob(@dataset_dir + '/labels/*.nii.gz')))
pairs: "$[{'img': i, 'seg': l} for i, l in zip(@images, @labels)]"
device: $torch.device('cpu')
num_epochs: 40
net:
  _target_: UNet
  spatial_dims: 2
  in_channels: 1
  out_channels: 2
  channels: [8, 16]
  strides: [2]
  num_res_units: 1
lossfn: {_target_: DiceLoss, to_onehot_y: true, softmax: true}
optim: {_target_: torch.optim.Adam, params: $@net.parameters(), lr: 0.01}
batcher: {_target_: scripts.batch.PrepareImgSeg}
xforms:
  _target_: Compose
  transforms:
    - {_target_: LoadImaged, keys: [img, seg], ensure_channel_first: true}
    - {_target_: ScaleIntensityd, keys: img}
train_ds: {_target_: Dataset, data: "$@pairs[:-4]", transform: "@xforms"}
eval_ds: {_target_: Dataset, data: "$@pairs[-4:]", transform: "@xforms"}
evaluator:
  _target_: SupervisedEvaluator
  device: "@device"
  val_data_loader: {_target_: DataLoader, dataset: "@eval_ds", batch_size: 1}
  network: "@net"
  prepare_batch: "@batcher"
  key_val_metric:
    dice: {_target_: MeanDice, include_background: false,
           output_transform: "$monai.handlers.from_engine(['pred', 'label'])"}
  postprocessing:
    _target_: Compose
    transforms:
      - {_target_: AsDiscreted, keys: [pred, label], argmax: [true, false], to_onehot: 2}
trainer:
  _target_: SupervisedTrainer
  max_epochs: "@num_epochs"
  device: "@device"
  train_data_loader: {_target_: DataLoader, dataset: "@train_ds", batch_size: 4, shuffle: true}
  network: "@net"
  loss_function: "@lossfn"
  optimizer: "@optim"
  prepare_batch: "@batcher"
  train_handlers:
    - {_target_: ValidationHandler, validator: "@evaluator", interval: "@num_epochs", epoch_level: true}
initialize: [$monai.utils.set_determinism(seed=0)]
run:
  - $@trainer.run()
  - "$torch.save(@net.state_dict(), @bundle_root + '/models/model.pt')"
"""


@pytest.fixture(scope="module")
def keys_bundle(tmp_path_factory):
    """The img/seg bundle with its own prepare_batch, trained with its own train.yaml."""
    return trained_bundle(tmp_path_factory, "keys_bundle", KEYS_YAML, write_disks,
                          {"scripts/__init__.py": "", "scripts/batch.py": PREPARE_BATCH_PY})


def test_audit_uses_the_evaluators_own_prepare_batch_and_keys(keys_bundle, tmp_path):
    bundle, data = keys_bundle
    out = tmp_path / "audit"
    info = audit(str(bundle), output_dir=str(out), eps=[0.05, 0.1], eps_unit="rms", pgd_steps=3, ifgsm_steps=2,
                 attack_suite="quick", dataset_dir=str(data))
    assert info["parts"]["prepare_batch"] == {"id": "batcher", "type": "PrepareImgSeg"}
    assert info["parts"]["loss"]["id"] == "lossfn" and info["parts"]["data"]["cases"] == 4
    rows = list(csv.DictReader((out / "robustness.csv").open()))
    # the samples are named from the file name of the item's image under its own key ('img')
    assert sorted({r["case"] for r in rows}) == ["disk_08", "disk_09", "disk_10", "disk_11"]
    assert "576 values each" in info["eps_units"]  # counted on the 'img' tensor (24 x 24)
    summary = json.loads((out / "robustness.json").read_text())["summary"]
    # the metric compares with the target the bundle's prepare_batch gives the loss ('seg'): the model learned
    assert summary["clean"] > 0.7, summary
    assert summary["attacks"]["PGD"]["0.1"] < summary["clean"]


def _pgd(bundle: Path, data: Path, model: Path, out: Path, eps: float = 0.1) -> tuple[float, float]:
    _, summary = quick_audit(bundle, data, out, [eps], pgd_steps=5, model_path=str(model))
    return summary["clean"], summary["attacks"]["PGD"][f"{eps:g}"]


def test_robustify_through_the_bundles_prepare_batch_gains_and_never_writes_the_bundle(keys_bundle, tmp_path):
    import hashlib

    bundle, data = keys_bundle
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bundle.rglob("*")) if p.is_file()}
    out = tmp_path / "robust"
    _ok(_run(["-m", "robust_bundles", "robustify", str(bundle), "--dataset_dir", str(data), "--output_dir", str(out),
              "--epochs", "20", "--pgd_steps", "3", "--eps_unit", "rms", "--expansion_step", "0.1",
              "--threshold_rule", "mean_std"], cwd=tmp_path))
    info = json.loads((out / "robustify.json").read_text())
    # 24 x 24 inputs, counted on what the bundle's prepare_batch gives the network ('img')
    assert info["input_values"] == 576
    # the bundle's run list saves the model into models/ after the training: robustify leaves that step out
    assert info["skipped_run_steps"] == ["$torch.save(@net.state_dict(), @bundle_root + '/models/model.pt')"]
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bundle.rglob("*")) if p.is_file()
             and "__pycache__" not in p.parts}
    assert after == {p: h for p, h in before.items() if "__pycache__" not in p.parts}
    start = _pgd(bundle, data, bundle / "models" / "model.pt", tmp_path / "a0")
    robust = _pgd(bundle, data, out / "checkpoint.pt", tmp_path / "a1")
    assert robust[1] > start[1] + 0.03, (start, robust)  # PGD-5 Dice at rms eps 0.1: 0.42 -> 0.50 when written
    assert robust[0] > 0.9  # the clean Dice stays


def test_weights_of_another_network_name_the_override_fix(keys_bundle, tmp_path):
    """The brief zoo trainings change network sizes with overrides (valve_landmarks' in_shape): an audit without
    them builds another network; the message says which parameters differ and how to build the trained one."""
    bundle, data = keys_bundle
    with pytest.raises(ValueError, match=r"net#channels|2 parameters differ|--override") as e:
        audit(str(bundle), output_dir=str(tmp_path / "a"), dataset_dir=str(data), override={"net#channels": [4, 8]})
    assert "give the config ids the training changed" in str(e.value) and "model.pt" in str(e.value)



# ------------------------------------------------------------------ NPZ arrays in Subsets, sigmoid loss, index label
NPZ_YAML = """\
bundle_root: .
dataset_dir: /nonexistent
device: $torch.device('cpu')
num_epochs: 30
npz:
  _target_: NPZDictItemDataset
  npzfile: $@dataset_dir + '/disks.npz'
  keys: {images: image, labels: label}
parts: "$monai.data.partition_dataset(list(range(len(@npz))), ratios=[2, 1])"
train_sub: $torch.utils.data.Subset(@npz, @parts[0])
eval_sub: $torch.utils.data.Subset(@npz, @parts[1])
network_def:
  _target_: UNet
  spatial_dims: 2
  in_channels: 1
  out_channels: 2
  channels: [8, 16]
  strides: [2]
  num_res_units: 1
network: $@network_def.to(@device)
loss: {_target_: DiceLoss, to_onehot_y: true, sigmoid: true, include_background: false}
optimizer: {_target_: torch.optim.Adam, params: $@network.parameters(), lr: 0.01}
train_transforms: {_target_: Compose, transforms: [{_target_: EnsureTyped, keys: [image, label]}]}
eval_transforms: "%train_transforms"
evaluator:
  _target_: SupervisedEvaluator
  device: "@device"
  val_data_loader:
    _target_: DataLoader
    dataset: {_target_: CacheDataset, data: "@eval_sub", transform: "@eval_transforms", progress: false}
  network: "@network"
  key_val_metric:
    val_mean_dice: {_target_: MeanDice, include_background: false,
                    output_transform: "$monai.handlers.from_engine(['pred', 'label'])"}
trainer:
  _target_: SupervisedTrainer
  max_epochs: "@num_epochs"
  device: "@device"
  train_data_loader:
    _target_: DataLoader
    dataset: {_target_: Dataset, data: "@train_sub", transform: "@train_transforms"}
    batch_size: 4
    shuffle: true
  network: "@network"
  loss_function: "@loss"
  optimizer: "@optimizer"
initialize: [$monai.utils.set_determinism(seed=0)]
run:
  - $@trainer.run()
  - "$torch.save(@network.state_dict(), @bundle_root + '/models/model.pt')"
"""


def write_disks_npz(folder: Path, n: int = 12, size: int = 24) -> Path:
    """``disks.npz``: images (N, 1, size, size) and their disk labels as class indices (N, 1, size, size)."""
    import nibabel as nib
    import numpy as np

    src = write_disks(folder / "nifti", n, size)
    images = np.stack([nib.load(str(f)).get_fdata()[None] for f in sorted((src / "images").glob("*.nii.gz"))])
    labels = np.stack([nib.load(str(f)).get_fdata()[None] for f in sorted((src / "labels").glob("*.nii.gz"))])
    np.savez(folder / "disks.npz", images=images.astype(np.float32), labels=labels.astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def npz_bundle(tmp_path_factory):
    return trained_bundle(tmp_path_factory, "npz_bundle", NPZ_YAML, write_disks_npz)


def test_audit_of_npz_subsets_through_a_cache_dataset_with_a_sigmoid_index_label_loss(npz_bundle, tmp_path):
    bundle, data = npz_bundle
    out = tmp_path / "audit"
    info, summary = quick_audit(bundle, data, out, [0.1])
    assert info["parts"]["data"]["id"] == "eval_sub" and info["parts"]["data"]["cases"] == 4
    assert info["parts"]["metric"]["description"] == "multi-label (sigmoid) Dice"
    rows = list(csv.DictReader((out / "robustness.csv").open()))
    # the evaluation Subset holds positions 8-11 of the NPZ file: the samples are named by them
    assert sorted({r["case"] for r in rows}) == ["item_10", "item_11", "item_8", "item_9"]
    # Dice of channel 1 (the disk) alone, as the loss leaves out the background: the model learned it
    assert summary["clean"] > 0.7, summary
    assert summary["attacks"]["PGD"]["0.1"] < summary["clean"]


# ------------------------------------------------------------------------------- one logit and BCEWithLogitsLoss
BINARY_YAML = """\
imports:
  - $import glob
bundle_root: .
dataset_dir: /nonexistent
device: $torch.device('cpu')
images: $list(sorted(glob.glob(@dataset_dir + '/images/*.nii.gz')))
items: "$[{'image': f, 'label': [float(i % 2)]} for i, f in enumerate(@images)]"
network_def: {_target_: Classifier, in_shape: [1, 24, 24], classes: 1, channels: [8, 16], strides: [2, 2],
              num_res_units: 0}
network: $@network_def.to(@device)
loss: {_target_: torch.nn.BCEWithLogitsLoss}
optimizer: {_target_: torch.optim.Adam, params: $@network.parameters(), lr: 0.01}
transforms:
  _target_: Compose
  transforms:
    - {_target_: LoadImaged, keys: image, ensure_channel_first: true}
    - {_target_: EnsureTyped, keys: label, dtype: $torch.float32}
validate:
  evaluator:
    _target_: SupervisedEvaluator
    device: "@device"
    val_data_loader:
      _target_: DataLoader
      dataset: {_target_: Dataset, data: "$@items[-6:]", transform: "@transforms"}
    network: "@network"
    key_val_metric:
      acc: {_target_: ignite.metrics.Accuracy,
            output_transform: "$lambda x: ((x[0]['pred'] > 0).float(), x[0]['label'])"}
train:
  trainer:
    _target_: SupervisedTrainer
    max_epochs: 40
    device: "@device"
    train_data_loader:
      _target_: DataLoader
      dataset: {_target_: Dataset, data: "$@items[:-6]", transform: "@transforms"}
      batch_size: 6
      shuffle: true
    network: "@network"
    loss_function: "@loss"
    optimizer: "@optimizer"
initialize: [$monai.utils.set_determinism(seed=0)]
run:
  - $@train#trainer.run()
  - "$torch.save(@network.state_dict(), @bundle_root + '/models/model.pt')"
"""


def write_disks_or_not(folder: Path, n: int = 24, size: int = 24) -> Path:
    """``images/case_<i>.nii.gz``: a bright disk in noise for odd i, noise alone for even i."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(1)
    (folder / "images").mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= 25 if i % 2 else np.zeros((size, size), bool)
        img = (rng.normal(0.3, 0.15, (size, size)) + 0.6 * disk).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(folder / "images" / f"case_{i:02d}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def binary_bundle(tmp_path_factory):
    return trained_bundle(tmp_path_factory, "binary_bundle", BINARY_YAML, write_disks_or_not)


def test_audit_of_a_one_logit_classifier(binary_bundle, tmp_path):
    bundle, data = binary_bundle
    info, summary = quick_audit(bundle, data, tmp_path / "audit", [0.1, 0.3])
    assert info["parts"]["metric"]["kind"] == "accuracy"
    assert info["parts"]["metric"]["description"] == "accuracy (sigmoid outputs)"
    assert summary["clean"] == 1.0, summary  # disk or not: the sign of the logit is right on all 6
    assert summary["attacks"]["PGD"]["0.3"] < summary["clean"]


# ------------------------------------------------------------------------- a channel made from the label (guidance)
GUIDED_YAML = KEYS_YAML.replace("in_channels: 1", "in_channels: 2").replace(
    "    - {_target_: ScaleIntensityd, keys: img}\n",
    "    - {_target_: ScaleIntensityd, keys: img}\n"
    "    - {_target_: monai.apps.nuclick.transforms.AddLabelAsGuidanced, keys: img, source: seg}\n")
"""The img/seg bundle with the label appended to the image as a second input channel, as the model zoo's
``pathology_nuclei_classification`` does (and the interactive bundles with click guidance): an adversary perturbs the
image, not the label, so the audit attacks channel 0 unless ``--attack_channels`` says otherwise."""


@pytest.fixture(scope="module")
def guided_bundle(tmp_path_factory):
    """The image + label-mask bundle, trained with its own train.yaml."""
    assert "AddLabelAsGuidanced" in GUIDED_YAML and "in_channels: 2" in GUIDED_YAML
    return trained_bundle(tmp_path_factory, "guided_bundle", GUIDED_YAML, write_disks,
                          {"scripts/__init__.py": "", "scripts/batch.py": PREPARE_BATCH_PY})


def _guided_audit(bundle: Path, data: Path, out: Path, **kw) -> tuple[dict, dict]:
    return quick_audit(bundle, data, out, [0.5], pgd_steps=5, **kw)


def test_audit_attacks_the_image_channel_only_unless_told(guided_bundle, tmp_path):
    bundle, data = guided_bundle
    info, image_only = _guided_audit(bundle, data, tmp_path / "auto")
    assert info["attack_channels"]["channels"] == [0]
    assert "AddLabelAsGuidanced appends the label as a mask to 'img' after its 1 image channel" in \
        info["attack_channels"]["why"]
    assert "576 values each" in info["eps_units"]  # the 24 x 24 image channel, not the 1,152 values of the input
    assert "**Attacked channels.** [0]" in (tmp_path / "auto" / "audit.md").read_text()
    assert json.loads((tmp_path / "auto" / "robustness.json").read_text())["settings"]["attack_channels"] == [0]
    # the flag overrides the detection: every channel, the label mask included, which the network leans on
    info_all, every = _guided_audit(bundle, data, tmp_path / "all", attack_channels="all")
    assert info_all["attack_channels"]["channels"] == "all" and "1,152 values each" in info_all["eps_units"]
    assert image_only["clean"] == every["clean"] > 0.9
    # PGD-5 Dice at rms 0.5 when written: image channel 0.63, every channel 0.00 (clean 0.996)
    assert every["attacks"]["PGD"]["0.5"] < image_only["attacks"]["PGD"]["0.5"] - 0.1, (image_only, every)


def test_robustify_passes_the_detected_channels_to_the_training_attack(guided_bundle, tmp_path):
    bundle, data = guided_bundle
    out = tmp_path / "robust"
    _ok(_run(["-m", "robust_bundles", "robustify", str(bundle), "--dataset_dir", str(data), "--output_dir", str(out),
              "--epochs", "1", "--pgd_steps", "2", "--eps_unit", "rms", "--expansion_step", "0.1"], cwd=tmp_path))
    info = json.loads((out / "robustify.json").read_text())
    assert info["attack_channels"]["channels"] == [0] and info["input_values"] == 576  # rms over channel 0 only
    assert '--robust#attack_channels "[0]"' in info["command"] and (out / "checkpoint.pt").is_file()
    # the AMAT iteration of the stacked configs, as the run built it, attacks channel 0 only
    from monai.bundle import ConfigParser

    from robust_bundles.attacks import ChannelAttack
    from robust_bundles.foreign.robustify import overlay_files

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.yaml"), *overlay_files("amat", out), str(out / "bundle_wiring.json")])
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(data), "robust#attack_channels": [0],
                   "robust#thresholds_file": str(out / "thresholds.json"), "robust#output_dir": str(out)})
    attack = parser.get_parsed_content("robust#method_iteration").attack
    assert isinstance(attack, ChannelAttack) and attack.channels == [0] and attack.steps == 10
