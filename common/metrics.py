"""Task metrics, per sample, as the paper reports them.

Segmentation: the average Dice index (ADI) over test slices. Per slice and foreground class c,
``Dice_c = 2 TP / (2 TP + FP + FN)`` on the hard (argmax) prediction; the slice's Dice is the mean over the foreground
classes present in the label or in the prediction of that slice; the ADI is the mean over slices.

Which slices count (``include_empty``): by default only slices whose *label* has foreground, a set that does not
depend on the model, so clean and attacked scores average over the same slices (about half of the hippocampus
slices have no foreground). With ``include_empty=True`` every slice counts, and a slice with no foreground in label
and prediction scores 1 (one with false positives only scores 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric

from .losses import primary_output

__all__ = ["as_class_indices", "slice_dice", "SliceDiceMetric", "nanmean"]


def as_class_indices(x: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Class-index map (B, *spatial) from logits/probabilities/one-hot (B, C, *spatial) or indices (B, 1, *spatial)."""
    if x.ndim >= 3 and x.shape[1] > 1:
        return x.max(1).indices  # = argmax(1), much faster on the CPU
    if x.ndim >= 3 and x.shape[1] == 1:
        return x[:, 0].round().long()
    raise ValueError(f"Expected (B, C, *spatial) or (B, 1, *spatial); got shape {tuple(x.shape)}.")


def slice_dice(pred: Any, label: torch.Tensor, num_classes: int | None = None, include_empty: bool = False) -> torch.Tensor:
    """Per-sample Dice averaged over foreground classes, shape (B,); NaN for slices that do not count.

    Args:
        pred: network output (logits (B, C, *spatial), or a tuple/dict holding it) or a class-index map
            (B, 1, *spatial).
        label: class indices (B, 1, *spatial) or one-hot (B, C, *spatial).
        num_classes: number of classes including background; default: the prediction's channel count.
        include_empty: count slices without foreground in the label (see the module docstring).
    """
    p = primary_output(pred)
    if num_classes is None:
        if p.shape[1] < 2:
            raise ValueError("num_classes is needed when the prediction is a class-index map.")
        num_classes = p.shape[1]
    pi = as_class_indices(p)
    li = as_class_indices(label)
    if pi.shape != li.shape:
        raise ValueError(f"Prediction shape {tuple(pi.shape)} and label shape {tuple(li.shape)} differ.")
    po = F.one_hot(pi.long().clamp(0, num_classes - 1), num_classes).flatten(1, -2)[..., 1:].float()
    lo = F.one_hot(li.long().clamp(0, num_classes - 1), num_classes).flatten(1, -2)[..., 1:].float()
    tp = (po * lo).sum(1)
    fp = (po * (1 - lo)).sum(1)
    fn = ((1 - po) * lo).sum(1)
    denom = 2 * tp + fp + fn  # (B, C-1)
    present = denom > 0
    dice = torch.where(present, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))
    n = present.sum(1)
    per_slice = torch.where(n > 0, (dice * present).sum(1) / n.clamp_min(1), torch.ones_like(n, dtype=dice.dtype))
    if not include_empty:
        has_fg = lo.sum((1, 2)) > 0
        per_slice = torch.where(has_fg, per_slice, torch.full_like(per_slice, float("nan")))
    return per_slice


def nanmean(values: torch.Tensor) -> float:
    """Mean over the finite values; NaN when there is none."""
    v = values[~torch.isnan(values)]
    return float(v.mean()) if v.numel() else float("nan")


class SliceDiceMetric(CumulativeIterationMetric):
    """MONAI metric of the average Dice index (see :func:`slice_dice`), usable with ``monai.handlers`` (e.g. through
    :class:`monai.handlers.IgniteMetricHandler`) as a key metric.

    Args:
        num_classes: classes including background.
        include_empty: count slices without foreground in the label.
    """

    def __init__(self, num_classes: int, include_empty: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.include_empty = include_empty

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("SliceDiceMetric needs labels.")
        # MONAI passes batch-first tensors (decollated items are stacked by the base class).
        return slice_dice(y_pred, y, self.num_classes, self.include_empty)[:, None]

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("SliceDiceMetric has no data: run it on at least one batch.")
        return torch.tensor(nanmean(data.flatten()))
