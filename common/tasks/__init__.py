"""Task adapters: what one kind of task adds to the shared core (targets, decoding, per-sample loss terms, metrics).

Each module is a small adapter plugged in by a bundle's config; none edits another task or the core. An adapter is a
small set of components a bundle config wires into a stock MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator`` and
into the core's attacks, thresholds and adversarial iterations:

- a per-sample, per-term loss (:class:`robust_bundles.losses.PerSampleLoss` interface),
- the batch layout (a collate function and a ``prepare_batch``) when samples do not stack into tensors,
- a metric accumulator with a direction (:mod:`robust_bundles.metrics`),
- decoding and inference helpers.

The contract is code: :class:`TaskAdapter`, a ``Protocol`` that each task's adapter class implements
(:class:`robust_bundles.tasks.segmentation.SegmentationAdapter`, :class:`robust_bundles.tasks.landmarks.LandmarkAdapter`,
:class:`robust_bundles.tasks.detection.DetectionAdapter`; ``tests/test_task_adapters.py`` checks all three).

In the bundles' shared base configs (``robust_bundles/configs/base/``) a task fills these ids, each used
by every engine and dataloader that needs it: ``loss``, ``metric``, ``network_def``, ``samples`` (the reader: samples
with a stable ``sample_id``, splits), ``sample_preprocessing``, ``sample_digest``, ``collate_fn``, ``prepare_batch``,
``decollate`` and ``loss_output`` (MONAI's defaults in the base), plus its key metrics and inference writer.

The adapters: :mod:`robust_bundles.tasks.segmentation` (2D slices of 3D MRI, Dice + CE, slice Dice),
:mod:`robust_bundles.tasks.landmarks` (heatmap + offset heads, MRE/SDR in mm) and :mod:`robust_bundles.tasks.detection`
(RetinaNet, COCO mAP).

Subpackages are imported on demand, so a task's optional dependencies are only needed by the bundles that use it:
:mod:`robust_bundles.tasks.detection` (2D object detection with MONAI's RetinaNet) needs ``torchvision``, the
``detection`` extra.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

__all__ = ["TaskAdapter"]


@runtime_checkable
class TaskAdapter(Protocol):
    """What a task gives the shared core, one method or attribute per part of the contract.

    Attributes:
        name: the task's name (``"segmentation"``, ``"landmarks"``, ``"detection"``).
        id_keys: the batch keys that name a sample in reports (the stable ``sample_id`` first).
        output_activation: how the network's outputs are distributions, for the output-space terms of TEAT and
            TRADES (``robust_bundles.adversarial``): ``"softmax"``, ``"sigmoid"``, ``"none"`` for the main output or a
            dict of them by head; the bundles' ``task.json`` ``method_values`` state the same.
    """

    name: str
    id_keys: tuple[str, ...]
    output_activation: Any

    def loss(self) -> Any:
        """The per-sample loss (``robust_bundles.losses.PerSampleLoss``): ``terms(pred, target) -> (B, K)`` named by
        ``term_names``, weighted by ``term_weights``; ``forward`` gives the (B,) totals."""

    def metric(self) -> Any:
        """The metric (``robust_bundles.metrics.TaskMetric``): its ``specs`` are ``MetricSpec`` objects (name, unit,
        direction), the first the headline."""

    def collate_fn(self) -> Callable | None:
        """The batch layout: the data loader's collate function (None: MONAI's ``list_data_collate``)."""

    def prepare_batch(self) -> Callable | None:
        """The engines' ``prepare_batch`` (None: MONAI's ``default_prepare_batch``, an (image, label) pair)."""

    def decode(self, pred: Any) -> Any:
        """The prediction of a batch of raw network outputs (class indices, landmark coordinates, detections)."""

    def confidence(self) -> Callable[..., dict]:
        """A callable ``(pred, batch=None) -> {measure: (B,) tensor}``: the per-image confidence measures."""
