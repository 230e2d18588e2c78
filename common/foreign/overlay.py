"""What the method overlays of ``configs/foreign/`` need to stack on a foreign bundle's unchanged train config.

- :class:`SampleIds`: stable integer sample ids, the position of each sample in the bundle's training dataset under
  its ``Subset`` wrappers (read from the ``sample_position`` that :class:`robust_bundles.foreign.audit.PositionDataset`
  adds to each item; the wiring reads the trainer's dataset through it), named by the image file name where the
  dataset has a datalist of file paths and ``item_<i>`` otherwise (NPZ arrays, ``CacheDataset`` over arrays). Every
  random crop of one sample has the sample's id (and margin); the ids are the same in every epoch and at resume.
- :class:`CaseIds`: ids from the image file names of a datalist (the first form of the overlays; kept for scripts).
- :func:`method_overlay`: a registered method's foreign overlay, derived from its entry in
  :mod:`robust_bundles.methods` (its ``params``) and its base overlay (``common/configs/base/<key>.json``) with the
  ids of the project's ``train.json`` it reads mapped to their ``robust#`` counterparts (:data:`FOREIGN_IDS`); nobody
  writes a method's foreign overlay by hand.
- :class:`WithSampleIds`: a method's iteration with the ids put into the batch (the foreign datalist has no
  ``sample_id``).

The bundle's parts the overlays use are named under ``robust#bundle`` (network, loss, optimizer, device,
train_dataset, train_transform); ``robust_bundles robustify`` writes them, with the trainer's ``loss_function``,
``iteration_update`` and ``train_handlers``, into a wiring file stacked last (:func:`robust_bundles.foreign.
robustify.wiring`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import torch

from ..margins import MarginBook
from .audit import POSITION_KEY, case_of, underlying

__all__ = ["FOREIGN_IDS", "CaseIds", "SampleIds", "WithSampleIds",
           "batch_cases", "foreign_methods", "method_overlay"]


def batch_cases(batchdata: Any, image_key: str = "image") -> list[str]:
    """The case names of a collated batch, from the image metadata's file names."""
    if not isinstance(batchdata, dict) or image_key not in batchdata:
        raise KeyError(f"The batch has no {image_key!r} entry to read the sample's file name from.")
    meta = getattr(batchdata[image_key], "meta", None) or {}
    names = meta.get("filename_or_obj")
    if names is None:
        raise KeyError(
            f"The batch's {image_key!r} has no metadata 'filename_or_obj': keep MONAI's metadata (LoadImaged without "
            "image_only=True, no transform that drops MetaTensors before the trainer) so that samples can be named."
        )
    if isinstance(names, (str, os.PathLike)):
        names = [names]
    return [case_of(n) for n in names]


class CaseIds:
    """Case name -> integer id in ``[0, N)``, from the training datalist (the order of ``data``).

    Args:
        data: the training datalist (items with an ``image`` path), e.g. ``@train#dataset#data``.
        image_key: the image key of the items and batches.
    """

    def __init__(self, data: Sequence[Any], image_key: str = "image") -> None:
        names = []
        for i, d in enumerate(data):
            if not isinstance(d, dict) or not isinstance(d.get(image_key), (str, os.PathLike)):
                what = ({k: type(v).__name__ for k, v in d.items()} if isinstance(d, dict) else type(d).__name__)
                raise TypeError(f"Training datalist item {i} has no {image_key!r} file path (it holds {what}): name "
                                "the samples by position instead with robust_bundles.foreign.overlay.SampleIds.")
            names.append(case_of(d[image_key]))
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"Training images share file names {dup[:5]}: sample ids come from the file name, so "
                             "each case needs its own.")
        if not names:
            raise ValueError("The training datalist is empty.")
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        self.image_key = image_key

    def __len__(self) -> int:
        return len(self.names)

    def digest(self) -> str:
        """Fingerprint of the id table (stored with the margins, checked at resume)."""
        return MarginBook.digest_keys(self.names)

    def __call__(self, batchdata: Any, device: Any = None) -> torch.Tensor:
        cases = batch_cases(batchdata, self.image_key)
        missing = [c for c in cases if c not in self.index]
        if missing:
            raise KeyError(f"Sample(s) {missing[:3]} are not in the training datalist the ids were made from.")
        return torch.tensor([self.index[c] for c in cases], dtype=torch.long, device=device)


