"""The audit's per-sample metric of a foreign bundle, chosen from the bundle's key metric and loss (task kinds).

===========================  ==============================================  ====================  ===========
kind                         per-sample value                                chosen when            direction
===========================  ==============================================  ====================  ===========
``dice`` (softmax)           Dice of the argmax vs the label, mean over      Dice key metric,       higher
                             the foreground classes present                  softmax/one-hot loss
``dice`` (sigmoid)           Dice of each output channel > 0 (sigmoid >      Dice key metric and    higher
                             0.5) vs the label channel (an index label       a ``sigmoid=True``
                             one-hot encoded), mean over the channels whose  loss (multi-label)
                             label has foreground (background as the loss)
``iou``                      IoU (Jaccard) of the argmax (softmax) or of     IoU key metric         higher
                             each channel > 0 (sigmoid) vs the label, mean   (MeanIoU)
                             over the foreground classes present
``accuracy``                 1 when the argmax class is the label, else 0;   Accuracy-like key      higher
                             one logit or a sigmoid loss: the fraction of    metric, a CE or BCE
                             outputs whose sign matches the label            loss
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

__all__ = ["KINDS", "accuracy", "choose_kind", "includes_background", "mean_iou", "mean_point_distance",
           "multilabel_dice", "sigmoid_channels", "task_metric", "uses_sigmoid"]

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
    """Whether a loss reads the output as independent sigmoid channels (multi-label): a MONAI loss with
    ``sigmoid=True`` (or its Dice part), torch's ``BCEWithLogitsLoss``."""
    if type(loss).__name__ == "BCEWithLogitsLoss":
        return True
    for obj in (loss, getattr(loss, "dice", None)):
        if obj is not None and bool(getattr(obj, "sigmoid", False)):
            return True
    return False


def includes_background(loss: Any) -> bool:
    """A MONAI loss's ``include_background`` (of it or its Dice part); True when it has none."""
    for obj in (loss, getattr(loss, "dice", None)):
        if obj is not None and hasattr(obj, "include_background"):
            return bool(obj.include_background)
    return True


