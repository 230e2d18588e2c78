"""Per-sample values of any MONAI loss whose reduction is over the batch, and of torch's losses.

Our attacks, threshold estimation and AMAT's robustness test need one loss value per sample (shape (B,) or (B, K),
see :mod:`robust_bundles.losses`). MONAI's losses reduce over the batch: ``DiceCELoss(reduction='none')`` is refused,
and ``DiceLoss(batch=True)`` sums intersections and volumes over the whole batch before the ratio, so no
``reduction`` setting gives per-sample values. :class:`PerSampleWrapper` defines the per-sample value of sample ``b``
as **the bundle's loss applied to that sample alone**, ``loss(pred[b:b+1], target[b:b+1])``: exactly what the bundle
would compute for a batch of one. For ``batch=True`` Dice this is the sample's own Dice (sums over its voxels only),
not its share of the batch Dice; the batch-mean of the per-sample values therefore differs from the bundle's
batch=True training loss of a batch of several samples (it is the batch=False value).

``DiceCELoss`` (and ``DiceFocalLoss``) are split into their two terms ("dice", "ce"/"focal") with the loss's own
lambdas as weights, so AMAT gets one threshold per term as with the project's own losses; any other loss is one term
("loss"). torch's ``CrossEntropyLoss``, ``MSELoss``, ``L1Loss`` (any reduction but ``'none'``) work the same way:
with ``reduction='sum'`` the value of a sample is its sum alone. Collated MONAI batches (MetaTensors) are read as
plain tensors, boolean masks as the output's float type. The wrapper's ``forward`` is the per-sample total: ``SupervisedTrainer`` takes its ``.mean()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch

from ..losses import PerSampleLoss, primary_output

__all__ = ["PerSampleWrapper", "per_sample"]


def _split(loss: Any) -> tuple[tuple[str, ...], tuple[float, ...], list[Callable] | None]:
    """Term names, weights and term callables of the MONAI losses that are a weighted sum of two losses."""
    name = type(loss).__name__
    if name == "DiceCELoss" and hasattr(loss, "dice") and hasattr(loss, "ce"):
        def ce(p, t):
            return loss.ce(p, t) if p.shape[1] != 1 else loss.bce(p, t)
        return ("dice", "ce"), (float(loss.lambda_dice), float(loss.lambda_ce)), [loss.dice, ce]
    if name == "DiceFocalLoss" and hasattr(loss, "dice") and hasattr(loss, "focal"):
        def onehot(p, t):  # DiceFocalLoss one-hot encodes the label itself before calling its two terms
            if getattr(loss, "to_onehot_y", False) and p.shape[1] > 1 and t.shape[1] == 1:
                from monai.networks import one_hot

                return one_hot(t, num_classes=p.shape[1])
            return t
        return ("dice", "focal"), (float(loss.lambda_dice), float(loss.lambda_focal)), [
            lambda p, t: loss.dice(p, onehot(p, t)), lambda p, t: loss.focal(p, onehot(p, t))]
    return ("loss",), (1.0,), None


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A MetaTensor as a plain tensor (same storage and autograd graph); any other tensor as it is."""
    as_tensor = getattr(x, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else x


class PerSampleWrapper(PerSampleLoss):
    """Any loss made per-sample: the value of sample b is ``loss(pred[b:b+1], target[b:b+1])``.

    Args:
        loss: a loss callable ``loss(pred, target) -> scalar`` (any MONAI loss with its default or batch reduction,
            ``batch=True`` included).
        split_terms: report ``DiceCELoss``/``DiceFocalLoss`` as two terms (their own lambdas as weights); False
            treats every loss as one term.

    Raises:
        TypeError: ``loss`` is not callable, or it returns something that is not a scalar tensor for one sample
            (e.g. ``reduction='none'``, which keeps voxels: use the default reduction).
    """

    def __init__(self, loss: Callable, split_terms: bool = True) -> None:
        super().__init__()
        if isinstance(loss, PerSampleWrapper):
            loss = loss.loss
        if not callable(loss):
            raise TypeError(f"loss must be callable; got {type(loss).__name__}.")
        self.loss = loss
        names, weights, fns = _split(loss) if split_terms else (("loss",), (1.0,), None)
        self.term_names, self.term_weights, self._fns = names, weights, fns
        self._checked = fns is None

    def _scalar(self, value: Any, what: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(
                f"{what} of {type(self.loss).__name__} on one sample returned {shape}; a scalar is needed. Use the "
                "loss's default reduction ('mean' or 'sum' over the batch): the wrapper makes it per-sample."
            )
        return value.reshape(())

    def terms(self, pred: Any, target: Any) -> torch.Tensor:
        if isinstance(pred, Mapping) or isinstance(target, Mapping):
            return self._dict_terms(pred, target)
        # MetaTensors of a collated batch carry per-sample metadata that slicing one sample out of breaks
        # ("len() of a 0-d tensor"): the loss gets plain tensors (gradients flow through as_tensor).
        p, target = _plain(primary_output(pred)), _plain(torch.as_tensor(target))
        if target.dtype == torch.bool:  # multi-label masks (BraTS' ConvertToMultiChannelBasedOnBratsClassesd)
            target = target.to(p.dtype)
        if p.shape[0] != target.shape[0]:
            raise ValueError(f"Prediction batch {p.shape[0]} and label batch {target.shape[0]} differ.")
        rows = []
        for b in range(p.shape[0]):
            pb, tb = p[b:b + 1], target[b:b + 1]
            if not self._checked:
                self._check_split(pb, tb)
            if self._fns is None:
                rows.append(self._scalar(self.loss(pb, tb), "The loss")[None])
            else:
                rows.append(torch.stack([self._scalar(f(pb, tb), n) for f, n in zip(self._fns, self.term_names)]))
        return torch.stack(rows).float()

    def _dict_terms(self, pred: Any, target: Any) -> torch.Tensor:
        """A network with several named outputs (HoVerNet's dict of branches) and a loss over all of them
        (``HoVerNetLoss``, with the dict target of the bundle's ``prepare_batch``): the loss of each sample's slice
        of every output and target, as one term."""
        def one(x: Any, b: int) -> Any:
            if isinstance(x, Mapping):
                return {k: one(v, b) for k, v in x.items()}
            return _plain(x)[b:b + 1] if isinstance(x, torch.Tensor) else x

        first = primary_output(pred)
        self.term_names, self.term_weights, self._fns, self._checked = ("loss",), (1.0,), None, True
        return torch.stack([self._scalar(self.loss(one(pred, b), one(target, b)), "The loss")[None]
                            for b in range(first.shape[0])]).float()

    def _check_split(self, pb: torch.Tensor, tb: torch.Tensor) -> None:
        """Once: the weighted terms must add up to the loss itself; else (a MONAI version whose loss prepares the
        label differently) the loss is used as one term, with a warning."""
        self._checked = True
        with torch.no_grad():
            total = float(self._scalar(self.loss(pb, tb), "The loss"))
            try:
                split = sum(w * float(self._scalar(f(pb, tb), n))
                            for f, n, w in zip(self._fns, self.term_names, self.term_weights))
            except Exception as e:  # noqa: BLE001 (any failure of the split: use the loss whole)
                split, why = float("nan"), f"{type(e).__name__}: {e}"
            else:
                why = f"{split:.6g} != {total:.6g}"
        if not abs(split - total) <= 1e-4 * max(1.0, abs(total)):
            import logging

            logging.getLogger("robust_bundles.foreign").warning(
                f"{type(self.loss).__name__}: its terms {self.term_names} do not add up to the loss ({why}); it is "
                "used as one term 'loss'.")
            self.term_names, self.term_weights, self._fns = ("loss",), (1.0,), None

    def __repr__(self) -> str:
        return f"PerSampleWrapper({type(self.loss).__name__}, terms={self.term_names})"


def per_sample(loss: Callable, split_terms: bool = True) -> PerSampleWrapper:
    """Shorthand for :class:`PerSampleWrapper` (for configs: ``"$robust_bundles.foreign.per_sample(@loss)"``)."""
    return PerSampleWrapper(loss, split_terms)


