"""Task metrics: what a bundle's robustness evaluation reports, with a name, a unit and a direction.

A task metric is an accumulator (MONAI's Cumulative/IterationMetric style) that knows its task: it decodes the raw
eval-mode network output itself (argmax for segmentation, landmark voting, box decoding) and reads what else it needs
(labels, pixel spacing, original image size) from the collated batch dict. The interface (:class:`TaskMetric`):

- ``specs``: a tuple of :class:`MetricSpec` (name, unit, higher_is_better, description); the first is the headline
  metric of tables and plots.
- ``per_sample``: True when the metric has a value per sample (Dice, landmark MRE/SDR); False for dataset-level metrics
  (COCO mAP), which only aggregate.
- ``reset()``; ``update(output, batch) -> dict[name, Tensor (B,)] | None`` (per-sample values, or None for
  dataset-level metrics); ``aggregate() -> dict[name, float]``; optional ``details() -> dict`` (JSON-ready extras,
  e.g. per-landmark figures).

Per-sample metrics aggregate as the mean over the samples whose value is not NaN (a sample that does not count, e.g.
a slice without foreground, has NaN), so the per-sample worst case over attacks aggregates the same way.

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

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric
from monai.utils import convert_to_tensor

from .losses import primary_output

__all__ = [
    "MetricSpec",
    "TaskMetric",
    "PerSampleMetric",
    "SliceDice",
    "FunctionMetric",
    "as_class_indices",
    "slice_dice",
    "SliceDiceMetric",
    "nanmean",
    "batch_value",
]


@dataclass(frozen=True)
class MetricSpec:
    """What a metric value means.

    Args:
        name: the metric's key in results and the column name in reports, e.g. ``"dice"``, ``"MRE"``, ``"mAP"``.
        unit: its unit, e.g. ``"mm"``, ``"%"``; ``""`` for a unitless ratio.
        higher_is_better: the direction: the worst case over attacks takes the minimum when True, the maximum when
            False; tables bold the best value in this direction.
        description: one sentence for captions and docs.
    """

    name: str
    unit: str = ""
    higher_is_better: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A metric needs a non-empty name; got {self.name!r}.")

    def to_dict(self) -> dict:
        """A JSON-ready dict (written into robustness.json so that reports need no task knowledge)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "MetricSpec":
        return cls(str(data["name"]), str(data.get("unit", "")), bool(data.get("higher_is_better", True)),
                   str(data.get("description", "")))

    def label(self) -> str:
        """``"MRE (mm, lower is better)"``."""
        unit = f"{self.unit}, " if self.unit else ""
        return f"{self.name} ({unit}{'higher' if self.higher_is_better else 'lower'} is better)"


def batch_value(batch: Any, key: str, device: torch.device | str | None = None, what: str = "metric") -> torch.Tensor:
    """``batch[key]`` as a plain tensor (no MONAI metadata), on ``device``; a clear error when the key is missing.

    Args:
        batch: the collated batch dict of the data loader.
        key: the key to read (e.g. ``"label"``, ``"landmarks"``, ``"spacing"``).
        device: move the tensor there (None: leave it).
        what: who needs it, for the error message.
    """
    if not isinstance(batch, Mapping) or key not in batch:
        have = sorted(map(str, batch)) if isinstance(batch, Mapping) else type(batch).__name__
        raise KeyError(
            f"The {what} needs {key!r} in the batch, which has {have}: keep that key through the transforms (it "
            f"is per-sample metadata the metric reads), or pass the right key name to the metric."
        )
    value = convert_to_tensor(batch[key], track_meta=False)
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    return value.to(device) if device is not None else value


class TaskMetric:
    """Base class of task metrics (see the module docstring for the interface).

    Subclasses set ``specs`` (class attribute or in ``__init__``) and ``per_sample``, and implement ``reset``,
    ``update`` and ``aggregate``. The robustness handler keeps one deep copy per (attack, eps), so a metric must be
    deep-copyable and keep all its state in attributes.
    """

    specs: tuple[MetricSpec, ...] = ()
    per_sample: bool = True

    @property
    def headline(self) -> MetricSpec:
        """The first spec: the metric of tables, plots and the validation key metric."""
        if not self.specs:
            raise ValueError(f"{type(self).__name__} declares no MetricSpec: set its specs.")
        return self.specs[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def spec(self, name: str) -> MetricSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(f"{type(self).__name__} has no metric {name!r}; it has {list(self.names)}.")

    def reset(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, output: Any, batch: Any) -> dict[str, torch.Tensor] | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def aggregate(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def details(self) -> dict:
        """JSON-ready extra results (e.g. per landmark or per class); empty by default."""
        return {}


class PerSampleMetric(TaskMetric):
    """A metric with a value per sample for every spec: subclasses implement :meth:`compute`.

    ``update`` stores the values of the batch (on the CPU) and returns them; ``aggregate`` is the NaN-ignoring mean
    over all samples seen since ``reset``; ``values`` gives them all.
    """

    per_sample = True

    def __init__(self) -> None:
        self._values: dict[str, list[torch.Tensor]] = {}

    def compute(self, output: Any, batch: Any) -> Mapping[str, torch.Tensor]:  # pragma: no cover - abstract
        """Per-sample values ``{name: Tensor (B,)}`` of every spec for one batch."""
        raise NotImplementedError

    def reset(self) -> None:
        self._values = {}

    def update(self, output: Any, batch: Any) -> dict[str, torch.Tensor]:
        values = self.compute(output, batch)
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"{type(self).__name__}.compute returned no values for {missing}.")
        out = {}
        sizes = set()
        for n in self.names:
            v = torch.as_tensor(values[n]).detach().float().reshape(-1).cpu()
            sizes.add(v.numel())
            out[n] = v
            self._values.setdefault(n, []).append(v)
        if len(sizes) > 1:
            raise ValueError(f"{type(self).__name__}.compute returned different numbers of samples per metric: {sizes}.")
        return out

    def values(self) -> dict[str, torch.Tensor]:
        """Every per-sample value since ``reset``: ``{name: Tensor (N,)}``."""
        return {n: torch.cat(self._values[n]) if self._values.get(n) else torch.zeros(0) for n in self.names}

    def aggregate(self) -> dict[str, float]:
        return {n: nanmean(v) for n, v in self.values().items()}


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


class FunctionMetric(PerSampleMetric):
    """A per-sample function ``fn(pred, label) -> Tensor (B,)`` as a task metric (NaN for samples that do not count).

    Args:
        fn: the function; it gets the raw network output and ``batch[label_key]`` on the output's device.
        spec: what the value means; default ``MetricSpec(name, "", higher_is_better)``.
        name: the metric's name when no spec is given.
        higher_is_better: its direction when no spec is given.
        label_key: the batch key passed as the label.
    """

    def __init__(self, fn: Callable[[Any, Any], torch.Tensor], spec: MetricSpec | None = None, name: str = "metric",
                 higher_is_better: bool = True, label_key: str = "label") -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {type(fn).__name__}.")
        self.fn = fn
        self.label_key = label_key
        self.specs = (spec if spec is not None else MetricSpec(name, "", bool(higher_is_better)),)

    def compute(self, output: Any, batch: Any) -> dict[str, torch.Tensor]:
        device = primary_output(output).device
        label = batch_value(batch, self.label_key, device, f"metric {self.specs[0].name!r}")
        return {self.specs[0].name: torch.as_tensor(self.fn(output, label))}


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
