"""``robust_bundles audit``: the robustness report of a trained MONAI bundle this project did not write.

The audit builds the bundle's own parts from its configs (:mod:`.parts`: found from the bundle's
``SupervisedEvaluator`` and ``SupervisedTrainer``, or named with ``--parts``), with no training and no edit of the
bundle: the network with its trained weights (``models/model.pt``, another ``models/*.pt`` or ``--model_path``), the
evaluation preprocessing and data (a datalist with the preprocessing, or a dataset object such as
``NPZDictItemDataset`` with its own transform; or ``--datalist``), the evaluation inferer, the loss (made per-sample
by :class:`.losses.PerSampleWrapper`) and a per-sample metric of the task (:mod:`.metrics`: Dice, multi-label Dice,
IoU, accuracy, mean point distance). It runs a MONAI ``SupervisedEvaluator`` with the project's
:class:`robust_bundles.handlers.RobustnessEvaluationHandler`: clean, L2 PGD, L2 I-FGSM and random noise of the same
norm at every eps, per-sample worst case, and the gradient-masking checks of :func:`masking_checks`.

The attack goes through the bundle's real inference path: the attack's forward pass is the bundle's inferer, so with a
``SlidingWindowInferer`` the input gradient flows through every window of the whole volume (the windows' outputs are
blended with their weights as at inference). Memory: autograd keeps every window's activations until the backward
pass; when that does not fit, ``checkpoint_windows=True`` recomputes each window's activations in the backward pass
(:class:`CheckpointedNetwork`: about one more forward pass of time, the memory of one window's activations plus the
blended output), and ``--override "{'validate#inferer#sw_batch_size': 1}"`` lowers the peak further.

Eps units: the L2 norm of the perturbation of one whole input (all channels and voxels; the attacked channels only with
``attack_channels``, found by :mod:`.channels` where the input carries guidance or the label), in the intensity units the
network sees after the bundle's preprocessing; ``eps_unit="rms"`` reads eps as a per-value RMS (L2 norm
``eps * sqrt(number of input values)``), comparable across bundles and volume sizes.

Sample ids (the ``case`` column of the per-sample CSV): the image file name in the metadata MONAI keeps
(``image.meta["filename_or_obj"]``), without its folder and extension; for data without file names (arrays),
``item_<i>`` with ``i`` the sample's position in the underlying dataset (through ``Subset`` indices).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attack_suite import RandomNoise, check_suite, suite_attacks
from ..attacks import Attack
from ..io import atomic_write_json, atomic_write_text
from ..transfer import load_surrogate
from .channels import raw_first_item, resolve_attack_channels
from .losses import PerSampleWrapper
from .parts import FOREIGN_MISMATCH, find, find_id, given_flags, load_parser, metric_config, pretrained_off

__all__ = [
    "DICE_METRICS",
    "CaseFromMetad",
    "CheckpointedNetwork",
    "PositionDataset",
    "RandomNoise",
    "audit",
    "case_of",
    "image_of",
    "load_datalist",
    "loader_weights",
    "masking_checks",
    "resolve_weights",
]

logger = logging.getLogger("robust_bundles.audit")

DICE_METRICS = ("MeanDice", "DiceMetric", "DiceHelper")
"""Key metrics of a bundle that the audit reports as per-sample Dice."""

_EXT = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd|\.dcm|\.png|\.jpe?g|\.bmp|\.tiff?|\.npy|\.npz|\.gz)$", re.IGNORECASE)


def case_of(path: Any) -> str:
    """A case id from an image path: the file name without folder and extension (``/d/spleen_2.nii.gz`` ->
    ``spleen_2``)."""
    if isinstance(path, (list, tuple)):
        path = path[0] if path else ""
    return _EXT.sub("", os.path.basename(str(path)))


POSITION_KEY = "sample_position"
"""The item key :class:`PositionDataset` writes: the item's position in the underlying dataset."""

SAMPLE_IDS = ("the image file name without folder and extension where the data has file names (MONAI's "
              "filename_or_obj metadata); else 'item_<i>', i the position of the sample in the underlying dataset "
              "(through Subset indices), the same in every epoch and at resume")
"""How the report names its samples."""


def underlying(dataset: Any, index: int | None = None) -> tuple[Any, int | None]:
    """The data under a dataset's ``Subset`` wrappers (a ``Subset`` itself, or the ``data`` of a MONAI dataset built
    on one, as ``random_split`` makes), and the position of item ``index`` in it."""
    while True:
        if isinstance(dataset, torch.utils.data.Subset):
            index = None if index is None else int(dataset.indices[index])
            dataset = dataset.dataset
        elif isinstance(getattr(dataset, "data", None), torch.utils.data.Subset):
            dataset = dataset.data
        else:
            return dataset, index


def underlying_position(dataset: Any, index: int) -> int:
    """The position of item ``index`` of ``dataset`` in the data under its ``Subset`` wrappers (:func:`underlying`)."""
    return int(underlying(dataset, int(index))[1])


