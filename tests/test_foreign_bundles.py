"""Foreign MONAI bundles: ``robust_bundles audit`` and ``robustify`` on a tiny 2D bundle written here (YAML configs,
SupervisedTrainer + DiceCELoss, nothing of this library) and on the real model-zoo spleen bundle (a temporary copy of
``../shared/foreign_bundles/spleen_ct_segmentation``, unchanged, on small synthetic CT-like volumes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import forkserver
import pytest
import torch
from foreign_data import write_bundle, write_ct_cases, write_disks
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from robust_bundles.foreign.audit import (
    CheckpointedNetwork,
    audit,
    case_of,
    masking_checks,
)
from robust_bundles.foreign.overlay import CaseIds
from robust_bundles.foreign.parts import MissingPart

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = Path(os.environ.get("ROBUST_BUNDLES_FOREIGN_BUNDLES", ROOT / ".." / "shared" / "foreign_bundles"))
SPLEEN = FOREIGN / "spleen_ct_segmentation"
needs_spleen = pytest.mark.skipif(
    not (SPLEEN / "configs" / "train.json").is_file(),
    reason=f"the model-zoo spleen bundle is not at {SPLEEN} (../shared/foreign_bundles; or set "
           "ROBUST_BUNDLES_FOREIGN_BUNDLES)",
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(args, cwd, timeout=600):
    """``python <args>``: a ``-m monai.bundle`` or ``-m robust_bundles`` run is forked from the tests' fork server
    (tests/forkserver.py: its own process, without importing MONAI again)."""
    return forkserver.run([sys.executable, *args], cwd, ENV, timeout=timeout, stderr_apart=True)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------------------- units
def test_case_ids_from_the_image_file_name():
    assert case_of("/data/imagesTr/spleen_12.nii.gz") == "spleen_12"
    assert case_of(["/d/a.png"]) == "a"
    ids = CaseIds([{"image": "/d/imagesTr/s_0.nii.gz"}, {"image": "/d/imagesTr/s_1.nii.gz"}])
    assert len(ids) == 2
    img = MetaTensor(torch.zeros(3, 1, 4, 4))
    img.meta["filename_or_obj"] = ["/x/s_1.nii.gz", "/x/s_0.nii.gz", "/x/s_1.nii.gz"]  # two crops of case 1
    assert ids({"image": img}).tolist() == [1, 0, 1]
    img.meta["filename_or_obj"] = ["/x/s_9.nii.gz"] * 3
    with pytest.raises(KeyError, match="s_9"):
        ids({"image": img})
    with pytest.raises(ValueError, match="share file names"):
        CaseIds([{"image": "/a/s_0.nii.gz"}, {"image": "/b/s_0.nii.gz"}])


def test_attack_gradient_flows_through_the_whole_sliding_window():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1)).eval()
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2, overlap=0.25)
    x = torch.rand(1, 1, 20, 18, 16, requires_grad=True)
    out = inferer(x, net)
    assert out.shape == (1, 2, 20, 18, 16)
    (g,) = torch.autograd.grad(out[:, 1].sum(), x)
    # every corner of the volume (different windows) gets gradient: not one crop only
    for i in (0, -1):
        for j in (0, -1):
            for k in (0, -1):
                assert g[0, 0, i, j, k].abs() > 0
    # the memory fallback (activation checkpointing per window batch) gives the same gradient
    x2 = x.detach().clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(inferer(x2, CheckpointedNetwork(net))[:, 1].sum(), x2)
    assert torch.allclose(g, g2, atol=1e-6)


def test_masking_checks_fire_on_weak_attacks():
    ok = {"metric": "dice", "attacks": {"PGD": {"1": 0.8, "2": 0.6, "avg": 0.7}, "noise": {"1": 0.9, "2": 0.9}}}
    assert masking_checks(ok) == []
    weak = {"metric": "dice", "attacks": {"PGD": {"1": 0.7, "2": 0.9, "avg": 0.8}, "noise": {"1": 0.9, "2": 0.9}}}
    msgs = masking_checks(weak)
    assert len(msgs) == 2
    assert "not worse than random noise" in msgs[0] and "eps 2" in msgs[0]
    assert "weaker at eps 2" in msgs[1]


# ------------------------------------------------------------------------------------------------ a tiny 2D bundle
TRAIN_YAML = """\
imports:
  - $import glob
