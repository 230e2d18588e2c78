"""Adversarial training iterations for MONAI's ``SupervisedTrainer``: VAT, TEAT, AMAT and TRADES.

Each class here is an ``iteration_update`` callable ``(engine, batchdata) -> output``: a bundle whose train.json builds a
standard ``SupervisedTrainer`` (STD, clean training) becomes adversarially trained by an overlay that sets
``train#trainer#iteration_update`` to one of these (and, for AMAT, adds the margin book and its handler)::

    "train#trainer#iteration_update": {
        "_target_": "robust_bundles.adversarial.AMATIteration",
        "attack": {"_target_": "robust_bundles.attacks.L2PGD", "steps": 20, "alpha": 4.0},
        "margins": "@margins",
        "thresholds": "$robust_bundles.thresholds.load_thresholds(@thresholds_file, @loss)"
    }

The network, loss, optimizer, inferer, prepare_batch, amp and event firing are the trainer's own, so everything a
bundle configured for STD training (handlers, metrics, checkpointing) keeps working. The loss must give per-sample
values (see :mod:`robust_bundles.losses`). Attacks run before the training forward pass, with gradients taken with respect to
the input only, and leave the network's mode and normalisation statistics as they were.

Per-batch figures (clean and adversarial loss, mean eps, robust fraction) are put in ``engine.state.adversarial``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from .attacks import L2PGD, Attack, preserve_model_state
from .distributed import FirstVisits, gather_first_visits, is_distributed, unwrap
from .losses import check_terms, per_sample_terms, primary_output, weighted_total
from .margins import MarginBook
from .perturbation_memory import PerturbationMemory

__all__ = [
    "AdversarialIteration",
    "StepInfo",
    "VATIteration",
    "TEATIteration",
    "AMATIteration",
    "TRADESIteration",
    "output_divergence",
    "TemporalEnsemble",
    "teat_weight",
    "batch_sample_ids",
    "output_heads",
]


def batch_sample_ids(batchdata: Any, id_key: str, device: torch.device | str) -> torch.Tensor:
    """Sample ids (B,) int64 of a batch; a clear error when the dataset does not provide them."""
    if not isinstance(batchdata, dict) or id_key not in batchdata:
        keys = list(batchdata) if isinstance(batchdata, dict) else type(batchdata).__name__
        raise KeyError(
            f"The batch has no {id_key!r} (it has {keys}). AMAT and TEAT need a stable per-sample id: build the dataset "
            "with robust_bundles.transforms.assign_sample_ids (robust_bundles.data.msd.load_slices does it) and keep the key through the "
            "transforms (robust_bundles.transforms.SampleIdd)."
        )
    ids = torch.as_tensor(batchdata[id_key]).reshape(-1).to(device=device, dtype=torch.long)
    return ids


def _terms_and_total(loss_fn: Any, pred: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) terms and (B,) weighted total of a loss."""
    terms = per_sample_terms(loss_fn, pred, target)
    return terms, weighted_total(loss_fn, terms)


@dataclass
class StepInfo:
    """What one adversarial training iteration knows about its batch, passed from hook to hook.

    :meth:`AdversarialIteration.adversarial` fills the attack's part, :meth:`AdversarialIteration.objective` the
    adversarial forward pass's, a method's :meth:`AdversarialIteration.objective` its verdicts (AMAT: ``robust``);
    :meth:`AdversarialIteration.after_step` reads them after the optimizer step.

    Attributes:
        eps: (B,) noise level of each sample's attack.
        norms: (B,) norm of each sample's perturbation.
        robust_path: (B, K) per-term robustness test of the attack's iterates (AMAT's xi test on the path), or None.
        memory_stats: figures of the perturbation memory for the logs (``memory_hit_fraction``).
        terms_adv: (B, K) loss terms of the adversarial inputs (detached).
        pred_adv: the network's output for the adversarial inputs.
        robust: (B,) the method's verdict per sample (AMAT: every term under its threshold on the path and at x_adv).
    """

    eps: torch.Tensor
    norms: torch.Tensor
    robust_path: torch.Tensor | None = None
    memory_stats: dict = field(default_factory=dict)
    terms_adv: torch.Tensor | None = None
    pred_adv: Any = None
    robust: torch.Tensor | None = None