def sample_names(dataset: Any, image_key: str = "image") -> list[str]:
    """The names of the samples of the data under ``dataset``'s ``Subset`` wrappers, by position: the image file
    names of its datalist when they are all file paths with distinct names, else ``item_<i>``."""
    base, _ = underlying(dataset)
    n = len(base)
    data = base if isinstance(base, Sequence) and not isinstance(base, (str, bytes)) else getattr(base, "data", None)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) == n and all(
            isinstance(d, dict) and isinstance(d.get(image_key), (str, os.PathLike)) for d in data):
        names = [case_of(d[image_key]) for d in data]
        if len(set(names)) == n:
            return names
    return [f"item_{i}" for i in range(n)]


class SampleIds:
    """Sample id = position in the training dataset under its ``Subset`` wrappers (see the module docstring).

    Args:
        dataset: the bundle's training dataset (the trainer's data loader's dataset), e.g. ``@train#dataset``.
        image_key: the image key, for the names.
    """

    def __init__(self, dataset: Any, image_key: str = "image") -> None:
        try:
            self.names = sample_names(dataset, image_key)
        except TypeError as e:
            raise TypeError(f"The training dataset ({type(dataset).__name__}) has no length, so its samples cannot be "
                            "numbered: robust training needs a map-style dataset.") from e
        if not self.names:
            raise ValueError("The training dataset is empty: check the dataset folder (--dataset_dir).")

    def __len__(self) -> int:
        return len(self.names)

    def digest(self) -> str:
        """Fingerprint of the id table (stored with the margins, checked at resume)."""
        return MarginBook.digest_keys(self.names)

    def __call__(self, batchdata: Any, device: Any = None) -> torch.Tensor:
        if not isinstance(batchdata, dict) or POSITION_KEY not in batchdata:
            keys = sorted(batchdata) if isinstance(batchdata, dict) else type(batchdata).__name__
            raise KeyError(f"The batch has no {POSITION_KEY!r} (it has {keys}): read the trainer's dataset through "
                           "robust_bundles.foreign.audit.PositionDataset (robust_bundles robustify's wiring does).")
        ids = torch.as_tensor(batchdata[POSITION_KEY]).reshape(-1).long()
        if ids.numel() and (ids.min() < 0 or ids.max() >= len(self.names)):
            raise IndexError(f"Sample positions {ids.tolist()[:5]} are outside the training dataset of "
                             f"{len(self.names)} samples.")
        return ids.to(device) if device is not None else ids


class WithSampleIds:
    """A method's ``iteration_update`` on a foreign bundle: puts the sample ids (:class:`SampleIds`) into the batch
    under the iteration's ``id_key``, then runs it.

    Args:
        ids: the :class:`SampleIds` of the training data.
        iteration: the method's iteration (a ``robust_bundles.adversarial.AdversarialIteration``).
    """

    def __init__(self, ids: Any, iteration: Any) -> None:
        self.ids = ids
        self.iteration = iteration

    def __call__(self, engine: Any, batchdata: Any) -> Any:
        if isinstance(batchdata, dict):
            batchdata = {**batchdata, getattr(self.iteration, "id_key", "sample_id"): self.ids(batchdata)}
        return self.iteration(engine, batchdata)


FOREIGN_IDS = {
    "train#trainer#iteration_update": "robust#method_iteration",
    "train#save_dict": "robust#save_dict",
    "train#method_handlers": "robust#method_handlers",
    "train#datalist": "robust#ids",
    "training_attack": "robust#channel_attack",
    "training_memory": "robust#memory",
    "loss": "robust#loss",
    "epochs": "robust#epochs",
    "ckpt_dir": "robust#output_dir",
    "thresholds_file": "robust#thresholds_file",
    "sample_digest": "robust#sample_digest",
}
"""The ids of the project's ``train.json`` a base method overlay reads or sets, and their counterparts in
``configs/foreign/robust.json``; every other id the overlay defines goes under ``robust#`` (``amat_beta`` ->
``robust#amat_beta``)."""
_DROPPED = ("run_name",)  # the project's run naming: a foreign run is named by its output folder
_REF = re.compile(r"@([A-Za-z_][\w#]*)")


def foreign_methods() -> list:
    """The registered methods robustify trains (every method with an overlay; STD is the bundle's own training)."""
    from .. import methods

    return list(methods.with_overlay())


def _foreign_id(i: str, own: set[str], method: str) -> str:
    for k, v in FOREIGN_IDS.items():
        if i == k or i.startswith(k + "#"):
            return v + i[len(k):]
    if i.split("#", 1)[0] in own:
        return f"robust#{i}"
    raise KeyError(f"{method}'s base overlay reads @{i}, which a foreign bundle has no counterpart for: add it to "
                   "robust_bundles.foreign.overlay.FOREIGN_IDS (and robust#... to configs/foreign/robust.json).")


