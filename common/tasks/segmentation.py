"""Segmentation as a task adapter (see :mod:`robust_bundles.tasks`): the per-sample loss, the metric and the
sample ids of the three MRI bundles.

- loss: :class:`DiceCELoss`, terms ``("dice", "ce")``; decoding: argmax over the channels (:func:`as_class_indices`);
- metric: :class:`SliceDice` (a :class:`robust_bundles.metrics.TaskMetric`; :class:`SliceDiceMetric` is the same
  number as a MONAI metric for an evaluator's key metric);
- sample ids: :data:`ID_KEYS` (one sample is one 2D slice of a case);
- TEAT and TRADES: one head, a class distribution per voxel (``output_activation`` "softmax");
- confidence: :class:`SegmentationConfidence` (per image ``foreground_confidence`` and ``foreground_volume_mm3``,
  :func:`segmentation_measures`; :class:`SegmentationConfidenced` reports them at inference);
- network: :func:`nnunet_dynunet`, a DynUNet planned the nnU-Net way from the patch size (:func:`nnunet_plan`);
- the adapter: :class:`SegmentationAdapter` (the :class:`robust_bundles.tasks.TaskAdapter` contract).

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

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric
from monai.networks.nets import DynUNet

from ..confidence import ConfidenceReport, Measure
from ..losses import PerSampleLoss, primary_output
from ..metrics import MetricSpec, PerSampleMetric, batch_value, nanmean

__all__ = ["ID_KEYS", "DiceCELoss", "SliceDice", "SliceDiceMetric", "as_class_indices", "slice_dice",
           "segmentation_measures", "segmentation_confidence", "SegmentationConfidence", "SegmentationConfidenced",
           "nnunet_plan", "nnunet_dynunet", "SegmentationAdapter"]

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


# ---------------------------------------------------------------------------------------------------- segmentation
def segmentation_measures(num_classes: int) -> list[Measure]:
    """The segmentation family's measures for a network of ``num_classes`` classes (background included)."""
    if int(num_classes) < 2:
        raise ValueError(f"num_classes={num_classes}: a segmentation has at least 2 classes (background and one).")
    return [
        Measure("foreground_confidence", f"mean over the predicted foreground voxels of the largest class probability "
                f"(1 = certain, 1/{int(num_classes)} = chance)", "higher", 1.0 / int(num_classes)),
        Measure("foreground_volume_mm3", "volume of the predicted foreground (every label but 0), mm^3", "size"),
    ]


def segmentation_confidence(logits: Any, voxel_volume_mm3: float = 1.0) -> dict[str, Any]:
    """The segmentation measures of one image from its logits (C, *spatial): see the module docstring.

    Args:
        logits: the network output of one image, classes first (label 0 = background).
        voxel_volume_mm3: the volume of one voxel.

    Returns:
        ``{"foreground_confidence": float or None (no foreground), "foreground_volume_mm3": float,
        "volume_mm3_per_label": {label: float}}``.
    """
    p = torch.softmax(torch.as_tensor(logits).detach().float(), 0)
    top, label = p.max(0)
    fg = label > 0
    n = int(fg.sum())
    per = {int(c): float((label == c).sum()) * voxel_volume_mm3 for c in range(1, p.shape[0])}
    return {"foreground_confidence": float(top[fg].mean()) if n else None,
            "foreground_volume_mm3": n * float(voxel_volume_mm3), "volume_mm3_per_label": per}