class AdversarialIteration:
    """Base class: one training iteration on clean and/or adversarial inputs.

    Subclasses define :meth:`adversarial` (make x_adv) and may extend :meth:`objective` and :meth:`after_step`.

    Args:
        attack: the attack used to make training samples; model and loss are the trainer's unless the attack has its
            own. Default: L2 PGD with 10 steps, alpha 4.
        beta: weight of the clean loss, ``L = beta * mean(L0) + (1 - beta) * mean(L1)``.
        id_key: batch key of the stable sample id.
        memory: a :class:`robust_bundles.perturbation_memory.PerturbationMemory`: every attack starts from the
            sample's last perturbation rescaled to its current noise level (a cold start for samples without one),
            and its result is stored for the next visit. None (default): every attack starts cold.
        geometry_key: batch key of the per-sample geometry key (:class:`robust_bundles.perturbation_memory.GeometryKeyd`);
            when the batch has no such key the geometry is taken as fixed.
    """

    needs_ids = False

    def __init__(self, attack: Attack | None = None, beta: float = 0.0, id_key: str = "sample_id",
                 memory: PerturbationMemory | None = None, geometry_key: str = "geometry_key") -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1]; got {beta}.")
        if memory is not None and not isinstance(memory, PerturbationMemory):
            raise TypeError(f"memory must be a robust_bundles.perturbation_memory.PerturbationMemory or None; got "
                            f"{type(memory).__name__}.")
        self.attack = attack if attack is not None else L2PGD(steps=10, alpha=4.0)
        self.beta = float(beta)
        self.id_key = id_key
        self.memory = memory
        self.geometry_key = geometry_key
        self._geometry: torch.Tensor | None = None  # the current batch's geometry keys
        self._visits: FirstVisits | None = None  # data-parallel runs: the first visit of each sample per epoch
        self._memory_visits: FirstVisits | None = None

    # -- the perturbation memory -----------------------------------------------------------------------------------
    def recall(self, ids: torch.Tensor | None, eps: torch.Tensor | float,
               inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The warm start ``(delta, use)`` of the batch from the memory (None without a memory)."""
        if self.memory is None:
            return None
        return self.memory.recall(ids, eps, inputs, self._geometry)

    def remember(self, engine, ids: torch.Tensor | None, delta: torch.Tensor, eps: torch.Tensor | float) -> dict:
        """Store the batch's perturbations (gathered from every process, first visits only, in data-parallel runs)."""
        if self.memory is None:
            return {}
        hit = self.memory.last_hit_fraction
        if self._memory_visits is None and is_distributed():
            self._memory_visits = FirstVisits(len(self.memory))
        eps_t = torch.as_tensor(eps, dtype=torch.float32, device=delta.device).expand(delta.shape[0])
        geometry = self._geometry if self._geometry is not None else torch.zeros(delta.shape[0], dtype=torch.long)
        all_ids, all_delta, all_eps, all_geo = gather_first_visits(
            self._memory_visits, engine.state.epoch, ids, delta.detach(), eps_t, geometry.to(delta.device))
        self.memory.store(all_ids, all_delta, all_eps, all_geo)
        return {"memory_hit_fraction": hit}

    def _warm(self, ids, eps, inputs) -> dict:
        """``{"warm_start": ...}`` for the attack's keyword arguments, or nothing without a memory (so that the
        attack call, and every result, is exactly what it was before the memory existed)."""
        warm = self.recall(ids, eps, inputs)
        return {} if warm is None else {"warm_start": warm}

    # -- hooks -----------------------------------------------------------------------------------------------------
    def adversarial(self, engine, inputs, targets, ids, forward) -> tuple[torch.Tensor, StepInfo]:  # pragma: no cover
        raise NotImplementedError

    def objective(self, engine, inputs, targets, x_adv, ids, info: StepInfo, forward) -> tuple[torch.Tensor, Any, dict]:
        """Training loss, the prediction to report, and per-batch figures."""
        loss_fn = engine.loss_function
        stats: dict[str, float] = {}
        pred_adv = forward(x_adv)
        terms_adv, total_adv = _terms_and_total(loss_fn, pred_adv, targets)
        check_terms(terms_adv, getattr(loss_fn, "term_names", ()))
        info.terms_adv = terms_adv.detach()
        info.pred_adv = pred_adv
        loss = (1 - self.beta) * total_adv.mean()
        stats["loss_adv"] = float(total_adv.detach().mean())
        pred = pred_adv
        if self.beta > 0:
            pred_clean = forward(inputs)
            terms_clean, total_clean = _terms_and_total(loss_fn, pred_clean, targets)
            check_terms(terms_clean, getattr(loss_fn, "term_names", ()))
            loss = loss + self.beta * total_clean.mean()
            stats["loss_clean"] = float(total_clean.detach().mean())
            pred = pred_clean
        return loss, pred, stats

    def after_step(self, engine, ids, info: StepInfo) -> dict:
        return {}

    # -- the iteration ---------------------------------------------------------------------------------------------
    def __call__(self, engine, batchdata: Any) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if getattr(engine, "accumulation_steps", 1) != 1:
            raise ValueError("Adversarial iterations do not support accumulation_steps > 1.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args, kwargs = (), {}
        else:
            inputs, targets, args, kwargs = batch
        needs_ids = self.needs_ids or self.memory is not None
        ids = batch_sample_ids(batchdata, self.id_key, inputs.device) if needs_ids else None
        self._geometry = None
        if self.memory is not None and isinstance(batchdata, dict) and self.geometry_key in batchdata:
            self._geometry = torch.as_tensor(batchdata[self.geometry_key]).reshape(-1).long().cpu()
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()

        def forward(x: torch.Tensor) -> Any:
            return engine.inferer(x, engine.network, *args, **kwargs)

        bare = unwrap(engine.network)  # attack passes bypass a DistributedDataParallel wrapper

        def attack_forward(x: torch.Tensor) -> Any:
            return engine.inferer(x, bare, *args, **kwargs)

        x_adv, info = self.adversarial(engine, inputs, targets, ids, attack_forward)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        amp = bool(engine.amp and getattr(engine, "scaler", None) is not None)
        ctx = torch.autocast("cuda", **engine.amp_kwargs) if amp else contextlib.nullcontext()
        with ctx:
            loss, pred, stats = self.objective(engine, inputs, targets, x_adv, ids, info, forward)
        engine.state.output[Keys.PRED] = pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite training loss ({loss.item()}) at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}: lower the learning rate, check the inputs for NaN, or disable amp."
            )
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        stats.update(self.after_step(engine, ids, info))
        stats.update(info.memory_stats)
        stats["eps_mean"] = float(info.eps.float().mean())
        stats["perturbation_norm_mean"] = float(info.norms.float().mean())
        engine.state.adversarial = stats
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class VATIteration(AdversarialIteration):
    """Vanilla adversarial training (Madry et al.): every sample at one fixed noise level ``eps``.

    Args:
        eps: training noise level (input intensity units, norm of the attack).
        attack: the attack (default L2 PGD, 10 steps, alpha 4, random start).
        beta: weight of the clean loss (0: adversarial samples only, as in the paper's VAT).
        id_key: batch key of the stable sample id (used with a memory only).
        memory, geometry_key: the perturbation memory (warm starts at ``eps``), see :class:`AdversarialIteration`.
    """

    def __init__(self, eps: float, attack: Attack | None = None, beta: float = 0.0, id_key: str = "sample_id",
                 memory: PerturbationMemory | None = None, geometry_key: str = "geometry_key"):
        super().__init__(attack, beta, id_key, memory, geometry_key)
        if eps < 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be finite and >= 0; got {eps}.")
        self.eps = float(eps)

    def adversarial(self, engine, inputs, targets, ids, forward):
        res = self.attack.run(
            inputs,
            targets,
            eps=self.eps,
            model=self.attack.model or unwrap(engine.network),
            loss_fn=self.attack.loss_fn or engine.loss_function,
            forward=forward,
            final_check=False,
            **self._warm(ids, self.eps, inputs),
        )
        memory_stats = self.remember(engine, ids, res.x_adv - inputs, self.eps)
        return res.x_adv, StepInfo(eps=torch.full((inputs.shape[0],), self.eps), norms=res.norms,
                                   memory_stats=memory_stats)