bundle_root: .
ckpt_dir: $@bundle_root + '/models'
dataset_dir: /nonexistent
images: $list(sorted(glob.glob(@dataset_dir + '/images/*.nii.gz')))
labels: $list(sorted(glob.glob(@dataset_dir + '/labels/*.nii.gz')))
epochs: 40
device: $torch.device('cpu')
network_def:
  _target_: UNet
  spatial_dims: 2
  in_channels: 1
  out_channels: 2
  channels: [8, 16]
  strides: [2]
  num_res_units: 1
network: $@network_def.to(@device)
loss:
  _target_: DiceCELoss
  to_onehot_y: true
  softmax: true
  batch: true
optimizer:
  _target_: torch.optim.Adam
  params: $@network.parameters()
  lr: 0.01
train:
  preprocessing:
    _target_: Compose
    transforms:
      - {_target_: LoadImaged, keys: [image, label], ensure_channel_first: true}
      - {_target_: ScaleIntensityd, keys: image}
  dataset:
    _target_: Dataset
    data: "$[{'image': i, 'label': l} for i, l in zip(@images[:-4], @labels[:-4])]"
    transform: "@train#preprocessing"
  dataloader: {_target_: DataLoader, dataset: "@train#dataset", batch_size: 4, shuffle: true, num_workers: 0}
  inferer: {_target_: SimpleInferer}
  handlers: []
  trainer:
    _target_: SupervisedTrainer
    max_epochs: "@epochs"
    device: "@device"
    train_data_loader: "@train#dataloader"
    network: "@network"
    loss_function: "@loss"
    optimizer: "@optimizer"
    inferer: "@train#inferer"
    train_handlers: "@train#handlers"
validate:
  preprocessing: "%train#preprocessing"
  dataset:
    _target_: Dataset
    data: "$[{'image': i, 'label': l} for i, l in zip(@images[-4:], @labels[-4:])]"
    transform: "@validate#preprocessing"
  inferer: {_target_: SimpleInferer}
  key_metric:
    val_mean_dice: {_target_: MeanDice, include_background: false}
initialize:
  - $monai.utils.set_determinism(seed=0)
run:
  - $@train#trainer.run()
  - "$torch.save(@network.state_dict(), @ckpt_dir + '/model.pt')"
