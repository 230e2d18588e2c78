"""Ignite handler that estimates the loss thresholds xi on an evaluator run over the training set."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import (
    CommonKeys,
    IgniteInfo,
    convert_to_tensor,
    evenly_divisible_all_gather,
    min_version,
    optional_import,
)

from ..losses import per_sample_terms
from ..thresholds import Thresholds, check_rule, from_values

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )

__all__ = ["ThresholdEstimationHandler", "pred_label_from_output"]


def _plain(x: Any) -> Any:
    """Tensors (also nested in tuples/lists/dicts) without MONAI metadata."""
    return convert_to_tensor(x, track_meta=False)


def pred_label_from_output(output: Any) -> tuple[Any, torch.Tensor]:
    """Batched ``(pred, label)`` out of a MONAI engine output.

    With ``decollate=True`` the output is a list of per-sample dicts (no batch dimension): the items are stacked.
    With ``decollate=False`` it is a dict of batched values. Keys are ``CommonKeys.PRED`` and ``CommonKeys.LABEL``.
    """
    if isinstance(output, dict):
        return _plain(output[CommonKeys.PRED]), _plain(output[CommonKeys.LABEL])
    if isinstance(output, (list, tuple)) and output and all(isinstance(item, dict) for item in output):
        collate = torch.utils.data.default_collate
        pred = collate([_plain(item[CommonKeys.PRED]) for item in output])
        label = collate([_plain(item[CommonKeys.LABEL]) for item in output])
        return pred, label
    raise TypeError(
        "Cannot read pred and label from an engine output of type "
        f"{type(output).__name__}: expected a dict or a list of per-sample dicts with keys "
        f"{CommonKeys.PRED!r} and {CommonKeys.LABEL!r}; pass output_transform for other outputs."
    )


class ThresholdEstimationHandler:
    """Collect per-sample per-term loss values on an evaluator and estimate the thresholds xi at the end of the run.

    Attach it to an evaluator (e.g. ``monai.engines.SupervisedEvaluator``) that runs the trained STD model in eval mode,
    without augmentation and without postprocessing of the prediction, over the TRAINING set. On
    ``ITERATION_COMPLETED`` it stores ``per_sample_terms(loss, pred, label)`` of the batch; on ``COMPLETED`` it
    estimates xi (:func:`robust_bundles.thresholds.from_values`), writes ``output_path``, logs ``xi[<term>] = ...`` and puts
    ``engine.state.metrics["xi_<term>"]``. ``STARTED`` clears the collected values, so each run starts afresh. The
    result is also kept as ``self.thresholds``.

    Under DDP the values of all ranks are gathered (a DistributedSampler pads the dataset with a few repeated samples,
    which enter the estimate) and rank 0 writes the file.

    Args:
        loss: the training loss: a ``robust_bundles.losses.PerSampleLoss`` (its ``terms`` and ``term_names`` are used) or any
            callable returning per-sample values (B,) or (B, K).
        output_path: the JSON file to write (parent folders are created).
        rule: estimation rule: "mean", "mean_std", "median_mad", "huber" or "quantile".
        k: number of population standard deviations above the mean ("mean_std").
        z: number of robust standard deviations (1.4826 * MAD) above the location ("median_mad", "huber").
        q: quantile level in [0, 1] ("quantile").
        huber_c: Huber tuning constant in units of the robust scale ("huber").
        checkpoint: path of the STD checkpoint the evaluator's network was loaded from; its SHA-256 is stored.
        output_transform: maps ``engine.state.output`` to batched ``(pred, label)``; the default reads MONAI outputs,
            decollated (list of dicts) or not (dict).
        name: logger name; None uses ``engine.logger``.
    """

    def __init__(
        self,
        loss: Any,
        output_path: str,
        rule: str = "mean",
        k: float = 2.0,
        z: float = 2.0,
        q: float = 0.9,
        huber_c: float = 1.345,
        checkpoint: str | None = None,
        output_transform: Callable[[Any], tuple[Any, torch.Tensor]] = pred_label_from_output,
        name: str | None = None,
    ) -> None:
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}.")
        if not output_path:
            raise ValueError("output_path must name the thresholds file to write.")
        if not callable(output_transform):
            raise TypeError(f"output_transform must be callable, got {type(output_transform).__name__}.")
        check_rule(rule, k=k, z=z, q=q, huber_c=huber_c)
        self.loss = loss
        self.output_path = output_path
        self.rule = rule
        self.params = {"k": k, "z": z, "q": q, "huber_c": huber_c}
        self.checkpoint = checkpoint
        self.output_transform = output_transform
        self.logger = logging.getLogger(name)
        self._name = name
        self._values: list[torch.Tensor] = []
        self.thresholds: Thresholds | None = None

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the Ignite evaluator running the STD model over the training set.
        """
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the values collected so far."""
        self._values = []
        self.thresholds = None

    def __call__(self, engine: Engine) -> None:
        """Store the per-sample per-term loss values (B, K) of the current batch."""
        pred, label = self.output_transform(engine.state.output)
        with torch.no_grad():
            terms = per_sample_terms(self.loss, pred, label)
        self._values.append(terms.detach().to("cpu", torch.float64))

    def _term_names(self, num_terms: int) -> list[str]:
        names = getattr(self.loss, "term_names", None)
        if names is None:
            return ["loss"] if num_terms == 1 else [f"term{i}" for i in range(num_terms)]
        return [str(n) for n in names]

    def complete(self, engine: Engine) -> None:
        """Estimate xi from every collected value, write the file, log and publish the thresholds."""
        if not self._values:
            raise ValueError(
                "ThresholdEstimationHandler collected no sample: the evaluator's data loader is empty (check the "
                "training data list of the threshold-estimation config)."
            )
        values = torch.cat(self._values, dim=0)
        if idist.get_world_size() > 1:
            # NCCL gathers only device tensors: gather on the backend's device, then back to the CPU
            values = evenly_divisible_all_gather(values.to(idist.device()), concat=True).cpu()
        names = self._term_names(values.shape[1])
        self.thresholds = from_values(values, names, rule=self.rule, checkpoint=self.checkpoint, **self.params)
        if idist.get_rank() == 0:
            self.thresholds.save(self.output_path)
        n = self.thresholds.num_samples
        for term, xi in zip(self.thresholds.term_names, self.thresholds.xi):
            self.logger.info(f"xi[{term}] = {xi:.6g} (rule {self.rule} over {n} samples)")
            engine.state.metrics[f"xi_{term}"] = xi
        self.logger.info(f"thresholds written to {self.output_path}")
