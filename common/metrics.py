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

The segmentation metric (slice Dice) is in :mod:`robust_bundles.tasks.segmentation`, the landmark and detection ones in
their task modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch
from monai.utils import convert_to_tensor

from .losses import primary_output

__all__ = [
    "MetricSpec",
    "TaskMetric",
    "PerSampleMetric",
    "FunctionMetric",
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


def nanmean(values: torch.Tensor) -> float:
    """Mean over the finite values; NaN when there is none."""
    v = values[~torch.isnan(values)]
    return float(v.mean()) if v.numel() else float("nan")
