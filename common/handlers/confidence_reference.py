"""ConfidenceReferenceSaver: the distribution of the confidence measures over the validation images, written beside
the model's weights, that inference compares each image with (:mod:`robust_bundles.confidence`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ignite.engine import Engine, Events

from ..confidence import REFERENCE_FILE, ConfidenceReference
from ..data.synthetic import is_synthetic
from .task_metric import engine_pred_and_batch

__all__ = ["ConfidenceReferenceSaver"]


class ConfidenceReferenceSaver:
    """Attach to a validation evaluator: after each validation run, ``<save_dir>/confidence_reference.json`` holds
    the distribution of the confidence measures over its images (the last validation is the final model's).

    Args:
        measure: the family's per-batch measure, ``measure(pred, batch) -> {name: (B,) tensor}`` with a ``measures``
            attribute (``robust_bundles.tasks.landmarks.LandmarkConfidence``,
            ``robust_bundles.tasks.detection.DetectionConfidence``).
        family: "landmarks" or "detection".
        save_dir: the run folder (beside ``model.pt``).
        dataset_dir: the validation data's folder, to say in the file what the reference was computed on.
        split: the split's name, for the same.
    """

    def __init__(self, measure: Callable[[Any, Any], Mapping[str, Any]], family: str, save_dir: str | os.PathLike,
                 dataset_dir: str | os.PathLike | None = None, split: str = "validation") -> None:
        if not hasattr(measure, "measures"):
            raise TypeError(f"measure {type(measure).__name__} has no 'measures' (the list of robust_bundles.confidence"
                            f".Measure it returns).")
        self.measure, self.family, self.path = measure, family, Path(save_dir) / REFERENCE_FILE
        data = "synthetic data" if is_synthetic(dataset_dir) else str(dataset_dir) if dataset_dir else "the data"
        self.source = f"{split} split of {data}"
        self.reference = ConfidenceReference(family, measure.measures, source=self.source)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self.reference = ConfidenceReference(self.family, self.measure.measures, source=self.source)

    def __call__(self, engine: Engine) -> None:
        pred, batch = engine_pred_and_batch(engine)
        self.reference.update(self.measure(pred, batch))

    def completed(self, engine: Engine) -> None:
        import ignite.distributed as idist

        if idist.get_rank() == 0:  # under DDP: the reference of rank 0's share of the validation images
            self.reference.finish().save(self.path)
