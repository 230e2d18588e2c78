"""White-box iterative attacks for any model, any loss and any number of spatial dimensions.

One functional core, :func:`perturb`, and thin classes around it (:class:`L2PGD`, :class:`L2IFGSM`, :class:`LinfPGD`,
:class:`LinfIFGSM`).

Units: ``eps`` is a norm of the perturbation of the *whole network input* of one sample (all channels and voxels),
in the intensity units the network sees (after the bundle's normalisation, e.g. z-scores for MRI). For the L2 norm it
is ``sqrt(sum(delta**2))`` over the non-batch dimensions, so it grows with sqrt(number of voxels); for Linf it is
``max |delta|``.

Shapes: ``x`` is (B, C, *spatial) with any number of spatial dimensions; the label ``y`` is whatever the loss takes.
The model output may be a tensor, a tuple/list or a dict: only the loss reads it.

The attack maximises the per-sample total loss; with a loss that has several terms (see :mod:`robust_bundles.losses`) it can
also report, per sample and per term, whether every term stayed at or below a threshold ``xi`` at every iterate
(what AMAT's robustness test needs). The model is left as it was found: no parameter gradients are accumulated
(gradients are taken with respect to the input only), running statistics of normalisation layers are restored, and the
training/eval mode is restored.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from .losses import check_terms, per_sample_terms
from .thresholds import ThresholdTest

__all__ = [
    "AttackResult",
    "perturb",
    "preserve_model_state",
    "Attack",
    "L2PGD",
    "L2IFGSM",
    "LinfPGD",
    "LinfIFGSM",
    "batch_norms",
    "project",
    "gradient_masking_warning",
    "attacking",
    "ChannelAttack",
    "on_channels",
    "check_channels",
]

NORMS = ("l2", "linf")
CHECK_MODES = ("path", "final")


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        x_adv: adversarial input, same shape/dtype as ``x``, detached.
        norms: (B,) norm of ``x_adv - x`` (L2 or Linf, as attacked), in input intensity units.
        robust: (B, K) bool, True where loss term k stayed at or below ``xi_k`` at every checked iterate
            ("path": the start and every iterate, including ``x_adv`` when ``final_check``; "final": ``x_adv`` only).
            None when no thresholds were given.
        loss: (B, K) per-term loss at the last evaluated point (``x_adv`` when ``final_check``, else the last iterate
            before the final step), detached. None when ``steps == 0`` and no final check ran.
        zero_grad_steps: (B,) int, number of steps in which the input gradient of the sample was zero or
            non-finite (a gradient-masking warning sign).
        steps: the number of gradient steps taken.
    """

    x_adv: torch.Tensor
    norms: torch.Tensor
    robust: torch.Tensor | None
    loss: torch.Tensor | None
    zero_grad_steps: torch.Tensor
    steps: int


def batch_norms(delta: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Per-sample norm of a (B, ...) tensor over all non-batch dimensions; returns (B,) float."""
    flat = delta.detach().flatten(1).float()
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    raise ValueError(f"Unknown norm {norm!r}; use one of {NORMS}.")


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape (B,) to (B, 1, ..., 1) to broadcast against ``like``."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def project(delta: torch.Tensor, eps: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Project each sample of ``delta`` (B, ...) onto the ball of radius ``eps`` (B,) of the given norm."""
    if norm == "l2":
        n = batch_norms(delta, "l2")
        factor = torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))
        return delta * _view(factor, delta).to(delta.dtype)
    if norm == "linf":
        e = _view(eps, delta).to(delta.dtype)
        return torch.maximum(torch.minimum(delta, e), -e)
    raise ValueError(f"Unknown norm {norm!r}; use one of {NORMS}.")


