"""2D object detection with MONAI's RetinaNet under the project's attacks and adversarial training.

What a detection bundle plugs into a stock ``SupervisedTrainer`` / ``SupervisedEvaluator`` (``decollate=False``):

- ``detector``: :func:`build_detector` (``RetinaNetDetector`` with ATSS matcher, hard-negative sampler, box selector);
  the engines' ``network`` is ``detector.network``.
- ``loss``: :class:`RetinaNetLoss`, per-image terms (classification, box_regression), K = 2.
- batches: :func:`collate_detection` (DataLoader) and :class:`DetectionPrepareBatch` (engines' ``prepare_batch``):
  images (B, C, X, Y) plus a list of per-image target dicts.
- data: :func:`detection_preprocessing` / :class:`ResizeBoxd` (load, [0, 1] RGB, resize with boxes).
- metric: :class:`COCODetectionMetric` (mAP@[.5:.95], mAP@.5, per-class AP; a dataset-level accumulator).
- inference: :func:`run_inference` (JSON + overlay PNG per image), or :class:`DetectionWriter` on an evaluator.

Attack input (state it with every number): the network input, a (3, X, Y) RGB image in [0, 1] (``value / 255``) at the
network input size (e.g. 320 x 320), X along image columns; the L2 norm and eps are per image over all 3 * X * Y
values; attacks clamp to [0, 1]. For a 320 x 320 input, eps 5 is a root-mean-square change of
5 / sqrt(3 * 320 * 320) = 0.009 (2.3 grey levels of 255) per value.

MONAI's detection code needs torchvision: install the ``detection`` extra (``pip install -e ".[detection]"``).
"""

from .adapter import DetectionAdapter
from .batch import BOX_KEYS, DetectionPrepareBatch, collate_detection
from .heads import RetinaNetHeads
from .inference import (
    DETECTION_MEASURES,
    DetectionConfidence,
    DetectionWriter,
    detect,
    detection_result,
    draw_overlay,
    image_files,
    run_inference,
    write_detections,
)
from .loss import RetinaNetLoss
from .metric import COCODetectionMetric
from .network import BACKBONES, build_detector, build_retinanet, level_strides
from .transforms import ResizeBoxd, boxes_to_original, detection_preprocessing

__all__ = [
    "BOX_KEYS",
    "DetectionAdapter",
    "BACKBONES",
    "COCODetectionMetric",
    "DetectionPrepareBatch",
    "DetectionWriter",
    "DetectionConfidence",
    "DETECTION_MEASURES",
    "ResizeBoxd",
    "RetinaNetHeads",
    "RetinaNetLoss",
    "boxes_to_original",
    "build_detector",
    "build_retinanet",
    "collate_detection",
    "detect",
    "detection_result",
    "detection_preprocessing",
    "draw_overlay",
    "image_files",
    "level_strides",
    "run_inference",
    "write_detections",
]
