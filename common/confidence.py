"""Confidence of an inference output that a user can threshold, and the reference the validation split gave.

Every inference run writes, beside each result, ``<stem>_confidence.json``: the image, its confidence measures, what
the validation split gave for them (when the model has a reference file) and the warnings; the log has one line per
image and a ``LOW CONFIDENCE`` warning line when a measure is far below the reference. The measures, computed by the
task code:

- landmarks (:class:`robust_bundles.tasks.landmarks.LandmarkConfidence`): per landmark the peak heatmap probability
  and the vote agreement (the share of the top-k vote weight that lies within ``vote_radius`` of the winning vote);
  per image ``peak`` and ``agreement``, their means over the landmarks.
- segmentation (:class:`robust_bundles.tasks.segmentation.SegmentationConfidenced`): ``foreground_confidence``, the mean over the predicted foreground
  voxels of the largest class probability, and ``foreground_volume_mm3`` (and per class).
- detection (:class:`robust_bundles.tasks.detection.DetectionConfidence`): each box's score is its confidence (in
  ``<stem>.json``); per image ``max_score`` and ``boxes`` (the number of boxes kept).

**Far below** (:meth:`ConfidenceReference.warnings`): a measure where higher means more confident is flagged when it
is below ``warn_fraction`` (default one half) of the validation's 5th percentile, both counted from the measure's
chance level (``floor``: 0 for probabilities of one class or a score, ``1 / classes`` for the largest of C class
probabilities); a size (a volume, a number of boxes) when it is below ``warn_fraction`` times the validation's 5th
percentile or above its 95th divided by ``warn_fraction``.

The reference (``confidence_reference.json`` beside the model's weights) holds per measure its distribution over the
validation images (n, min, 5th percentile, median, 95th percentile, max), written by
:class:`robust_bundles.handlers.ConfidenceReferenceSaver` during training or by an inference run over the validation
images with ``--record_confidence_reference true``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .io import atomic_write_json, sha256_file

__all__ = ["REFERENCE_FILE", "Measure", "ConfidenceReference", "ConfidenceReport", "result_stem"]

logger = logging.getLogger("robust_bundles.confidence")

REFERENCE_FILE = "confidence_reference.json"
"""The reference's file name, beside the model's weights (``models/model.pt`` -> ``models/confidence_reference.json``)."""
_VERSION = 1


class Measure:
    """One confidence measure: its name, meaning and how it is compared with the reference.

    Args:
        name: the key in the files.
        description: what it is, with its unit, for the files and the README.
        kind: ``"higher"`` (higher is more confident) or ``"size"`` (suspicious when far outside the validation range).
        floor: the chance level of a ``"higher"`` measure (0 for a probability of one class).
    """

    def __init__(self, name: str, description: str, kind: str = "higher", floor: float = 0.0) -> None:
        if kind not in ("higher", "size"):
            raise ValueError(f"Measure {name!r}: kind must be 'higher' or 'size'; got {kind!r}.")
        self.name, self.description, self.kind, self.floor = name, description, kind, float(floor)

    def as_dict(self) -> dict:
        return {"description": self.description, "kind": self.kind, "floor": self.floor}


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not v.size:
        return {"n": 0}
    p05, median, p95 = np.percentile(v, [5, 50, 95])
    return {"n": int(v.size), "min": float(v.min()), "p05": float(p05), "median": float(median),
            "p95": float(p95), "max": float(v.max())}


class ConfidenceReference:
    """The distribution of each measure over the validation images, and the comparison of one image with it.

    Args:
        family: "landmarks", "segmentation" or "detection" (a reference of another family is refused).
        measures: the measures of the family.
        stats: per measure name its distribution (:func:`_stats`); empty while accumulating.
        source: what the reference was computed on (split, dataset, synthetic or real), for the files.
    """

    def __init__(self, family: str, measures: Sequence[Measure], stats: Mapping[str, dict] | None = None,
                 source: str = "") -> None:
        self.family, self.measures, self.source = family, list(measures), source
        self.stats = dict(stats) if stats is not None else {}
        self.extra: dict[str, Any] = {}
        self._values: dict[str, list[float]] = {m.name: [] for m in self.measures}

    # accumulate ---------------------------------------------------------------------------------------------------
    def update(self, values: Mapping[str, Any]) -> None:
        """Add the measures of one or more images (a number, or a (B,) tensor/array per measure)."""
        for m in self.measures:
            if m.name in values:
                self._values[m.name].extend(float(x) for x in np.asarray(torch.as_tensor(values[m.name]).cpu(),
                                                                             dtype=np.float64).reshape(-1))

    def finish(self) -> "ConfidenceReference":
        """Turn the values added so far into the statistics."""
        self.stats = {name: _stats(v) for name, v in self._values.items()}
        return self

    @property
    def images(self) -> int:
        return max((s.get("n", 0) for s in self.stats.values()), default=0)

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write the reference (JSON, atomically)."""
        record = {"version": _VERSION, "family": self.family, "source": self.source, "images": self.images,
                  "measures": {m.name: {**m.as_dict(), **self.stats.get(m.name, {"n": 0})} for m in self.measures},
                  **extra}
        path = atomic_write_json(path, record)
        logger.info(f"confidence reference of {self.images} images ({self.source}) written to {path}")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, family: str, measures: Sequence[Measure]) -> "ConfidenceReference":
        """Read a reference written by :meth:`save`; a file of another family or version is refused."""
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"The confidence reference {path} cannot be read ({exc}): delete it, or record it again "
                             f"(see the bundle README, 'Confidence').") from exc
        if record.get("version") != _VERSION or record.get("family") != family:
            raise ValueError(f"The confidence reference {path} is of family {record.get('family')!r} version "
                             f"{record.get('version')!r}; this model needs {family!r} version {_VERSION}: delete it, "
                             f"or record it again for this model.")
        stats = {name: {k: v for k, v in s.items() if k in ("n", "min", "p05", "median", "p95", "max")}
                 for name, s in record.get("measures", {}).items()}
        reference = cls(family, measures, stats, record.get("source", ""))
        reference.extra = {k: v for k, v in record.items() if k in ("model", "model_sha256")}
        return reference

    # compare ------------------------------------------------------------------------------------------------------
    def warnings(self, values: Mapping[str, float | None], warn_fraction: float = 0.5) -> list[str]:
        """The measures of one image that are far below (or, for sizes, far outside) the reference (module docstring)."""
        out = []
        for m in self.measures:
            ref, v = self.stats.get(m.name, {}), values.get(m.name)
            if not ref.get("n") or v is None:
                continue
            if m.kind == "higher":
                if not math.isfinite(v) or v - m.floor < warn_fraction * (ref["p05"] - m.floor):
                    out.append(f"{m.name} {v:.3g} is far below the validation's (5th percentile {ref['p05']:.3g}, "
                               f"median {ref['median']:.3g})")
            elif v < warn_fraction * ref["p05"] or v > ref["p95"] / warn_fraction:
                out.append(f"{m.name} {v:.4g} is far outside the validation's (5th-95th percentile {ref['p05']:.4g}-"
                           f"{ref['p95']:.4g})")
        return out