_ACTIVATIONS = ("softmax", "sigmoid", "none")


def _activate(out: torch.Tensor, activation: str) -> torch.Tensor:
    """softmax over the channel dimension, sigmoid, or the output itself ("none"); in float32."""
    if activation == "softmax":
        return out.float().softmax(1)
    if activation == "sigmoid":
        return out.float().sigmoid()
    return out.float()


def output_heads(loss_fn: Any, out: Any) -> dict[str, torch.Tensor]:
    """The named heads of a network output: the items of a dict output, else ``loss_fn.heads(out)``.

    Raises:
        TypeError: the output is no dict and the loss has no ``heads`` method.
    """
    if isinstance(out, Mapping):
        return {str(k): primary_output(v) for k, v in out.items()}
    heads = getattr(loss_fn, "heads", None)
    if not callable(heads):
        raise TypeError(
            f"Activations by head need named heads: the network returned a {type(out).__name__} and the loss "
            f"{type(loss_fn).__name__} has no heads(output) method. Return a dict from the network, give the loss a "
            f"heads() method, or use one activation for the main output."
        )
    return dict(heads(out))


def teat_weight(epoch: float, max_epochs: int, w_max: float = 300.0, start: float = 0.5, ramp: float = 0.2) -> float:
    """TEAT's consistency weight at (fractional) ``epoch`` of ``max_epochs``.

    0 before ``start * E``; ``w_max * exp(-5 (1 - (e - start E) / (ramp E))^2)`` for ``start E <= e < (start + ramp) E``;
    ``w_max`` after.
    """
    e0, e1 = start * max_epochs, (start + ramp) * max_epochs
    if epoch < e0:
        return 0.0
    if epoch >= e1 or e1 <= e0:
        return float(w_max)
    p = (epoch - e0) / (e1 - e0)
    return float(w_max * math.exp(-5.0 * (1.0 - p) ** 2))


