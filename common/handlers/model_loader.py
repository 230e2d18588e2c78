"""Load a trained network's weights with errors that say what to do (a missing file, a corrupt file, another network)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from ignite.engine import Engine, Events

from ..weights import WEIGHT_KEYS, load_network_weights, read_weights, state_dict_of

__all__ = ["ModelLoader", "WEIGHT_KEYS", "load_network_weights", "read_weights", "state_dict_of"]

logger = logging.getLogger("robust_bundles.model")


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
