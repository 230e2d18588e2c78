"""Start a training run from the weights of a trained model (robust fine-tuning)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["InitFromCheckpoint"]


class InitFromCheckpoint:
    """Ignite handler: load the network weights of ``load_path`` when a training run starts from scratch.

    The run keeps its own optimizer, learning-rate schedule, number of epochs and method state (fresh AMAT margins or
    TEAT ensemble): only the weights come from the file (:func:`robust_bundles.finetune.load_weights`). The
    provenance (path, SHA-256, number of tensors, the run's epochs) is written to ``<record_dir>/init_from.json``,
    which the experiment report reads to mark the run as fine-tuned.

    On ``Events.STARTED``. A resumed run must not be re-initialised: the bundle's ``finetune.json`` disables this
    handler when ``--resume`` is on; and since it is attached with the trainer, before the resume ``CheckpointLoader``,
    that loader would overwrite the weights anyway. Under DDP every rank loads the same file; rank 0 writes the record.

    Args:
        load_path: the trained model: a state dict (``models/<run>/model.pt``) or a checkpoint holding one under
            ``"model"`` (``checkpoint.pt``).
        network: the trained network (the trainer's; a DDP wrapper is fine).
        map_location: device the weights are loaded to (e.g. the bundle's ``@device``); default CPU.
        strict: refuse weights that do not fit the network exactly (default); False copies the entries that fit.
        record_dir: folder of the provenance record (the run's ``ckpt_dir``); None writes none.
        name: logger name; None uses the engine's logger.
        hint: what to do when the file holds another network (the bundle's ``network_hint``).
    """

    def __init__(
        self,
        load_path: str,
        network: torch.nn.Module,
        map_location: Any = None,
        strict: bool = True,
        record_dir: str | None = None,
        name: str | None = None,
        hint: str | None = None,
    ) -> None:
        if not load_path:
            raise ValueError("load_path must name the trained model to start from (init_from).")
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        self.load_path = str(load_path)
        self.network = network
        self.map_location = map_location if map_location is not None else "cpu"
        self.strict = bool(strict)
        self.record_dir = record_dir
        self.hint = hint
        self._name = name
        self.logger = logging.getLogger(name)
        self.info: dict | None = None

    def attach(self, engine: Engine) -> None:
        """Register on ``Events.STARTED`` of the trainer (once)."""
        from ignite.engine import Events

        if self._name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Load the weights and write the provenance record."""
        from ..finetune import load_weights, write_init_record  # here: robust_bundles.finetune imports handlers

        info = load_weights(self.network, self.load_path, map_location=self.map_location, strict=self.strict,
                            hint=self.hint)
        info["max_epochs"] = engine.state.max_epochs
        self.info = info
        skipped = f", {len(info['skipped'])} left at their initial values" if info["skipped"] else ""
        self.logger.info(f"Fine-tuning from {info['init_from']} (sha256 {info['sha256'][:12]}, "
                         f"{info['tensors']} tensors{skipped})")
        rank0 = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
            torch.distributed.get_rank() == 0
        if self.record_dir is not None and rank0:
            write_init_record(self.record_dir, info)
