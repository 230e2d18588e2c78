"""Robust fine-tuning: start a training run from the weights of a trained model instead of a random initialisation.

What most users want is "make my trained model robust", not "retrain from scratch": VAT, TEAT or AMAT then starts
from, e.g., the STD model that the experiment trains anyway (for AMAT's thresholds xi) or a model-zoo model. Only the
network weights are taken from the file; the run has its own optimizer (fresh state), learning-rate schedule, number
of epochs, and fresh AMAT margins or TEAT ensemble. :class:`robust_bundles.handlers.InitFromCheckpoint` does this in a
bundle (``configs/finetune.json``); the functions here are its library core:

    info = load_weights(network, "models/std/model.pt")   # what was loaded, with the file's SHA-256
    write_init_record("models/amat", info)                # models/amat/init_from.json: the run's provenance
    read_init_record("models/amat")                       # -> the dict, or None for a run trained from scratch

Accepted files (``torch.load(weights_only=True)``): a state dict (``model.pt`` as MONAI's ``CheckpointSaver`` writes
it) or a checkpoint dict holding it under ``"model"``, ``"network"``, ``"net"`` or ``"state_dict"``
(``checkpoint.pt``). Keys saved from a ``DistributedDataParallel`` network (``module.`` prefix) are accepted, and a
DDP-wrapped network is loaded through its ``module``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch

from .distributed import unwrap
from .io import atomic_write_json
from .thresholds import sha256_file
from .weights import WEIGHT_KEYS, load_network_weights, read_weights

__all__ = ["INIT_RECORD", "WEIGHT_KEYS", "load_weights", "write_init_record", "read_init_record"]

INIT_RECORD = "init_from.json"
"""File name of the provenance record in a run's model folder (``models/<run>/init_from.json``)."""



_FIX = ("train that model first (the experiment's STD run writes models/std/model.pt), or set --init_from to a "
        "model.pt or checkpoint.pt file")
_HINT = ("Fine-tune with the network settings the model was trained with (--filters, --patch_size, the profile it was "
         "trained with), or give init_from the weights of this network.")


def load_weights(
    network: torch.nn.Module,
    path: str | os.PathLike,
    map_location: Any = "cpu",
    strict: bool = True,
    hint: str | None = None,
) -> dict[str, Any]:
    """Copy the weights stored in ``path`` into ``network`` (in place; the optimizer's references stay valid).

    The file is read and checked by :mod:`robust_bundles.handlers.model_loader` (the bundle's one weights loader):
    the same accepted layouts and the same error messages as loading a trained model for evaluation.

    Args:
        network: the network to initialise (a DDP wrapper is loaded through its ``module``).
        path: a state dict or checkpoint file (see the module docstring).
        map_location: where tensors are loaded (``torch.load``'s argument), e.g. the training device.
        strict: refuse any missing, unexpected or differently shaped entry (the default). False copies the matching
            entries only (e.g. a new output layer) and reports the others in the returned dict.
        hint: what to do when the file holds another network (strict), e.g. the bundle's ``network_hint``.

    Returns:
        The provenance: ``init_from`` (absolute path), ``sha256`` of the file, ``tensors`` (number loaded),
        ``skipped`` (keys of the network left at their initial values; empty when strict), ``loaded_at`` (UTC, ISO).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says how to make it).
        ValueError: the file holds no state dict, or (strict) it does not fit the network; the message names the keys.
    """
    path = Path(path).expanduser()
    net = unwrap(network)
    what = "initial model (init_from)"
    if strict:
        load_network_weights(net, path, what, _FIX, hint or _HINT, map_location)
        own = net.state_dict()
        usable = own
    else:
        state = read_weights(path, what, _FIX, map_location)
        own = net.state_dict()
        usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        net.load_state_dict(usable, strict=False)
    return {
        "init_from": str(path.resolve()),
        "sha256": sha256_file(path),
        "tensors": len(usable),
        "skipped": sorted(k for k in own if k not in usable),
        "loaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_init_record(run_dir: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """Write ``info`` (from :func:`load_weights`, plus anything else) to ``<run_dir>/init_from.json``, atomically."""
    return atomic_write_json(Path(run_dir) / INIT_RECORD, dict(info))


def read_init_record(run_dir: str | os.PathLike) -> dict | None:
    """The provenance record of a run folder (``models/<run>``), or None for a run trained from scratch.

    Raises:
        ValueError: the record exists but is not a JSON object (the message names the file).
    """
    path = Path(run_dir) / INIT_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): delete it or re-run the fine-tuning.") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object: delete it or re-run the fine-tuning.")
    return data
