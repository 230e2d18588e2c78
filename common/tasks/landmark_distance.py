"""The landmark task's attack objective: the distance of softly decoded landmarks to the targets.

:class:`LandmarkDistanceLoss` is a smooth surrogate of the landmark distance that the task metric (MRE) measures: per
landmark the spatial softmax of the heatmap logits weighs each pixel's vote ``pixel + R * offset`` (the decoder's votes
of :func:`robust_bundles.tasks.landmarks.decode_landmarks`, soft instead of top-k), and the loss is the mean over the
landmarks of the distance of that point to the target landmark (read back from the target disk and offsets), in
network pixels. The standard attack suite runs APGD on it beside the heatmap loss
(:mod:`robust_bundles.attack_suite`, the landmark bundle's ``attack_objectives``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..losses import PerSampleLoss, primary_output
from .landmarks import split_heads

__all__ = ["LandmarkDistanceLoss"]


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
