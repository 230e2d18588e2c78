"""Epoch-end update, logging and export of the AMAT margins.

:class:`MarginHandler` runs :meth:`robust_bundles.margins.MarginBook.end_epoch` when a training epoch completes, then logs the
margin distribution, writes it to a CSV file and TensorBoard, and puts it into ``engine.state.metrics``.

Order matters: list this handler BEFORE ``CheckpointSaver`` in ``train_handlers``. Ignite runs the handlers of an event
in the order they were attached, so the epoch checkpoint then holds the margins after this epoch's update. Attached
after the saver, the checkpoint would hold the margins before the update (and the pending records), and a resume from
it would stop with the "epoch-end update never ran" error of :meth:`MarginBook.record`.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

from ..distributed import is_main_process
from ..margins import MarginBook

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["MarginHandler"]

logger = logging.getLogger("robust_bundles.margins")


def _checkpoint_savers_attached(engine: Engine, event: Any) -> bool:
    """Best effort: whether a MONAI CheckpointSaver or an ignite Checkpoint already listens to ``event``."""
    try:
        from ignite.handlers import Checkpoint
        from monai.handlers import CheckpointSaver

        for handler, *_ in engine._event_handlers.get(event, []):  # ignite keeps no public list of handlers
            parent = getattr(handler, "_parent", None)  # filtered events wrap the handler
            func = parent() if parent is not None else handler
            owner = getattr(func, "__self__", func)
            if isinstance(owner, (CheckpointSaver, Checkpoint)):
                return True
    except Exception:  # pragma: no cover - private ignite internals changed
        return False
    return False


class MarginHandler:
    """Ignite handler closing every training epoch of AMAT: margin update, log line, CSV, TensorBoard, metrics.

    Args:
        margins: the :class:`~robust_bundles.margins.MarginBook` of the training set (the same object the adversarial training
            iteration records into).
        csv_path: optional CSV file, rewritten atomically after every epoch (columns ``sample_id``, ``margin``; and
            ``key`` with ``keys``).
        summary_writer: optional ``torch.utils.tensorboard.SummaryWriter``; receives scalars under
            ``{tag_prefix}/{mean,median,q05,q95,max,expanded_fraction}`` and a histogram ``{tag_prefix}/histogram``,
            with the epoch as global step.
        log_quantiles: include the median and the 5 % / 95 % quantiles in the log line, the scalars and the metrics
            (the mean, the max and the expanded fraction are always there).
        tag_prefix: prefix of the TensorBoard tags and of the ``engine.state.metrics`` keys (``margin_mean``, ...).
        keys: optional names of the N samples (``keys[i]`` names sample id ``i``), written to the CSV.
    """

    def __init__(
        self,
        margins: MarginBook,
        csv_path: str | None = None,
        summary_writer: Any | None = None,
        log_quantiles: bool = True,
        tag_prefix: str = "margin",
        keys: Any = None,
    ) -> None:
        if not isinstance(margins, MarginBook):
            raise TypeError(f"margins must be a robust_bundles.margins.MarginBook, got {type(margins).__name__}.")
        if not tag_prefix:
            raise ValueError("tag_prefix must be a non-empty string.")
        self.margins = margins
        self.csv_path = csv_path
        self.keys = list(keys) if keys is not None else None
        self.summary_writer = summary_writer
        self.log_quantiles = bool(log_quantiles)
        self.tag_prefix = str(tag_prefix)

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``Events.EPOCH_COMPLETED`` of ``engine`` (once, even if attached twice).

        Args:
            engine: the trainer.
        """
        from ignite.engine import Events

        if engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            return
        if _checkpoint_savers_attached(engine, Events.EPOCH_COMPLETED):
            warnings.warn(
                "MarginHandler is attached after a CheckpointSaver: the epoch checkpoints will hold the margins before "
                "the epoch update. List MarginHandler before CheckpointSaver in train_handlers.",
                stacklevel=2,
            )
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reported(self, summary: dict[str, float]) -> dict[str, float]:
        names = ["mean", "median", "q05", "q95", "max"] if self.log_quantiles else ["mean", "max"]
        return {name: summary[name] for name in names + ["expanded_fraction"]}

    def __call__(self, engine: Engine) -> None:
        """Update the margins at the end of an epoch, then report them.

        Args:
            engine: the trainer; ``engine.state.epoch`` is the global step of the TensorBoard records.
        """
        epoch = int(engine.state.epoch)
        epoch_stats = self.margins.end_epoch()
        summary = self.margins.summary()
        reported = self._reported(summary)

        parts = [f"mean {summary['mean']:.4g}"]
        if self.log_quantiles:
            parts += [f"median {summary['median']:.4g}", f"q05 {summary['q05']:.4g}", f"q95 {summary['q95']:.4g}"]
        parts.append(f"max {summary['max']:.4g}")
        logger.info(
            "Epoch %d: margins %s, expanded %.1f%% of %d visited",
            epoch,
            " ".join(parts),
            100.0 * epoch_stats["expanded_fraction"],
            int(epoch_stats["visited"]),
        )

        for name, value in reported.items():
            engine.state.metrics[f"{self.tag_prefix}_{name}"] = value
        if not is_main_process():  # data-parallel: every process holds the same margins; process 0 writes them
            return
        if self.csv_path is not None:
            self.margins.to_csv(self.csv_path, self.keys)

        if self.summary_writer is not None:
            for name, value in reported.items():
                self.summary_writer.add_scalar(f"{self.tag_prefix}/{name}", value, epoch)
            self.summary_writer.add_histogram(f"{self.tag_prefix}/histogram", self.margins.margins, epoch)

