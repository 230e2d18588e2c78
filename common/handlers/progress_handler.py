"""Progress of long runs: epoch, iteration, speed and ETA, logged at a steady pace."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

__all__ = ["ProgressHandler"]


class ProgressHandler:
    """Log ``name: epoch e/E, iteration i/I, s/it, ETA`` every ``interval_seconds`` and at every epoch end.

    Args:
        name: label of the run in the log lines (e.g. the run name "amat").
        interval_seconds: minimum time between two iteration lines.
        logger_name: logger to write to.
    """

    def __init__(self, name: str = "train", interval_seconds: float = 30.0, logger_name: str = "robust_bundles.progress"):
        if interval_seconds < 0:
            raise ValueError("interval_seconds must be >= 0.")
        self.name = name
        self.interval = float(interval_seconds)
        self.logger = logging.getLogger(logger_name)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self._started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _started(self, engine: Engine) -> None:
        self.t0 = self.last = time.time()
        self.start_iter = engine.state.iteration

    def _line(self, engine: Engine) -> str:
        s = engine.state
        per_epoch = s.epoch_length or 0
        total = per_epoch * s.max_epochs if per_epoch and s.max_epochs else 0
        done = s.iteration - self.start_iter
        elapsed = time.time() - self.t0
        rate = elapsed / done if done else float("nan")
        eta = rate * (total - s.iteration) if total else float("nan")
        within = (s.iteration - 1) % per_epoch + 1 if per_epoch else s.iteration
        return (
            f"{self.name}: epoch {s.epoch}/{s.max_epochs}, iteration {within}/{per_epoch}, {rate:.2f} s/it, "
            f"elapsed {_fmt(elapsed)}, ETA {_fmt(eta)}"
        )

    def __call__(self, engine: Engine) -> None:
        if time.time() - self.last >= self.interval:
            self.last = time.time()
            self.logger.info(self._line(engine))

    def _epoch(self, engine: Engine) -> None:
        self.last = time.time()
        out = engine.state.output
        loss = None
        if isinstance(out, list) and out and isinstance(out[0], dict):
            loss = out[0].get("loss")
        elif isinstance(out, dict):
            loss = out.get("loss")
        extra = f", last loss {float(loss):.4f}" if loss is not None else ""
        self.logger.info(self._line(engine) + extra)


def _fmt(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
