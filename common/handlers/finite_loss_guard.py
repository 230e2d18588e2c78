"""Stop training with a clear error when the loss becomes NaN or infinite (never a silently wrong model)."""

from __future__ import annotations

import math

from ignite.engine import Engine, Events

__all__ = ["FiniteLossGuard"]


class FiniteLossGuard:
    """Raise ``FloatingPointError`` at the first iteration whose loss is not finite.

    MONAI's ``SupervisedTrainer`` keeps going on a NaN loss and silently ruins the weights; the adversarial iterations
    of :mod:`robust_bundles.adversarial` check their own losses, this handler covers STD training.

    Args:
        loss_key: key of the loss in the engine output.
    """

    def __init__(self, loss_key: str = "loss") -> None:
        self.loss_key = loss_key

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        if isinstance(out, list) and out and isinstance(out[0], dict):
            out = out[0]
        if not isinstance(out, dict) or self.loss_key not in out:
            return
        value = float(out[self.loss_key])
        if not math.isfinite(value):
            raise FloatingPointError(
                f"Non-finite training loss ({value}) at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                "check the input intensities for NaN/inf (corrupt volume?), lower the learning rate, or disable amp."
            )
