"""Segmentation as a task adapter (see :mod:`robust_bundles.tasks`): the per-sample loss, the metric and the
sample ids of the three MRI bundles.

- loss: :class:`DiceCELoss`, terms ``("dice", "ce")``; decoding: argmax over the channels (:func:`as_class_indices`);
- metric: :class:`SliceDice` (a :class:`robust_bundles.metrics.TaskMetric`; :class:`SliceDiceMetric` is the same
  number as a MONAI metric for an evaluator's key metric);
- sample ids: :data:`ID_KEYS` (one sample is one 2D slice of a case);
- TEAT: one head (the soft target is the softmax of the full-resolution output).

Segmentation (:class:`SliceDice`, :func:`slice_dice`): the average Dice index (ADI) over test slices. Per slice and
foreground class c, ``Dice_c = 2 TP / (2 TP + FP + FN)`` on the hard (argmax) prediction; the slice's Dice is the
mean over the foreground classes present in the label or in the prediction of that slice; the ADI is the mean over
slices.

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

from ..losses import PerSampleLoss, primary_output
from ..metrics import MetricSpec, PerSampleMetric, batch_value, nanmean

__all__ = ["ID_KEYS", "DiceCELoss", "SliceDice", "SliceDiceMetric", "as_class_indices", "slice_dice"]

ID_KEYS = ("sample_id", "case", "slice")
"""The batch keys that name a segmentation sample in reports: the stable sample id, the case and the slice index."""


class DiceCELoss(PerSampleLoss):
    """Soft Dice + cross-entropy for segmentation, per sample: terms ("dice", "ce").

    Per-sample Dice term (documented choice): ``1 - mean_c Dice_c`` over the foreground classes ``c`` that are present
    in the label or in the prediction (argmax) of that sample. A sample with no foreground in either has Dice term 0:
    it is segmented correctly, and a smoothed soft Dice there would sit near 1 whatever the model does (which inflates
    thresholds and makes such samples fail every robustness test). Soft Dice_c = 2 sum(p_c y_c) / (sum p_c + sum y_c).

    The CE term is the mean voxel cross-entropy of the sample.

    Deep supervision: when ``deep_supervision=True`` and the prediction has one more dimension than the label
    one-hot (DynUNet in train mode returns (B, S, C, *spatial)), the terms are the weighted average over the S heads
    with weights 1/2^s normalised to sum 1 (as nnU-Net), the label being resized (nearest) to each head.

    Args:
        include_background: also average the Dice over class 0.
        lambda_dice: weight of the Dice term in the per-sample total.
        lambda_ce: weight of the CE term in the per-sample total.
        deep_supervision: accept stacked deep-supervision outputs.
        spatial_dims: number of spatial dimensions (2 or 3); tells a deep-supervision stack (B, S, C, *spatial)
            from a plain output (B, C, *spatial) when no label is at hand (``primary``).
        smooth: small constant in the Dice denominator, avoids 0/0 (in units of voxels).
    """

    term_names = ("dice", "ce")

    def __init__(
        self,
        include_background: bool = False,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        deep_supervision: bool = False,
        spatial_dims: int = 2,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.term_weights = (float(lambda_dice), float(lambda_ce))
        self.deep_supervision = deep_supervision
        self.spatial_dims = spatial_dims
        self.smooth = smooth

    def primary(self, pred: Any) -> torch.Tensor:
        p = primary_output(pred)
        if self.deep_supervision and p.ndim == self.spatial_dims + 3:
            return p[:, 0]
        return p

    def _label_indices(self, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Target as class indices of shape (B, *spatial), long."""
        if target.ndim == pred.ndim and target.shape[1] == 1:
            target = target[:, 0]
        elif target.ndim == pred.ndim and target.shape[1] == pred.shape[1] and target.shape[1] > 1:
            target = target.argmax(1)
        if target.ndim != pred.ndim - 1 or target.shape[1:] != pred.shape[2:]:
            raise ValueError(
                f"Label shape {tuple(target.shape)} does not match prediction shape {tuple(pred.shape)}: expected a "
                "label of shape (B, 1, *spatial) with class indices, or one-hot (B, C, *spatial)."
            )
        return target.long()

    def _single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        idx = self._label_indices(target, logits)
        num_classes = logits.shape[1]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
            raise ValueError(
                f"Label values must lie in [0, {num_classes - 1}] for a {num_classes}-channel prediction; found "
                f"[{int(idx.min())}, {int(idx.max())}]."
            )
        logits = logits.float()
        ce = F.cross_entropy(logits, idx, reduction="none").flatten(1).mean(1)
        prob = logits.softmax(1)
        onehot = F.one_hot(idx, num_classes).movedim(-1, 1).to(prob.dtype)
        dims = tuple(range(2, logits.ndim))
        inter = (prob * onehot).sum(dims)
        denom = prob.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)  # (B, C)
        with torch.no_grad():
            # max(1).indices equals argmax(1) (ties, NaN) and is ~30x faster on the CPU for channel-first maps
            hard = F.one_hot(logits.max(1).indices, num_classes).movedim(-1, 1)
            present = (onehot.sum(dims) > 0) | (hard.sum(dims) > 0)  # (B, C)
        start = 0 if self.include_background else 1
        dice, present = dice[:, start:], present[:, start:]
        n_present = present.sum(1)
        mean_dice = (dice * present).sum(1) / n_present.clamp_min(1)
        dice_term = torch.where(n_present > 0, 1 - mean_dice, torch.zeros_like(mean_dice))
        return torch.stack([dice_term, ce], dim=1)

    def terms(self, pred: Any, target: torch.Tensor) -> torch.Tensor:
        p = primary_output(pred)
        if self.deep_supervision and p.ndim == self.spatial_dims + 3:
            heads = p.shape[1]
            w = torch.tensor([0.5**s for s in range(heads)], device=p.device)
            w = w / w.sum()
            out = 0.0
            for s in range(heads):
                head = p[:, s]
                t = target
                if head.shape[2:] != target.shape[2:]:
                    t = F.interpolate(target.float(), size=head.shape[2:], mode="nearest")
                out = out + w[s] * self._single(head, t)
            return out  # type: ignore[return-value]
        return self._single(p, target)


class SliceDice(PerSampleMetric):
    """The average Dice index over slices (see :func:`slice_dice`) as a task metric: spec ``dice``, higher is better.

    Args:
        num_classes: classes including background; default: the prediction's channel count.
        include_empty: count slices without foreground in the label.
        label_key: the batch key of the label map (class indices (B, 1, *spatial)).
        name: the metric's name in reports.
    """

    def __init__(self, num_classes: int | None = None, include_empty: bool = False, label_key: str = "label",
                 name: str = "dice") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.include_empty = include_empty
        self.label_key = label_key
        counted = "every slice" if include_empty else "slices whose label has foreground"
        self.specs = (MetricSpec(name, "", True, f"Dice index per slice, mean over the foreground classes present, "
                                               f"averaged over {counted}"),)

    def compute(self, output: Any, batch: Any) -> dict[str, torch.Tensor]:
        pred = primary_output(output)
        label = batch_value(batch, self.label_key, pred.device, "Dice metric")
        return {self.specs[0].name: slice_dice(pred, label, self.num_classes, self.include_empty)}


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
