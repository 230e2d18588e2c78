"""The eight model-zoo bundles of ``../shared/foreign_bundles``, each trained briefly with its own train config (a
temporary copy, unchanged; command-line overrides only) on the synthetic data of :mod:`foreign_zoo.data`.

:func:`trained` trains a bundle once per cache key (the bundle's files, its spec here, the data writer's source and
the MONAI version) into a cache folder shared by the test session's xdist workers (and by later sessions of the same
pytest temp root), guarded by a file lock: the second worker waits for the first and reuses its result.

Every spec names the exact overrides a user needs to train that bundle on a CPU in seconds, and why.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import forkserver
from filelock import FileLock

from . import data as zoo_data

ROOT = Path(__file__).resolve().parents[2]
FOREIGN = Path(os.environ.get("ROBUST_BUNDLES_FOREIGN_BUNDLES", ROOT / ".." / "shared" / "foreign_bundles"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
NO_WORKERS = {"train#dataloader#num_workers": 0, "validate#dataloader#num_workers": 0}


@dataclass(frozen=True)
class ZooBundle:
    """One model-zoo bundle and how to train it briefly.

    Attributes:
        name: its folder in ``../shared/foreign_bundles``.
        kind: ``segmentation``, ``classification``, ``regression`` or ``detection``.
        train: the overrides of the brief training (``--key value`` of ``monai.bundle run``).
        sizes: the overrides that the audit and robustify need too (crop and window sizes, readers, data paths):
            the bundle's own sizes are for a GPU and full-size data.
        config: the train config.
        run_id: the config id ``monai.bundle run`` runs.
        weights: glob (relative to the bundle) of the weights the training writes.
        notes: why each override is there.
    """

    name: str
    kind: str
    train: dict[str, Any]
    sizes: dict[str, Any] = field(default_factory=dict)
    config: str = "configs/train.json"
    run_id: str = "run"
    weights: str = "models/model.pt"
    notes: str = ""

    @property
    def source(self) -> Path:
        return FOREIGN / self.name

    def available(self) -> bool:
        return (self.source / self.config).is_file()


def _sw(roi) -> dict:
    return {"validate#inferer#roi_size": roi}


CUBE = [32, 32, 32]

BN_RECALIBRATED_RUN = [
    "$@train#trainer.run()",
    # batch-norm running statistics as the cumulative average over three passes of the training data in train mode
    "$[(setattr(m, 'momentum', None), m.reset_running_stats()) for m in @network.modules() "
    "if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]",
    "$@network.train()",
    "$torch.set_grad_enabled(False)",
    "$[@network(b['image'].to(@device)) for _ in range(3) for b in @train#dataloader]",
    "$torch.save(@network.state_dict(), @ckpt_dir + '/model.pt')",
]
"""A run list for a brief CPU training whose batch norms' running statistics lag their weights (a slow momentum):
the bundle's training, then the statistics recomputed on its training data, then ``models/model.pt`` saved again."""
BUNDLES: dict[str, ZooBundle] = {b.name: b for b in (
    ZooBundle(
        "spleen_ct_segmentation", "segmentation",
        train={"epochs": 25, "train#random_transforms#0#num_samples": 2, "train#dataset#num_workers": 0,
               **NO_WORKERS},
        sizes={"train#random_transforms#0#spatial_size": CUBE, **_sw(CUBE)},
        notes="96^3 crops and windows -> 32^3 (the synthetic volumes are 32^3); 2 crops per case; no workers",
    ),
    ZooBundle(
        "brats_mri_segmentation", "segmentation",
        train={"epochs": 15, "learning_rate": 0.003, "amp": False, **NO_WORKERS},
        sizes={"train#random_transforms#0#roi_size": CUBE, **_sw(CUBE),
               "train#preprocessing_transforms#1": {"_target_": "Compose", "transforms": [
                   {"_target_": "ConvertToMultiChannelBasedOnBratsClassesd", "keys": "label"},
                   {"_target_": "EnsureTyped", "keys": "label", "dtype": "$torch.float32"}]}},
        notes="224 x 224 x 144 crops and 240 x 240 x 160 windows -> 32^3; lr 1e-4 -> 3e-3 (15 epochs instead of "
              "300); amp off (CPU); the label made float after ConvertToMultiChannelBasedOnBratsClassesd (its bool "
              "channels fail in DiceLoss(squared_pred=True) of MONAI 1.6: 'linalg.vector_norm: Expected a floating "
              "point or complex tensor as input. Got Bool')",
    ),
    ZooBundle(
        "swin_unetr_btcv_segmentation", "segmentation",
        train={"train#trainer#max_epochs": 10, "val_interval": 10, "train#trainer#amp": False,
               "validate#evaluator#amp": False, "train#dataset#num_workers": 0, **NO_WORKERS},
        sizes={"network_def": {"_target_": "SwinUNETR", "spatial_dims": 3, "in_channels": 1, "out_channels": 14,
                               "feature_size": 12, "use_checkpoint": False},
               "train#deterministic_transforms#0#reader": "NibabelReader",
               "train#random_transforms#0#spatial_size": [64, 64, 64], **_sw([64, 64, 64])},
        notes="network_def without img_size (MONAI 1.5 removed SwinUNETR's img_size: the bundle's own network_def "
              "fails with an unexpected keyword) and feature_size 48 -> 12 (CPU); reader ITKReader -> NibabelReader "
              "(itk is not installed); 96^3 crops and windows -> 64^3 (the smallest SwinUNETR takes); validation "
              "once, at the end; amp off",
    ),
    ZooBundle(
        "prostate_mri_anatomy", "segmentation",
        train={"train#trainer#max_epochs": 15, "val_interval": 15, "train#trainer#amp": False,
               "validate#evaluator#amp": False, "train#random_transforms#6#num_samples": 2, **NO_WORKERS},
        sizes={"train#random_transforms#6#spatial_size": CUBE, **_sw(CUBE), "validate#inferer#sw_batch_size": 2,
               "train#random_transforms#5": {"_target_": "RandZoomd", "keys": ["image", "label"], "prob": 0.15,
                                             "max_zoom": 1.1, "min_zoom": 0.9}},
        notes="96^3 crops and windows -> 32^3, 2 crops per case; validation once, at the end; amp off; RandZoomd "
              "with min_zoom/max_zoom (its 'min'/'max' are passed on to the padding by MONAI 1.6, which refuses "
              "them: 'unsupported keyword arguments for mode edge')",
    ),
    ZooBundle(
        "endoscopic_tool_segmentation", "segmentation",
        train={"train#trainer#max_epochs": 60, "val_interval": 60, "train#dataloader#batch_size": 5,
               "optimizer#lr": 0.001, "train#dataset#num_workers": 0, **NO_WORKERS, "run": BN_RECALIBRATED_RUN},
        sizes={"train#deterministic_transforms#3#spatial_size": [32, 32]},
        notes="Resized 736 x 480 -> 32 x 32; batch 8 -> 5 (20 training frames); 100 epochs at lr 1e-4 -> 60 at "
              "1e-3, validated once at the end; then the batch norms' running statistics recalibrated on the "
              "training frames and the model saved again (BN_RECALIBRATED_RUN: the EfficientNet encoder's batch "
              "norms have momentum 0.01, and 240 iterations left their running statistics, so the eval-mode output, "
              "untrained: IoU 0.001 in eval mode and 0.92 with batch statistics on the validation frames); "
              "use_imagenet_pretrain stays false (the bundle's default: no download)",
    ),
    ZooBundle(
        "classification_template", "classification",
        train={"num_epochs": 8, "num_workers": 0, "batch_size": 8},
        config="configs/train.yaml", run_id="run", weights="results/output_*/model_key_metric=*.pt",
        notes="10 -> 8 epochs, batch 5 -> 8, no workers; its data live inside the bundle (data/train_samples.json)",
    ),
    ZooBundle(
        "valve_landmarks", "regression",
        train={"num_epochs": 12, "num_iters": 12, "batch_size": 8, "learning_rate": 0.003, "num_workers": 0,
               "output_dir": "./results/run", "network_def#_requires_": "$setattr(numpy, 'product', numpy.prod)",
               "sampler#generator": "$torch.Generator().manual_seed(0)"},
        sizes={"network_def#in_shape": [1, 64, 64], "im_shape": [1, 64, 64],
               "train_transforms#transforms#9#spatial_size": [64, 64],
               "train_transforms#transforms#10#spatial_size": [64, 64]},
        run_id="training", weights="results/run/net_final_iteration=*.pt",
        notes="256 x 256 -> 64 x 64 images (network_def#in_shape, im_shape, and the 256 x 256 written into "
              "two of its train transforms); 100 epochs of 400 iterations of 600 at lr 1e-4 "
              "-> 12 of 12 of 8 at 3e-3; a fixed output_dir (the default has a time stamp); its scripts/valve_landmarks.py calls "
              "np.product, removed in NumPy 2.0: network_def#_requires_ puts the alias back before the network is built "
              "(the audit and robustify restore it themselves); the WeightedRandomSampler gets its own seeded "
              "generator: its ThreadDataLoader draws each epoch's indices in a background thread from torch's global "
              "generator, racing the training's own draws (dropout, the attacks' random starts), so runs of the same "
              "seed differed from the second epoch",
    ),
    ZooBundle(
        "lung_nodule_ct_detection", "detection",
        train={"epochs": 2, "val_interval": 2, "amp": False, "batch_size": 2, "validate#dataloader#num_workers": 0,
               "train#dataloader#num_workers": 0},
        sizes={"patch_size": [32, 32, 16], "val_patch_size": [64, 64, 32],
               "train#random_transforms#1": {"_target_": "RandZoomBoxd", "image_keys": "image", "box_keys": "box",
                                             "box_ref_image_keys": "image", "prob": 0.2, "min_zoom": 0.7,
                                             "max_zoom": 1.4, "padding_mode": "constant", "keep_size": True}},
        notes="192 x 192 x 80 patches -> 32 x 32 x 16, 512 x 512 x 192 windows -> 64 x 64 x 32; 2 epochs; amp off; "
              "RandZoomBoxd without label_keys (MONAI 1.6's RandZoomBoxd has none and passes it on to the padding: "
              "'unsupported keyword arguments for mode constant')",
    ),
)}