def result_stem(path: str | os.PathLike) -> str:
    """The name of an input file without its suffix (``a.nii.gz`` -> ``a``): the stem of the files written for it."""
    name = Path(str(path)).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name else name


class ConfidenceReport:
    """Per image of an inference run: ``<stem>_confidence.json`` beside the result, a log line, and a
    ``LOW CONFIDENCE`` warning line when a measure is far below the reference; at the end of the run one summary line.
    With ``record`` the run's images are the reference instead: it is written to ``reference_path`` at the end.

    Attach it to the inference evaluator (a handler in ``inference.json``); the task's writer calls :meth:`add`.

    Args:
        family: "landmarks", "segmentation" or "detection".
        measures: the family's measures.
        output_dir: where the ``<stem>_confidence.json`` files go.
        reference_path: the reference file (read when it exists; None or a missing file: no comparison, said once).
        record: write the reference from this run's images to ``reference_path`` instead of comparing.
        warn_fraction: how far below the reference is far (module docstring), in (0, 1].
        note: one sentence for every confidence file (e.g. "each box's score is its confidence").
        model_path: the weights of the run: a recorded reference holds their sha256, and a reference recorded for
            other weights is used with a warning.
        source: what a recorded reference is computed on (default: the folder of the run's images).
    """

    def __init__(self, family: str, measures: Sequence[Measure], output_dir: str | os.PathLike,
                 reference_path: str | os.PathLike | None = None, record: bool = False, warn_fraction: float = 0.5,
                 note: str = "", model_path: str | os.PathLike | None = None, source: str | None = None) -> None:
        if not 0 < float(warn_fraction) <= 1:
            raise ValueError(f"warn_fraction={warn_fraction}: give a fraction in (0, 1] (0.5: warn below half of the "
                             f"validation's 5th percentile).")
        self.family, self.measures, self.output_dir = family, list(measures), Path(output_dir)
        self.reference_path = Path(reference_path) if reference_path is not None else None
        self.record, self.warn_fraction, self.note = bool(record), float(warn_fraction), note
        self.reference: ConfidenceReference | None = None
        self.recorded = ConfidenceReference(family, self.measures)
        self.low: list[str] = []
        self.count = 0
        self.model_path, self.source, self.folders = model_path, source, set()
        if not self.record and self.reference_path is not None and self.reference_path.is_file():
            self.reference = ConfidenceReference.load(self.reference_path, family, self.measures)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Any = None) -> None:
        if self.record:
            logger.info(f"recording the confidence reference of this run's images into {self.reference_path}")
        elif self.reference is None:
            logger.warning(f"no confidence reference at {self.reference_path}: the confidence files have the measures "
                           f"only, without comparison (see the bundle README, 'Confidence')")
        else:
            logger.info(f"confidence compared with {self.reference_path} ({self.reference.images} images: "
                        f"{self.reference.source})")
            recorded_for = self.reference.extra.get("model_sha256")
            if recorded_for and self.model_path is not None and Path(self.model_path).is_file() \
                    and sha256_file(self.model_path) != recorded_for:
                logger.warning(f"the confidence reference {self.reference_path} was recorded for other weights than "
                               f"{self.model_path}: its comparison may mislead; record it again for these weights")

    def add(self, image_path: str, values: Mapping[str, float | None], details: Mapping[str, Any] | None = None) -> Path:
        """Write one image's confidence file and log it; returns the file."""
        values = {k: (None if v is None or not math.isfinite(float(v)) else round(float(v), 6))
                  for k, v in values.items()}
        self.count += 1
        self.folders.add(str(Path(str(image_path)).parent))
        self.recorded.update({k: v for k, v in values.items() if v is not None})
        warnings = self.reference.warnings(values, self.warn_fraction) if self.reference is not None else []
        ref = None
        if self.reference is not None:
            ref = {"file": str(self.reference_path), "source": self.reference.source,
                   **{m.name: {k: self.reference.stats.get(m.name, {}).get(k) for k in ("p05", "median", "p95")}
                      for m in self.measures}}
        record = {"image": str(image_path), "family": self.family, "measures": values,
                  "meaning": {m.name: m.description for m in self.measures}, **({"note": self.note} if self.note else {}),
                  **(dict(details) if details else {}), "reference": ref, "low_confidence": bool(warnings),
                  "warnings": warnings}
        out = atomic_write_json(self.output_dir / f"{result_stem(image_path)}_confidence.json", record)
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        logger.info(f"confidence of {image_path}: {shown}")
        if warnings:
            self.low.append(str(image_path))
            logger.warning(f"LOW CONFIDENCE: {image_path}: {'; '.join(warnings)}: it may not be an image this model was "
                           f"trained for (wrong modality, noise, a failed export); check it before using the result.")
        return out

    def completed(self, engine: Any = None) -> None:
        if self.record:
            if self.reference_path is None:
                raise ValueError("record_confidence_reference is set but no reference path is given: set "
                                 "--confidence_reference PATH.")
            self.recorded.source = self.source or f"the {self.count} images of an inference run in " + \
                ", ".join(sorted(self.folders)[:3])
            extra = {}
            if self.model_path is not None and Path(self.model_path).is_file():
                extra = {"model": Path(self.model_path).name, "model_sha256": sha256_file(self.model_path)}
            self.recorded.finish().save(self.reference_path, **extra)
            return
        if self.reference is not None:
            logger.info(f"confidence: {len(self.low)} of {self.count} images far below the validation reference"
                        + (f": {', '.join(self.low[:10])}{' ...' if len(self.low) > 10 else ''}" if self.low else ""))
