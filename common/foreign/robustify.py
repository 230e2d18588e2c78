"""``robust_bundles robustify``: robust fine-tuning (AMAT, VAT, TEAT, TRADES: every method of the registry
:mod:`robust_bundles.methods` with an overlay) of a trained foreign MONAI bundle, by overlay.

Two steps, with no edit of the bundle:

1. **Thresholds** (a method that ``needs_thresholds``: AMAT): the bundle's trained model (``models/model.pt`` or ``--model_path``) is run in eval mode
   over its own training data with its own training preprocessing and inferer (random crops included, as the
   training iterations will see them); the per-sample loss terms of :class:`.losses.PerSampleWrapper` give the
   thresholds xi (``--threshold_rule``, default the mean) written to ``<output_dir>/thresholds.json``.
2. **Fine-tuning**: ``monai.bundle run`` of the bundle's unchanged train config with the overlays
   ``configs/foreign/robust.json`` and the method's overlay ``<output_dir>/<method>_overlay.json`` stacked on it
   (derived from the registry entry and its base overlay by :func:`robust_bundles.foreign.overlay.method_overlay`)::

       python -m monai.bundle run --config_file "['configs/train.json', '<robust_bundles>/configs/foreign/robust.json',
           'OUT/amat_overlay.json', 'OUT/bundle_wiring.json']" --bundle_root . --robust#init_model models/model.pt
           --robust#output_dir OUT --robust#thresholds_file OUT/thresholds.json --train#trainer#max_epochs 5

   and last the wiring file ``<output_dir>/bundle_wiring.json`` (:func:`wiring`): the bundle's own parts found by
   structure (or named with ``--parts``) under ``robust#bundle``, its trainer's ``loss_function``,
   ``iteration_update`` and ``train_handlers``, and its training dataset read through ``PositionDataset``. The
   weights start from the trained model; margins are keyed by the sample's position in the training dataset, named
   in ``margins.csv`` by the image file name where there is one (every random crop of a case shares its margin); the final checkpoint ``<output_dir>/checkpoint.pt`` holds the model, the margins, the
   optimizer and the trainer state. The bundle's own checkpoint and log folders (``ckpt_dir``, ``output_dir`` when
   the config has them) and the ``cache_dir`` of its datasets (``PersistentDataset``) are redirected into
   ``<output_dir>`` so the bundle's folder is never written to.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import methods
from ..io import atomic_write_json, sha256_file
from .losses import PerSampleWrapper
from .overlay import foreign_methods, method_overlay
from .parts import FOREIGN_MISMATCH, config_path, find, find_id, given_flags, pretrained_off

__all__ = ["NORM_DEFAULTS", "OVERLAY_DIR", "estimate_bundle_thresholds", "noise_settings", "overlay_files", "redirects",
           "replaced_iteration_update", "recalibrate_batch_norm", "robustify", "run_id", "stale_batch_norm", "train_prepare_batch", "training_attack_channels",
           "training_dataset", "training_input_values", "wiring"]

logger = logging.getLogger("robust_bundles.robustify")

OVERLAY_DIR = Path(__file__).resolve().parent.parent / "configs" / "foreign"
"""The base overlay stacked on a foreign train config (robust.json); the method overlays come from the registry."""

FLAG_IDS = {"train_eps": "train_eps", "expansion_step": "expansion_step", "initial_margin": "initial_margin",
            "max_margin": "max_margin", "beta": "amat_beta"}
"""robustify's method flags and the overlay ids (under ``robust#``) they set, for a method whose overlay has them."""


def foreign_method(method: str) -> methods.Method:
    """The registered method of a ``--method`` value (any case) that robustify trains.

    Raises:
        ValueError: no such method, or one without an overlay (STD); the message lists the methods.
    """
    keys = [m.key for m in foreign_methods()]
    if str(method).lower() not in keys:
        raise ValueError(f"Unknown method {method!r} for robustify: use one of {', '.join(keys)} (the registered "
                         "methods with an overlay; STD is the bundle's own training).")
    return methods.get(method)


def overlay_files(method: str, output_dir: str | Path) -> list[str]:
    """The overlay files of a method, in stacking order: ``robust.json`` and the method's overlay, derived from the
    registry and written to ``<output_dir>/<key>_overlay.json``."""
    m = foreign_method(method)
    path = atomic_write_json(Path(output_dir) / f"{m.key}_overlay.json", method_overlay(m.name))
    return [str(OVERLAY_DIR / "robust.json"), str(path)]