def _rewrite(value: Any, own: set[str], method: str) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite(v, own, method) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, own, method) for v in value]
    if isinstance(value, str):
        return _REF.sub(lambda m: "@" + _foreign_id(m.group(1), own, method), value)
    return value


def method_overlay(name: str) -> dict[str, Any]:
    """The foreign overlay of a registered method (stacked after ``configs/foreign/robust.json``): its entry's
    ``params`` and its base overlay under ``robust#`` (:data:`FOREIGN_IDS`), its iteration wrapped in
    :class:`WithSampleIds` as ``robust#iteration``, its margin handlers naming the samples.

    Raises:
        KeyError: no such method; ValueError: a method without an overlay (STD: the bundle's own training).
    """
    from .. import methods
    from ..bundle_configs import family_dir

    m = methods.get(name)
    if not m.overlay:
        known = ", ".join(x.key for x in foreign_methods())
        raise ValueError(f"Method {m.name} has no overlay: it is the bundle's own training. Use one of {known}.")
    path = family_dir("base") / m.overlay
    base = {**dict(m.params), **json.loads(path.read_text())}
    own = {k.split("#", 1)[0] for k in base}
    out: dict[str, Any] = {"_desc": f"{m.name} on a foreign bundle (after robust.json), derived from the registry "
                                    f"entry and {path.parent.name}/{path.name} by robust_bundles.foreign.overlay."
                                    f"method_overlay: {m.description}."}
    for k, v in base.items():
        if k in _DROPPED or k.startswith("_desc"):
            continue
        out[_foreign_id(k, own, m.name)] = _rewrite(v, own, m.name)
    for h in out.get("robust#method_handlers", []):
        if isinstance(h, dict) and str(h.get("_target_", "")).endswith("MarginHandler") and "keys" not in h:
            h["keys"] = "$@robust#ids.names"  # margins.csv names the samples (image file names, item_<i>)
    out["robust#iteration"] = {"_target_": "robust_bundles.foreign.overlay.WithSampleIds", "ids": "@robust#ids",
                               "iteration": "@robust#method_iteration"}
    return out


class TrainerCheckpointSaver:
    """The final checkpoint of a robust fine-tuning run: ``save_dict`` plus the trainer it is attached to, written
    whole (:class:`robust_bundles.handlers.AtomicCheckpointSaver`) to ``<save_dir>/checkpoint.pt`` at the end of
    every epoch and of the run. The trainer is taken at attach time, so the overlay's handler list can be part of
    the trainer's own config (a ``save_dict`` naming ``@train#trainer`` there would be a circular reference).

    Args:
        save_dir: the folder.
        save_dict: objects with a state dict (model, optimizer, margins).
        filename: the checkpoint's file name.
    """

    def __init__(self, save_dir: str, save_dict: dict, filename: str = "checkpoint.pt") -> None:
        if not save_dir:
            raise ValueError("save_dir must name the output folder (robust#output_dir).")
        self.save_dir = str(save_dir)
        self.save_dict = dict(save_dict)
        self.filename = filename

    def attach(self, engine) -> None:
        from ..handlers.checkpoint_saver import AtomicCheckpointSaver

        saver = AtomicCheckpointSaver(save_dir=self.save_dir, save_dict={**self.save_dict, "trainer": engine},
                                      save_final=True, final_filename=self.filename, save_interval=1, n_saved=1,
                                      epoch_level=True)
        saver.attach(engine)


class TrainerCheckpointLoader:
    """Resume a robust fine-tuning run: load ``load_dict`` plus the trainer it is attached to from ``load_path``
    (MONAI's ``CheckpointLoader``, ``weights_only`` loading, on ``Events.STARTED``); nothing when ``load_path`` is
    empty. The trainer keeps the run's ``max_epochs`` (a resumed run may be given more epochs).

    Args:
        load_path: the checkpoint (``robust_bundles.checkpointing.latest_checkpoint`` of the output folder), or "".
        load_dict: the objects of the run's ``save_dict`` (model, optimizer, margins, random states).
        map_location: ``torch.load``'s map_location.
    """

    def __init__(self, load_path: str | None, load_dict: dict, map_location: Any = None) -> None:
        self.load_path = str(load_path) if load_path else ""
        self.load_dict = dict(load_dict)
        self.map_location = map_location

    def attach(self, engine) -> None:
        if not self.load_path:
            return
        from monai.handlers import CheckpointLoader

        CheckpointLoader(load_path=self.load_path, load_dict={**self.load_dict, "trainer": engine},
                         map_location=self.map_location).attach(engine)