def _as_per_sample(value: float | torch.Tensor | Sequence[float], batch: int, device, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must be a float or a tensor of shape ({batch},); got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be finite and >= 0; got {t.tolist()}.")
    return t.clone()


def _random_start(x: torch.Tensor, radius: torch.Tensor, norm: str, radius_uniform: bool, generator) -> torch.Tensor:
    """A random perturbation per sample (B, ...).

    L2: a uniformly random direction (normalised Gaussian draw) times a radius, which is ``radius`` itself (on the
    sphere) or, with ``radius_uniform``, ``radius * u`` with ``u ~ U[0, 1]`` (radius uniform in ``[0, radius]``).
    Linf: uniform in the cube of half-width ``radius``.

    Why the radius is uniform and not the point: a point drawn uniformly in an n-dimensional ball lies at radius
    ``eps * u^(1/n)``, i.e. on the sphere for any real input (n = 2240 pixels: 99 % of the draws above 0.998 eps).
    Starting on the sphere, the early steps spend their length turning away from a random direction that the projection
    keeps at full norm, and PGD-100 ended slightly below I-FGSM-10 (0.003-0.01 Dice on a toy DynUNet). A radius uniform
    in ``[0, eps]`` keeps the start random (restarts still differ) at no extra cost, with half the random component on
    average; the same choice as torchattacks' PGDL2. A zero-start restart would also fix it but doubles the cost.
    """
    if norm == "l2":
        d = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        d = d / _view(batch_norms(d, "l2").clamp_min(1e-30), d)
        r = radius
        if radius_uniform:
            u = torch.rand(x.shape[0], generator=generator, device=x.device)
            r = radius * u
        return (d * _view(r, d)).to(x.dtype)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32) * 2 - 1
    return (u * _view(radius, u)).to(x.dtype)


