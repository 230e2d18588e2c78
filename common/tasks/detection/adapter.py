"""Object detection in the task contract (:class:`robust_bundles.tasks.TaskAdapter`)."""

from __future__ import annotations

from typing import Any, Sequence

from .batch import DetectionPrepareBatch, collate_detection
from .heads import RetinaNetHeads
from .inference import DetectionConfidence
from .loss import RetinaNetLoss
from .metric import COCODetectionMetric

__all__ = ["DetectionAdapter"]


class DetectionAdapter:
    """RetinaNet detection: classification + box-regression terms per image, COCO mAP, boxes as per-image lists
    (:func:`collate_detection`, :class:`DetectionPrepareBatch`), the detector's decoding, max score and box count.

    Args:
        detector: the configured ``RetinaNetDetector`` (:func:`robust_bundles.tasks.detection.build_detector`).
        classes: the class names.
        image_size: the network input size (X, Y).
        loss_settings: keywords of :class:`RetinaNetLoss`.
    """

    name = "detection"
    id_keys = ("sample_id", "name")
    output_activation = {"classification": "sigmoid"}  # independent class probabilities per anchor; boxes: none

    def __init__(self, detector: Any, classes: Sequence[str], image_size: Sequence[int], **loss_settings: Any) -> None:
        self.detector, self.classes, self.image_size = detector, list(classes), list(image_size)
        self.loss_settings = loss_settings

    def loss(self) -> RetinaNetLoss:
        return RetinaNetLoss(self.detector, self.image_size, **self.loss_settings)

    def metric(self) -> COCODetectionMetric:
        return COCODetectionMetric(self.detector, self.classes, self.image_size)

    def collate_fn(self):
        return collate_detection

    def prepare_batch(self) -> DetectionPrepareBatch:
        return DetectionPrepareBatch(self.detector)

    def decode(self, pred: Any) -> list[dict]:
        return RetinaNetHeads(self.detector, self.image_size).decode(pred)

    def confidence(self) -> DetectionConfidence:
        return DetectionConfidence(self.detector, self.image_size)