class TemporalEnsemble:
    """Per-sample exponential moving average of model outputs (TEAT's soft targets), checkpointable.

    ``ema_i = m * ema_i + (1 - m) * p_i`` at every visit of sample i; the target is the bias-corrected
    ``ema_i / (1 - m ** count_i)``. Storage (N, *output_shape) is allocated at the first update, in float32 by default;
    float16 halves the memory and the checkpoint (a landmark network's 57 maps of 200 x 160 pixels take 7.3 MB per
    sample in float32), at a relative rounding error of about 5e-4 of the stored average.

    Args:
        num_samples: N, the number of training samples (ids 0..N-1).
        momentum: m.
        storage_dtype: "float32" or "float16": how the averages are stored (they are computed in float32).
    """

    def __init__(self, num_samples: int, momentum: float = 0.9, storage_dtype: str = "float32") -> None:
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1); got {momentum}.")
        dtypes = {"float32": torch.float32, "float16": torch.float16}
        if storage_dtype not in dtypes:
            raise ValueError(f"storage_dtype must be one of {sorted(dtypes)}; got {storage_dtype!r}.")
        self.num_samples = int(num_samples)
        self.momentum = float(momentum)
        self.storage_dtype = dtypes[storage_dtype]
        self.ema: torch.Tensor | None = None
        self.count = torch.zeros(self.num_samples, dtype=torch.long)

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_samples):
            raise IndexError(
                f"Sample ids must lie in [0, {self.num_samples - 1}]; got [{int(ids.min())}, {int(ids.max())}]. "
                "The ensemble size must equal the number of training samples."
            )

    def update(self, ids: torch.Tensor, values: torch.Tensor) -> None:
        """Fold ``values`` (B, *output_shape) into the average of samples ``ids`` (B,)."""
        ids = ids.detach().cpu().long()
        self._check_ids(ids)
        v = values.detach().float().cpu()
        if self.ema is None:
            self.ema = torch.zeros((self.num_samples, *v.shape[1:]), dtype=self.storage_dtype)
        if tuple(self.ema.shape[1:]) != tuple(v.shape[1:]):
            raise ValueError(
                f"Output shape {tuple(v.shape[1:])} differs from the stored {tuple(self.ema.shape[1:])}: TEAT needs "
                "one fixed output shape per sample (pad or crop deterministically)."
            )
        self.ema[ids] = (self.momentum * self.ema[ids].float() + (1 - self.momentum) * v).to(self.ema.dtype)
        self.count[ids] += 1

    def targets(self, ids: torch.Tensor, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias-corrected targets (B, *output_shape) and a (B,) bool mask of samples seen at least once."""
        ids = ids.detach().cpu().long()
        self._check_ids(ids)
        if self.ema is None:
            raise RuntimeError("The ensemble holds no outputs yet: call update() first.")
        c = self.count[ids]
        corr = (1 - self.momentum ** c.double()).float().clamp_min(1e-12)
        t = self.ema[ids].float() / corr.reshape(-1, *([1] * (self.ema.ndim - 1)))
        return t.to(device), (c > 0).to(device)

    def state_dict(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "momentum": self.momentum,
            "ema": self.ema if self.ema is not None else torch.zeros(0),
            "count": self.count,
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(
                f"The TEAT ensemble in the checkpoint has {int(state['num_samples'])} samples but the training set has "
                f"{self.num_samples}: resume with the same dataset and split."
            )
        self.momentum = float(state["momentum"])
        ema = state["ema"]
        self.ema = ema.clone().to(self.storage_dtype) if ema.numel() else None
        self.count = state["count"].clone().long()


class TEATIteration(VATIteration):
    """TEAT (Dong et al., ICLR 2022): VAT plus a temporal-ensembling consistency term.

    From ``start * E`` on, the clean eval-mode output of every visited sample is folded into a per-sample moving
    average (:class:`TemporalEnsemble`); the loss adds ``w(e) * mean((act(f(x_adv)) - target)^2)`` with ``w`` from
    :func:`teat_weight`. ``act`` is the softmax over the class channel for segmentation ("softmax"), "sigmoid" for
    independent probabilities, "none" where the output is not a distribution (e.g. offset maps).

    A network with several heads gets one activation per head: ``activation`` is then a dict ``{head: "softmax" |
    "sigmoid" | "none"}``, e.g. ``{"heatmap": "sigmoid", "offset_x": "none", "offset_y": "none"}`` for a landmark
    network. The heads are the keys of a dict output, or what the loss's ``heads(output) -> {name: tensor}`` gives
    (:class:`robust_bundles.tasks.landmarks.LandmarkLoss` splits its channels so); heads left out of the dict do not
    enter the consistency term. The activated heads are flattened and concatenated per sample, so the mean squared
    difference weighs every output element alike. ``activation`` may also be a callable ``output -> (B, ...) tensor``.

    Args:
        eps: training noise level.
        ensemble: the :class:`TemporalEnsemble` (put it in the checkpoint's save_dict to resume).
        max_epochs: E, the number of training epochs (the trainer's max_epochs).
        attack: the attack (default L2 PGD 10 steps).
        beta: weight of the clean task loss.
        w_max: final consistency weight (300 in the reference).
        start: fraction of training after which the ensemble is updated and the ramp starts.
        ramp: fraction of training over which the weight ramps up.
        activation: "softmax", "sigmoid" or "none" for the main output; a dict of them by head; or a callable.
        id_key: batch key of the stable sample id.
        memory, geometry_key: the perturbation memory (warm starts at ``eps``), see :class:`AdversarialIteration`.
    """

    needs_ids = True

    def __init__(
        self,
        eps: float,
        ensemble: TemporalEnsemble,
        max_epochs: int,
        attack: Attack | None = None,
        beta: float = 0.0,
        w_max: float = 300.0,
        start: float = 0.5,
        ramp: float = 0.2,
        activation: str | Mapping[str, str] | Callable[[Any], torch.Tensor] = "softmax",
        id_key: str = "sample_id",
        memory: PerturbationMemory | None = None,
        geometry_key: str = "geometry_key",
    ) -> None:
        super().__init__(eps, attack, beta, id_key, memory, geometry_key)
        choices = ", ".join(repr(a) for a in _ACTIVATIONS)
        if isinstance(activation, Mapping):
            if not activation:
                raise ValueError("activation: the dict of activations by head is empty; name at least one head.")
            bad = {h: a for h, a in activation.items() if a not in _ACTIVATIONS}
            if bad:
                raise ValueError(f"activation: heads {bad} have unknown activations; use one of {choices}.")
            activation = dict(activation)
        elif not callable(activation) and activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {choices}, a dict of them by head, or a callable; got "
                             f"{activation!r}.")
        self.ensemble = ensemble
        self.max_epochs = int(max_epochs)
        self.w_max, self.start, self.ramp = float(w_max), float(start), float(ramp)
        self.activation = activation

    def _act(self, engine, out: Any) -> torch.Tensor:
        """The activated output of a batch, as the ensemble stores it."""
        if isinstance(self.activation, str):
            main_of = getattr(engine.loss_function, "primary", primary_output)
            return _activate(main_of(out), self.activation)
        if callable(self.activation):
            return torch.as_tensor(self.activation(out)).float()
        heads = output_heads(engine.loss_function, out)
        missing = [h for h in self.activation if h not in heads]
        if missing:
            raise KeyError(f"TEAT activation names heads {missing} that the output does not have (heads: "
                           f"{list(heads)}); use those names in the activation dict.")
        return torch.cat([_activate(heads[h], a).flatten(1) for h, a in self.activation.items()], dim=1)

    def _epoch(self, engine) -> float:
        length = engine.state.epoch_length or 1
        within = (engine.state.iteration - 1) % length
        return engine.state.epoch - 1 + within / length

    def objective(self, engine, inputs, targets, x_adv, ids, info, forward):
        loss, pred, stats = super().objective(engine, inputs, targets, x_adv, ids, info, forward)
        e = self._epoch(engine)
        w = teat_weight(e, self.max_epochs, self.w_max, self.start, self.ramp)
        stats["teat_weight"] = w
        if e >= self.start * self.max_epochs:
            with torch.no_grad():
                engine.network.eval()
                try:
                    clean = forward(inputs)
                finally:
                    engine.network.train()
                if self._visits is None and is_distributed():
                    self._visits = FirstVisits(self.ensemble.num_samples)
                self.ensemble.update(*gather_first_visits(self._visits, engine.state.epoch, ids,
                                                          self._act(engine, clean)))
            target, seen = self.ensemble.targets(ids, device=inputs.device)
            adv = self._act(engine, info.pred_adv)
            per_sample = ((adv - target) ** 2).flatten(1).mean(1) * seen.float()
            consistency = per_sample.mean()
            stats["teat_consistency"] = float(consistency.detach())
            loss = loss + w * consistency
        return loss, pred, stats


class AMATIteration(AdversarialIteration):
    """Adaptive-margin adversarial training (Ma & Liang, SPIE Medical Imaging 2024).

    Per batch: ``eps_b = E(id_b)``; L2 PGD with per-sample radius ``eps_b`` and a random start on the sphere of
    radius ``min(max(eps_b - Delta, Delta), eps_b)``; ``L = beta * mean(L0) + (1 - beta) * mean(L1)``; sample b passes
    the robustness test when every loss term stays at or below ``xi`` ("path": at every PGD iterate, x_adv included;
    "final": at x_adv only); the margin book records (robust, ||x_adv - x||) and applies the update rule at epoch end
    (:class:`robust_bundles.handlers.MarginHandler`) or right away in "iteration" mode.

    The robustness test uses the loss of the main (full-resolution) output, as the thresholds were estimated on the
    eval-mode output; deep-supervision heads only shape the training objective.

    Args:
        margins: the :class:`robust_bundles.margins.MarginBook` (put it in the checkpoint's save_dict to resume).
        thresholds: xi, (K,) tensor/list, one threshold per loss term (``robust_bundles.thresholds.load_thresholds``).
        attack: the attack (default L2 PGD, 20 steps, alpha 4, as the paper's code).
        beta: weight of the clean loss (0.5).
        check: "path" or "final".
        id_key: batch key of the stable sample id.
        memory, geometry_key: the perturbation memory, see :class:`AdversarialIteration`. A warm-started sample
            starts from its last perturbation rescaled to its current margin (instead of the random start), and the
            "path" test runs on the iterates actually visited: the warm start, every step, and x_adv. With T = 1 the
            path is the start point (warm or random) and x_adv.
    """

    needs_ids = True

    def __init__(
        self,
        margins: MarginBook,
        thresholds: torch.Tensor | Sequence[float],
        attack: Attack | None = None,
        beta: float = 0.5,
        check: str = "path",
        id_key: str = "sample_id",
        memory: PerturbationMemory | None = None,
        geometry_key: str = "geometry_key",
    ) -> None:
        super().__init__(attack if attack is not None else L2PGD(steps=20, alpha=4.0), beta, id_key, memory,
                         geometry_key)
        if check not in ("path", "final"):
            raise ValueError(f"check must be 'path' or 'final'; got {check!r}.")
        self.margins = margins
        self.xi = torch.as_tensor(thresholds, dtype=torch.float32).flatten()
        if not torch.isfinite(self.xi).all():
            raise ValueError(f"Thresholds must be finite; got {self.xi.tolist()}.")
        self.check = check

    def _test_terms(self, engine, out: Any, targets: Any) -> torch.Tensor:
        loss_fn = engine.loss_function
        main_of = getattr(loss_fn, "primary", primary_output)
        return per_sample_terms(loss_fn, main_of(out), targets).float()

    def adversarial(self, engine, inputs, targets, ids, forward):
        eps = self.margins.get(ids).to(inputs.device)
        delta = self.margins.expansion_step
        start = torch.minimum(torch.clamp(eps - delta, min=delta), eps)
        loss_fn = self.attack.loss_fn or engine.loss_function
        res = self.attack.run(
            inputs,
            targets,
            eps=eps,
            model=self.attack.model or unwrap(engine.network),
            loss_fn=loss_fn,
            forward=forward,
            start_radius=start if self.attack.random_start else None,
            thresholds=self.xi.to(inputs.device) if self.check == "path" else None,
            test_fn=lambda out, y: self._test_terms(engine, out, y),
            check="path",
            final_check=False,
            **self._warm(ids, eps, inputs),
        )
        memory_stats = self.remember(engine, ids, res.x_adv - inputs, eps)
        return res.x_adv, StepInfo(eps=eps, norms=res.norms, robust_path=res.robust, memory_stats=memory_stats)

    def objective(self, engine, inputs, targets, x_adv, ids, info, forward):
        if self.xi.numel() != getattr(engine.loss_function, "num_terms", self.xi.numel()):
            raise ValueError(
                f"{self.xi.numel()} threshold(s) for a loss with {engine.loss_function.num_terms} terms "
                f"{list(engine.loss_function.term_names)}: re-estimate the thresholds for this loss."
            )
        loss, pred, stats = super().objective(engine, inputs, targets, x_adv, ids, info, forward)
        with torch.no_grad():
            final = self._test_terms(engine, info.pred_adv, targets) <= self.xi.to(inputs.device)
        robust = final if info.robust_path is None else final & info.robust_path
        info.robust = robust.all(1)
        return loss, pred, stats

    def after_step(self, engine, ids, info):
        robust = info.robust
        if self._visits is None and is_distributed():
            self._visits = FirstVisits(len(self.margins))
        all_ids, all_robust, all_norms = gather_first_visits(self._visits, engine.state.epoch, ids, robust,
                                                             info.norms)
        self.margins.record(all_ids, all_robust, all_norms, epoch=engine.state.epoch)
        return {"robust_fraction": float(robust.float().mean())}


def _divergence(clean: torch.Tensor, adv: torch.Tensor, activation: str) -> torch.Tensor:
    """(B,) divergence of the adversarial from the clean output of one head, averaged over its elements:
    "softmax": KL of the class distributions over dim 1 (per pixel, anchor, ...); "sigmoid": KL of independent
    Bernoulli probabilities per element; "none": the squared difference."""
    a, b = clean.float(), adv.float()
    if activation == "softmax":
        log_p, log_q = a.log_softmax(1), b.log_softmax(1)
        per = (log_p.exp() * (log_p - log_q)).sum(1)
    elif activation == "sigmoid":
        log_p, log_q = F.logsigmoid(a), F.logsigmoid(b)
        log_p1, log_q1 = F.logsigmoid(-a), F.logsigmoid(-b)
        per = log_p.exp() * (log_p - log_q) + log_p1.exp() * (log_p1 - log_q1)
    else:
        per = (a - b) ** 2
    return per.reshape(per.shape[0], -1).mean(1)


def output_divergence(loss_fn: Any, clean: Any, adv: Any,
                      activation: str | Mapping[str, str] = "softmax") -> torch.Tensor:
    """TRADES's (B,) divergence between a batch's clean and adversarial network outputs, per sample.

    Args:
        loss_fn: the task's loss (its ``primary`` main output, its ``heads`` by name).
        clean: the network's output for the clean inputs (raw: logits).
        adv: its output for the adversarial inputs.
        activation: how the outputs are distributions, as the task declares them (``output_activation``): one of
            "softmax", "sigmoid", "none" for the main output, or a dict of them by head (e.g. ``{"heatmap":
            "sigmoid", "offset_x": "none", "offset_y": "none"}``; heads left out do not enter), summed over heads.
    """
    if isinstance(activation, str):
        main_of = getattr(loss_fn, "primary", primary_output)
        return _divergence(main_of(clean), main_of(adv), activation)
    heads_clean, heads_adv = output_heads(loss_fn, clean), output_heads(loss_fn, adv)
    missing = [h for h in activation if h not in heads_clean]
    if missing:
        raise KeyError(f"TRADES output_activation names heads {missing} that the output does not have (heads: "
                       f"{list(heads_clean)}); use those names.")
    return sum(_divergence(heads_clean[h], heads_adv[h], a) for h, a in activation.items())


class TRADESIteration(VATIteration):
    """TRADES (Zhang et al., ICML 2019): the clean task loss plus ``beta`` times a divergence between the clean and
    the adversarial outputs, the adversarial example maximising that divergence::

        x'_b = argmax_{||x' - x_b||_2 <= eps_b} D(f(x_b), f(x'))      (the training attack, L2 PGD, per-sample eps)
        L = mean_b [ L_task(f(x_b), y_b) + beta * D(f(x_b), f(x'_b)) ]

    ``D`` follows the task's outputs (:func:`output_divergence`): the per-pixel KL of the class probabilities for
    segmentation ("softmax"), the Bernoulli KL of the heatmaps plus the squared difference of the offsets for
    landmarks, the Bernoulli KL of the classification heads for detection (``{"classification": "sigmoid"}``; the
    box codes carry no distribution and the anchors' matching is label-dependent). The attack starts from a point
    at radius ``start * eps_b`` (D and its gradient are 0 at x itself), keeps the network's mode and statistics, and
    its clean target is computed once, without gradient. The gradient of the loss flows through both outputs.

    Args:
        eps: training noise level (the attack's L2 radius, per sample).
        attack: the attack (default L2 PGD, 10 steps, alpha 4); its own loss is replaced by D.
        beta: weight of the divergence (1/lambda of the paper; 6 there).
        activation: the outputs as distributions (see :func:`output_divergence`).
        start: radius of the attack's random start as a fraction of eps (the paper: 0.001 per pixel).
        id_key, memory, geometry_key: see :class:`AdversarialIteration` (a memory warm-starts the attack).
    """

    def __init__(self, eps: float, attack: Attack | None = None, beta: float = 6.0,
                 activation: str | Mapping[str, str] = "softmax", start: float = 1e-3, id_key: str = "sample_id",
                 memory: PerturbationMemory | None = None, geometry_key: str = "geometry_key") -> None:
        super().__init__(eps, attack, 0.0, id_key, memory, geometry_key)
        if not (beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"TRADES beta (the divergence's weight) must be finite and >= 0; got {beta}.")
        kinds = activation.values() if isinstance(activation, Mapping) else [activation]
        if isinstance(activation, Mapping) and not activation or any(a not in _ACTIVATIONS for a in kinds):
            raise ValueError(f"TRADES activation must be one of {_ACTIVATIONS} or a non-empty dict of them by head "
                             f"(a callable output gives no distribution to compare); got {activation!r}.")
        if not 0 < start <= 1:
            raise ValueError(f"start must lie in (0, 1] (a fraction of eps); got {start}.")
        self.beta = float(beta)
        self.activation = activation if isinstance(activation, str) else dict(activation)
        self.start = float(start)

    def adversarial(self, engine, inputs, targets, ids, forward):
        eps = torch.full((inputs.shape[0],), self.eps, device=inputs.device)
        model = self.attack.model or unwrap(engine.network)
        with torch.no_grad(), preserve_model_state(model):
            clean = forward(inputs)

        def divergence(out: Any, target: Any) -> torch.Tensor:
            return output_divergence(engine.loss_function, target, out, self.activation)

        res = self.attack.run(inputs, clean, eps=eps, model=model, loss_fn=divergence, forward=forward,
                              random_start=True, start_radius=self.start * eps, final_check=False,
                              **self._warm(ids, eps, inputs))
        memory_stats = self.remember(engine, ids, res.x_adv - inputs, eps)
        return res.x_adv, StepInfo(eps=eps.cpu(), norms=res.norms, memory_stats=memory_stats)

    def objective(self, engine, inputs, targets, x_adv, ids, info, forward):
        loss_fn = engine.loss_function
        pred = forward(inputs)
        terms, total = _terms_and_total(loss_fn, pred, targets)
        check_terms(terms, getattr(loss_fn, "term_names", ()))
        info.pred_adv = forward(x_adv)
        div = output_divergence(loss_fn, pred, info.pred_adv, self.activation)
        loss = total.mean() + self.beta * div.mean()
        return loss, pred, {"loss_clean": float(total.detach().mean()), "trades_divergence": float(div.detach().mean())}