def _l2_direction(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-L2 direction of every sample of ``grad`` (B, ...) and a (B,) bool mask of the all-zero samples.

    Each sample is divided by its largest absolute value before its norm is taken: the squares of a float32 gradient
    of about 1e-23 (a saturated loss) underflow to 0, which would count a zero-gradient step (and a false
    gradient-masking warning) although the direction is well defined. Zero samples get a zero direction.
    """
    flat = grad.flatten(1)
    scale = flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    zero = scale <= 0
    scaled = grad / _view(torch.where(zero, torch.ones_like(scale), scale), grad)
    n = batch_norms(scaled, "l2")
    direction = scaled / _view(torch.where(zero, torch.ones_like(n), n), scaled).to(scaled.dtype)
    return direction, zero


def _check_clamp_range(x: torch.Tensor, lo: float | None, hi: float | None) -> None:
    """Refuse an input outside the clamp range: clamping it would move even an eps-0 sample (the bound breaks)."""
    below = (x < lo).flatten(1).any(1) if lo is not None else torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    above = (x > hi).flatten(1).any(1) if hi is not None else torch.zeros_like(below)
    bad = (below | above).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"The input lies outside the clamp range [{lo}, {hi}] (values from {float(x.min()):.4g} to "
            f"{float(x.max()):.4g}; sample(s) {bad[:5]}{'...' if len(bad) > 5 else ''}): clamping would move it even "
            "at eps 0 and break the noise bound. Clamp or normalise the input to the range first, widen the range, "
            "or set clamp=None (z-scored inputs have no valid range)."
        )


@contextlib.contextmanager
def preserve_model_state(model: nn.Module | None, train: bool | None = None) -> Iterator[None]:
    """Leave ``model`` exactly as found: mode restored, normalisation running statistics restored.

    Args:
        model: the module (None: nothing to do).
        train: set train (True) or eval (False) mode for the duration; None keeps the current mode.
    """
    if model is None:
        yield
        return
    modes = {m: m.training for m in model.modules()}
    if train is not None:
        model.train(train)
    # Only modules that are in train mode and track running statistics can change their buffers in a forward pass.
    saved = []
    for m in model.modules():
        if m.training and getattr(m, "track_running_stats", False):
            saved.extend((b, b.detach().clone()) for b in m.buffers(recurse=False))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
        for m, mode in modes.items():
            m.training = mode


_ATTACK_DEPTH = [0]


@contextlib.contextmanager
def _attack_passes() -> Iterator[None]:
    """Mark the network passes made inside :func:`perturb` (see :func:`attacking`)."""
    _ATTACK_DEPTH[0] += 1
    try:
        yield
    finally:
        _ATTACK_DEPTH[0] -= 1


def attacking() -> bool:
    """Whether the current network pass is an attack's (inside :func:`perturb`): its backward takes the input gradient
    only. :class:`robust_bundles.handlers.PassCounter` counts such passes apart from the training passes."""
    return _ATTACK_DEPTH[0] > 0


def _term_weights(loss_fn: Any, k: int, device) -> torch.Tensor:
    w = getattr(loss_fn, "term_weights", None)
    if w is None or len(w) != k:
        return torch.ones(k, device=device)
    return torch.as_tensor(w, dtype=torch.float32, device=device)


def _initial_delta(
    x0: torch.Tensor,
    eps: torch.Tensor,
    norm: str,
    random_start: bool,
    start_radius: float | torch.Tensor | None,
    warm_start: tuple[torch.Tensor, torch.Tensor] | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The start of the attack, inside the ball of radius ``eps``: a random start (PGD), zero (I-FGSM), or, for the
    samples flagged in ``warm_start = (delta, use)``, the given ``delta`` (the other samples keep the random/zero
    start; the random draw is made for the whole batch either way, so the random stream does not depend on the hits)."""
    batch = x0.shape[0]
    if random_start:
        radius = eps if start_radius is None else _as_per_sample(start_radius, batch, x0.device, "start_radius")
        delta = project(_random_start(x0, radius, norm, start_radius is None, generator), eps, norm)
    else:
        delta = torch.zeros_like(x0)
    if warm_start is not None:
        warm, use = warm_start
        if tuple(warm.shape) != tuple(x0.shape) or use.reshape(-1).shape[0] != batch:
            raise ValueError(f"warm_start needs a (delta {tuple(x0.shape)}, use ({batch},)) pair; got shapes "
                             f"{tuple(warm.shape)} and {tuple(use.shape)}.")
        use = _view(use.reshape(-1).to(device=x0.device, dtype=torch.bool), x0)
        delta = torch.where(use, project(warm.to(x0.device, x0.dtype), eps, norm), delta)
    return delta


def _checked_setup(model, x: torch.Tensor, eps, steps: int, clamp, forward):
    """Validate what every attack takes; returns (steps, eps (B,), forward callable, module or None, (lo, hi))."""
    if steps < 0 or int(steps) != steps:
        raise ValueError(f"steps must be an integer >= 0; got {steps}.")
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError("x must be a tensor of shape (B, C, *spatial).")
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor; got {x.dtype}.")
    fwd = forward if forward is not None else model
    if fwd is None:
        raise ValueError("Give a model or a forward callable.")
    lo, hi = clamp if clamp is not None else (None, None)
    if lo is not None or hi is not None:
        _check_clamp_range(x.detach(), lo, hi)
    eps_t = _as_per_sample(eps, x.shape[0], x.device, "eps")
    return int(steps), eps_t, fwd, model if isinstance(model, nn.Module) else None, (lo, hi)


def _ascent_direction(grad: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The step direction of every sample (unit L2 direction, or the gradient's sign for Linf) and a (B,) bool mask
    of the samples whose gradient was zero or non-finite (they do not move; counted as zero-gradient steps)."""
    finite = torch.isfinite(grad.flatten(1)).all(1)
    grad = torch.where(_view(finite, grad), grad, torch.zeros_like(grad))
    if norm == "l2":
        direction, zero = _l2_direction(grad)
    else:
        zero = grad.flatten(1).abs().amax(1) <= 0
        direction = grad.sign()
    return direction, zero | ~finite


def perturb(
    model: nn.Module | Callable | None,
    loss_fn: Callable,
    x: torch.Tensor,
    y: Any,
    eps: float | torch.Tensor,
    steps: int,
    alpha: float = 4.0,
    norm: str = "l2",
    random_start: bool = True,
    start_radius: float | torch.Tensor | None = None,
    clamp: tuple[float | None, float | None] | None = None,
    thresholds: torch.Tensor | Sequence[float] | None = None,
    check: str = "path",
    final_check: bool = True,
    test_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    forward: Callable[[torch.Tensor], Any] | None = None,
    train: bool | None = None,
    amp: bool = False,
    generator: torch.Generator | None = None,
    warm_start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> AttackResult:
    """Iterative gradient attack (PGD with a random start, I-FGSM without) in the L2 or Linf norm.

    Each of ``steps`` iterations moves every sample by ``alpha * eps_b / steps`` along its normalised input gradient
    (L2) or gradient sign (Linf) of the per-sample total loss, then projects onto the ball of radius ``eps_b`` around
    ``x`` and clamps to the value range.

    Args:
        model: the network (an ``nn.Module`` whose state is preserved) or any callable ``x -> output``.
        loss_fn: ``loss_fn(output, y)``; a :class:`robust_bundles.losses.PerSampleLoss` or any callable returning (B,) or
            (B, K) per-sample values.
        x: clean input (B, C, *spatial); never modified.
        y: label, passed to the loss unchanged.
        eps: noise level per sample, a float or a (B,) tensor, >= 0, in input intensity units (norm of the
            perturbation over all non-batch dimensions).
        steps: number of gradient steps T >= 0.
        alpha: step size factor; the step is ``alpha * eps / steps``.
        norm: "l2" or "linf".
        random_start: start from a random point of the ball (PGD) instead of ``x`` (I-FGSM).
        start_radius: radius of the random start, a float or (B,) tensor (on the sphere of that radius, then
            projected into the ball). None: L2, a random direction at a radius uniform in ``[0, eps]`` (not a point
            uniform in the ball, which lies on the sphere in high dimension; see ``_random_start``); Linf, uniform in
            the cube.
        clamp: (min, max) valid value range of the input, either side may be None; None for no clamp (z-scored MRI).
            ``x`` must lie inside it (a ValueError otherwise): clamping an input outside would move it even at eps 0.
        thresholds: xi, a (K,) tensor of per-term thresholds for AMAT's robustness test on the iterates
            (:class:`robust_bundles.thresholds.ThresholdTest`); None to skip it.
        check: "path" tests every iterate (start, every step, and x_adv when ``final_check``); "final" tests x_adv only.
        final_check: run one more forward pass on x_adv to test it (and report its loss). The AMAT training
            iteration sets False and tests x_adv with its own training forward pass.
        test_fn: ``test_fn(output, y) -> (B, K)`` loss terms for the robustness test, when they differ from the
            objective's (e.g. only the main output of a deep-supervision network); default: the objective's terms.
        forward: callable ``x -> output`` to use instead of ``model(x)`` (e.g. an inferer); ``model`` is then only
            used to preserve its state.
        train: force train (True) or eval (False) mode during the attack; None keeps the model's current mode.
        amp: run forward passes under ``torch.autocast`` (for GPU users).
        generator: torch random generator for the random start.
        warm_start: ``(delta, use)``: a start perturbation (B, C, *spatial) and a (B,) bool mask of the samples that
            start from it (projected into the ball) instead of the random/zero start, e.g. last epoch's perturbation
            from :class:`robust_bundles.perturbation_memory.PerturbationMemory`. The "path" robustness test then
            starts at the warm start: with ``steps = 1`` the path is the start point and ``x_adv``.

    Returns:
        An :class:`AttackResult`.
    """
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; use one of {NORMS}.")
    if check not in CHECK_MODES:
        raise ValueError(f"Unknown check mode {check!r}; use one of {CHECK_MODES}.")
    steps, eps_t, fwd, module, (lo, hi) = _checked_setup(model, x, eps, steps, clamp, forward)
    batch, x0 = x.shape[0], x.detach()
    names = getattr(loss_fn, "term_names", ())
    test = ThresholdTest(thresholds, test_fn, names) if thresholds is not None else None

    def clamp_(xa: torch.Tensor) -> torch.Tensor:
        if lo is not None or hi is not None:
            xa = xa.clamp(min=lo, max=hi)
        return xa

    def evaluate(xa: torch.Tensor, need_grad: bool, tested: bool):
        ctx = torch.autocast(device_type=x.device.type) if amp else contextlib.nullcontext()
        with ctx, torch.set_grad_enabled(need_grad):
            out = fwd(xa)
            t = per_sample_terms(loss_fn, out, y).float()
        check_terms(t, names)
        if test is not None and tested:
            test.observe(out, y, t)
        return t

    delta = _initial_delta(x0, eps_t, norm, random_start, start_radius, warm_start, generator)
    if not random_start and steps == 0 and warm_start is None:
        x_adv = x0.clone()
    else:
        x_adv = clamp_(x0 + delta)
    step = alpha * eps_t / max(steps, 1)
    zero_grad = torch.zeros(batch, dtype=torch.long, device=x.device)
    last_terms = None
    with preserve_model_state(module, train), _attack_passes():
        for _ in range(steps):
            xa = x_adv.clone().requires_grad_(True)
            terms = evaluate(xa, need_grad=True, tested=check == "path")
            total = (terms * _term_weights(loss_fn, terms.shape[1], x.device)).sum()
            # A model whose output ignores the input (gradient masking) must be counted in zero_grad_steps, not crash.
            grad = torch.autograd.grad(total, xa, allow_unused=True)[0] if total.requires_grad else None
            direction, unusable = _ascent_direction(torch.zeros_like(xa) if grad is None else grad.detach(), norm)
            zero_grad += unusable.long()
            delta = x_adv - x0 + direction * _view(step, direction).to(direction.dtype)
            delta = project(delta, eps_t, norm)
            x_adv = clamp_(x0 + delta).detach()
            last_terms = terms.detach()
        if final_check:
            last_terms = evaluate(x_adv, need_grad=False, tested=True).detach()
    robust = test.robust if test is not None else None  # check "final" without final_check: the caller tests x_adv
    return AttackResult(
        x_adv=x_adv.detach(),
        norms=batch_norms(x_adv - x0, norm),
        robust=robust,
        loss=last_terms,
        zero_grad_steps=zero_grad,
        steps=steps,
    )


class Attack:
    """An attack with its settings, torchattacks-style: ``x_adv = attack(x, y)``.

    Args:
        model: the network; None to give it at call time (the adversarial training iterations pass the trainer's).
        loss_fn: the loss to maximise (see :func:`perturb`); None to give it at call time.
        eps: default noise level (float, input intensity units); a per-sample (B,) tensor may be given per call.
        steps: number of gradient steps T.
        alpha: step size factor (step = alpha * eps / T).
        norm: "l2" or "linf".
        random_start: random start in the ball (PGD) or not (I-FGSM).
        clamp: optional (min, max) value range of the input.
        train: force train/eval mode during the attack (None keeps the current mode).
        amp: autocast the forward passes.
        restarts: random restarts of this attack in a robustness evaluation (the per-sample worst is kept), e.g. 3 for
            the strong PGD-50 check; None uses the evaluation's setting.
    """

    norm = "l2"
    random_start = True

    def __init__(
        self,
        model: nn.Module | None = None,
        loss_fn: Callable | None = None,
        eps: float = 0.0,
        steps: int = 10,
        alpha: float = 4.0,
        norm: str | None = None,
        random_start: bool | None = None,
        clamp: tuple[float | None, float | None] | None = None,
        train: bool | None = None,
        amp: bool = False,
        restarts: int | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.eps = eps
        self.steps = int(steps)
        self.alpha = float(alpha)
        if norm is not None:
            self.norm = norm
        if random_start is not None:
            self.random_start = bool(random_start)
        if self.norm not in NORMS:
            raise ValueError(f"Unknown norm {self.norm!r}; use one of {NORMS}.")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0; got {steps}.")
        self.clamp = tuple(clamp) if clamp is not None else None
        self.train = train
        self.amp = amp
        if restarts is not None and (int(restarts) != restarts or restarts < 1):
            raise ValueError(f"restarts must be an integer >= 1 or None; got {restarts}.")
        self.restarts = None if restarts is None else int(restarts)

    @property
    def name(self) -> str:
        kind = "PGD" if self.random_start else "IFGSM"
        return f"{kind}-{self.norm.upper()}"

    def run(self, x: torch.Tensor, y: Any, eps: float | torch.Tensor | None = None, **kwargs: Any) -> AttackResult:
        """Attack and return the full :class:`AttackResult`; keyword arguments override :func:`perturb`'s."""
        model = kwargs.pop("model", None) or self.model
        loss_fn = kwargs.pop("loss_fn", None) or self.loss_fn
        if loss_fn is None:
            raise ValueError(f"{type(self).__name__} has no loss: give loss_fn at construction or call time.")
        opts = dict(
            steps=self.steps,
            alpha=self.alpha,
            norm=self.norm,
            random_start=self.random_start,
            clamp=self.clamp,
            train=self.train,
            amp=self.amp,
        )
        opts.update(kwargs)
        return perturb(model, loss_fn, x, y, self.eps if eps is None else eps, **opts)

    def __call__(self, x: torch.Tensor, y: Any, eps: float | torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        return self.run(x, y, eps, **kwargs).x_adv

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, steps={self.steps}, alpha={self.alpha}, clamp={self.clamp})"


class L2PGD(Attack):
    """L2 PGD: random start (random direction, radius uniform in [0, eps]), ``steps`` normalised-gradient steps of
    ``alpha * eps / steps``."""

    norm = "l2"
    random_start = True


class L2IFGSM(Attack):
    """L2 iterative FGSM: PGD without random start."""

    norm = "l2"
    random_start = False


class LinfPGD(Attack):
    """Linf PGD: random start in the Linf ball, ``steps`` sign-gradient steps of ``alpha * eps / steps``."""

    norm = "linf"
    random_start = True


class LinfIFGSM(Attack):
    """Linf iterative FGSM (BIM): no random start."""

    norm = "linf"
    random_start = False


def gradient_masking_warning(zero_grad_steps: torch.Tensor, steps: int, fraction: float = 0.5) -> str | None:
    """A warning text when many samples had zero/non-finite input gradients in most steps, else None."""
    if steps <= 0 or zero_grad_steps.numel() == 0:
        return None
    bad = (zero_grad_steps.float() >= 0.5 * steps).float().mean().item()
    if bad >= fraction:
        return (
            f"{100 * bad:.0f}% of samples had zero or non-finite input gradients in at least half of the {steps} "
            "steps: the attack may be blocked by gradient masking, so robust metrics may be overestimated."
        )
    return None



def check_channels(channels: Sequence[int] | None, what: str = "attack_channels") -> list[int] | None:
    """``channels`` as a sorted list of distinct channel indices >= 0 (None stays None: every channel).

    Raises:
        ValueError: an empty list, a non-integer, a negative or a repeated index (the message names ``what``).
    """
    if channels is None:
        return None
    if isinstance(channels, (int, str)) or not isinstance(channels, Sequence):
        channels = [channels]
    bad = [c for c in channels if isinstance(c, bool) or not isinstance(c, int) or c < 0]
    if bad or not channels or len(set(channels)) != len(channels):
        raise ValueError(f"{what} must be a non-empty list of distinct input channel indices >= 0 (e.g. [0] or "
                         f"[0, 1, 2]); got {list(channels)!r}.")
    return sorted(int(c) for c in channels)


class ChannelAttack(Attack):
    """``attack`` restricted to some channels of the input: the other channels (e.g. click-guidance maps or a mask
    built from the label, which an adversary does not control) are held at their clean values.

    The wrapped attack sees only the attacked channels ``x[:, channels]`` and a forward pass that puts them back
    among the fixed ones, so every attack (PGD, APGD, noise, the transfer check) runs unchanged: ``eps`` is the norm
    of the perturbation of the attacked channels (the perturbation is zero elsewhere), the clamp range applies to
    them only, and a warm start is read on them. An attack on every channel of the input is the attack itself.

    Args:
        attack: the attack to restrict (its settings are shared: steps, alpha, clamp, loss, restarts...).
        channels: the input channels (indices along dim 1) the attack may change.
    """

    def __init__(self, attack: Attack, channels: Sequence[int]) -> None:
        vars(self).update(vars(attack))
        self.norm, self.random_start = attack.norm, attack.random_start
        self.base, self.channels = attack, check_channels(channels)

    @property
    def name(self) -> str:
        return self.base.name

    def run(self, x: torch.Tensor, y: Any, eps: float | torch.Tensor | None = None, **kwargs: Any) -> AttackResult:
        """The base attack on ``x[:, channels]`` (see the class docstring); keywords are passed on."""
        if x.ndim < 2 or self.channels[-1] >= x.shape[1]:
            raise ValueError(f"attack_channels {self.channels} do not fit an input of {x.shape[1] if x.ndim > 1 else 0}"
                             f" channel(s) (shape {tuple(x.shape)}): give channel indices below {x.shape[1]}.")
        if self.channels == list(range(x.shape[1])):
            return self.base.run(x, y, eps, **kwargs)
        index = torch.tensor(self.channels, device=x.device)
        fixed = x.detach()

        def embed(part: torch.Tensor) -> torch.Tensor:
            return fixed.index_copy(1, index, part)

        model = kwargs.get("model") if kwargs.get("model") is not None else self.model
        inner = kwargs.pop("forward", None)
        inner = inner if inner is not None else model
        if inner is None:
            raise ValueError("Give a model or a forward callable.")

        def forward(part: torch.Tensor) -> Any:
            return inner(embed(part))

        forward.embed = embed  # an attack that runs another network (the transfer check) embeds with it
        if hasattr(inner, "note"):
            forward.note = inner.note
        if kwargs.get("warm_start") is not None:
            delta, use = kwargs["warm_start"]
            kwargs["warm_start"] = (delta.index_select(1, index.to(delta.device)), use)
        res = self.base.run(x.index_select(1, index), y, eps, forward=forward, **kwargs)
        res.x_adv = embed(res.x_adv).detach()
        return res


def on_channels(attack: Attack, channels: Sequence[int] | None) -> Attack:
    """``attack`` restricted to ``channels`` (:class:`ChannelAttack`); the attack itself when ``channels`` is None
    (every channel). For configs: ``"$robust_bundles.attacks.on_channels(@attack, @attack_channels)"``."""
    return attack if channels is None else ChannelAttack(attack, channels)
