"""The audit's per-sample metric of a foreign bundle, chosen from the bundle's key metric and loss (task kinds).

===========================  ==============================================  ====================  ===========
kind                         per-sample value                                chosen when            direction
===========================  ==============================================  ====================  ===========
``dice`` (softmax)           Dice of the argmax vs the label, mean over      Dice key metric,       higher
                             the foreground classes present                  softmax/one-hot loss
``dice`` (sigmoid)           Dice of each output channel > 0 (sigmoid >      Dice key metric and    higher
                             0.5) vs the label channel, mean over the        a ``sigmoid=True``
                             channels whose label has foreground             loss (multi-label)
``iou``                      IoU (Jaccard) of the argmax (softmax) or of     IoU key metric         higher
                             each channel > 0 (sigmoid) vs the label, mean   (MeanIoU)
                             over the foreground classes present
``accuracy``                 1 when the argmax class is the label, else 0    Accuracy-like key      higher
                                                                             metric or a CE loss
``distance``                 mean Euclidean distance of the predicted        distance/error key     lower
                             points to the labelled ones (dim 1 holds the    metric or an L1/MSE
                             coordinates: (B, D, N) or (B, D))               loss
===========================  ==============================================  ====================  ===========
"""

from __future__ import annotations

from typing import Any

import torch

from ..losses import primary_output
from ..metrics import FunctionMetric, MetricSpec

__all__ = ["KINDS", "accuracy", "choose_kind", "mean_iou", "mean_point_distance", "multilabel_dice", "task_metric"]

KINDS = ("dice", "iou", "accuracy", "distance")

_DICE = ("MeanDice", "DiceMetric", "DiceHelper")
_IOU = ("MeanIoU", "MeanIoUHandler")
_ACCURACY = ("Accuracy", "ConfusionMatrix", "ROCAUC", "ROCAUCMetric", "Precision", "Recall", "Fbeta")
_DISTANCE = ("MeanPairwiseDistance", "MeanSquaredError", "MeanAbsoluteError", "RootMeanSquaredError", "MSEMetric",
             "MAEMetric", "RMSEMetric", "PSNRMetric")
_LOSS_KIND = {"CrossEntropyLoss": "accuracy", "NLLLoss": "accuracy", "BCEWithLogitsLoss": "accuracy",
              "L1Loss": "distance", "MSELoss": "distance", "SmoothL1Loss": "distance", "HuberLoss": "distance"}


def choose_kind(metric_target: str | None, loss: Any) -> str | None:
    """The task kind from the key metric's class name (first) or the loss; None when neither tells."""
    name = (metric_target or "").rsplit(".", 1)[-1]
    if name in _DICE:
        return "dice"
    if name in _IOU:
        return "iou"
    if name in _ACCURACY:
        return "accuracy"
    if name in _DISTANCE or name.endswith("Distance"):
        return "distance"
    lname = type(loss).__name__
    if "Dice" in lname or "Tversky" in lname or "Focal" in lname:
        return "dice"
    return _LOSS_KIND.get(lname)


def uses_sigmoid(loss: Any) -> bool:
    """Whether a MONAI segmentation loss reads the output as independent sigmoid channels (multi-label)."""
    for obj in (loss, getattr(loss, "dice", None)):
        if obj is not None and bool(getattr(obj, "sigmoid", False)):
            return True
    return False


