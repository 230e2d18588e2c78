"""Losses with per-sample, per-term values.

One loss definition serves four purposes in this project: training (the trainer takes the mean of the per-sample total),
the attack objective (the attack maximises the per-sample total), threshold estimation (the per-sample value of every
term is collected over the training set) and the robustness test of AMAT (every term is compared with its threshold xi).

Every loss here is an ``nn.Module`` with

- ``forward(pred, target) -> Tensor (B,)``: the per-sample total, the weighted sum of the terms. MONAI's
  ``SupervisedTrainer`` calls ``loss_function(pred, target).mean()``, which is then the usual batch loss.
- ``terms(pred, target) -> Tensor (B, K)``: the per-sample value of every term, unweighted.
- ``term_names``: a tuple of K names, stored with the thresholds.
- ``term_weights``: a tuple of K weights, ``forward == (terms * weights).sum(1)``.
- ``primary(pred) -> Tensor``: the full-resolution prediction (B, C, *spatial) out of whatever the network returns
  (deep-supervision stacks, tuples, dicts). Used by metrics and by TEAT's soft targets.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PerSampleLoss", "DiceCELoss", "primary_output", "per_sample_terms", "weighted_total"]


def primary_output(pred: Any, key: str | int | None = None) -> torch.Tensor:
    """Return the main (full-resolution) output tensor of a network output.

    Args:
        pred: a tensor, a tuple/list whose first item is the main output, or a dict.
        key: for dict outputs, the key of the main output (default: the first key).
    """
    if isinstance(pred, torch.Tensor):
        return pred
    if isinstance(pred, dict):
        if not pred:
            raise ValueError("The network returned an empty dict: there is no output to use.")
        return primary_output(pred[next(iter(pred))] if key is None else pred[key])
    if isinstance(pred, (tuple, list)):
        if not pred:
            raise ValueError("The network returned an empty tuple/list: there is no output to use.")
        return primary_output(pred[0] if key is None else pred[key])
    raise TypeError(f"Cannot read a tensor from a network output of type {type(pred).__name__}.")


class PerSampleLoss(nn.Module):
    """Base class: subclasses define ``term_names``, ``term_weights`` and ``terms``."""

    term_names: tuple[str, ...] = ("loss",)
    term_weights: tuple[float, ...] = (1.0,)

    def terms(self, pred: Any, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def primary(self, pred: Any) -> torch.Tensor:
        return primary_output(pred)

    @property
    def num_terms(self) -> int:
        return len(self.term_names)

    def forward(self, pred: Any, target: torch.Tensor) -> torch.Tensor:
        t = self.terms(pred, target)
        w = torch.as_tensor(self.term_weights, dtype=t.dtype, device=t.device)
        return (t * w).sum(dim=1)


def per_sample_terms(loss_fn: Any, pred: Any, target: Any) -> torch.Tensor:
    """Per-sample per-term loss values, shape (B, K), for any loss.

    A :class:`PerSampleLoss` (anything with a ``terms`` method) gives its terms; any other callable must return a
    tensor of shape (B,) (one term) or (B, K).
    """
    terms_fn = getattr(loss_fn, "terms", None)
    out = terms_fn(pred, target) if callable(terms_fn) else loss_fn(pred, target)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"The loss returned {type(out).__name__}; a tensor of shape (B,) or (B, K) is needed.")
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise ValueError(
            f"The loss returned shape {tuple(out.shape)}; per-sample values of shape (B,) or (B, K) are needed "
            "(use reduction='none' and average over the non-batch dimensions)."
        )
    return out


def weighted_total(loss_fn: Any, terms: torch.Tensor) -> torch.Tensor:
    """The per-sample total (B,) of per-term values (B, K): weighted by ``loss_fn.term_weights`` when it has K of
    them (what ``PerSampleLoss.forward`` returns), else the plain sum."""
    w = getattr(loss_fn, "term_weights", None)
    if w is None or len(w) != terms.shape[1]:
        return terms.sum(1)
    return (terms * torch.as_tensor(w, dtype=terms.dtype, device=terms.device)).sum(1)


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


def check_terms(terms: torch.Tensor, names: Sequence[str]) -> None:
    """Raise a clear error when per-term losses are not finite (NaN/inf losses must never pass silently)."""
    bad = ~torch.isfinite(terms)
    if bad.any():
        cols = [names[k] if k < len(names) else str(k) for k in range(terms.shape[1]) if bad[:, k].any()]
        raise FloatingPointError(
            f"Non-finite loss in term(s) {cols} for {int(bad.any(1).sum())} sample(s). Check the input intensities "
            "(NaN voxels?), lower the learning rate, or disable amp."
        )
