"""Attack objectives an expert adds to the task loss: one term alone, CosPGD-weighted cross-entropy, landmark distance.

Each is a :class:`robust_bundles.losses.PerSampleLoss` (per-sample values (B,) or terms (B, K)), so any attack of
:mod:`robust_bundles.attacks` or :mod:`robust_bundles.apgd` maximises it unchanged; an attack suite
(:mod:`robust_bundles.attack_suite`) runs an attack on each of them and keeps the per-sample worst case of the task
metric. None of them changes what is measured (the task metric); they change only where the attack looks.

- :class:`TermLoss`: one term of a multi-term task loss, e.g. segmentation's soft Dice term alone (``"dice"`` of
  :class:`robust_bundles.tasks.segmentation.DiceCELoss`), or detection's ``"classification"`` or ``"box_regression"``
  term of :class:`robust_bundles.tasks.detection.RetinaNetLoss` apart (the task loss itself is both together).
- :class:`CosineWeightedCE`: segmentation, after CosPGD (Agnihotri & Keuper, ICML 2024): the per-pixel cross-entropy
  weighted by the cosine similarity of the pixel's softmax to its one-hot label (no gradient through the weight), so
  the pixels still classified correctly weigh more, and the pixels already wrong less, as the attack proceeds. Unlike
  SegPGD's schedule the weight depends on the output only, not on the iteration: a fixed objective, which APGD's
  best-point bookkeeping needs.
- :class:`LandmarkDistanceLoss`: landmarks, a smooth surrogate of the landmark distance: per landmark the spatial
  softmax of the heatmap logits weighs each pixel's vote ``pixel + R * offset`` (the decoder's votes, soft instead of
  top-k), and the loss is the mean over landmarks of the distance of that point to the target landmark (read back
  from the target disk and offsets), in network pixels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .losses import PerSampleLoss, per_sample_terms, primary_output
from .tasks.landmarks import split_heads

__all__ = ["TermLoss", "CosineWeightedCE", "LandmarkDistanceLoss"]


class TermLoss(PerSampleLoss):
    """One term of a multi-term per-sample loss, as a loss of its own.

    Args:
        loss: the task loss (with ``term_names``).
        term: the name of the term to keep.
    """

    def __init__(self, loss: Any, term: str) -> None:
        super().__init__()
        names = tuple(getattr(loss, "term_names", ()))
        if term not in names:
            raise ValueError(f"The loss {type(loss).__name__} has no term {term!r}; its terms are {list(names)}.")
        self.__dict__["base"] = loss  # not a submodule: the task loss stays owned by its config
        self.index = names.index(term)
        self.term_names = (term,)
        self.term_weights = (1.0,)

    def primary(self, pred: Any) -> torch.Tensor:
        return self.base.primary(pred) if hasattr(self.base, "primary") else primary_output(pred)

    def terms(self, pred: Any, target: Any) -> torch.Tensor:
        return per_sample_terms(self.base, pred, target)[:, self.index : self.index + 1]


def _class_indices(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """A (B, 1, *spatial) index label or a (B, C, *spatial) one-hot label as (B, *spatial) long indices."""
    t = torch.as_tensor(target)
    if t.ndim == logits.ndim and t.shape[1] == 1:
        t = t[:, 0]
    elif t.ndim == logits.ndim and t.shape[1] == logits.shape[1]:
        t = t.argmax(1)
    if t.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"Label shape {tuple(target.shape)} does not match the prediction {tuple(logits.shape)}: "
                         "give class indices (B, 1, *spatial) or a one-hot label (B, C, *spatial).")
    return t.long()


class CosineWeightedCE(PerSampleLoss):
    """CosPGD's objective for segmentation (see the module docstring): per sample,
    ``mean over voxels of cos(softmax(z), onehot(y)) * CE(z, y)``, the weight without gradient.

    ``cos(softmax(z), onehot(y)) = p_y / ||p||_2``: 1 for a certain correct voxel, near 0 for a certain wrong one.
    """

    term_names = ("cosine_ce",)
    term_weights = (1.0,)

    def terms(self, pred: Any, target: Any) -> torch.Tensor:
        logits = primary_output(pred).float()
        idx = _class_indices(target, logits)
        ce = F.cross_entropy(logits, idx, reduction="none")
        with torch.no_grad():
            p = logits.softmax(1)
            weight = p.gather(1, idx.unsqueeze(1))[:, 0] / p.norm(dim=1)
        return (weight * ce).flatten(1).mean(1)[:, None]


class LandmarkDistanceLoss(PerSampleLoss):
    """Mean distance (network pixels) of softly decoded landmarks to the targets (see the module docstring).

    Args:
        num_landmarks: L.
        radius: R of the targets (pixels; offsets are in units of R).
        temperature: of the spatial softmax over the heatmap logits (smaller: closer to the arg-max pixel).
    """

    term_names = ("distance",)
    term_weights = (1.0,)

    def __init__(self, num_landmarks: int, radius: float, temperature: float = 1.0) -> None:
        super().__init__()
        if not radius > 0 or not temperature > 0:
            raise ValueError(f"radius and temperature must be > 0; got {radius} and {temperature}.")
        self.num_landmarks, self.radius, self.temperature = int(num_landmarks), float(radius), float(temperature)

    def _votes(self, heads: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every pixel's vote (B, L, H, W) for x and for y, in pixels."""
        _, _, h, w = heads["heatmap"].shape
        rows = torch.arange(h, dtype=torch.float32, device=heads["heatmap"].device).view(h, 1)
        cols = torch.arange(w, dtype=torch.float32, device=heads["heatmap"].device).view(1, w)
        return cols + self.radius * heads["offset_x"], rows + self.radius * heads["offset_y"]

    def points(self, pred: Any) -> torch.Tensor:
        """The softly decoded landmarks (B, L, 2) as (x, y) in network pixels."""
        heads = split_heads(primary_output(pred).float(), self.num_landmarks)
        weight = (heads["heatmap"].flatten(2) / self.temperature).softmax(2).view_as(heads["heatmap"])
        vx, vy = self._votes(heads)
        return torch.stack([(weight * vx).sum((2, 3)), (weight * vy).sum((2, 3))], -1)

    def targets(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The target landmarks (B, L, 2) read back from the disks and offsets, and (B, L) bool: landmark present."""
        heads = split_heads(torch.as_tensor(target).float(), self.num_landmarks)
        disk = heads["heatmap"]
        area = disk.sum((2, 3))
        vx, vy = self._votes(heads)
        pts = torch.stack([(disk * vx).sum((2, 3)), (disk * vy).sum((2, 3))], -1) / area.clamp_min(1e-12)[..., None]
        return pts, area > 0

    def terms(self, pred: Any, target: Any) -> torch.Tensor:
        pts = self.points(pred)
        tgt, present = self.targets(target)
        dist = ((pts - tgt) ** 2).sum(-1).clamp_min(1e-12).sqrt()
        dist = torch.where(present, dist, torch.zeros_like(dist))
        return (dist.sum(1) / present.sum(1).clamp_min(1))[:, None]