class SegmentationConfidenced:
    """A postprocessing transform of a segmentation inference (before the argmax): the confidence of the logits under
    ``keys``, reported through a :class:`ConfidenceReport` (the file named after the image, the voxel volume from the
    prediction's affine). The data passes unchanged.

    Args:
        keys: the prediction key (logits, C x spatial).
        report: the run's report.
    """

    def __init__(self, keys: str = "pred", report: ConfidenceReport | None = None) -> None:
        if report is None:
            raise ValueError("SegmentationConfidenced needs report=@confidence (a robust_bundles.confidence."
                             "ConfidenceReport).")
        self.key, self.report = keys, report

    def __call__(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        pred = data[self.key]
        meta = getattr(pred, "meta", {}) or {}
        path = meta.get("filename_or_obj", "image")
        affine = getattr(pred, "affine", None)
        volume = 1.0
        if affine is not None:
            a = np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
            volume = round(float(abs(np.linalg.det(a[: pred.ndim - 1, : pred.ndim - 1]))), 9)  # mm^3 per voxel
        values = segmentation_confidence(pred, volume)
        per_label = values.pop("volume_mm3_per_label")
        self.report.add(str(path), values, {"volume_mm3_per_label": per_label, "classes": int(pred.shape[0])})
        return data


class SegmentationConfidence:
    """The confidence of a batch of segmentation outputs: per image the :func:`segmentation_measures` (NaN
    foreground confidence for an image without predicted foreground).

    Args:
        voxel_volume_mm3: the volume of one voxel.
    """

    def __init__(self, voxel_volume_mm3: float = 1.0) -> None:
        self.voxel_volume_mm3 = float(voxel_volume_mm3)

    def __call__(self, pred: Any, batch: Any = None) -> dict[str, torch.Tensor]:
        """Per image ``{"foreground_confidence": (B,), "foreground_volume_mm3": (B,)}`` from logits."""
        values = [segmentation_confidence(p, self.voxel_volume_mm3) for p in primary_output(pred)]
        conf = [math.nan if v["foreground_confidence"] is None else v["foreground_confidence"] for v in values]
        return {"foreground_confidence": torch.tensor(conf),
                "foreground_volume_mm3": torch.tensor([v["foreground_volume_mm3"] for v in values])}


# -------------------------------------------------------------------------------------------------------- network
def nnunet_plan(patch_size: Sequence[int], min_feature_size: int = 4, max_pools: int = 6) -> tuple[list, list]:
    """Kernel sizes and strides of a U-Net for ``patch_size``, as nnU-Net's planner derives them.

    Every axis is halved (stride 2) while its feature map stays at least ``2 * min_feature_size`` voxels and fewer
    than ``max_pools`` poolings were made on it; all kernels are 3 (2D bundles here are isotropic in-plane).
    Example: (40, 56) -> strides [1,1], [2,2], [2,2], [2,2] (feature maps 40x56, 20x28, 10x14, 5x7).

    Args:
        patch_size: the network input size per spatial axis, in voxels.
        min_feature_size: the smallest feature map size an axis may be pooled to.
        max_pools: the largest number of poolings per axis.

    Returns:
        ``(kernel_size, strides)``: one list per level (the first level has stride 1).
    """
    size = [int(s) for s in patch_size]
    if not size or min(size) < 1:
        raise ValueError(f"patch_size={list(patch_size)}: give a positive size per spatial axis.")
    strides = [[1] * len(size)]
    pools = [0] * len(size)
    while True:
        step = [2 if s >= 2 * min_feature_size and p < max_pools else 1 for s, p in zip(size, pools)]
        if all(st == 1 for st in step):
            break
        strides.append(step)
        size = [s // st for s, st in zip(size, step)]
        pools = [p + (st == 2) for p, st in zip(pools, step)]
    kernels = [[3] * len(size) for _ in strides]
    return kernels, strides


def nnunet_dynunet(
    patch_size: Sequence[int],
    in_channels: int,
    out_channels: int,
    filters: Sequence[int] | None = None,
    deep_supervision: bool = True,
    deep_supr_num: int = 2,
    min_feature_size: int = 4,
    max_pools: int = 6,
) -> DynUNet:
    """A ``DynUNet`` for ``patch_size`` configured the nnU-Net way.

    Args:
        patch_size: the network input size (2 or 3 spatial axes), in voxels; gives the depth, kernels and strides
            (:func:`nnunet_plan`).
        in_channels: input channels (MRI modalities).
        out_channels: output channels (classes, background included).
        filters: feature channels per level; default nnU-Net's 32, 64, 128, ... capped at 512 (2D) or 320 (3D). Its
            length must equal the number of levels of the plan.
        deep_supervision: also return the outputs of the ``deep_supr_num`` levels below the top in training mode
            (DynUNet stacks them; eval mode returns the full-resolution output only).
        deep_supr_num: number of deep-supervision heads.
        min_feature_size: see :func:`nnunet_plan`.
        max_pools: see :func:`nnunet_plan`.
    """
    kernels, strides = nnunet_plan(patch_size, min_feature_size, max_pools)
    levels = len(strides)
    if filters is None:
        cap = 512 if len(kernels[0]) == 2 else 320
        filters = [min(32 * 2**i, cap) for i in range(levels)]
    filters = [int(f) for f in filters]
    if len(filters) != levels:
        raise ValueError(
            f"filters={filters} has {len(filters)} levels but the patch size {list(patch_size)} gives {levels} "
            f"(strides {strides}): give {levels} filter counts, e.g. {[min(32 * 2**i, 512) for i in range(levels)]}."
        )
    return DynUNet(
        spatial_dims=len(kernels[0]),
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
        norm_name="instance",
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
        res_block=False,
    )


# -------------------------------------------------------------------------------------------------------- adapter
class SegmentationAdapter:
    """Segmentation in the task contract (:class:`robust_bundles.tasks.TaskAdapter`): Dice + CE per sample, slice
    Dice, MONAI's batch layout, argmax decoding, the foreground confidence.

    Args:
        num_classes: classes, background included.
        loss_settings: keywords of :class:`DiceCELoss`.
    """

    name = "segmentation"
    id_keys = ID_KEYS
    output_activation = "softmax"

    def __init__(self, num_classes: int = 2, **loss_settings: Any) -> None:
        self.num_classes = int(num_classes)
        self.loss_settings = loss_settings

    def loss(self) -> DiceCELoss:
        return DiceCELoss(**self.loss_settings)

    def metric(self) -> SliceDice:
        return SliceDice(self.num_classes)

    def collate_fn(self) -> None:
        return None  # MONAI's list_data_collate: images and labels stack into tensors

    def prepare_batch(self) -> None:
        return None  # MONAI's default_prepare_batch: (image, label)

    def decode(self, pred: Any) -> torch.Tensor:
        return as_class_indices(primary_output(pred), self.num_classes)

    def confidence(self) -> SegmentationConfidence:
        return SegmentationConfidence()
