"""Auto-PGD (APGD, Croce & Hein, ICML 2020): PGD without a step size to tune, for any per-sample task loss.

The step of every sample starts at ``2 eps`` and is halved at checkpoints when the attack stopped making progress; a
momentum of 0.75 carries the previous move; the attack returns, per sample, the point of the highest loss it met.

Checkpoints (iterations counted from 0): the first after ``max(int(0.22 T), 1)`` iterations, then intervals shrinking by
``max(int(0.03 T), 1)`` down to ``max(int(0.06 T), 1)``. At a checkpoint a sample's step is halved, and the sample goes
back to its best point (with the gradient there), when

1. the loss rose from one iterate to the next in at most ``rho`` (0.75) of the iterations of the interval (the first
   comparison of the first interval is with the start), or
2. its step was not halved at the previous checkpoint and its best loss did not rise since then.

Each iteration moves ``z = P(x_k + eta * g / ||g||)`` (the sign for Linf) and
``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))`` (no momentum in the first iteration), where ``P``
projects onto the eps-ball around the clean input and clamps to the value range.

Everything else follows :func:`robust_bundles.attacks.perturb`: ``eps`` per sample in input intensity units, any number
of spatial dimensions, losses with several terms (their weighted total is maximised), any network output (tensor, tuple,
dict), a ``forward`` callable for the bundle's inferer (sliding window included), the model left as found. Cost:
``T`` forward-backward passes plus one forward pass (the last iterate needs no gradient).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn as nn

from .attacks import (
    NORMS,
    Attack,
    AttackResult,
    _ascent_direction,
    _attack_passes,
    _checked_setup,
    _initial_delta,
    _term_weights,
    _view,
    batch_norms,
    preserve_model_state,
    project,
)
from .losses import check_terms, per_sample_terms

__all__ = ["apgd", "checkpoint_intervals", "APGD"]

MOMENTUM = 0.75


def checkpoint_intervals(steps: int) -> list[int]:
    """Lengths of the intervals between APGD's checkpoints for ``steps`` iterations (checkpoints past T are dropped).

    Args:
        steps: number of iterations T.

    Returns:
        Interval lengths whose cumulative sums are the iterations (1-based counts) after which the step is checked.
    """
    first, smallest, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, k, done = [], first, 0
    while done + k <= steps:
        out.append(k)
        done += k
        k = max(k - shrink, smallest)
    return out


def apgd(
    model: nn.Module | Callable | None,
    loss_fn: Callable,
    x: torch.Tensor,
    y: Any,
    eps: float | torch.Tensor,
    steps: int,
    norm: str = "l2",
    random_start: bool = True,
    start_radius: float | torch.Tensor | None = None,
    rho: float = 0.75,
    clamp: tuple[float | None, float | None] | None = None,
    forward: Callable[[torch.Tensor], Any] | None = None,
    train: bool | None = None,
    amp: bool = False,
    generator: torch.Generator | None = None,
    warm_start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> AttackResult:
    """APGD on the per-sample total of ``loss_fn`` (see the module docstring).

    Args:
        model: the network (an ``nn.Module`` whose state is preserved) or any callable ``x -> output``.
        loss_fn: ``loss_fn(output, y)`` returning (B,) or (B, K) per-sample values, or a
            :class:`robust_bundles.losses.PerSampleLoss` (its weighted total is maximised).
        x: clean input (B, C, *spatial); never modified.
        y: label, passed to the loss unchanged.
        eps: noise level per sample, a float or a (B,) tensor, >= 0, in input intensity units.
        steps: number of iterations T >= 0.
        norm: "l2" or "linf".
        random_start: start from a random point of the ball (as :func:`robust_bundles.attacks.perturb`) or from ``x``.
        start_radius: radius of the random start (float or (B,)); None: a random direction at a radius uniform in
            ``[0, eps]`` (L2), uniform in the cube (Linf).
        rho: the fraction of rising iterations under which the step is halved at a checkpoint.
        clamp: (min, max) valid value range of the input (either may be None), or None.
        forward: callable ``x -> output`` used instead of ``model(x)`` (e.g. the bundle's inferer).
        train: force train (True) or eval (False) mode during the attack; None keeps the current mode.
        amp: run forward passes under ``torch.autocast``.
        generator: torch random generator for the random start.
        warm_start: ``(delta, use)``: a start perturbation and a (B,) bool mask of the samples that start from it.

    Returns:
        An :class:`robust_bundles.attacks.AttackResult` whose ``x_adv`` is each sample's highest-loss point, ``loss``
        its (B, K) terms there, ``robust`` None, ``steps`` T.
    """
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; use one of {NORMS}.")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1]; got {rho}.")
    steps, eps_t, fwd, module, (lo, hi) = _checked_setup(model, x, eps, steps, clamp, forward)
    batch, x0 = x.shape[0], x.detach()
    names = getattr(loss_fn, "term_names", ())

    def to_ball(xa: torch.Tensor) -> torch.Tensor:
        xa = x0 + project(xa - x0, eps_t, norm)
        return xa.clamp(min=lo, max=hi) if lo is not None or hi is not None else xa

    def evaluate(xa: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, K) terms, (B,) weighted total and the input gradient of the total (None without need_grad)."""
        xa = xa.detach().clone().requires_grad_(need_grad)
        ctx = torch.autocast(device_type=x.device.type) if amp else contextlib.nullcontext()
        with ctx, torch.set_grad_enabled(need_grad):
            terms = per_sample_terms(loss_fn, fwd(xa), y).float()
            total = (terms * _term_weights(loss_fn, terms.shape[1], x.device)).sum(1)
        check_terms(terms, names)
        grad = None
        if need_grad:
            # a model whose output ignores the input (gradient masking) gives no gradient: counted, not a crash
            g = torch.autograd.grad(total.sum(), xa, allow_unused=True)[0] if total.requires_grad else None
            grad = torch.zeros_like(xa) if g is None else g.detach()
        return terms.detach(), total.detach(), grad

    def rows(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(_view(mask, new), new, old)

    x_cur = to_ball(x0 + _initial_delta(x0, eps_t, norm, random_start, start_radius, warm_start, generator))
    zero_grad = torch.zeros(batch, dtype=torch.long, device=x.device)
    with preserve_model_state(module, train), _attack_passes():
        terms, loss, grad = evaluate(x_cur, need_grad=steps > 0)
        best_x, best_terms, best_loss = x_cur, terms, loss
        if steps == 0:
            return AttackResult(x_cur, batch_norms(x_cur - x0, norm), None, terms, zero_grad, 0)
        best_grad = grad
        eta = 2.0 * eps_t
        x_prev = x_cur
        prev_loss = loss
        intervals = checkpoint_intervals(steps)
        checks = dict(zip(torch.tensor(intervals).cumsum(0).tolist(), intervals))  # iteration count -> interval
        rises = torch.zeros(batch, device=x.device)
        halved_last = torch.ones(batch, dtype=torch.bool, device=x.device)
        best_at_last = best_loss.clone()
        for i in range(steps):
            direction, unusable = _ascent_direction(grad, norm)
            zero_grad += unusable.long()
            z = to_ball(x_cur + direction * _view(eta, direction).to(direction.dtype))
            a = MOMENTUM if i > 0 else 1.0
            x_next = to_ball(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev))
            x_prev, x_cur = x_cur, x_next
            terms, loss, grad = evaluate(x_cur, need_grad=i < steps - 1)
            rises += (loss > prev_loss).float()
            prev_loss = loss
            better = loss > best_loss
            best_x, best_terms = rows(better, x_cur, best_x), rows(better, terms, best_terms)
            best_loss = torch.where(better, loss, best_loss)
            if grad is not None:
                best_grad = rows(better, grad, best_grad)
            if i + 1 in checks:
                halve = (rises <= rho * checks[i + 1]) | (~halved_last & (best_loss <= best_at_last))
                eta = torch.where(halve, eta / 2, eta)
                x_cur = rows(halve, best_x, x_cur)
                if grad is not None:
                    grad = rows(halve, best_grad, grad)
                halved_last, best_at_last = halve, best_loss.clone()
                rises = torch.zeros_like(rises)
    return AttackResult(
        x_adv=best_x.detach(),
        norms=batch_norms(best_x - x0, norm),
        robust=None,
        loss=best_terms,
        zero_grad_steps=zero_grad,
        steps=steps,
    )


class APGD(Attack):
    """L2 (or Linf) APGD with the :class:`robust_bundles.attacks.Attack` interface: ``x_adv = APGD(...)(x, y)``.

    ``alpha`` is accepted for the interface and ignored (APGD chooses its step); ``restarts`` as for the other attacks.

    Args:
        model: the network, or None to give it at call time.
        loss_fn: the loss to maximise, or None to give it at call time.
        eps: default noise level.
        steps: number of iterations T (100 in the AutoAttack paper).
        norm: "l2" (default) or "linf".
        random_start: random start in the ball.
        clamp: optional (min, max) value range of the input.
        train: force train/eval mode during the attack (None keeps the current mode).
        amp: autocast the forward passes.
        restarts: random restarts in a robustness evaluation (the per-sample worst is kept); None: the evaluation's.
        rho: the rising fraction under which the step is halved at a checkpoint.
    """

    norm = "l2"
    random_start = True

    def __init__(self, *args: Any, rho: float = 0.75, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1]; got {rho}.")
        self.rho = float(rho)

    @property
    def name(self) -> str:
        return f"APGD-{self.norm.upper()}"

    def run(self, x: torch.Tensor, y: Any, eps: float | torch.Tensor | None = None, **kwargs: Any) -> AttackResult:
        """Attack and return the :class:`robust_bundles.attacks.AttackResult`; keywords override :func:`apgd`'s."""
        model = kwargs.pop("model", None)
        model = model if model is not None else self.model
        loss_fn = kwargs.pop("loss_fn", None)
        loss_fn = loss_fn if loss_fn is not None else self.loss_fn
        if loss_fn is None:
            raise ValueError("APGD has no loss: give loss_fn at construction or call time.")
        opts = dict(steps=self.steps, norm=self.norm, random_start=self.random_start, clamp=self.clamp,
                    train=self.train, amp=self.amp, rho=self.rho)
        opts.update(kwargs)
        return apgd(model, loss_fn, x, y, self.eps if eps is None else eps, **opts)
