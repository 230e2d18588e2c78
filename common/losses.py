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

__all__ = ["PerSampleLoss", "primary_output", "per_sample_terms", "weighted_total"]


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


def check_terms(terms: torch.Tensor, names: Sequence[str]) -> None:
    """Raise a clear error when per-term losses are not finite (NaN/inf losses must never pass silently)."""
    bad = ~torch.isfinite(terms)
    if bad.any():
        cols = [names[k] if k < len(names) else str(k) for k in range(terms.shape[1]) if bad[:, k].any()]
        raise FloatingPointError(
            f"Non-finite loss in term(s) {cols} for {int(bad.any(1).sum())} sample(s). Check the input intensities "
            "(NaN voxels?), lower the learning rate, or disable amp."
        )
