"""Named attack suites for the robustness evaluation: ``quick``, ``standard`` and ``strong``.

A suite is a dict of named attacks, each with the loss it maximises (``Attack.loss_fn``; None: the task loss), for
:class:`robust_bundles.handlers.RobustnessEvaluationHandler`, which reports every attack's column and, per sample, the
worst case over all of them. What the suites run (T = ``pgd_steps``):

- ``quick`` (what the reports ran before the suites): ``PGD`` (L2 PGD-T, random start), ``IFGSM`` (L2 I-FGSM,
  ``ifgsm_steps``), ``noise`` (a random direction at exactly the eps norm: the baseline an attack must beat).
- ``standard``: ``PGD`` and ``noise`` as in quick, and L2 APGD (:mod:`robust_bundles.apgd`, T iterations) on the task
  loss (``APGD``), on each of its terms alone when it has several (``APGD_dice``, ``APGD_ce``; ``APGD_classification``,
  ``APGD_box_regression``; ``APGD_heatmap``...), and on each extra objective of the task (``objectives``, e.g.
  ``APGD_cosine_ce`` for segmentation, ``APGD_distance`` for landmarks; :mod:`robust_bundles.attack_losses`).
- ``strong``: standard with ``max(T, 100)`` iterations and 3 random restarts for every APGD (the per-sample worst
  restart is kept); the experiment adds the transfer check (:mod:`robust_bundles.transfer`): with a ``surrogate``
  model any suite adds ``transfer``, its PGD crafted on the surrogate and applied to the evaluated model.

Every suite holds ``PGD`` with the same settings, and the worst case is the per-sample minimum (for a
higher-is-better metric) over all its attacks, PGD included: no sample comes out better under a suite than under its
PGD alone. ``PGD_strong`` (PGD-50, 3 restarts) is added to any suite with ``strong_pgd=True``, as before the suites.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch.nn as nn

from .apgd import APGD
from .attack_losses import TermLoss
from .attacks import L2IFGSM, L2PGD, Attack, AttackResult
from .transfer import TRANSFER, TransferAttack

__all__ = ["SUITES", "RandomNoise", "suite_attacks", "check_suite"]

SUITES = ("quick", "standard", "strong")
"""The suite names of ``--attack_suite``."""

STRONG_STEPS, STRONG_RESTARTS = 100, 3


class RandomNoise(Attack):
    """Random noise of L2 norm exactly eps (a random direction on the sphere): the baseline that an attack must beat
    (an attack weaker than noise points to gradient masking). One forward pass."""

    norm = "l2"
    random_start = True

    def __init__(self, **kwargs: Any) -> None:
        kwargs["steps"] = 0
        super().__init__(**kwargs)

    @property
    def name(self) -> str:
        return "noise"

    def run(self, x, y, eps=None, **kwargs) -> AttackResult:
        e = self.eps if eps is None else eps
        kwargs["start_radius"] = e
        return super().run(x, y, e, **kwargs)


def check_suite(suite: str) -> str:
    """``suite`` when it names a suite, else a ValueError naming the choices."""
    if suite not in SUITES:
        raise ValueError(f"Unknown attack suite {suite!r}: give --attack_suite one of {list(SUITES)}.")
    return suite


def suite_attacks(
    suite: str,
    loss: Any,
    pgd_steps: int = 20,
    ifgsm_steps: int = 10,
    alpha: float = 4.0,
    clamp: tuple[float | None, float | None] | None = None,
    objectives: Mapping[str, Any] | None = None,
    strong_pgd: bool = False,
    strong_pgd_steps: int = 50,
    strong_restarts: int = 3,
    surrogate: nn.Module | None = None,
    surrogate_inferer: Callable | None = None,
) -> dict[str, Attack]:
    """The attacks of a named suite (see the module docstring).

    Args:
        suite: ``"quick"``, ``"standard"`` or ``"strong"``.
        loss: the task loss (a per-sample loss; its terms give the per-term APGD runs).
        pgd_steps: T, the steps of PGD and the iterations of APGD.
        ifgsm_steps: steps of I-FGSM (quick only; 0 leaves it out).
        alpha: PGD's and I-FGSM's step size factor (APGD has none).
        clamp: (min, max) valid input range, or None.
        objectives: the task's extra attack objectives by name (per-sample losses), e.g.
            ``{"cosine_ce": CosineWeightedCE()}``.
        strong_pgd: add ``PGD_strong`` (``strong_pgd_steps`` steps, ``strong_restarts`` restarts).
        strong_pgd_steps, strong_restarts: its settings.
        surrogate: a second model of the task: adds ``transfer``, the suite's PGD crafted on it and applied to the
            evaluated model (:mod:`robust_bundles.transfer`; a transfer worse than every white-box attack is flagged).
        surrogate_inferer: ``inferer(x, network)`` for the surrogate (the bundle's); None calls it directly.

    Returns:
        ``{name: attack}`` in report order, PGD first.
    """
    check_suite(suite)
    clamp = tuple(clamp) if clamp is not None else None
    strong = suite == "strong"
    restarts = STRONG_RESTARTS if strong else None
    steps = max(int(pgd_steps), STRONG_STEPS) if strong else int(pgd_steps)
    attacks: dict[str, Attack] = {"PGD": L2PGD(steps=pgd_steps, alpha=alpha, clamp=clamp)}
    if suite == "quick":
        if ifgsm_steps > 0:
            attacks["IFGSM"] = L2IFGSM(steps=ifgsm_steps, alpha=alpha, clamp=clamp)
    else:
        losses: dict[str, Any] = {"": None}
        names = tuple(getattr(loss, "term_names", ()))
        if len(names) > 1:
            losses.update({f"_{n}": TermLoss(loss, n) for n in names})
        losses.update({f"_{n}": objective for n, objective in (objectives or {}).items()})
        for suffix, objective in losses.items():
            attacks[f"APGD{suffix}"] = APGD(loss_fn=objective, steps=steps, clamp=clamp, restarts=restarts)
    attacks["noise"] = RandomNoise(clamp=clamp)
    if surrogate is not None:
        attacks[TRANSFER] = TransferAttack(L2PGD(steps=pgd_steps, alpha=alpha, clamp=clamp), surrogate,
                                           surrogate_inferer)
    if strong_pgd:
        attacks["PGD_strong"] = L2PGD(steps=strong_pgd_steps, alpha=alpha, clamp=clamp, restarts=strong_restarts)
    return attacks
