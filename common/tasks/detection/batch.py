"""Detection batches through MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` unchanged.

Images of one size stack into a tensor; their boxes do not (every image has its own number). The design:

1. The ``DataLoader`` collates with :func:`collate_detection`: a dict whose ``image`` is a (B, C, X, Y) tensor,
   ``sample_id`` a (B,) int64 tensor (AMAT's and TEAT's stable ids, as :func:`robust_bundles.adversarial.batch_sample_ids`
   reads them), box-like keys (``boxes``, ``labels``, ``difficult``) lists of B tensors, other per-image values stacked
   when they can be (``original_size`` (B, 2)) and lists otherwise (``name``, ``image`` paths).
2. The engine's ``prepare_batch`` is :class:`DetectionPrepareBatch`: it returns ``(images, targets)`` with ``images`` the
   (B, C, X, Y) float tensor on the device and ``targets`` a list of B dicts in the detector's keys (``boxes`` float
   (N_b, 4), ``labels`` int64 (N_b,)), also on the device.
3. The engine's network is ``detector.network`` and its loss :class:`~robust_bundles.tasks.detection.RetinaNetLoss`,
   which takes the network's raw output and that list of targets. ``SupervisedTrainer`` then computes
   ``loss(network(images), targets).mean()``, and VAT/TEAT/AMAT (:mod:`robust_bundles.adversarial`) attack ``images``
   with the targets passed through unchanged: the perturbation, its L2 norm and eps are per image on the (C, X, Y)
   tensor in [0, 1] at the network input size.
4. Engines use ``decollate=False``: MONAI's decollation cannot split lists of variable-size boxes, and the threshold
   handler and the metric read the batched output dict (``pred`` = raw head outputs, ``label`` = the target list).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import convert_to_tensor

__all__ = ["BOX_KEYS", "collate_detection", "DetectionPrepareBatch"]

#: Keys whose per-image values have a variable length and are kept as lists of tensors.
BOX_KEYS = ("boxes", "labels", "difficult")


def collate_detection(items: Sequence[Mapping[str, Any]], box_keys: Sequence[str] = BOX_KEYS) -> dict[str, Any]:
    """Collate detection samples into one dict (use as the ``DataLoader``'s ``collate_fn``).

    Args:
        items: samples (dicts) after the transforms; every sample has the same keys.
        box_keys: keys holding per-object values of variable length: kept as lists of tensors.

    Returns:
        A dict: tensors of equal shape (``image``, ``sample_id``, sizes) and numbers stacked, ``box_keys`` as lists of
        tensors, anything else (strings, ragged values) as a list.

    Raises:
        ValueError: the samples have different keys, or images of different shapes (resize them to the network input
            size first).
    """
    if not items:
        raise ValueError("collate_detection got an empty list of samples.")
    keys = list(items[0])
    for i, it in enumerate(items):
        if set(it) != set(keys):
            raise ValueError(f"Sample {i} has keys {sorted(it)} but sample 0 has {sorted(keys)}.")
    out: dict[str, Any] = {}
    for k in keys:
        values = [it[k] for it in items]
        if k in box_keys:
            out[k] = [convert_to_tensor(v, track_meta=False) for v in values]
            continue
        if all(isinstance(v, (torch.Tensor,)) or _is_array(v) for v in values):
            tensors = [convert_to_tensor(v, track_meta=False) for v in values]
            if all(t.shape == tensors[0].shape for t in tensors):
                out[k] = torch.stack(tensors)
            elif k == "image":
                shapes = sorted({tuple(t.shape) for t in tensors})
                raise ValueError(
                    f"Images of different shapes {shapes} in one batch: resize every image to the network input size "
                    "(robust_bundles.tasks.detection.ResizeBoxd) before batching."
                )
            else:
                out[k] = tensors
        elif all(isinstance(v, (bool, int, float)) for v in values):
            out[k] = torch.as_tensor(values)
        elif all(isinstance(v, (list, tuple)) and all(isinstance(e, (int, float)) for e in v) for v in values) and len(
            {len(v) for v in values}
        ) == 1:
            out[k] = torch.as_tensor(values)
        else:
            out[k] = list(values)
    return out


def _is_array(v: Any) -> bool:
    return hasattr(v, "__array__") and hasattr(v, "shape")


class DetectionPrepareBatch(PrepareBatch):
    """``prepare_batch`` for detection: ``(images (B, C, X, Y) float, targets: list of B dicts)`` on the device.

    Args:
        detector: the ``RetinaNetDetector``; its ``target_box_key`` / ``target_label_key`` name the target dicts' keys
            (None: ``"boxes"`` / ``"labels"``).
        image_key: batch key of the image tensor.
        box_key: batch key of the per-image box lists (``[xmin, ymin, xmax, ymax]`` in input pixels).
        label_key: batch key of the per-image label lists (class indices).
    """

    def __init__(
        self, detector: Any = None, image_key: str = "image", box_key: str = "boxes", label_key: str = "labels"
    ) -> None:
        self.image_key, self.box_key, self.label_key = image_key, box_key, label_key
        self.target_box_key = getattr(detector, "target_box_key", "boxes")
        self.target_label_key = getattr(detector, "target_label_key", "labels")

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        if not isinstance(batchdata, Mapping):
            raise TypeError(
                f"A detection batch is a dict (robust_bundles.tasks.detection.collate_detection as the DataLoader's "
                f"collate_fn); got {type(batchdata).__name__}."
            )
        missing = [k for k in (self.image_key, self.box_key, self.label_key) if k not in batchdata]
        if missing:
            raise KeyError(f"The batch has no {missing} (it has {sorted(batchdata)}).")
        images = convert_to_tensor(batchdata[self.image_key], track_meta=False)
        if not isinstance(images, torch.Tensor) or images.ndim < 3:
            raise ValueError(
                "The batch image must be a (B, C, *spatial) tensor: collate with "
                "robust_bundles.tasks.detection.collate_detection."
            )
        images = images.to(device=device, dtype=torch.float32, non_blocking=non_blocking, **kwargs)
        boxes, labels = batchdata[self.box_key], batchdata[self.label_key]
        if len(boxes) != images.shape[0] or len(labels) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(boxes)} box lists and {len(labels)} label lists.")
        spatial = images.ndim - 2
        targets = [
            {
                self.target_box_key: torch.as_tensor(b).to(device=device, dtype=torch.float32).reshape(-1, 2 * spatial),
                self.target_label_key: torch.as_tensor(l).to(device=device, dtype=torch.long).reshape(-1),
            }
            for b, l in zip(boxes, labels)
        ]
        return images, targets