def multilabel_dice(pred: Any, label: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice of sigmoid multi-label outputs: channel c is ``pred[:, c] > 0`` (sigmoid > 0.5) against
    ``label[:, c] > 0``; mean over the channels whose label has foreground; NaN when none has. Shape (B,)."""
    p = primary_output(pred).detach() > 0
    y = torch.as_tensor(label).to(p.device) > 0
    if y.shape != p.shape:
        raise ValueError(f"Multi-label Dice needs a label of the output's shape {tuple(p.shape)} (one channel per "
                         f"label); got {tuple(y.shape)}.")
    dims = tuple(range(2, p.ndim))
    inter = (p & y).sum(dims).float()
    total = p.sum(dims).float() + y.sum(dims).float()
    dice = 2 * inter / total.clamp_min(1)
    present = y.sum(dims) > 0
    dice = torch.where(present, dice, torch.full_like(dice, float("nan")))
    return dice.nanmean(1)


def mean_iou(pred: Any, label: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Per-sample IoU (Jaccard) of a segmentation output, as MONAI's ``MeanIoU`` without the background: the argmax
    class of the logits (softmax; label as class indices (B, 1, ...) or one-hot) or each channel > 0 (``sigmoid``,
    multi-label; label of the output's shape); mean over the foreground classes whose label is not empty; NaN when
    none is. Shape (B,)."""
    p = primary_output(pred).detach()
    y = torch.as_tensor(label).to(p.device)
    c = p.shape[1]
    if sigmoid or c == 1:
        pm, ym = p > 0, y > 0
        if ym.shape != pm.shape:
            raise ValueError(f"IoU of sigmoid outputs needs a label of the output's shape {tuple(pm.shape)}; got "
                             f"{tuple(ym.shape)}.")
    else:
        pm = torch.nn.functional.one_hot(p.argmax(1), c).movedim(-1, 1).bool()[:, 1:]
        if y.shape == p.shape:
            ym = (y > 0.5)[:, 1:]
        elif y.shape[1] == 1 and y.shape[2:] == p.shape[2:]:
            ym = torch.nn.functional.one_hot(y[:, 0].long(), c).movedim(-1, 1).bool()[:, 1:]
        else:
            raise ValueError(f"IoU needs a label of class indices (B, 1, ...) or one-hot {tuple(p.shape)}; got "
                             f"{tuple(y.shape)}.")
    dims = tuple(range(2, pm.ndim))
    inter = (pm & ym).sum(dims).float()
    union = (pm | ym).sum(dims).float()
    iou = inter / union.clamp_min(1)
    iou = torch.where(ym.sum(dims) > 0, iou, torch.full_like(iou, float("nan")))
    return iou.nanmean(1)


def accuracy(pred: Any, label: torch.Tensor) -> torch.Tensor:
    """1.0 where the argmax of the logits (B, C) is the label (class indices (B,) / (B, 1), or one-hot (B, C))."""
    p = primary_output(pred).detach()
    y = torch.as_tensor(label).to(p.device)
    if y.ndim == 2 and y.shape == p.shape and p.shape[1] > 1:
        y = y.argmax(1)
    return (p.argmax(1) == y.reshape(-1).long()).float()


def mean_point_distance(pred: Any, label: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance of predicted to labelled points, per sample: dim 1 holds the coordinates ((B, D, N)
    points or one point (B, D)), in the units of the network's output (e.g. pixels)."""
    p = primary_output(pred).detach().float()
    y = torch.as_tensor(label).to(p.device).float()
    if y.shape != p.shape:
        raise ValueError(f"The point distance needs a label of the output's shape {tuple(p.shape)}; got "
                         f"{tuple(y.shape)}.")
    d = (p - y).norm(dim=1)
    return d.reshape(d.shape[0], -1).mean(1)


def task_metric(kind: str, loss: Any) -> tuple[FunctionMetric | Any, str]:
    """The audit's task metric of a kind and a sentence on what it is.

    Args:
        kind: one of :data:`KINDS`.
        loss: the bundle's loss (a ``sigmoid=True`` loss makes Dice multi-label).
    """
    if kind == "dice":
        if uses_sigmoid(loss):
            spec = MetricSpec("dice", "", True, "Dice per case of each sigmoid output channel (> 0.5) against its "
                                                "label channel, mean over the channels whose label has foreground")
            return FunctionMetric(multilabel_dice, spec), "multi-label (sigmoid) Dice"
        from ..tasks.segmentation import SliceDice

        m = SliceDice(name="dice")
        m.specs = (MetricSpec("dice", "", True, "Dice per case (argmax of the output vs the label after the bundle's "
                                                "preprocessing), mean over the foreground classes present; cases "
                                                "whose label has foreground"),)
        return m, "softmax (argmax) Dice"
    if kind == "iou":
        sig = uses_sigmoid(loss)
        spec = MetricSpec("iou", "", True, "IoU per case of the " + ("sigmoid output channels (> 0.5)" if sig else
                          "argmax class") + " against the label, mean over the foreground classes present")
        return FunctionMetric(lambda pred, label: mean_iou(pred, label, sigmoid=sig), spec), \
            ("multi-label (sigmoid)" if sig else "softmax (argmax)") + " IoU"
    if kind == "accuracy":
        return FunctionMetric(accuracy, MetricSpec("accuracy", "", True, "1 when the argmax class is the label; the "
                                                   "mean is the accuracy")), "accuracy"
    if kind == "distance":
        return FunctionMetric(mean_point_distance, MetricSpec("distance", "output units", False, "mean Euclidean "
                              "distance of the predicted points to the labelled ones")), "mean point distance"
    raise ValueError(f"Unknown metric {kind!r}: use 'auto' (from the bundle's key metric and loss) or one of {KINDS}.")
