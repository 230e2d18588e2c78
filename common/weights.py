"""Read a trained network's weights with errors that say what to do (a missing file, a corrupt file, pickled code,
another network). The library's one reader of weight files: the model loader handler, fine-tuning and the foreign
bundle tools use it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["WEIGHT_KEYS", "load_network_weights", "read_weights", "state_dict_of"]


WEIGHT_KEYS = ("model", "network", "net", "state_dict")
"""Entries of a checkpoint dict that may hold the network's state dict, in the order they are tried."""


def state_dict_of(checkpoint: Any, path: str | os.PathLike, key: str = "model") -> Mapping[str, torch.Tensor]:
    """The network state dict in a loaded file: a plain state dict (``model.pt``) or a training checkpoint that
    holds it under ``key`` (or another of :data:`WEIGHT_KEYS`). Keys saved from a ``DistributedDataParallel``
    network (all with the ``module.`` prefix) come back without the prefix."""
    weights = None
    if isinstance(checkpoint, Mapping):
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            weights = checkpoint
        else:
            weights = next((checkpoint[k] for k in (key, *WEIGHT_KEYS) if isinstance(checkpoint.get(k), Mapping)
                            and all(isinstance(v, torch.Tensor) for v in checkpoint[k].values())), None)
    if weights is None:
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path} holds no network weights: expected a state dict (models/<run>/model.pt) or a checkpoint with a "
            f"{key!r} entry; it has {found}."
        )
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k[len("module."):]: v for k, v in weights.items()}
    return weights


def read_weights(
    path: str | os.PathLike,
    what: str = "trained model",
    fix: str = "train it first, or give its path with --model_path PATH",
    map_location: Any = "cpu",
) -> Mapping[str, torch.Tensor]:
    """The network state dict stored in ``path`` (:func:`state_dict_of`), read with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file (the message names ``what`` and the ``fix``).
        ValueError: the file cannot be read or holds no weights.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"The {what} {p} does not exist: {fix}.")
    try:
        checkpoint = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # objects beyond tensors and plain containers (possibly code)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[-1] if lines else "")
        raise ValueError(
            f"Refusing the {what} {p}: it holds pickled Python objects, not only tensors ({detail}); loading them "
            f"could run code, so it is read with weights_only=True only. Use weights from a source you trust (e.g. "
            f"download the bundle again), or re-save the network's state dict alone: "
            f"torch.save(model.state_dict(), path)."
        ) from None
    except Exception as e:  # truncated zip, not a torch file
        raise ValueError(
            f"Cannot read the {what} {p} ({type(e).__name__}: {e}): the file is corrupt or not a PyTorch weights file; "
            f"train again or download the bundle again."
        ) from e
    return state_dict_of(checkpoint, p)


def _shape(t: Any) -> str:
    return "x".join(str(s) for s in t.shape) if isinstance(t, torch.Tensor) else "?"


def load_network_weights(
    network: torch.nn.Module,
    path: str | os.PathLike,
    what: str = "trained model",
    fix: str = "train it first, or give its path with --model_path PATH",
    hint: str | None = None,
    map_location: Any = "cpu",
) -> None:
    """Load ``path`` into ``network``, or raise an error that names the file, what is wrong and the fix.

    Args:
        network: the network built by the config.
        path: a state dict file (``model.pt``) or a training checkpoint with a ``"model"`` entry
            (:func:`state_dict_of`).
        what: what the file is, for the messages ("trained model of run 'amat'").
        fix: what to do when the file does not exist.
        hint: what to do when the file holds another network, e.g. which settings (``--filters``, a profile) decide
            the network's size in this bundle.
        map_location: ``torch.load``'s map_location.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read, holds no weights, or holds weights of another network (the message
            lists the first parameters whose names or shapes differ).
    """
    from .distributed import unwrap

    network = unwrap(network)
    p = Path(path)
    weights = read_weights(p, what, fix, map_location)
    own = network.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or mismatched:
        lines = [f"{k}: file {_shape(weights[k])}, network {_shape(own[k])}" for k in mismatched[:3]]
        lines += [f"{k}: missing in the file" for k in missing[:2]]
        lines += [f"{k}: not in the network" for k in unexpected[:2]]
        more = len(mismatched) + len(missing) + len(unexpected) - len(lines)
        raise ValueError(
            f"The {what} {p} was trained with another network than this config builds "
            f"({len(mismatched)} parameters differ in shape, {len(missing)} missing, {len(unexpected)} unexpected; "
            f"{'; '.join(lines)}{f'; and {more} more' if more > 0 else ''}). "
            + (hint or "Give the same network settings as when it was trained (profile and overrides).")
        )
    network.load_state_dict(weights)
