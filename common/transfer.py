"""The transfer check: an attack crafted on a second model (the surrogate) and applied to the evaluated model.

A white-box attack on a model sees that model's own input gradients. When the gradients are masked (saturated,
shattered, zero, random) the white-box attack stalls while the model is not robust at all; the same eps attack
crafted on another model of the same task, whose gradients are informative, then hurts the evaluated model *more* than
its own white-box attack. Carlini et al. (2019, "On evaluating adversarial robustness") and AutoAttack list this as a
sign of gradient masking. The experiment's surrogate is its STD model; the audit takes a user-given one.

:class:`TransferAttack` wraps any attack of :mod:`robust_bundles.attacks` / :mod:`robust_bundles.apgd`: it attacks the
surrogate (same loss, eps, steps, clamp) and returns the perturbed input, which the robustness handler then feeds to
the evaluated model like any other attack's. :func:`transfer_warnings` reads a robustness summary and flags every eps
at which the transfer column is worse than the worst white-box column.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch.nn as nn

from .attacks import Attack, AttackResult

__all__ = ["TransferAttack", "transfer_warnings", "load_surrogate", "TRANSFER"]

TRANSFER = "transfer"
"""The name of the transfer column in a robustness report."""


class TransferAttack(Attack):
    """``attack`` run on ``surrogate`` instead of the evaluated model (its result is applied to the evaluated one).

    Args:
        attack: the white-box attack to transfer (its steps, step size, clamp and loss are kept).
        surrogate: the second model, in eval mode during the attack (its state is left as found).
        inferer: ``inferer(x, network) -> output`` for the surrogate (e.g. the bundle's sliding-window inferer); None
            calls the surrogate directly.
    """

    def __init__(self, attack: Attack, surrogate: nn.Module, inferer: Callable | None = None) -> None:
        if not isinstance(surrogate, nn.Module):
            raise TypeError(f"The transfer surrogate must be a torch module; got {type(surrogate).__name__}.")
        vars(self).update(copy.copy(vars(attack)))
        self.norm, self.random_start = attack.norm, attack.random_start
        self.base, self.surrogate, self.inferer = attack, surrogate, inferer

    @property
    def name(self) -> str:
        return f"{TRANSFER}-{self.base.name}"

    def run(self, x, y, eps=None, **kwargs: Any) -> AttackResult:
        """The base attack on the surrogate; ``model`` and ``forward`` given by the caller (the evaluated model's) are
        not used (a ``forward.note(x)`` pass counter is called for every surrogate pass, and ``forward.embed(x)`` of
        a :class:`robust_bundles.attacks.ChannelAttack` makes the surrogate's whole input), everything else (loss,
        generator, eps) is passed on."""
        kwargs.pop("model", None)
        caller = kwargs.pop("forward", None)
        note = getattr(caller, "note", None)  # the caller's pass counter, if it has one
        embed = getattr(caller, "embed", None)  # the attacked channels put back into the whole input (ChannelAttack)
        kwargs["train"] = False

        def forward(t):
            if note is not None:
                note(t)
            t = embed(t) if embed is not None else t
            return self.inferer(t, self.surrogate) if self.inferer is not None else self.surrogate(t)

        return self.base.run(x, y, eps, model=self.surrogate, forward=forward, **kwargs)


def load_surrogate(network: nn.Module, path: str | None, device: Any = "cpu") -> nn.Module | None:
    """The surrogate of the transfer check: ``network`` (a second instance of the bundle's network) with the weights
    of ``path`` (a model.pt or checkpoint), on ``device`` in eval mode; None when ``path`` is None (no check).

    Args:
        network: a fresh instance of the network (configs: ``"transfer_network": "%network_def"``).
        path: the surrogate's weights, e.g. the experiment's ``models/std/model.pt``; None or "" for none.
        device: where the evaluated model runs.
    """
    if path is None or str(path) == "":
        return None
    from .weights import load_network_weights

    load_network_weights(network, path, what="transfer surrogate", map_location="cpu",
                         fix="give --transfer_surrogate the model.pt of a model trained with the same network settings")
    return network.to(device).eval()


def transfer_warnings(summary: Mapping, higher_is_better: bool = True, transfer: str = TRANSFER,
                      tol: float = 0.0) -> list[str]:
    """One sentence per eps at which the transfer attack hurt the headline metric more than every other attack.

    Args:
        summary: a robustness summary (``RobustnessEvaluationHandler.summary``) whose attacks include ``transfer``.
        higher_is_better: the headline metric's direction.
        transfer: the transfer column's name.
        tol: slack in metric units: flagged when transfer is worse than the worst white-box by more than ``tol``.
    """
    attacks = summary.get("attacks", {})
    if transfer not in attacks:
        return []
    out = []
    for e, value in attacks[transfer].items():
        if e == "avg":
            continue
        white = [res[e] for a, res in attacks.items() if a != transfer and e in res]
        if not white:
            continue
        worst = min(white) if higher_is_better else max(white)
        if (value < worst - tol) if higher_is_better else (value > worst + tol):
            out.append(f"gradient masking? At eps {e} the transfer attack from the surrogate gives "
                       f"{summary.get('metric', 'metric')} {value:.4f}, worse than every white-box attack on the "
                       f"model itself (worst {worst:.4f}): its own gradients mislead the white-box attacks.")
    return out