def sigmoid_channels(pred: Any, label: torch.Tensor, include_background: bool = True,
                     what: str = "Multi-label Dice") -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean prediction and label channels of a sigmoid output: ``pred > 0`` (sigmoid > 0.5) and the label's
    channels ``> 0``; a label of class indices (B, 1, ...) against C > 1 output channels is one-hot encoded first
    (a loss with ``to_onehot_y=True, sigmoid=True``); channel 0 is left out where the loss leaves out the
    background."""
    p = primary_output(pred).detach() > 0
    y = torch.as_tensor(label).to(p.device)
    if y.shape != p.shape and p.ndim > 2 and p.shape[1] > 1 and y.shape[1] == 1 and y.shape[2:] == p.shape[2:]:
        y = torch.nn.functional.one_hot(y[:, 0].long(), p.shape[1]).movedim(-1, 1)
    y = y > 0
    if y.shape != p.shape:
        raise ValueError(f"{what} needs a label of the output's shape {tuple(p.shape)} (one channel per label) or "
                         f"of class indices {(p.shape[0], 1, *p.shape[2:])}; got {tuple(y.shape)}.")
    if not include_background and p.shape[1] > 1:
        p, y = p[:, 1:], y[:, 1:]
    return p, y


def multilabel_dice(pred: Any, label: torch.Tensor, include_background: bool = True) -> torch.Tensor:
    """Per-sample Dice of sigmoid multi-label outputs: channel c is ``pred[:, c] > 0`` (sigmoid > 0.5) against
    ``label[:, c] > 0`` (:func:`sigmoid_channels`: an index label is one-hot encoded, channel 0 left out without
    the background); mean over the channels whose label has foreground; NaN when none has. Shape (B,)."""
    p, y = sigmoid_channels(pred, label, include_background)
    dims = tuple(range(2, p.ndim))
    inter = (p & y).sum(dims).float()
    total = p.sum(dims).float() + y.sum(dims).float()
    dice = 2 * inter / total.clamp_min(1)
    present = y.sum(dims) > 0
    dice = torch.where(present, dice, torch.full_like(dice, float("nan")))
    return dice.nanmean(1)


def mean_iou(pred: Any, label: torch.Tensor, sigmoid: bool = False, include_background: bool = True) -> torch.Tensor:
    """Per-sample IoU (Jaccard) of a segmentation output, as MONAI's ``MeanIoU`` without the background: the argmax
    class of the logits (softmax; label as class indices (B, 1, ...) or one-hot) or each channel > 0 (``sigmoid``,
    multi-label, :func:`sigmoid_channels`); mean over the foreground classes whose label is not empty; NaN when
    none is. Shape (B,)."""
    p = primary_output(pred).detach()
    y = torch.as_tensor(label).to(p.device)
    c = p.shape[1]
    if sigmoid or c == 1:
        pm, ym = sigmoid_channels(p, y, include_background, "IoU of sigmoid outputs")
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


def accuracy(pred: Any, label: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Per-sample accuracy of a classifier's logits. Softmax (C > 1 outputs, not ``sigmoid``): 1.0 where the argmax
    is the label (class indices (B,) / (B, 1), or one-hot / probabilities (B, C)). One logit, or ``sigmoid``
    (``BCEWithLogitsLoss``, multi-label): the fraction of outputs whose sign (logit > 0) matches the label (> 0.5).
    Outputs of shape (B, C, 1, ...) count as (B, C)."""
    p = primary_output(pred).detach()
    p = p.reshape(p.shape[0], -1)
    y = torch.as_tensor(label).to(p.device)
    if sigmoid or p.shape[1] == 1:
        y = y.reshape(y.shape[0], -1)
        if y.shape != p.shape:
            raise ValueError(f"Accuracy of sigmoid outputs needs one label per output {tuple(p.shape)}; got "
                             f"{tuple(torch.as_tensor(label).shape)}.")
        return ((p > 0) == (y > 0.5)).float().mean(1)
    if y.ndim >= 2 and y.reshape(y.shape[0], -1).shape == p.shape:
        y = y.reshape(y.shape[0], -1).argmax(1)
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
    bg = includes_background(loss)
    if kind == "dice":
        if uses_sigmoid(loss):
            spec = MetricSpec("dice", "", True, "Dice per case of each sigmoid output channel (> 0.5) against its "
                                                "label channel, mean over the channels whose label has foreground"
                                                + ("" if bg else " (channel 0, the background, left out as by the "
                                                                 "loss)"))
            return FunctionMetric(lambda pred, label: multilabel_dice(pred, label, bg), spec), \
                "multi-label (sigmoid) Dice"
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
        return FunctionMetric(lambda pred, label: mean_iou(pred, label, sigmoid=sig, include_background=bg), spec), \
            ("multi-label (sigmoid)" if sig else "softmax (argmax)") + " IoU"
    if kind == "accuracy":
        if uses_sigmoid(loss):
            return FunctionMetric(lambda pred, label: accuracy(pred, label, sigmoid=True), MetricSpec(
                "accuracy", "", True, "the fraction of sigmoid outputs whose sign (logit > 0) matches the label; "
                "the mean is the accuracy")), "accuracy (sigmoid outputs)"
        return FunctionMetric(accuracy, MetricSpec("accuracy", "", True, "1 when the argmax class is the label (the "
                                                   "sign of a single logit); the mean is the accuracy")), "accuracy"
    if kind == "distance":
        return FunctionMetric(mean_point_distance, MetricSpec("distance", "output units", False, "mean Euclidean "
                              "distance of the predicted points to the labelled ones")), "mean point distance"
    raise ValueError(f"Unknown metric {kind!r}: use 'auto' (from the bundle's key metric and loss) or one of {KINDS}.")
