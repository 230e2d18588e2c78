"""COCO detection metrics as an accumulator: mAP@[.5:.95], mAP@.5 and per-class AP, with MONAI's ``COCOMetric``.

:class:`COCODetectionMetric` is a :class:`robust_bundles.metrics.TaskMetric` of the task-general core:

- ``specs``: one :class:`MetricSpec` (name, unit, higher_is_better, description) per reported value;
- ``per_sample = False``: the values are dataset-level (an AP pools every detection of every image);
- ``reset()``, ``update(output, batch)``, ``aggregate() -> {name: float}``.

``update`` takes the raw eval-mode head outputs of ``detector.network`` and decodes them with the detector's own
post-processing (anchors, box decoding, score threshold, top-k, NMS: :meth:`RetinaNetHeads.decode`), then matches
them with the ground truth of the batch (``monai.apps.detection.metrics.matching.matching_batch``, MONAI's ``box_iou``).
Boxes are compared at the network input size; the per-axis resize keeps every IoU, so the numbers equal those in the
original frame. VOC ``difficult`` objects, when the batch has them, are ignored (neither a hit nor a miss).

Classes absent from the ground truth: MONAI's ``COCOMetric`` averages a precision of -1 for them into its mAP. Here,
as in the COCO API, mAP is the mean of the per-class APs over the classes that have ground truth (identical to MONAI's
number when every class is present), and an absent class's AP is NaN.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ...metrics import MetricSpec, TaskMetric
from .heads import RetinaNetHeads

__all__ = ["COCODetectionMetric"]

logger = logging.getLogger("robust_bundles.tasks.detection")


class COCODetectionMetric(TaskMetric):
    """COCO mAP of a RetinaNet over an evaluator's data.

    Args:
        detector: the configured ``RetinaNetDetector`` (its post-processing decodes the outputs).
        classes: class names in label order (``BCCD_CLASSES``).
        image_size: network input size; None infers it from the outputs (:class:`RetinaNetHeads`).
        max_detections: detections per image that count, best scores first (COCO: 100).
        box_key, label_key, difficult_key: batch keys of the ground truth (lists of per-image tensors, as
            :func:`~robust_bundles.tasks.detection.collate_detection` makes them).

    Reported values (``specs``): ``mAP`` (COCO mAP@[.5:.95]), ``mAP50`` (AP at IoU 0.5, averaged over classes), and
    ``AP_<class>`` (mAP@[.5:.95] of one class). All dimensionless, higher is better.
    """

    per_sample = False

    def __init__(
        self,
        detector: Any,
        classes: Sequence[str],
        image_size: Sequence[int] | None = None,
        max_detections: int = 100,
        box_key: str = "boxes",
        label_key: str = "labels",
        difficult_key: str = "difficult",
    ) -> None:
        from monai.apps.detection.metrics.coco import COCOMetric

        self.heads = heads = RetinaNetHeads(detector, image_size)
        self.classes = tuple(str(c) for c in classes)
        if len(self.classes) != heads.num_classes:
            raise ValueError(
                f"{len(self.classes)} class names {list(self.classes)} for a detector with {heads.num_classes} classes."
            )
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"Class names must be unique; got {list(self.classes)}.")
        self.max_detections = int(max_detections)
        self.box_key, self.label_key, self.difficult_key = box_key, label_key, difficult_key
        self.coco = COCOMetric(
            classes=self.classes,
            iou_list=(0.5,),
            iou_range=(0.5, 0.95, 0.05),
            max_detection=(self.max_detections,),
            per_class=True,
            verbose=False,
        )
        self.specs = (
            MetricSpec("mAP", "", True, "COCO mAP@[0.5:0.95] (mean over classes with ground truth)"),
            MetricSpec("mAP50", "", True, "AP at IoU 0.5, mean over classes with ground truth"),
        ) + tuple(MetricSpec(f"AP_{c}", "", True, f"AP@[0.5:0.95] of class {c}") for c in self.classes)
        self._results: list[dict] = []

    def clone(self) -> "COCODetectionMetric":
        """A fresh, empty accumulator with the same settings (sharing the detector, not copying it)."""
        return COCODetectionMetric(
            self.heads.detector, self.classes, self.heads.image_size, self.max_detections,
            self.box_key, self.label_key, self.difficult_key,
        )

    def __deepcopy__(self, memo: dict) -> "COCODetectionMetric":
        """A copy with its own results that shares the detector (the robustness handler copies the metric per attack
        and eps; decoding only reads the detector's settings and anchors, so copying its network would only cost)."""
        other = self.clone()
        other._results = copy.deepcopy(self._results, memo)
        return other

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._results = []

    @property
    def num_images(self) -> int:
        return len(self._results)

    def _ground_truth(self, batch: Any) -> tuple[list, list, list | None]:
        if isinstance(batch, Mapping):
            if self.box_key not in batch or self.label_key not in batch:
                raise KeyError(f"The batch has no {self.box_key!r}/{self.label_key!r} (it has {sorted(batch)}).")
            boxes, labels = batch[self.box_key], batch[self.label_key]
            ignore = batch.get(self.difficult_key)
        elif isinstance(batch, (list, tuple)) and all(isinstance(t, Mapping) for t in batch):
            det = self.heads.detector
            boxes = [t[det.target_box_key] for t in batch]
            labels = [t[det.target_label_key] for t in batch]
            ignore = [t[self.difficult_key] for t in batch] if all(self.difficult_key in t for t in batch) else None
        else:
            raise TypeError(
                f"update() needs the batch dict (collate_detection) or a list of target dicts; got {type(batch).__name__}."
            )
        return list(boxes), list(labels), (list(ignore) if ignore is not None else None)

    def update(self, output: Any, batch: Any) -> None:
        """Add a batch (dataset-level metric: returns None, no per-image values).

        Args:
            output: raw eval-mode head outputs of ``detector.network`` for the batch (or their packed tensor).
            batch: the collated batch dict (``boxes``, ``labels`` and optionally ``difficult``: lists of B tensors, boxes
                in network-input pixels), or the list of B target dicts that ``DetectionPrepareBatch`` returns.
        """
        self.update_detections(self.heads.decode(output), batch)

    def update_detections(self, preds: Sequence[Mapping[str, Any]], batch: Any) -> None:
        """Add a batch of decoded detections (what :meth:`update` does after decoding).

        Args:
            preds: one dict per image with the detector's keys: boxes (N, 2D) in network-input pixels, labels (N,),
                scores (N,) (``labels_scores`` by default).
            batch: the ground truth, as in :meth:`update`.
        """
        from monai.apps.detection.metrics.matching import matching_batch
        from monai.data.box_utils import box_iou

        det = self.heads.detector
        gt_boxes, gt_labels, gt_ignore = self._ground_truth(batch)
        if len(gt_boxes) != len(preds) or len(gt_labels) != len(preds):
            raise ValueError(f"{len(preds)} images in the output but {len(gt_boxes)} in the batch's ground truth.")

        def np_(x: Any, dtype, shape=None) -> np.ndarray:
            a = torch.as_tensor(x).detach().cpu().numpy().astype(dtype)
            return a.reshape(shape) if shape is not None else a.reshape(-1)

        dims = self.heads.box_dims
        self._results.extend(
            matching_batch(
                iou_fn=box_iou,
                iou_thresholds=self.coco.iou_thresholds,
                pred_boxes=[np_(p[det.target_box_key], np.float32, (-1, dims)) for p in preds],
                pred_classes=[np_(p[det.target_label_key], np.int64) for p in preds],
                pred_scores=[np_(p[det.pred_score_key], np.float32) for p in preds],
                gt_boxes=[np_(b, np.float32, (-1, dims)) for b in gt_boxes],
                gt_classes=[np_(c, np.int64) for c in gt_labels],
                gt_ignore=[np_(g, bool) for g in gt_ignore] if gt_ignore is not None else None,
                max_detections=self.max_detections,
            )
        )

    def aggregate(self) -> dict[str, float]:
        """``{"mAP": ..., "mAP50": ..., "AP_<class>": ...}`` over every image since the last reset.

        Raises:
            ValueError: no image was added.
        """
        if not self._results:
            raise ValueError("COCODetectionMetric has no data: call update() on at least one batch.")
        values, _ = self.coco(self._results)
        r0, r1, step = self.coco.iou_range
        span = f"mAP_IoU_{r0:.2f}_{r1:.2f}_{step:.2f}_MaxDet_{self.max_detections}"
        at50 = f"AP_IoU_0.50_MaxDet_{self.max_detections}"
        per_class = {c: float(values[f"{c}_{span}"]) for c in self.classes}
        per_class50 = {c: float(values[f"{c}_{at50}"]) for c in self.classes}
        # -1 marks a class without ground truth (COCOMetric's convention); it must not enter the mean
        present = [c for c in self.classes if per_class[c] >= 0]
        absent = [c for c in self.classes if c not in present]
        if absent:
            logger.warning(f"no ground truth of class(es) {absent} in {len(self._results)} images: AP is NaN there")
        out = {
            "mAP": float(np.mean([per_class[c] for c in present])) if present else math.nan,
            "mAP50": float(np.mean([per_class50[c] for c in present])) if present else math.nan,
        }
        out.update({f"AP_{c}": (per_class[c] if c in present else math.nan) for c in self.classes})
        return out