def training_dataset(parser) -> Any:
    """The bundle's training data with its training preprocessing (random crops included): a plain ``Dataset`` of
    its datalist where it has one (no caching of a ``CacheDataset``), else its training dataset itself."""
    from monai.data import Dataset

    if find_id(parser, "train_data", required=False) is not None:
        _, pre = find(parser, "train_preprocessing")
        _, data = find(parser, "train_data")
        return Dataset(list(data), pre)
    return find(parser, "train_dataset")[1]


BN_STALE = 0.5
"""Batch norms whose running statistics moved less than this fraction of the way during a fine-tuning run
(``1 - (1 - momentum) ** iterations``) count as stale."""


def stale_batch_norm(parser, checkpoint: str | Path) -> dict | None:
    """The batch norms of a fine-tuned model whose running statistics a run of ``iterations`` (the trainer state in
    the checkpoint) moved less than :data:`BN_STALE` of the way (exponential averages of ``momentum``); None when
    there are none (or no batch norm, or cumulative averages)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    _, network = find(parser, "train_network")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    iterations = int((state.get("trainer") or {}).get("iteration", 0))
    momenta = sorted({float(m.momentum) for m in network.modules()
                      if isinstance(m, _BatchNorm) and m.track_running_stats and m.momentum is not None})
    stale = [m for m in momenta if 1 - (1 - m) ** iterations < BN_STALE]
    if not stale:
        return None
    layers = sum(1 for m in network.modules() if isinstance(m, _BatchNorm) and m.momentum in stale)
    return {"layers": layers, "momentum": min(stale), "iterations": iterations,
            "moved": round(1 - (1 - min(stale)) ** iterations, 3)}


def recalibrate_batch_norm(parser, checkpoint: str | Path, passes: int = 2, seed: int = 0,
                           device: Any = None) -> dict | None:
    """Recompute the running statistics of the batch norms of a fine-tuned model on the clean training data, and
    write them into its checkpoint (``model``): each batch-norm layer's running mean and variance become the
    cumulative average over ``passes`` passes of the training data (the bundle's training preprocessing, random
    crops included, through the trainer's ``prepare_batch`` and inferer; train mode, no gradient). The layers'
    momenta are restored afterwards; nothing else in the checkpoint changes.

    Returns:
        ``{"layers", "passes", "batches"}``, or None when the network has no batch norm.
    """
    from monai.data import DataLoader
    from monai.utils import set_determinism
    from torch.nn.modules.batchnorm import _BatchNorm

    from .audit import _inferer
    from .parts import _arg

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _, network = find(parser, "train_network")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network.load_state_dict(state["model"])
    layers = [m for m in network.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return None
    network = network.to(dev)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.momentum = None  # a cumulative average
        m.reset_running_stats()
    loader_id = find_id(parser, "train_loader", required=False)
    size_id = _arg(parser.get(), loader_id, "batch_size") if loader_id else None
    batch_size = max(2, int(parser.get_parsed_content(size_id))) if size_id else 4
    _, inferer = _inferer(parser, "train_inferer", "trainer")
    prepare = train_prepare_batch(parser)
    set_determinism(seed=seed)
    batches = 0
    network.train()
    try:
        with torch.no_grad():
            for _ in range(int(passes)):
                for batch in DataLoader(training_dataset(parser), batch_size=batch_size, shuffle=False, num_workers=0):
                    prepared = prepare(batch, dev)
                    args, kwargs = (prepared[2], prepared[3]) if len(prepared) == 4 else ((), {})
                    inferer(prepared[0], network, *args, **kwargs)
                    batches += 1
    finally:
        set_determinism(seed=None)
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
    state["model"] = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    tmp = Path(checkpoint).with_suffix(".bn.tmp")
    torch.save(state, tmp)
    tmp.replace(checkpoint)
    logger.info(f"batch norms: running statistics of {len(layers)} layers recomputed on the clean training data "
                f"({passes} passes, {batches} batches of {batch_size}) and written to {checkpoint}")
    return {"layers": len(layers), "passes": int(passes), "batches": batches, "batch_size": batch_size}


def train_prepare_batch(parser) -> Any:
    """The trainer's ``prepare_batch`` (``batchdata, device -> (inputs, targets[, args, kwargs])``): the bundle's own
    when its trainer names one, else MONAI's default (``image``, ``label``)."""
    from monai.engines.utils import default_prepare_batch

    if find_id(parser, "train_prepare_batch", required=False) is None:
        return default_prepare_batch
    i, pb = find(parser, "train_prepare_batch")
    if not callable(pb):
        raise TypeError(f"The bundle's trainer prepare_batch {i!r} is a {type(pb).__name__}, not a callable.")
    return pb


def training_input_values(parser, seed: int = 0, channels: Sequence[int] | None = None) -> int:
    """The number of values of one training input as the trainer's network sees it (channels x crop, after the
    bundle's training preprocessing and the trainer's ``prepare_batch``): the scale of ``eps_unit="rms"`` (L2 norm =
    rms x sqrt(values)); with ``channels``, the values of those channels only (the attacked ones).

    Raises:
        ValueError: the training dataset is empty or its first item gives no input tensor.
    """
    from monai.data import list_data_collate
    from monai.utils import set_determinism

    from .audit import image_of

    set_determinism(seed=seed)
    try:
        dataset = training_dataset(parser)
        if len(dataset) == 0:
            raise ValueError("The training dataset is empty: check the dataset folder (--dataset_dir).")
        item = dataset[0]
    finally:
        set_determinism(seed=None)
    if isinstance(item, (list, tuple)) and item:  # several random crops of one sample (num_samples > 1)
        item = item[0]
    if not isinstance(item, Mapping):
        raise ValueError(f"The first training item is a {type(item).__name__}, not a dict: eps_unit='rms' needs the "
                         "training input's size; give the noise settings as L2 norms (--eps_unit norm).")
    prepare = train_prepare_batch(parser)
    try:
        batch = prepare(list_data_collate([item]), torch.device("cpu"))
        image = batch[0] if isinstance(batch, (list, tuple)) else batch
        image = image[0] if isinstance(image, torch.Tensor) else None
    except (KeyError, TypeError):
        image = None
    image = image if image is not None else image_of(item)
    if not isinstance(image, torch.Tensor) and not hasattr(image, "shape"):
        raise ValueError(f"The first training item (keys {sorted(item)}) gives the trainer no input tensor: "
                         "eps_unit='rms' needs the training input's size; give the noise settings as L2 norms "
                         "(--eps_unit norm).")
    image = torch.as_tensor(image)
    return int(image.numel() // image.shape[0] * len(channels) if channels else image.numel())


def estimate_bundle_thresholds(parser, weights: str | Path, output_path: str | Path, rule: str = "mean",
                               passes: int = 1, device: Any = None, seed: int = 0) -> dict:
    """xi of the bundle's trained model over its own training data (see the module docstring).

    Args:
        parser: the bundle's config parser (train config and overrides).
        weights: the trained model.
        output_path: the thresholds JSON file to write.
        rule: the estimation rule (:func:`robust_bundles.thresholds.estimate_thresholds`).
        passes: passes over the training data (random crops differ per pass).
        device: torch device; default CUDA when available.
        seed: MONAI determinism seed of the random crops.
    """
    from monai.data import DataLoader
    from monai.utils import set_determinism

    from ..thresholds import Thresholds, estimate_thresholds
    from ..weights import load_network_weights

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _, network = find(parser, "network")
    load_network_weights(network, weights, what="bundle's trained model", hint=FOREIGN_MISMATCH,
                         fix="train the bundle first or give --model_path PATH", map_location="cpu")
    network = network.to(dev).eval()
    from .audit import PositionDataset, _inferer

    _, inferer = _inferer(parser, "train_inferer", "trainer")
    _, loss = find(parser, "loss")
    loss_fn = PerSampleWrapper(loss)
    set_determinism(seed=seed)
    loader = DataLoader(PositionDataset(training_dataset(parser)), batch_size=1, shuffle=False, num_workers=0)
    prepare = train_prepare_batch(parser)
    values = []
    with torch.no_grad():
        for _ in range(max(1, int(passes))):
            for batch in loader:
                prepared = prepare(batch, dev)
                x, y = prepared[0], prepared[1]
                args, kwargs = (prepared[2], prepared[3]) if len(prepared) == 4 else ((), {})
                values.append(loss_fn.terms(inferer(x, network, *args, **kwargs), y).cpu())
    set_determinism(seed=None)
    v = torch.cat(values)
    xi = estimate_thresholds(v, rule, term_names=loss_fn.term_names)
    th = Thresholds(xi=xi.tolist(), term_names=list(loss_fn.term_names), rule=rule, num_samples=int(v.shape[0]),
                    checkpoint=str(weights), checkpoint_sha256=sha256_file(weights),
                    stats={"mean": v.mean(0).tolist(), "std": v.std(0, unbiased=False).tolist(),
                           "min": v.min(0).values.tolist(), "max": v.max(0).values.tolist()})
    th.save(output_path)
    logger.info(f"thresholds {dict(zip(loss_fn.term_names, xi.tolist()))} ({rule}, {v.shape[0]} training samples) "
                f"written to {output_path}")
    return th.to_dict()


NORM_DEFAULTS = {"train_eps": 2.0, "expansion_step": 1.0}
"""robustify's noise defaults, L2 norms of a training input (``eps_unit="norm"``)."""


def noise_settings(parser, given: Mapping[str, float | None], used: Sequence[str], eps_unit: str, seed: int,
                   info: dict[str, Any], channels: Sequence[int] | None = None) -> dict[str, float | None]:
    """The method's noise settings as L2 norms (what the overlays and margins use): the defaults filled in for
    ``eps_unit="norm"``; for ``"rms"`` the given values times sqrt(values of one training input). Records
    ``eps_unit``, ``input_values`` (rms) and ``noise_l2`` (the settings the run uses) in ``info``.

    Args:
        parser: the bundle's config parser (for the training input's size).
        given: the flags' values (``train_eps``, ``expansion_step``, ``initial_margin``, ``max_margin``, ``beta``).
        used: the flags the method's overlay has.
        eps_unit: ``"norm"`` or ``"rms"``.
        seed: the determinism seed of the probe of the training input.
        info: robustify's record, updated.
        channels: the attacked input channels (``rms`` counts their values only); None: every channel.

    Raises:
        ValueError: an unknown unit, or ``rms`` without a value for a noise setting the method needs.
    """
    if eps_unit not in ("norm", "rms"):
        raise ValueError(f"--eps_unit {eps_unit!r}: give 'norm' (the L2 norm of one whole training input) or 'rms' "
                         "(per-value RMS, as in robust_bundles audit --eps_unit rms).")
    noise = [k for k in ("train_eps", "expansion_step", "initial_margin", "max_margin") if k in used]
    out = {k: given.get(k) for k in noise}
    info["eps_unit"] = eps_unit
    if eps_unit == "norm":
        out.update({k: NORM_DEFAULTS[k] for k in noise if out[k] is None and k in NORM_DEFAULTS})
    else:
        missing = [k for k in noise if out[k] is None and k in NORM_DEFAULTS]
        if missing:
            flags = " ".join(f"--{k} R" for k in missing)
            raise ValueError(f"--eps_unit rms: give {flags} with R a per-value RMS (e.g. the largest eps of your "
                             f"audit with --eps_unit rms); the defaults {NORM_DEFAULTS} are L2 norms.")
        n = training_input_values(parser, seed, channels)
        scale = float(n) ** 0.5
        out = {k: (float(v) * scale if v is not None else None) for k, v in out.items()}
        info["input_values"] = n
        logger.info(f"--eps_unit rms: one training input has {n} "
                    + ("" if channels is None else f"attacked (channels {list(channels)}) ")
                    + "values, so the noise settings are L2 norms of "
                    + ", ".join(f"{k} {v:.4g}" for k, v in out.items() if v is not None))
    info["noise_l2"] = {k: v for k, v in out.items() if v is not None}
    return out


def training_attack_channels(parser, given: Any) -> tuple[list[int] | None, str]:
    """The input channels the training attack may change: ``--attack_channels`` (a list, or ``all``), else the image
    channels where the training preprocessing adds guidance or the label as channels
    (:func:`robust_bundles.foreign.channels.detect_image_channels`), else every channel (None)."""
    from .audit import underlying
    from .channels import raw_first_item, resolve_attack_channels

    if given is not None:
        return resolve_attack_channels(given, None, None)
    if find_id(parser, "train_preprocessing", required=False) is not None:  # the dataset is made only when needed
        return resolve_attack_channels(None, find(parser, "train_preprocessing")[1],
                                       lambda: raw_first_item(training_dataset(parser)))
    dataset = training_dataset(parser)
    return resolve_attack_channels(None, getattr(underlying(dataset)[0], "transform", None), raw_first_item(dataset))


def replaced_iteration_update(parser, trainer: str) -> str | None:
    """The id of the trainer's own ``iteration_update`` (None when it has none), which the method's iteration
    replaces: e.g. the click simulation (``monai.apps.deepgrow.interaction.Interaction``) of an interactive
    DeepEdit/deepgrow bundle, whose robust training then sees only the guidance its preprocessing makes."""
    from .parts import _arg

    return _arg(parser.get(), trainer, "iteration_update")


def run_id(parser, trainer: str) -> str:
    """The id of the bundle's expressions that run the trainer (``run``, ``training``...): the top-level id whose
    expression calls ``@<trainer>.run()``; ``run`` when none does."""
    for k, v in parser.get().items():
        if f"@{trainer}.run()" in json.dumps(v):
            return str(k)
    return "run"


ROBUST_RUN = "robust#run"
"""The id of the expressions robustify runs: the bundle's own run list up to its trainer's run (:func:`robust_run`)."""


def robust_run(parser, trainer: str) -> tuple[list[Any], list[Any]]:
    """The bundle's run expressions (:func:`run_id`) up to and including the trainer's ``run()``, and those after it.

    What a bundle runs after its training (``torch.save(@network.state_dict(), @bundle_root + '/models/model.pt')``,
    an export, an evaluation writing files) would write into the bundle folder, which robustify never writes to: the
    fine-tuned model is robustify's own checkpoint. Steps before the training (setup) are kept.
    """
    call = f"@{trainer}.run()"
    rid = run_id(parser, trainer)
    steps = parser.get(rid) if rid in parser else None
    steps = steps if isinstance(steps, list) else [steps] if steps is not None else []
    for n, step in enumerate(steps):
        if call in json.dumps(step):
            return list(steps[:n + 1]), list(steps[n + 1:])
    return [f"${call}"], []


def redirects(parser, user: Mapping[str, Any], out: Path) -> dict[str, str]:
    """Overrides that send what the bundle writes into ``out``: its ``ckpt_dir`` (``out/bundle_models``),
    ``output_dir`` (``out/bundle_eval``), and every dataset's ``cache_dir`` (``out/bundle_cache``); ids the user set
    are left alone. The folders are made."""
    from .parts import _components

    settings: dict[str, str] = {}
    for i, sub in (("ckpt_dir", "bundle_models"), ("output_dir", "bundle_eval")):
        if i in parser and i not in user:
            settings[i] = str(out / sub)
    for i, c in _components(parser.get()):  # PersistentDataset / LMDBDataset caches
        if "cache_dir" in c and f"{i}#cache_dir" not in user:
            settings[f"{i}#cache_dir"] = str(out / "bundle_cache")
    for v in set(settings.values()):
        Path(v).mkdir(parents=True, exist_ok=True)
    if "ckpt_dir" not in parser and "ckpt_dir" not in user:
        logger.warning("The bundle has no 'ckpt_dir' id: check that its own checkpoint savers do not write into the "
                       "bundle folder (override their save_dir).")
    return settings


def _ref_or_copy(config: Any, i: str, owner: str) -> Any:
    """``"@i"``, or a copy of the raw value when ``i`` sits inside ``owner`` (a reference to it from the overlay's
    new value of ``owner``'s argument would point at itself)."""
    from .parts import raw_get

    return copy.deepcopy(raw_get(config, i)) if i.startswith(owner + "#") else f"@{i}"


def wiring(parser) -> dict[str, Any]:
    """The ids the robust overlays need, from the bundle's own parts (:func:`robust_bundles.foreign.parts.find_id`:
    ``--parts``, else found by structure, else the conventional ids): ``robust#bundle#*`` and the trainer's
    ``loss_function``, ``iteration_update``, ``train_handlers``, and its data loader's dataset read through
    :class:`robust_bundles.foreign.audit.PositionDataset` (the sample ids). Also ``_trainer``: the trainer's id.

    Raises:
        MissingPart: a part the overlays need was not found (the message ends with the ``--parts`` fix).
    """
    from .parts import _arg

    config = parser.get()
    trainer = find_id(parser, "trainer")
    loader = find_id(parser, "train_loader")
    dataset = find_id(parser, "train_dataset")
    out: dict[str, Any] = {
        "_trainer": trainer,
        "robust#bundle#network": f"@{find_id(parser, 'train_network')}",
        "robust#bundle#loss": f"@{find_id(parser, 'loss')}",
        "robust#bundle#optimizer": f"@{find_id(parser, 'optimizer')}",
        "robust#bundle#train_dataset": _ref_or_copy(config, dataset, loader),
    }
    device = _arg(config, trainer, "device")
    out["robust#bundle#device"] = f"@{device}" if device else "$torch.device('cuda' if torch.cuda.is_available() " \
                                                              "else 'cpu')"
    pre = find_id(parser, "train_preprocessing", required=False)
    if pre is not None and dataset.startswith(loader + "#") and pre.startswith(dataset + "#"):
        pre = "robust#bundle#train_dataset" + pre[len(dataset):]  # inside the dataset copied above
    out["robust#bundle#train_transform"] = f"@{pre}" if pre else None
    out[f"{loader}#dataset"] = {"_target_": "robust_bundles.foreign.audit.PositionDataset",
                                "dataset": "@robust#bundle#train_dataset"}
    handlers = find_id(parser, "train_handlers", required=False)
    ours = "@robust#method_handlers + @robust#handlers"
    if handlers is None:
        out[f"{trainer}#train_handlers"] = f"${ours}"
    else:
        out["robust#bundle#train_handlers"] = _ref_or_copy(config, handlers, trainer)
        out[f"{trainer}#train_handlers"] = "$@robust#method_handlers + @robust#bundle#train_handlers + @robust#handlers"
    out[f"{trainer}#loss_function"] = "@robust#loss"
    out[f"{trainer}#iteration_update"] = "@robust#iteration"
    return out


def robustify(
    bundle_dir: str,
    output_dir: str | None = None,
    method: str = "amat",
    epochs: int = 5,
    model_path: str | None = None,
    config_file: str | Sequence[str] | None = None,
    threshold_rule: str = "mean",
    threshold_passes: int = 1,
    pgd_steps: int = 10,
    alpha: float = 4.0,
    expansion_step: float | None = None,
    initial_margin: float | None = None,
    max_margin: float | None = None,
    beta: float = 0.5,
    train_eps: float | None = None,
    eps_unit: str = "norm",
    override: Mapping[str, Any] | None = None,
    resume: bool = False,
    seed: int = 0,
    parts: Mapping[str, str] | None = None,
    attack_channels: Sequence[int] | str | None = None,
    bn_passes: int = 0,
    **overrides: Any,
) -> dict:
    """Fine-tune a trained MONAI bundle with a robust training method by overlays on its unchanged train config, starting from
    its trained weights (``robust_bundles robustify BUNDLE --dataset_dir D``; more in the module docstring of
    robust_bundles.foreign.robustify).

    Args:
        bundle_dir: the bundle folder; never written to.
        output_dir: where thresholds, the checkpoint, margins and logs go; default ``./robust_<method>/<bundle>``.
        method: the training method, one of {foreign_methods}.
        epochs: fine-tuning epochs (sets the trainer's ``max_epochs``).
        model_path: the trained weights to start from (a file, or a folder to pick one from); default
            ``models/model.pt`` of the bundle, else its other ``models/*.pt`` (``model_key_metric=...pt``...).
        config_file: the bundle's train config (relative to the bundle); default ``configs/train.json|yaml``.
        threshold_rule: AMAT's threshold rule ("mean", "mean_std", "median_mad", "huber", "quantile").
        threshold_passes: passes over the training data for the thresholds.
        pgd_steps: steps of the training PGD.
        alpha: its step size factor.
        expansion_step: AMAT's Delta, in ``eps_unit``; default 1.0 as an L2 norm (required with ``rms``).
        initial_margin: AMAT's A, in ``eps_unit`` (default Delta).
        max_margin: AMAT's cap, in ``eps_unit`` (default none).
        beta: AMAT's weight of the clean loss.
        train_eps: the noise level of a method with eps (VAT, TEAT, TRADES), in ``eps_unit``; default 2.0 as an L2
            norm (required with ``rms``). Other settings of the method's overlay as config ids, e.g.
            ``--robust#trades_beta 3``, ``--robust#output_activation sigmoid``.
        eps_unit: the unit of the noise settings above: ``"norm"`` (the L2 norm of one whole training input, in the
            network's input units, as the margins are kept) or ``"rms"`` (per-value RMS, the unit of ``robust_bundles
            audit --eps_unit rms``: L2 norm = rms x sqrt(number of values of one training input, channels x crop),
            measured on the first training item and written to ``robustify.json``).
        override: further config ids to set (e.g. the bundle's data and crop sizes).
        resume: continue an interrupted run of the same ``output_dir`` from its latest checkpoint (model, optimizer,
            margins, random states, trainer; the thresholds file of the first run is reused); ``epochs`` is the
            total. The run continues exactly as if it had not stopped (CPU, ``num_workers`` 0).
        seed: the determinism seed (``monai.utils.set_determinism``) of the threshold pass and of the fine-tuning
            run (shuffling, random crops, the training attack's random starts): the same command on the same machine
            writes the same model where the bundle draws its randomness from seeded sources (valve_landmarks' own
            code does not: two runs differ from the second epoch). A bundle that seeds itself in its
            ``initialize`` list keeps its own seed.
        parts: the bundle's parts by config id where finding them fails, e.g. ``{'loss': 'lossfn', 'trainer':
            'train#trainer'}``; robust training uses trainer, loss, optimizer, train_network, train_loader,
            train_dataset, train_handlers, train_preprocessing, train_inferer (see
            ``robust_bundles.foreign.parts.PARTS_HELP``); default: found from the bundle's trainer.
        attack_channels: the input channels the training attack may change, e.g. ``"[0]"``, as with
            ``robust_bundles audit --attack_channels``; the others (click guidance, a mask made from the label) keep
            their values, and the noise settings are norms on the attacked channels (with rms, over their values
            only). Default, the image channels where the training preprocessing adds guidance or the label as
            channels (logged with the reason), else every channel; ``all`` attacks every channel.
        bn_passes: when > 0, after the fine-tuning the batch norms' running statistics are recomputed over this
            many passes of the clean training data (train-mode forward passes, no gradient; recorded in
            ``robustify.json`` as ``bn_recalibration``). Default 0 keeps the statistics of the run, which saw the
            attacked inputs: recomputing them on clean data undid AMAT's gain on spleen_ct_segmentation (PGD Dice
            0.306 -> 0.034). Use it where the run leaves them stale, which robustify checks and warns about
            (``bn_stale``: a momentum of 0.01 over 16 iterations moves them 15% of the way):
            endoscopic_tool_segmentation's EfficientNet encoder, clean IoU 0.33 without, 0.91 with.
        overrides: further config ids as keyword arguments (``--dataset_dir /data``).

    Returns:
        What was done (also in ``<output_dir>/robustify.json``): ``model`` (the final checkpoint), ``thresholds``,
        ``command`` (the equivalent ``monai.bundle run`` command line), ``seconds``.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import run

    from .audit import refuse_unsupported, resolve_weights
    from .parts import load_parser

    t0 = time.time()
    root = Path(bundle_dir).resolve()
    chosen = foreign_method(method)
    method = chosen.key
    if config_file is None:
        train = config_path(root, "train")
        if train is None:
            raise FileNotFoundError(f"{root / 'configs'} has no train config (.json/.yaml): give --config_file.")
        train_files = [str(train)]
    else:
        train_files = [config_file] if isinstance(config_file, str) else list(config_file)
        train_files = [str(f if Path(f).is_absolute() else root / f) for f in train_files]
    out = (Path(output_dir) if output_dir is not None else Path(f"robust_{method}") / root.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    user = {**dict(override or {}), **overrides}
    own = {k: v for k, v in user.items() if not str(k).startswith("robust#")}  # the overlays' ids: checked stacked
    parser = load_parser(root, train_files, own, parts, command=("robustify", given_flags(robustify, locals())))
    refuse_unsupported(parser, "robustify")
    weights = resolve_weights(root, model_path, parser).resolve()
    pretrained = pretrained_off(parser, user)
    wired = wiring(parser)
    trainer = wired.pop("_trainer")
    wired[ROBUST_RUN], skipped = robust_run(parser, trainer)
    if skipped:
        logger.warning(f"robustify leaves out what the bundle runs after its training ({skipped}): it would write into "
                       "the bundle folder, and the fine-tuned model is robustify's own checkpoint.")

    info: dict[str, Any] = {"bundle": str(root), "method": method, "init_model": str(weights), "epochs": int(epochs),
                            "seed": int(seed), "skipped_run_steps": skipped}
    own_update = replaced_iteration_update(parser, trainer)
    if own_update is not None:
        info["replaced_iteration_update"] = own_update
        logger.warning(f"The bundle's trainer has its own iteration_update ({own_update!r}; e.g. the click simulation "
                       f"of an interactive bundle): the {method} iteration replaces it, so the fine-tuning sees only "
                       "the guidance the training preprocessing makes.")
    settings: dict[str, Any] = {
        "robust#init_model": str(weights), "robust#output_dir": str(out), "robust#pgd_steps": int(pgd_steps),
        "robust#alpha": float(alpha), f"{trainer}#max_epochs": int(epochs), "robust#epochs": int(epochs),
        **pretrained,
    }
    if resume:
        from ..checkpointing import latest_checkpoint

        settings["robust#resume_from"] = latest_checkpoint(out)
        info["resumed_from"] = settings["robust#resume_from"]
    files = train_files + overlay_files(method, out)
    given = {"train_eps": train_eps, "expansion_step": expansion_step, "initial_margin": initial_margin,
             "max_margin": max_margin, "beta": beta}
    ids = json.loads(Path(files[-1]).read_text())
    channels, why = training_attack_channels(parser, attack_channels)
    info["attack_channels"] = {"channels": channels if channels is not None else "all", "why": why}
    if channels is not None:
        settings["robust#attack_channels"] = channels
    given.update(noise_settings(parser, given, [k for k in FLAG_IDS if f"robust#{FLAG_IDS[k]}" in ids], eps_unit,
                                seed, info, channels))
    settings.update({f"robust#{FLAG_IDS[k]}": float(v) if v is not None else None for k, v in given.items()
                     if f"robust#{FLAG_IDS[k]}" in ids})
    if chosen.needs_thresholds:
        th_file = out / "thresholds.json"
        if resume:
            if not th_file.is_file():
                raise FileNotFoundError(f"{th_file} does not exist: --resume continues a run of the same "
                                        "--output_dir; start it without --resume.")
            info["thresholds"] = json.loads(th_file.read_text())
        else:
            info["thresholds"] = estimate_bundle_thresholds(parser, weights, th_file, threshold_rule,
                                                            threshold_passes, seed=seed)
        settings["robust#thresholds_file"] = str(th_file)
    settings.update(redirects(parser, user, out))
    # what load_parser adapted to this MONAI and machine (parts.monai_compat), for the run of the bundle's own configs
    settings.update({k: v for k, v in getattr(parser, "compat", {}).items() if k not in user})
    wiring_file = atomic_write_json(out / "bundle_wiring.json", wired)
    files = files + [str(wiring_file)]
    run_overrides = {**settings, **user}
    from .parts import _quote

    command = (f"python -m monai.bundle run {ROBUST_RUN} --config_file {_quote(repr(files))} --bundle_root "
               f"{_quote(str(root))} "
               + " ".join(f"--{k} {_quote(v if isinstance(v, str) else repr(v))}" for k, v in run_overrides.items()))
    logger.info(f"robust fine-tuning ({method}): {command}")
    # refuse unknown ids before the run (ConfigParser of the stacked files)
    stacked = ConfigParser()
    stacked.read_config(files)
    from ..command_line import unknown_override_errors

    problems = unknown_override_errors(stacked.get(), list(run_overrides))
    if problems:
        raise KeyError("; ".join(problems))
    from monai.utils import set_determinism

    set_determinism(seed=seed)  # the bundle's shuffling, random crops and the attacks' random starts
    try:
        run(run_id=ROBUST_RUN, config_file=files, bundle_root=str(root), **run_overrides)
    finally:
        set_determinism(seed=None)
    ckpt = out / "checkpoint.pt"
    if not ckpt.is_file():
        raise RuntimeError(f"The fine-tuning run ended without writing {ckpt}: see the log above.")
    info["bn_stale"] = stale_batch_norm(parser, ckpt)
    if bn_passes > 0:
        info["bn_recalibration"] = recalibrate_batch_norm(parser, ckpt, passes=bn_passes, seed=seed)
    elif info["bn_stale"]:
        logger.warning(f"batch norms: {info['bn_stale']['layers']} layers (momentum {info['bn_stale']['momentum']}) "
                       f"moved their running statistics only {info['bn_stale']['moved']:.0%} of the way to the "
                       f"fine-tuned network in {info['bn_stale']['iterations']} iterations: if the clean metric drops "
                       "in evaluation mode, rerun with --bn_passes 2 (statistics recomputed on the clean training "
                       "data) or more epochs.")
    info.update(model=str(ckpt), command=command, seconds=round(time.time() - t0, 1))
    atomic_write_json(out / "robustify.json", info)
    logger.info(f"robust model written to {ckpt} ({info['seconds']} s); audit it with: robust_bundles audit {root} "
                f"--model_path {ckpt}")
    return info