class PositionDataset(torch.utils.data.Dataset):
    """The items of ``dataset`` with their position in the underlying dataset (``sample_position``, through
    ``Subset`` indices), then ``transform``; the first ``limit`` items only when given. Random crops (a list of
    dicts per item) each get the position.

    Args:
        dataset: any map-style dataset of dict items (MONAI ``Dataset``, ``NPZDictItemDataset``, ``CacheDataset``,
            ``Subset``...).
        transform: applied to each item after the position is added; None for none.
        limit: the first N items only.
    """

    def __init__(self, dataset: Any, transform: Any = None, limit: int | None = None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.size = len(dataset) if not limit else min(int(limit), len(dataset))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Any:
        if not 0 <= int(index) < self.size:
            raise IndexError(index)
        item = self.dataset[index]
        pos = underlying_position(self.dataset, index)
        items = item if isinstance(item, list) else [item]
        if not all(isinstance(d, Mapping) for d in items):
            raise TypeError(f"Item {index} of the {type(self.dataset).__name__} is a {type(items[0]).__name__}; "
                            "dict items ({'image': ..., 'label': ...}) are needed: give the dataset with dict "
                            "transforms (the *d transforms) or a datalist with --datalist.")
        items = [{**d, POSITION_KEY: pos} for d in items]
        out = items if isinstance(item, list) else items[0]
        return self.transform(out) if self.transform is not None else out


def image_of(item: Mapping, image_key: str = "image") -> Any:
    """The image of a data item: ``item[image_key]``; for items with other keys (a bundle whose ``prepare_batch``
    reads ``img``/``seg``...), the first value with a file name in its MONAI metadata, else the first tensor."""
    if image_key in item:
        return item[image_key]
    values = [v for k, v in item.items() if k != POSITION_KEY]
    named = [v for v in values if (getattr(v, "meta", None) or {}).get("filename_or_obj")]
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    return (named or tensors or [None])[0]


class CaseFromMetad:
    """Dict transform: ``d[case_key] = case_of(d[image_key].meta["filename_or_obj"])`` (MONAI keeps the file name in
    the metadata through its transforms and random crops); the datalist item's own image path when the image has no
    metadata; ``item_<i>`` from the item's :data:`POSITION_KEY` when it has no file name at all (array data). Every
    crop of one case gets its case id.

    Args:
        image_key: the image key.
        case_key: the key to write.
    """

    def __init__(self, image_key: str = "image", case_key: str = "case") -> None:
        self.image_key = image_key
        self.case_key = case_key

    def _one(self, d: Mapping) -> dict:
        d = dict(d)
        img = image_of(d, self.image_key)
        meta = getattr(img, "meta", None) or {}
        src = meta.get("filename_or_obj") or (img if isinstance(img, (str, os.PathLike)) else None)
        if src:
            d[self.case_key] = case_of(src)
        elif POSITION_KEY in d:
            d[self.case_key] = f"item_{int(d[POSITION_KEY])}"
        else:
            raise KeyError(
                f"Cannot name the sample: {self.image_key!r} has no metadata 'filename_or_obj' (keep LoadImaged's "
                f"metadata, i.e. no image_only=True without MetaTensors), is not a file path, and the item has no "
                f"{POSITION_KEY!r} (read the data through robust_bundles.foreign.audit.PositionDataset)."
            )
        return d

    def __call__(self, data: Any) -> Any:
        if isinstance(data, list):  # random crops with num_samples > 1
            return [self._one(d) for d in data]
        return self._one(data)


class CheckpointedNetwork(nn.Module):
    """The network with activation checkpointing when an input gradient is taken: each call (one sliding window
    batch) keeps only its input and output, and recomputes its activations in the backward pass. Same outputs and
    gradients as the network; about one more forward pass of time; the memory fallback of the whole-volume attack."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() and x.requires_grad:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self.network, x, *args, use_reentrant=False, **kwargs)
        return self.network(x, *args, **kwargs)


def loader_weights(parser) -> Path | None:
    """The weights file the bundle's own configs load for evaluation: the ``load_path`` of a ``CheckpointLoader``
    (e.g. ``$@ckpt_dir + '/dynunet_FT.pt'`` in pediatric_abdominal_ct_segmentation's evaluate config), when it
    exists; None otherwise."""
    from .parts import _components, _short

    for i, c in _components(parser.get()):
        if _short(c.get("_target_")) == "CheckpointLoader" and "load_path" in c:
            try:
                path = Path(str(parser.get_parsed_content(f"{i}#load_path")))
            except Exception:  # noqa: BLE001 (an expression that does not evaluate here: not a default)
                continue
            if path.is_file():
                return path
    return None


def resolve_weights(bundle_dir: str | os.PathLike, model_path: str | os.PathLike | None = None,
                    parser: Any = None) -> Path:
    """The trained weights file: ``model_path`` (a file, or a folder to pick from), else ``models/model.pt`` of the
    bundle, else the file its own ``CheckpointLoader`` loads (:func:`loader_weights`, with ``parser``), else the one
    other ``*.pt`` there; among several the ``model_key_metric=...`` one (the best checkpoint MONAI's
    ``CheckpointSaver`` keeps), else the newest.

    Raises:
        FileNotFoundError: nothing to load (the message lists what is there and names ``--model_path``).
    """
    if model_path is not None and Path(model_path).is_file():
        return Path(model_path)
    folder = Path(model_path) if model_path is not None else Path(bundle_dir) / "models"
    if model_path is not None and not folder.is_dir():
        raise FileNotFoundError(f"The bundle's trained model {folder} does not exist: fix --model_path (a .pt file "
                                "or a folder holding one).")
    if (folder / "model.pt").is_file():
        return folder / "model.pt"
    own = loader_weights(parser) if parser is not None and model_path is None else None
    if own is not None:
        logger.info(f"weights: {own}, the file the bundle's CheckpointLoader loads (give --model_path to choose)")
        return own
    found = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"The bundle's trained model {folder / 'model.pt'} does not exist and {folder} holds "
                                "no .pt file: train the bundle first (its train config) or give the weights with "
                                "--model_path PATH.")
    best = [p for p in found if "key_metric" in p.name]
    pick = max(best or found, key=lambda p: (p.stat().st_mtime, p.name))
    if len(found) > 1:
        logger.info(f"weights: {pick.name} chosen among {[p.name for p in found]} (give --model_path to choose)")
    return pick


def refuse_unsupported(parser, command: str = "audit") -> None:
    """Stop with the reason when the bundle is not a supervised model of an image and its label:

    - a detection bundle (a ``detector`` argument of its trainer or evaluator, e.g. the model zoo's
      ``lung_nodule_ct_detection`` with its ``scripts.trainer.DetectionTrainer``);
    - a generative bundle (a GAN, diffusion or autoencoder model: a component whose class name holds one of
      :data:`robust_bundles.foreign.parts.GENERATIVE_NAMES`, e.g. ``mednist_gan``'s ``GanTrainer``,
      ``mednist_ddpm``'s ``DiffusionPrepareBatch``);
    - a bundle with no ``SupervisedTrainer``/``SupervisedEvaluator`` but another engine (MONAI's
      ``AdversarialTrainer``...), unless parts are named with ``--parts``.
    """
    from .parts import _arg, _components, _short, is_generative

    config = parser.get()
    for engine in ("trainer", "evaluator"):
        i = getattr(parser, "discovered", {}).get(engine)
        det = _arg(config, i, "detector") if i else None
        if det is not None:
            raise NotImplementedError(
                f"robust_bundles {command} does not handle detection bundles yet: the {engine} {i!r} runs the "
                f"detector {det!r}, whose loss is computed inside it from box labels (there is no loss_function to "
                "attack per sample, and the label is not an image), and whose metric is mAP over boxes. The "
                "project's own detection bundles (robust_bundles.tasks.detection) are robust-trained and evaluated "
                "with their own configs; auditing a foreign detector needs that adapter wired to its configs."
            )
    found = [(i, _short(c.get("_target_"))) for i, c in _components(config) if is_generative(c.get("_target_"))]
    if found:
        i, name = found[0]
        raise NotImplementedError(
            f"robust_bundles {command} covers supervised bundles (a network trained on an image and its label "
            f"with a loss: segmentation, classification, regression); this bundle is generative: it holds {name} "
            f"({i!r}{f' and {len(found) - 1} more such parts' if len(found) > 1 else ''}). Its network makes "
            "images, so there is no label to score the attacked output against."
        )
    if not getattr(parser, "discovered", {}) and not getattr(parser, "given_parts", {}):
        engines = [(i, _short(c.get("_target_"))) for i, c in _components(config)
                   if _short(c.get("_target_")).endswith(("Trainer", "Workflow"))]
        if engines:
            raise NotImplementedError(
                f"robust_bundles {command} needs a supervised engine (MONAI's SupervisedTrainer or "
                f"SupervisedEvaluator, or a subclass); the bundle runs {engines[0][1]} ({engines[0][0]!r}), which "
                "is not one. Name the parts yourself with --parts (network, loss, preprocessing, data) if the model "
                "is a supervised one."
            )


refuse_detection = refuse_unsupported  # the earlier name


def _inferer(parser, part: str, engine: str) -> tuple[str, Any]:
    """The evaluator's (trainer's) inferer; MONAI's default ``SimpleInferer`` when the engine has none."""
    if find_id(parser, part, required=False) is None and engine in getattr(parser, "discovered", {}):
        from monai.inferers import SimpleInferer

        return f"{parser.discovered[engine]}'s default", SimpleInferer()
    return find(parser, part)


def _prepare_batch(parser) -> tuple[str, Any]:
    """The evaluator's ``prepare_batch`` (how a batch becomes the network's input and the loss's target, e.g. MONAI's
    ``PrepareBatchExtraInput`` or a bundle's own callable); MONAI's default (``image``, ``label``) when it has none."""
    from monai.engines.utils import PrepareBatchDefault, default_prepare_batch

    if find_id(parser, "prepare_batch", required=False) is None:
        return "default (image, label)", PrepareBatchDefault()
    i, pb = find(parser, "prepare_batch")
    if pb is None or pb is default_prepare_batch:
        return "default (image, label)", PrepareBatchDefault()
    if not callable(pb):
        raise TypeError(f"The bundle's prepare_batch {i!r} is a {type(pb).__name__}, not a callable "
                        "(batchdata, device, non_blocking, **kwargs) -> (inputs, targets): fix it, or name the right "
                        "id with --parts \"{'prepare_batch': 'ID'}\".")
    return i, pb


def training_data_notes(parser) -> list[str]:
    """A warning when the bundle's evaluator reads its trainer's own data (the same data loader, dataset or
    datalist id): the audit would then report on training cases."""
    disc = getattr(parser, "discovered", {})
    for part in ("loader", "dataset", "data"):
        if disc.get(part) is not None and disc.get(part) == disc.get(f"train_{part}"):
            return [f"The bundle's evaluator reads the trainer's own {part} ({disc[part]!r}): these are training "
                    "cases, on which a model looks better than on unseen data. Audit held-out cases with --datalist "
                    "(a JSON list of {'image': ..., 'label': ...})."]
    return []


def evaluation_items(data: Any, data_id: Any) -> Any:
    """The evaluation data as a sequence of items: a datalist (list or tuple), or any map-style dataset (a
    ``Subset`` of an ``NPZDictItemDataset`` from ``partition_dataset``/``random_split``, a ``CSVDataset``...), read
    by position (:class:`PositionDataset` follows ``Subset`` indices to the sample ids).

    Raises:
        ValueError: the data is empty, or an iterable without length (an ``IterableDataset``, a ``map`` object),
            which has no fixed cases to report on.
    """
    if isinstance(data, (str, bytes, Mapping)) or data is None:
        raise ValueError(f"The evaluation data {data_id!r} is a {type(data).__name__}, not a list of items: check the "
                         "dataset folder (--dataset_dir) or give --datalist.")
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise ValueError(f"The evaluation data {data_id!r} is a {type(data).__name__} without a length (an iterable "
                         "stream): an audit reports fixed cases, so give them as a datalist file with --datalist "
                         "(a JSON list of {'image': ..., 'label': ...}).")
    if len(data) == 0:
        raise ValueError(f"The evaluation data {data_id!r} is empty: check the dataset folder (--dataset_dir) or "
                         "give --datalist.")
    return list(data) if isinstance(data, tuple) else data


def load_datalist(path: str | os.PathLike, key: str = "validation") -> list[dict]:
    """A datalist file: a JSON list of ``{"image": ..., "label": ...}`` or a decathlon-style dict holding such a list
    under ``key`` (paths relative to the file's folder)."""
    import json

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"The datalist {p} does not exist: fix --datalist.")
    data = json.loads(p.read_text())
    if isinstance(data, dict):
        if key not in data:
            raise KeyError(f"The datalist {p} has no {key!r} list (it has {sorted(data)}): set --datalist_key.")
        data = data[key]
    if not isinstance(data, list) or not all(isinstance(d, dict) and "image" in d for d in data):
        raise ValueError(f"The datalist {p} must be a list of {{'image': ..., 'label': ...}} items.")
    out = []
    for d in data:
        item = dict(d)
        for k in ("image", "label"):
            if isinstance(item.get(k), str) and not os.path.isabs(item[k]):
                item[k] = str(p.parent / item[k])
        out.append(item)
    return out


def _metric(parser, metric: str, loss: Any) -> tuple[Any, dict]:
    """The per-sample task metric (:mod:`.metrics`) and what was found of the bundle's own metric."""
    from .metrics import KINDS, choose_kind, task_metric

    mid, cfg = metric_config(parser)
    target = str((cfg or {}).get("_target_", "")).rsplit(".", 1)[-1]
    info: dict[str, Any] = {"id": mid, "target": target or None}
    if metric == "auto":
        kind = choose_kind(target, loss)
        if kind is None:
            raise ValueError(
                f"Cannot tell the task from the bundle's key metric {mid!r} ({target or 'none'}) and its loss "
                f"{type(loss).__name__}: name the audit's metric with --metric {' or --metric '.join(KINDS)}."
            )
    else:
        kind = metric
    m, what = task_metric(kind, loss)
    info.update(kind=kind, description=what, higher_is_better=m.specs[0].higher_is_better)
    if kind == "dice" and what.startswith("softmax") and cfg and cfg.get("include_background") is True:
        info["note"] = "the bundle's metric includes the background; the audit's Dice is over foreground classes"
    return m, info


def attack_setup(pgd_steps: int, ifgsm_steps: int, alpha: float, clamp: Sequence[float] | None, suite: str = "quick",
                 loss: Any = None, surrogate: nn.Module | None = None, inferer: Any = None) -> dict[str, Attack]:
    """The audit's attacks by name: the named suite of :mod:`robust_bundles.attack_suite` (quick: L2 PGD, L2 I-FGSM
    (left out at 0 steps) and random noise of the same norm; standard: PGD, noise and APGD on the loss and on each of
    its terms; strong: more APGD iterations and restarts), and the transfer check when a surrogate is given.

    Args:
        pgd_steps: steps of L2 PGD (random start) and iterations of APGD; >= 1.
        ifgsm_steps: steps of L2 I-FGSM (quick).
        alpha: step size factor of PGD and I-FGSM.
        clamp: value range of the network input, or None.
        suite: "quick", "standard" or "strong".
        loss: the per-sample loss (its terms give the per-term APGD runs).
        surrogate: a second model with the bundle's network: adds the transfer column.
        inferer: the bundle's inferer, for the surrogate.
    """
    if pgd_steps < 1:
        raise ValueError(f"pgd_steps must be >= 1 (every suite runs PGD, the reference of its worst case); got "
                         f"{pgd_steps}.")
    return suite_attacks(suite, loss, pgd_steps, ifgsm_steps, alpha, clamp, surrogate=surrogate,
                         surrogate_inferer=inferer)


def masking_checks(summary: Mapping, attack: str = "PGD", noise: str = "noise", tol: float = 0.01,
                   higher_is_better: bool | None = None) -> list[str]:
    """Gradient-masking warning signs in a robustness summary (headline metric), one sentence each:

    - the attack is not worse than random noise of the same norm at some eps > 0 (by more than ``tol``);
    - the attack gets weaker as eps grows (its metric improves by more than ``tol`` from one eps to the next).

    ``higher_is_better`` is the metric's direction (a distance is lower-is-better); default: read from the summary,
    else higher.

    (The handler adds the third: most samples had zero or non-finite input gradients.)
    """
    out = []
    hib = True if higher_is_better is None else bool(higher_is_better)
    metrics = summary.get("metrics") or {}
    head = metrics.get(summary.get("metric"), {})
    if higher_is_better is None and head.get("higher_is_better") is False:
        hib = False
    att = summary.get("attacks", {}).get(attack, {})
    nz = summary.get("attacks", {}).get(noise, {})
    levels = sorted((float(e), e) for e in att if e != "avg")
    sign = 1.0 if hib else -1.0
    for f, e in levels:
        if f > 0 and e in nz and not (sign * (nz[e] - att[e]) > tol):
            out.append(f"{attack} at eps {e} ({att[e]:.4f}) is not worse than random noise of the same norm "
                       f"({nz[e]:.4f}): the attack may be blocked by gradient masking (or the model is flat there).")
    for (_, e0), (_, e1) in zip(levels, levels[1:]):
        if sign * (att[e1] - att[e0]) > tol:
            out.append(f"{attack} is weaker at eps {e1} ({att[e1]:.4f}) than at eps {e0} ({att[e0]:.4f}): a larger "
                       "ball cannot hold a weaker worst case, so the attack is not converging (more steps?).")
    return out


SMALL_RMS = 0.005
"""A per-value RMS below which the audit's largest eps probably moves no model (intensities scaled to about [0, 1]
or to unit variance)."""


def small_eps_note(eps: Sequence[float], eps_unit: str, voxels: Sequence[int]) -> str:
    """A warning when every eps, given as an L2 norm, is a per-value RMS below :data:`SMALL_RMS` of the evaluated
    inputs (the default eps 0.5 / 1 / 2 on a 96^3 volume: 0.002 at most), with the flags that fix it; else ''."""
    sizes = [v for v in voxels if v > 0]
    if eps_unit != "norm" or not sizes or not eps:
        return ""
    rms = max(eps) / math.sqrt(min(sizes))
    if rms >= SMALL_RMS:
        return ""
    return (f"The largest eps, {max(eps):g} as an L2 norm over {min(sizes):,} input values, is a per-value RMS of "
            f"{rms:.2g}: likely too small to move the model (the gradient-masking checks then fire). Give eps per "
            "value: --eps_unit rms --eps \"[0.01, 0.02, 0.05]\".")


def _explain_units(eps_unit: str, preprocessing_id: str, voxels: Sequence[int]) -> str:
    lo, hi = (min(voxels), max(voxels)) if voxels else (0, 0)
    rms = "" if not voxels else (
        f" The evaluated inputs hold {lo:,}" + (f" to {hi:,}" if hi != lo else "") + " values each, so an L2 eps of "
        f"e is a per-value RMS of e / {math.sqrt(lo):.0f}" + (f" .. e / {math.sqrt(hi):.0f}" if hi != lo else "")
        + ".")
    if eps_unit == "rms":
        return (f"eps is a per-value RMS of the perturbation, in the intensity units the network sees after the "
                f"bundle's preprocessing ({preprocessing_id!r}): each case is attacked in the L2 ball of radius "
                f"eps * sqrt(number of its input values) (the csv's 'norm' column is that L2 norm).{rms}")
    return (f"eps is the L2 norm of the perturbation of one whole input (all channels and voxels of a case), in the "
            f"intensity units the network sees after the bundle's preprocessing ({preprocessing_id!r}); it grows with "
            f"sqrt(number of values), so use eps_unit='rms' to compare bundles or volume sizes.{rms}")


def audit(
    bundle_dir: str,
    output_dir: str | None = None,
    eps: Sequence[float] = (0.5, 1.0, 2.0),
    eps_unit: str = "norm",
    model_path: str | None = None,
    datalist: str | None = None,
    datalist_key: str = "validation",
    config_file: str | Sequence[str] | None = None,
    override: Mapping[str, Any] | None = None,
    pgd_steps: int = 20,
    ifgsm_steps: int = 10,
    alpha: float = 4.0,
    restarts: int = 1,
    clamp: Sequence[float] | None = None,
    metric: str = "auto",
    max_cases: int | None = None,
    checkpoint_windows: bool = False,
    device: str | None = None,
    seed: int = 0,
    parts: Mapping[str, str] | None = None,
    attack_suite: str = "standard",
    surrogate: str | None = None,
    attack_channels: Sequence[int] | str | None = None,
    **overrides: Any,
) -> dict:
    """Write the robustness report of a trained MONAI bundle: its metric per case, clean and under L2 attacks and
    noise at every eps, through its own preprocessing, inferer and loss (``robust_bundles audit BUNDLE --dataset_dir
    D``; more in the module docstring of robust_bundles.foreign.audit).

    Args:
        bundle_dir: the bundle folder (holds ``configs/`` and ``models/``); never written to.
        output_dir: where the report goes; default ``./robustness_audit/<bundle name>``.
        eps: noise levels (see ``eps_unit``).
        eps_unit: ``"norm"`` (L2 norm of the whole input) or ``"rms"`` (per-value RMS).
        model_path: the trained weights (a file, or a folder to pick one from); default ``models/model.pt`` of
            the bundle, else its other ``models/*.pt`` (``model_key_metric=...pt``, ``model_final_iteration=N.pt``).
            A state dict, or a checkpoint holding it under ``model``/``network``/``net``/``state_dict``.
        datalist: a datalist JSON file to evaluate instead of the bundle's evaluation data.
        datalist_key: the list to read in a decathlon-style datalist.
        config_file: the configs to merge (relative to the bundle); default train + evaluate (JSON or YAML),
            else inference.
        override: config ids to set, e.g. ``{"validate#inferer#roi_size": [64, 64, 64]}``.
        pgd_steps: steps of L2 PGD (random start).
        ifgsm_steps: steps of L2 I-FGSM (no random start).
        alpha: step size factor (step = alpha * eps / steps).
        restarts: random restarts of PGD; the per-sample worst is kept.
        clamp: ``[min, max]`` value range of the network input to keep attacked inputs in (e.g. ``[0, 1]`` after a
            clipping intensity transform); default none.
        metric: the per-sample metric of the report: ``"auto"`` (from the bundle's key metric, else its loss),
            ``"dice"`` (softmax or, with a sigmoid loss, multi-label), ``"iou"`` (likewise; the default for a MeanIoU
            key metric), ``"accuracy"`` or ``"distance"`` (mean point distance, lower is better).
        max_cases: evaluate the first N cases only.
        checkpoint_windows: recompute window activations in the backward pass (memory fallback).
        device: torch device; default CUDA when available.
        seed: seed of the random starts.
        parts: the bundle's parts by config id where finding them fails, e.g. ``{'loss': 'lossfn',
            'preprocessing': 'eval_transforms'}``; the parts are network, preprocessing, inferer, loss, data (a
            datalist), dataset (a dataset object with its own transform), metric, evaluator, trainer (and more, see
            ``robust_bundles.foreign.parts.PARTS_HELP``); default: found from the bundle's trainer and evaluator.
        attack_suite: the attacks (robust_bundles.attack_suite): "quick" (PGD, I-FGSM, noise), "standard" (PGD,
            noise, APGD on the loss and on each of its terms; per-case worst case over all) or "strong" (APGD with
            100+ iterations and 3 restarts).
        surrogate: the weights (a model.pt) of a second model with the bundle's network, e.g. one trained without
            adversarial training: adds the transfer check (PGD crafted on it, applied to the audited model; flagged as
            gradient masking where it hurts more than every white-box attack).
        attack_channels: the input channels the attacks may change, e.g. ``"[0]"`` or ``"[0, 1, 2]"`` (indices of
            the network input's channels); the others keep their clean values, and eps (both units) is measured on
            the attacked channels only (with rms, over sqrt of the number of attacked values). Default, the image
            channels where the evaluation preprocessing adds guidance or the label as channels (MONAI's
            AddGuidanceSignalDeepEditd, AddGuidanceSignald, AddPointGuidanceSignald, AddLabelAsGuidanced; logged with
            the reason), else every channel; ``all`` attacks every channel.
        overrides: further config ids as keyword arguments (``--dataset_dir /data``), as ``monai.bundle run``.

    Returns:
        The audit summary (also in ``audit.json``), with the written files under ``files``.
    """
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Compose

    from ..handlers.robustness_handler import RobustnessEvaluationHandler
    from ..report import plot_metric_vs_eps
    from ..weights import load_network_weights

    t0 = time.time()
    root = Path(bundle_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"The bundle folder {root} does not exist: give the downloaded bundle's folder.")
    eps_list = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]
    out = Path(output_dir) if output_dir is not None else Path("robustness_audit") / root.name
    merged = {**dict(override or {}), **overrides}
    flags = given_flags(audit, locals())
    parser = load_parser(root, config_file, merged, parts, command=("audit", flags))
    refuse_unsupported(parser)
    pretrained = pretrained_off(parser, merged)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    net_id, network = find(parser, "network")
    if not isinstance(network, nn.Module):
        raise TypeError(f"The bundle's network {net_id!r} is a {type(network).__name__}, not a torch module.")
    weights = resolve_weights(root, model_path, parser)
    load_network_weights(network, weights, what="bundle's trained model", hint=FOREIGN_MISMATCH,
                         fix="train the bundle first (its train config) or give the weights with --model_path PATH",
                         map_location="cpu")
    network = network.to(dev).eval()
    inf_id, inferer = _inferer(parser, "inferer", "evaluator")
    loss_id, loss = find(parser, "loss")
    loss_fn = PerSampleWrapper(loss)
    task_metric, metric_info = _metric(parser, metric, loss)
    voxels: list[int] = []
    channels: list[int] | None = None  # the attacked channels, set below (count runs when the data is read)

    def count(d):
        for one in d if isinstance(d, list) else [d]:
            img = image_of(one)
            n = int(img.numel()) if hasattr(img, "numel") else 0
            voxels.append(n // img.shape[0] * len(channels) if channels and n else n)
        return d

    after = Compose([CaseFromMetad(), count])
    data_id = f"--datalist {datalist}" if datalist is not None else find_id(parser, "data", required=False)
    if data_id is not None or find_id(parser, "dataset", required=False) is None:
        pre_id, preprocessing = find(parser, "preprocessing")
        data = load_datalist(datalist, datalist_key) if datalist is not None else find(parser, "data")[1]
        data = evaluation_items(data, data_id)
        dataset: Any = PositionDataset(Dataset(data, preprocessing), after, max_cases)
        first = data[0] if isinstance(data[0], Mapping) else None
    else:  # a dataset object without a datalist (NPZDictItemDataset...): its own transform is the preprocessing
        data_id, ds = find(parser, "dataset")
        pre_id = f"{data_id}'s transform"
        dataset = PositionDataset(ds, after, max_cases)
        preprocessing, first = getattr(underlying(ds)[0], "transform", None), raw_first_item(ds)
    notes = [] if datalist is not None else training_data_notes(parser)
    for n in notes:
        logger.warning(n)
    if len(dataset) == 0:
        raise ValueError(f"The evaluation data {data_id!r} is empty: check the dataset folder (--dataset_dir) or give "
                         "--datalist.")

    channels, channels_why = resolve_attack_channels(attack_channels, preprocessing, first)
    check_suite(attack_suite)
    transfer_from = load_surrogate(copy.deepcopy(network), surrogate, dev) if surrogate is not None else None
    attacks = attack_setup(pgd_steps, ifgsm_steps, alpha, clamp, attack_suite, loss_fn, transfer_from, inferer)
    dataset_dir = parser.get("dataset_dir") if "dataset_dir" in parser else None
    handler = RobustnessEvaluationHandler(loss_fn, attacks, eps_list, metric=task_metric, output_dir=out, seed=seed,
                                          restarts=restarts, id_keys=("case",), dataset_dir=dataset_dir,
                                          eps_unit=eps_unit, suite=attack_suite, metric_on_targets=True,
                                          attack_channels=channels)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
    pb_id, prepare_batch = _prepare_batch(parser)
    evaluator = SupervisedEvaluator(device=dev, val_data_loader=loader,
                                    network=CheckpointedNetwork(network) if checkpoint_windows else network,
                                    inferer=inferer, val_handlers=[handler], amp=False, prepare_batch=prepare_batch)
    logger.info(f"audit of {root.name}: {len(dataset)} case(s), eps {eps_list} ({eps_unit}), attacks "
                f"{', '.join(f'{n} {a.steps} steps' for n, a in attacks.items())}, inferer {type(inferer).__name__}")
    evaluator.run()
    summary = handler.summary
    checks = masking_checks(summary, higher_is_better=handler.higher_is_better) + list(handler.warnings)
    result = {"run": "bundle", "method": "bundle", "train_eps": None, "label": root.name,
              "settings": handler.settings(), "summary": summary}
    files = {"robustness_json": str(out / "robustness.json"), "robustness_csv": str(out / "robustness.csv"),
             "robustness_md": str(out / "robustness.md"),
             "metric_vs_eps": str(plot_metric_vs_eps([result], out / "metric_vs_eps.png"))}
    units = _explain_units(eps_unit, pre_id, sorted(set(voxels)))
    small = small_eps_note(eps_list, eps_unit, voxels)
    if small:
        logger.warning(small)
        units += " " + small
    if channels is not None:
        units += (f" Only the input channels {channels} are attacked ({channels_why}); the other channels keep "
                  "their clean values, and eps and the values counted here are those of the attacked channels.")
    found = {"configs": [str(f) for f in parser.files], "network": {"id": net_id, "type": type(network).__name__},
             "weights": str(weights), "preprocessing": pre_id,
             "inferer": {"id": inf_id, "type": type(inferer).__name__},
             "prepare_batch": {"id": pb_id, "type": type(prepare_batch).__name__},
             "loss": {"id": loss_id, "type": type(loss).__name__, "per_sample_terms": list(loss_fn.term_names)},
             "metric": metric_info, "data": {"id": data_id, "cases": len(dataset), "sample_ids": SAMPLE_IDS}}
    info = {"bundle": str(root), "parts": found, "pretrained_off": sorted(pretrained), "eps": eps_list, "eps_unit": eps_unit, "eps_units": units,
            "masking_checks": checks, "data_notes": notes, "seconds": round(time.time() - t0, 1), "files": files,
            "checkpoint_windows": bool(checkpoint_windows), "synthetic": handler.synthetic, "attack_suite": attack_suite,
            "surrogate": surrogate,
            "attack_channels": {"channels": channels if channels is not None else "all", "why": channels_why}}
    files["audit_json"] = str(atomic_write_json(out / "audit.json", info))
    files["audit_md"] = str(atomic_write_text(out / "audit.md", _markdown(root.name, info, handler)))
    logger.info(f"audit written to {out} ({info['seconds']} s)")
    return info


def _markdown(name: str, info: dict, handler) -> str:
    p = info["parts"]
    lines = [f"# Robustness audit of `{name}`", ""]
    if info["synthetic"]:
        lines += ["**SYNTHETIC DATA: these numbers say nothing about the real task.**", ""]
    lines += [
        f"Network `{p['network']['type']}` ({p['network']['id']}) with weights `{p['weights']}`; inferer "
        f"`{p['inferer']['type']}` ({p['inferer']['id']}): the attacks go through it, so a sliding-window inferer is "
        "attacked over the whole volume; preprocessing `" + p["preprocessing"] + "`; data " + str(p["data"]["id"])
        + f" ({p['data']['cases']} cases); attack loss `{p['loss']['type']}` ({p['loss']['id']}) made per-sample "
        f"(terms {', '.join(p['loss']['per_sample_terms'])}).", "",
        "**Units.** " + info["eps_units"], "",
        f"**Attacked channels.** {info['attack_channels']['channels']} ({info['attack_channels']['why']}).", "",
        ("**Attacks.** PGD: L2 projected gradient ascent of the bundle's loss with a random start; IFGSM: the same "
         "without random start; noise: a random direction at exactly the eps norm (the baseline an attack must beat). "
         "APGD (suite standard and strong): the step-size-free Auto-PGD of Croce & Hein on the loss (APGD) and on "
         "each of its terms alone (APGD_<term>); transfer (with --surrogate): PGD crafted on the surrogate model. "
         f"Suite `{info['attack_suite']}` (docs/robustness_evaluation.md). "
         "'worst' is, per case, the worst of all of them, then the mean."), "",
        handler.markdown(), "",
        *([f"**Data.** {' '.join(info['data_notes'])}", ""] if info.get("data_notes") else []),
        "**Gradient-masking checks.** " + (" ".join(info["masking_checks"]) if info["masking_checks"] else
                                           "none fired (PGD beats random noise at every eps, gets stronger with eps, "
                                           "and input gradients were non-zero)."),
        "", ("Per-case values: `robustness.csv` (column `case`: " + p["data"]["sample_ids"] + "); figures: "
             "![metric vs eps](metric_vs_eps.png)"), "",
    ]
    return "\n".join(lines)
