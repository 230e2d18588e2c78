"""A task metric (:class:`robust_bundles.metrics.TaskMetric`) as an Ignite metric of a MONAI evaluator.

MONAI's ``IgniteMetricHandler`` gives a metric ``(y_pred, y)`` only; a task metric also reads per-sample metadata from
the batch (pixel spacing, original image size, landmark coordinates, boxes). :class:`TaskIgniteMetric` passes it the
network output and the collated batch, so that a task metric can be an evaluator's ``key_val_metric``::

    "key_metric": {"val_MRE": {"_target_": "robust_bundles.handlers.TaskIgniteMetric",
                               "metric": {"_target_": "robust_bundles.tasks.landmarks.LandmarkMetric", ...}}}

The value under the key is the headline metric (``metric.specs[0]``, or ``name``); every other spec of the metric is
put into ``engine.state.metrics`` as ``<key>_<spec name>``. For a lower-is-better headline (MRE), give the evaluator
``"metric_cmp_fn": "$lambda current, best: current < best"`` and the best-model ``CheckpointSaver``
``"key_metric_negative_sign": true``.

Under DDP each rank aggregates the samples of its own shard (no gathering): evaluate on one process.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.utils import CommonKeys

from ..engine_io import engine_pred_and_batch
from ..metrics import TaskMetric

__all__ = ["TaskIgniteMetric", "engine_pred_and_batch"]


class TaskIgniteMetric(Metric):
    """Ignite metric around a task metric (see the module docstring).

    Args:
        metric: the task metric (a deep copy is used, so one config object can serve several evaluators).
        name: the spec reported as this metric's value; default the headline (first spec).
        pred_key: the key of the network output in the engine output.
    """

    def __init__(self, metric: TaskMetric, name: str | None = None, pred_key: str = CommonKeys.PRED) -> None:
        if not isinstance(metric, TaskMetric):
            raise TypeError(f"metric must be a robust_bundles.metrics.TaskMetric; got {type(metric).__name__}.")
        self.metric = copy.deepcopy(metric)
        self.value_name = name if name is not None else self.metric.headline.name
        self.metric.spec(self.value_name)  # a clear error for an unknown name
        self.pred_key = pred_key
        super().__init__(output_transform=lambda output: output, device="cpu")

    def reset(self) -> None:
        self.metric.reset()

    def update(self, output: Any) -> None:  # pragma: no cover - iteration_completed passes the batch itself
        raise RuntimeError("TaskIgniteMetric is updated from the engine (output and batch), not from an output alone.")

    def iteration_completed(self, engine: Engine) -> None:
        pred, batch = engine_pred_and_batch(engine, self.pred_key)
        with torch.no_grad():
            self.metric.update(pred, batch)

    def compute(self) -> float:
        self._last = self.metric.aggregate()
        return self._last[self.value_name]

    def completed(self, engine: Engine, name: str) -> None:
        engine.state.metrics[name] = self.compute()
        for other, value in self._last.items():
            if other != self.value_name:
                engine.state.metrics[f"{name}_{other}"] = value