def _digest(spec: ZooBundle) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in spec.source.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(spec.source)).encode())
        h.update(f.read_bytes())
    h.update(repr((spec.config, spec.run_id, spec.weights, spec.train, spec.sizes)).encode())
    h.update(inspect.getsource(zoo_data.WRITERS[spec.name]).encode())
    import monai

    h.update(monai.__version__.encode())
    return h.hexdigest()[:16]


def args_of(overrides: dict[str, Any]) -> list[str]:
    """``--key value`` arguments of ``monai.bundle run`` (values as Python literals, strings as they are)."""
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", v if isinstance(v, str) else repr(v)]
    return out


def run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python *args`` in its own process, forked from the tests' fork server (tests/forkserver.py: no second
    import of torch and MONAI) where it takes the command, else a fresh interpreter; stdout and stderr apart."""
    return forkserver.run([sys.executable, *args], cwd, ENV, timeout=timeout, stderr_apart=True)


@dataclass(frozen=True)
class Trained:
    """A trained temporary copy: the bundle folder, its dataset folder, the weights and the training log."""

    spec: ZooBundle
    bundle: Path
    dataset_dir: Path
    weights: Path
    log: str

    def dataset_arg(self) -> str:
        """``--dataset_dir`` as the bundle joins it (prostate's configs append file names without a separator)."""
        return str(self.dataset_dir) + ("/" if self.spec.name == "prostate_mri_anatomy" else "")


def trained(name: str, cache_root: Path) -> Trained:
    """The bundle ``name`` trained once per cache key under ``cache_root`` (see the module docstring).

    Raises:
        RuntimeError: the training failed (the message holds the command and the end of its output).
    """
    spec = BUNDLES[name]
    folder = Path(cache_root) / f"{name}-{_digest(spec)}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        done = folder / "done.json"
        if not done.is_file():
            if folder.exists():
                shutil.rmtree(folder)
            bundle = folder / name
            shutil.copytree(spec.source, bundle)
            data = zoo_data.WRITERS[name](bundle, folder / "data")
            t = Trained(spec, bundle, data, bundle, "")
            args = ["-m", "monai.bundle", "run", spec.run_id, "--config_file", spec.config, "--bundle_root", ".",
                    "--dataset_dir", t.dataset_arg(), *args_of({**spec.train, **spec.sizes})]
            proc = run(args, cwd=bundle)
            log = proc.stdout + proc.stderr
            (folder / "train.log").write_text(" ".join(args) + "\n" + log)
            found = sorted(bundle.glob(spec.weights))
            if proc.returncode != 0 or not found:
                raise RuntimeError(f"Training {name} failed (exit {proc.returncode}, weights {spec.weights}: "
                                   f"{[str(f) for f in found]}): python {' '.join(args)}\n{log[-4000:]}")
            rel = data.relative_to(folder) if data.is_relative_to(folder) else data  # the cache folder can move
            done.write_text(json.dumps({"weights": str(found[-1].relative_to(bundle)), "dataset_dir": str(rel)}))
    info = json.loads(done.read_text())
    return Trained(spec, folder / name, folder / info["dataset_dir"], folder / name / info["weights"],
                   (folder / "train.log").read_text())
