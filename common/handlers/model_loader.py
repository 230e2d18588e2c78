"""Load a trained network's weights with errors that say what to do (a missing file, a corrupt file, another network)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events

__all__ = ["ModelLoader", "load_network_weights", "state_dict_of"]

logger = logging.getLogger("robust_bundles.model")


def state_dict_of(checkpoint: Any, path: str | os.PathLike, key: str = "model") -> Mapping[str, torch.Tensor]:
    """The network state dict in a loaded file: a plain state dict (``model.pt``) or a training checkpoint that
    holds it under ``key``."""
    if isinstance(checkpoint, Mapping) and key in checkpoint and isinstance(checkpoint[key], Mapping):
        return checkpoint[key]
    if isinstance(checkpoint, Mapping) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(
        f"{path} holds no network weights: expected a state dict (models/<run>/model.pt) or a checkpoint with a "
        f"{key!r} entry; it has {sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__}."
    )


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
        path: a state dict file (``model.pt``) or a training checkpoint with a ``"model"`` entry.
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
    from ..distributed import unwrap

    network = unwrap(network)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"The {what} {p} does not exist: {fix}.")
    try:
        checkpoint = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, not a torch file
        raise ValueError(
            f"Cannot read the {what} {p} ({type(e).__name__}: {e}): the file is corrupt or not a PyTorch weights file; "
            f"train again or download the bundle again."
        ) from e
    weights = state_dict_of(checkpoint, p)
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


class ModelLoader:
    """Load the network's weights when an evaluator (or trainer) starts, with clear errors (see
    :func:`load_network_weights`). Use it instead of MONAI's ``CheckpointLoader`` for a trained model.

    Args:
        load_path: the weights file (``model.pt``) or a training checkpoint with a ``"model"`` entry.
        network: the network to load into.
        what, fix, hint, map_location: see :func:`load_network_weights`.
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        network: torch.nn.Module,
        what: str = "trained model",
        fix: str = "train it first, or give its path with --model_path PATH",
        hint: str | None = None,
        map_location: Any = "cpu",
    ) -> None:
        self.load_path = str(load_path)
        self.network = network
        self.what, self.fix, self.hint, self.map_location = what, fix, hint, map_location

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        load_network_weights(self.network, self.load_path, self.what, self.fix, self.hint, self.map_location)
        logger.info(f"Restored the network weights from {self.load_path}")
