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
- landmarks: :class:`robust_bundles.tasks.landmark_distance.LandmarkDistanceLoss`, the soft-decoded landmark distance
  (with the landmark task, whose output layout it reads).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .losses import PerSampleLoss, per_sample_terms, primary_output

__all__ = ["TermLoss", "CosineWeightedCE"]


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
