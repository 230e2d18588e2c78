"""What a training checkpoint must hold besides the model and optimizer, so that kill-and-resume equals the
uninterrupted run bit for bit (on the CPU).

- :class:`RandomStates`: the random-number generators (Python, NumPy, PyTorch CPU and CUDA, and the random
  transforms of the training data). Without them the data order, random crops and PGD random starts after a resume
  differ from the run that was not interrupted.
- :class:`ValidationState`: the best validation metric so far (the evaluator's ``best_metric`` and the best-model
  saver's record). Without it the first validation after a resume counts as a new best and overwrites
  ``model_best_val.pt`` with a worse model.

Both are put into the trainer's ``save_dict`` (MONAI's ``CheckpointSaver`` calls ``state_dict()`` when it saves at
the end of an epoch, after validation; ``CheckpointLoader`` calls ``load_state_dict()`` when a resumed run starts,
before the next epoch draws its first random number). State dicts hold tensors and plain containers only, so MONAI
loads them with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

__all__ = ["RandomStates", "ValidationState", "latest_checkpoint"]

logger = logging.getLogger("robust_bundles.checkpointing")


def _numpy_state(rs: np.random.RandomState) -> dict:
    name, keys, pos, has_gauss, cached = rs.get_state()
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(rs: np.random.RandomState, state: Mapping) -> None:
    keys = np.asarray(state["keys"].cpu().numpy(), dtype=np.uint32)
    rs.set_state(("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])))


def _random_transforms(transform: Any) -> Iterator[Any]:
    """Every transform with its own random state (MONAI ``Randomizable``) inside ``transform`` (Compose nests)."""
    from monai.transforms import Randomizable

    seen: set[int] = set()
    stack = [transform]
    while stack:
        t = stack.pop(0)
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        if isinstance(t, Randomizable) and isinstance(getattr(t, "R", None), np.random.RandomState):
            yield t
        inner = getattr(t, "transforms", None)
        if isinstance(inner, (list, tuple)):
            stack[:0] = list(inner)


class RandomStates:
    """The random-number generators of a training run, as a checkpointable object.

    Args:
        transform: the training data's transform (e.g. ``@train#preprocessing``); the random states of its random
            transforms are saved too, in order. Data-loader worker processes keep their own generators: exact
            resume needs ``num_workers`` 0 (the bundles' default).
    """

    VERSION = 1

    def __init__(self, transform: Any = None) -> None:
        self.transform = transform

    def state_dict(self) -> dict:
        py_version, py_state, py_gauss = random.getstate()
        state = {
            "version": self.VERSION,
            "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss": py_gauss},
            "numpy": _numpy_state(np.random.mtrand._rand),  # the generator behind np.random.*
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "transforms": [_numpy_state(t.R) for t in _random_transforms(self.transform)],
        }
        return state

    def load_state_dict(self, state: Mapping) -> None:
        if int(state.get("version", 0)) != self.VERSION:
            raise ValueError(f"Random states of version {state.get('version')} cannot be restored by this version "
                             f"({self.VERSION}): resume with the version that wrote the checkpoint.")
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        _set_numpy_state(np.random.mtrand._rand, state["numpy"])
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available():
            if len(state["cuda"]) != torch.cuda.device_count():
                logger.warning("the checkpoint holds %d CUDA generator states but %d devices are visible: "
                               "GPU random numbers after the resume differ from the uninterrupted run",
                               len(state["cuda"]), torch.cuda.device_count())
            else:
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        transforms = list(_random_transforms(self.transform))
        if len(transforms) != len(state["transforms"]):
            raise ValueError(
                f"The checkpoint holds the random states of {len(state['transforms'])} random transform(s) but the "
                f"training data now has {len(transforms)}: resume with the same augmentation settings."
            )
        for t, s in zip(transforms, state["transforms"]):
            _set_numpy_state(t.R, s)


class ValidationState:
    """The best validation metric of a training run and the best-model saver's record, as a checkpointable object.

    Args:
        evaluator: the validation evaluator (its ``state.best_metric`` and ``best_metric_epoch``).
        saver: the ``CheckpointSaver`` that keeps the best model (``save_key_metric=True``), or None.
    """

    def __init__(self, evaluator: Any, saver: Any = None) -> None:
        self.evaluator = evaluator
        self.saver = saver

    def _key_checkpoint(self) -> Any:
        return getattr(self.saver, "_key_metric_checkpoint", None) if self.saver is not None else None

    def state_dict(self) -> dict:
        state = self.evaluator.state
        ckpt = self._key_checkpoint()
        return {
            "best_metric": float(getattr(state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
            "saved": [[float(p), str(f)] for p, f in ckpt._saved] if ckpt is not None else [],
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.evaluator.state.best_metric = float(state["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state["best_metric_epoch"])
        ckpt = self._key_checkpoint()
        if ckpt is not None:
            ckpt.load_state_dict({"_saved": [(p, f) for p, f in state["saved"]]})


def latest_checkpoint(ckpt_dir: str | os.PathLike, final_name: str = "checkpoint.pt") -> str:
    """The checkpoint to resume from: the newest readable one of ``final_name`` and the ``*epoch=N.pt`` files.

    Checkpoints are ordered by the epoch stored in them (the file name's N for epoch checkpoints); a file that cannot
    be read (e.g. truncated by a crash while an older version of the saver wrote it) is skipped with a warning, so a
    resume falls back to the previous complete checkpoint.

    Raises:
        FileNotFoundError: no readable checkpoint in ``ckpt_dir``; the message names the folder and the fix.
    """
    d = Path(ckpt_dir)
    candidates: list[tuple[int, int, Path]] = []
    unreadable: list[str] = []
    if d.is_dir():
        for f in d.glob("*.pt"):
            m = re.search(r"epoch=(\d+)", f.name)
            if m is None and f.name != final_name:
                continue
            epoch = _epoch_of(f)
            if epoch is None:
                unreadable.append(f.name)
                continue
            candidates.append((epoch, int(f.name == final_name), f))
    for name in sorted(unreadable):
        logger.warning(
            f"{d / name} cannot be read (damaged or not a training checkpoint): not resuming from it"
        )
    if not candidates:
        found = f" ({', '.join(sorted(unreadable))} cannot be read)" if unreadable else ""
        raise FileNotFoundError(
            f"No checkpoint to resume from in {d}{found}: train first (without --resume), or point --ckpt_dir to the "
            f"run."
        )
    return str(max(candidates, key=lambda c: (c[0], c[1]))[2])



def _epoch_of(path: Path) -> int | None:
    """The epoch a training checkpoint was saved at, or None when it cannot be read or holds no trainer state."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        state = sd["trainer"]
        if "epoch" in state:
            return int(state["epoch"])
        # an ignite Engine.state_dict() holds the iteration and the epoch length, not the epoch
        return int(state["iteration"]) // max(int(state["epoch_length"]), 1)
    except Exception:
        return None