"""


@pytest.fixture(scope="module")
def bundle2d(tmp_path_factory):
    """The tiny 2D bundle, trained with its own train.yaml (40 epochs of 2 iterations, a few seconds)."""
    tmp = tmp_path_factory.mktemp("b2d")
    data = write_disks(tmp / "data")
    bundle = write_bundle(tmp / "disk_bundle", TRAIN_YAML)
    _ok(_run(["-m", "monai.bundle", "run", "--config_file", "configs/train.yaml", "--bundle_root", ".",
              "--dataset_dir", str(data)], cwd=bundle))
    assert (bundle / "models" / "model.pt").is_file()
    return bundle, data


@pytest.mark.slow
def test_audit_2d_bundle_yaml_datalist_rms(bundle2d, tmp_path):
    bundle, data = bundle2d
    items = [{"image": f"images/disk_{i:02d}.nii.gz", "label": f"labels/disk_{i:02d}.nii.gz"} for i in (8, 9, 10)]
    (data / "datalist.json").write_text(json.dumps({"validation": items}))
    out = tmp_path / "audit"
    info = audit(str(bundle), output_dir=str(out), eps=[0.05, 0.1], eps_unit="rms", datalist=str(data / "datalist.json"),
                 pgd_steps=5, ifgsm_steps=3, dataset_dir=str(data), surrogate=str(bundle / "models" / "model.pt"))
    assert info["parts"]["inferer"]["type"] == "SimpleInferer"
    assert info["parts"]["loss"]["per_sample_terms"] == ["dice", "ce"]
    assert info["parts"]["data"]["cases"] == 3
    assert "per-value RMS" in info["eps_units"]
    rows = list(__import__("csv").DictReader((out / "robustness.csv").open()))
    assert sorted({r["case"] for r in rows}) == ["disk_08", "disk_09", "disk_10"]
    # rms eps: the attacked L2 norm is eps * sqrt(24 * 24 values)
    pgd = [r for r in rows if r["attack"] == "PGD" and float(r["eps"]) == 0.1]
    assert all(float(r["norm"]) == pytest.approx(0.1 * 24, rel=1e-4) for r in pgd)
    summary = json.loads((out / "robustness.json").read_text())["summary"]
    assert summary["clean"] > 0.7, summary  # the bundle learned the disks
    assert summary["attacks"]["PGD"]["0.1"] < summary["clean"]
    # the audit's default suite, standard: PGD, APGD on the loss and on each of its terms, noise; worst case over all
    # (and the transfer check from the --surrogate model, here the bundle's own weights)
    assert list(summary["attacks"]) == ["PGD", "APGD", "APGD_dice", "APGD_ce", "noise", "transfer"]
    assert info["attack_suite"] == "standard" and "Suite `standard`" in (out / "audit.md").read_text()
    assert summary["worst"]["0.1"] <= min(summary["attacks"][a]["0.1"] for a in summary["attacks"]) + 1e-9
    assert sum(summary["worst_found_by"]["0.1"].values()) >= 3 and summary["cost"]["relative_to_PGD"] > 4
    for f in ("audit.md", "audit.json", "robustness.md", "metric_vs_eps.png"):
        assert (out / f).is_file()


@pytest.mark.slow
def test_audit_names_the_missing_key_and_its_override(bundle2d, tmp_path):
    bundle, data = bundle2d
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    cfg = (broken / "configs" / "train.yaml").read_text().replace("  inferer: {_target_: SimpleInferer}\n  key_metric",
                                                                     "  key_metric")
    (broken / "configs" / "train.yaml").write_text(cfg)
    with pytest.raises(MissingPart, match=r"inferer.*'validate#inferer'.*--override"):
        audit(str(broken), output_dir=str(tmp_path / "o"), dataset_dir=str(data))
    # the command line ends with the cause and the fix (here: an override of an id the bundle does not have)
    proc = _run(["-m", "robust_bundles", "audit", str(bundle), "--output_dir", str(tmp_path / "o2"),
                 "--validate#infrer#roi_size", "[8, 8]"], cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR (cause): KeyError") and "validate#infrer" in last and "did you mean" in last


@pytest.mark.slow
def test_robustify_2d_vat_by_overlay(bundle2d, tmp_path):
    bundle, data = bundle2d
    before = (bundle / "models" / "model.pt").read_bytes()
    out = tmp_path / "vat"
    # eps as a per-value RMS: 0.02 x sqrt(1 x 24 x 24 values of a training image) = an L2 norm of 0.48
    proc = _run(["-m", "robust_bundles", "robustify", str(bundle), "--method", "vat", "--epochs", "2",
                 "--pgd_steps", "2", "--eps_unit", "rms", "--train_eps", "0.02", "--output_dir", str(out),
                 "--dataset_dir", str(data)], cwd=tmp_path)
    _ok(proc)
    info = json.loads((out / "robustify.json").read_text())
    assert (info["eps_unit"], info["input_values"]) == ("rms", 576)
    assert info["noise_l2"]["train_eps"] == pytest.approx(0.48)
    assert "0.48" in (out / "robustify.json").read_text().split('"command"')[1].split("train_eps")[1][:30]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 2 * ckpt["trainer"]["epoch_length"]  # 2 epochs
    assert (bundle / "models" / "model.pt").read_bytes() == before  # the bundle is untouched


# --------------------------------------------------------------------------------------------- the model-zoo spleen
SPLEEN_OVERRIDES = {
    "train#random_transforms#0#spatial_size": [32, 32, 32],
    "train#random_transforms#0#num_samples": 2,
    "validate#inferer#roi_size": [32, 32, 32],
    "train#dataset#num_workers": 0,
    "train#dataloader#num_workers": 0,
    "validate#dataloader#num_workers": 0,
    "train#trainer#amp": False,
    "validate#evaluator#amp": False,
    "train#dataset#data": "$[{'image': i, 'label': l} for i, l in zip(@images[:-2], @labels[:-2])]",
    "validate#dataset#data": "$[{'image': i, 'label': l} for i, l in zip(@images[-2:], @labels[-2:])]",
}
AUDIT_OVERRIDES = {k: SPLEEN_OVERRIDES[k] for k in ("validate#inferer#roi_size", "validate#dataset#data")}


@pytest.fixture(scope="module")
def spleen(tmp_path_factory):
    """A temporary copy of the spleen bundle, trained briefly with its own train.json (overrides only) on 6
    synthetic 48 x 48 x 40 CT-like volumes (4 training, 2 validation)."""
    if not (SPLEEN / "configs" / "train.json").is_file():
        pytest.skip(f"the model-zoo spleen bundle is not at {SPLEEN}")
    tmp = tmp_path_factory.mktemp("spleen")
    bundle = tmp / "spleen_ct_segmentation"
    shutil.copytree(SPLEEN, bundle)
    data = write_ct_cases(tmp / "Task09_Spleen")
    args = ["-m", "monai.bundle", "run", "--config_file", "configs/train.json", "--bundle_root", ".", "--dataset_dir",
            str(data), "--epochs", "40"]
    for k, v in SPLEEN_OVERRIDES.items():
        args += [f"--{k}", v if isinstance(v, str) else repr(v)]
    log = _ok(_run(args, cwd=bundle))
    best = float(re.findall(r"val_mean_dice best value: ([0-9.]+)", log)[-1])
    assert (bundle / "models" / "model.pt").is_file()
    return bundle, data, best


@needs_spleen
@pytest.mark.slow
def test_spleen_audit_through_the_sliding_window(spleen, tmp_path):
    bundle, data, best = spleen
    out = tmp_path / "audit"
    proc = _run(["-m", "robust_bundles", "audit", str(bundle), "--output_dir", str(out), "--eps", "[1, 2, 4]",
                 "--pgd_steps", "3", "--ifgsm_steps", "2", "--attack_suite", "quick", "--dataset_dir", str(data),
                 "--override", repr(AUDIT_OVERRIDES)], cwd=tmp_path)
    _ok(proc)
    info = json.loads((out / "audit.json").read_text())
    assert info["parts"]["inferer"] == {"id": "validate#inferer", "type": "SlidingWindowInferer"}
    assert info["parts"]["network"]["type"] == "UNet" and info["parts"]["metric"]["target"] == "MeanDice"
    assert info["synthetic"] is True
    summary = json.loads((out / "robustness.json").read_text())["summary"]
    # the clean Dice is the bundle's own validation Dice (MeanDice without background, the same two cases)
    assert summary["clean"] == pytest.approx(best, abs=1e-4)
    for attack in ("PGD", "IFGSM", "noise"):
        assert set(summary["attacks"][attack]) == {"1", "2", "4", "avg"}
    assert summary["attacks"]["PGD"]["4"] < summary["attacks"]["noise"]["4"] < summary["clean"] + 0.01
    md = (out / "audit.md").read_text()
    assert "SYNTHETIC DATA" in md and "SlidingWindowInferer" in md and "| dice (higher is better) |" in md
    rows = (out / "robustness.csv").read_text()
    assert "spleen_4" in rows and "spleen_5" in rows


@needs_spleen
@pytest.mark.slow
def test_spleen_amat_fine_tune_by_overlay_gains_robustness(spleen, tmp_path):
    bundle, data, _ = spleen
    out = tmp_path / "amat"
    _ok(_run(["-m", "robust_bundles", "robustify", str(bundle), "--output_dir", str(out), "--epochs", "15",
              "--pgd_steps", "3", "--expansion_step", "2", "--threshold_rule", "mean_std", "--dataset_dir", str(data),
              "--override", repr(SPLEEN_OVERRIDES)], cwd=tmp_path))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "margins", "trainer"} <= set(ckpt)
    margins = ckpt["margins"]
    assert margins["margins"].shape == (4,)  # one margin per training case, shared by its random crops
    th = json.loads((out / "thresholds.json").read_text())
    assert th["term_names"] == ["dice", "ce"] and th["num_samples"] == 8  # 4 cases x 2 crops
    results = {}
    for name, model in (("std", None), ("amat", str(out / "checkpoint.pt"))):
        info = audit(str(bundle), output_dir=str(tmp_path / f"audit_{name}"), eps=[4.0], pgd_steps=5,
                     ifgsm_steps=0, model_path=model, dataset_dir=str(data), override=AUDIT_OVERRIDES,
                     attack_suite="quick")
        results[name] = json.loads(Path(info["files"]["robustness_json"]).read_text())["summary"]
    # measured: PGD-5 Dice at eps 4 0.70 (the bundle's model) -> 0.83 (AMAT, 15 epochs), clean 0.956 -> 0.960
    assert results["amat"]["attacks"]["PGD"]["4"] > results["std"]["attacks"]["PGD"]["4"] + 0.05, results
    assert results["amat"]["clean"] > results["std"]["clean"] - 0.02, results


@pytest.mark.slow
def test_robustify_2d_amat_resume_is_exact(bundle2d, tmp_path):
    """AMAT 2 epochs in one go equals 1 epoch, then --resume to 2 (weights, margins, optimizer), bit for bit."""
    bundle, data = bundle2d
    common = ["-m", "robust_bundles", "robustify", str(bundle), "--pgd_steps", "2", "--expansion_step", "0.05",
              "--threshold_rule", "mean_std", "--dataset_dir", str(data)]
    _ok(_run([*common, "--epochs", "2", "--output_dir", str(tmp_path / "a")], cwd=tmp_path))
    _ok(_run([*common, "--epochs", "1", "--output_dir", str(tmp_path / "b")], cwd=tmp_path))
    log = _ok(_run([*common, "--epochs", "2", "--output_dir", str(tmp_path / "b"), "--resume", "True"], cwd=tmp_path))
    assert "checkpoint.pt" in json.loads((tmp_path / "b" / "robustify.json").read_text())["resumed_from"], log[-2000:]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 2 * a["trainer"]["epoch_length"]
    assert a["margins"]["margins"].shape == (8,)  # the 8 training images, one margin each
    assert torch.equal(a["margins"]["margins"], b["margins"]["margins"])
    assert a["margins"]["margins"].max() > 0.05  # some margin expanded: the comparison is not trivial
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


@pytest.mark.slow
def test_robustify_seed_makes_a_bundle_without_its_own_seed_repeatable(bundle2d, tmp_path):
    """A bundle that does not seed itself (no set_determinism in its initialize list; shuffling, PGD random starts):
    robustify twice with the same --seed writes the same weights (without the seed, the shuffling differs)."""
    bundle, data = bundle2d
    unseeded = tmp_path / "unseeded_bundle"
    (unseeded / "configs").mkdir(parents=True)
    (unseeded / "configs" / "train.yaml").write_text(
        TRAIN_YAML.replace("initialize:\n  - $monai.utils.set_determinism(seed=0)\n", "initialize: []\n"))
    assert "set_determinism" not in (unseeded / "configs" / "train.yaml").read_text()
    common = ["-m", "robust_bundles", "robustify", str(unseeded), "--model_path", str(bundle / "models" / "model.pt"),
              "--pgd_steps", "2", "--expansion_step", "0.05", "--threshold_rule", "mean_std", "--epochs", "1",
              "--dataset_dir", str(data)]
    for out in "ab":
        _ok(_run([*common, "--seed", "3", "--output_dir", str(tmp_path / out)], cwd=tmp_path))
    a, b = (torch.load(tmp_path / out / "checkpoint.pt", weights_only=True)["model"] for out in "ab")
    start = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert any(not torch.equal(v, start[k]) for k, v in a.items())  # it trained: equal runs are not trivially equal
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
    assert json.loads((tmp_path / "a" / "robustify.json").read_text())["seed"] == 3
