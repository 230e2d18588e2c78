"""Machine-independent training cost: the network forward and backward passes a training stage ran.

:class:`PassCounter` hooks the trainer's network and counts, during training iterations only (validation, threshold
estimation and other evaluators that share the network are not counted), every forward pass and every backward pass
through the network, weighted by the batch size (a pass over a batch of 32 counts 32). A backward pass is any
gradient computation that flows back through the network's output: the training ``loss.backward()`` and the attack's
input-gradient ``torch.autograd.grad`` alike (an input-gradient backward skips the weight gradients, so it costs
somewhat less wall time than a training backward; the benchmark measures by how much).

Expected counts per training sample (one visit):

- STD: 1 forward, 1 backward;
- VAT / TEAT with T attack steps, beta 0: T + 1 forward, T + 1 backward (TEAT adds 1 forward without backward for
  its ensemble once it is active);
- AMAT with T steps, beta > 0: T + 2 forward, T + 2 backward (attack, adversarial and clean training passes);
  beta 0 drops the clean pass.

The passes made inside an attack (:func:`robust_bundles.attacks.attacking`) are also counted on their own
(``attack_forward``, ``attack_backward``, included in the totals): their backward takes the input gradient only, so a
time prediction can weigh them apart (``scripts/benchmark.py --fast``).

The counts and the wall time are written to ``models/<run>/cost.json`` (:func:`robust_bundles.layout.cost_file`) after
every epoch and at the end; :mod:`robust_bundles.report` prints each method's passes per sample relative to STD. The
counts are in the run's checkpoint too (``save_dict`` entry ``pass_counter``), so a resumed run's ``cost.json`` covers
the whole run, the passes before the interruption included (its wall time too).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch

from ..attacks import attacking
from ..distributed import is_main_process, unwrap
from ..io import atomic_write_json

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["COST_VERSION", "PassCounter"]

logger = logging.getLogger("robust_bundles.cost")

COST_VERSION = 1


def _batch_size(args: tuple) -> int:
    for a in args:
        if isinstance(a, torch.Tensor) and a.ndim > 0:
            return int(a.shape[0])
    return 1


def _grad_tensor(out: Any) -> torch.Tensor | None:
    """The first tensor of a network output (tensor, tuple/list, dict) that takes part in autograd."""
    if isinstance(out, torch.Tensor):
        return out if out.requires_grad else None
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ()
    for item in items:
        t = _grad_tensor(item)
        if t is not None:
            return t
    return None


class PassCounter:
    """Count the network passes of a training run and write them with its results (see the module docstring).

    Args:
        output_file: the JSON file (``robust_bundles.layout.cost_file(root, run)``); None keeps the figures in
            memory (``summary()``).
        network: the module to count; default the trainer's network (unwrapped from DistributedDataParallel, so the
            attack passes that bypass the wrapper are counted too).
        name: the run name recorded in the file.
    """

    def __init__(self, output_file: str | None = None, network: torch.nn.Module | None = None,
                 name: str | None = None) -> None:
        self.output_file = output_file
        self.network = network
        self.name = name
        self.forward = 0
        self.backward = 0
        self.attack_forward = 0
        self.attack_backward = 0
        self.samples = 0
        self.iterations = 0
        self.iteration_time = 0.0
        self.wall_time = 0.0
        self.epochs: list[dict] = []
        self._active = False
        self._batch = 0
        self._t_iter = self._t_start = 0.0
        self._epoch_start: dict = {}
        self._handle = None
        self._wall_before = 0.0  # wall time of the run before a resume

    # ------------------------------------------------------------------------------------------------ checkpoint
    _COUNTS = ("forward", "backward", "attack_forward", "attack_backward", "samples", "iterations")

    def state_dict(self) -> dict:
        """The counts so far, for the run's checkpoint (plain numbers and lists: loadable with weights_only=True), so
        that a resumed run's ``cost.json`` counts the passes before the interruption too."""
        return {**{k: int(getattr(self, k)) for k in self._COUNTS}, "iteration_time": float(self.iteration_time),
                "wall_time": float(self.wall_time), "epochs": [dict(e) for e in self.epochs]}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in (*self._COUNTS, "iteration_time", "wall_time", "epochs") if k not in state]
        if missing:
            raise KeyError(f"The checkpoint's pass_counter entry lacks {missing}: it was not written by PassCounter.")
        for k in self._COUNTS:
            setattr(self, k, int(state[k]))
        self.iteration_time = float(state["iteration_time"])
        self.wall_time = self._wall_before = float(state["wall_time"])
        self.epochs = [dict(e) for e in state["epochs"]]

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    # ------------------------------------------------------------------------------------------------ counting
    def _forward_hook(self, module, args, output) -> None:
        if not self._active:
            return
        b = _batch_size(args)
        attack = attacking()
        self.forward += b
        self.attack_forward += b if attack else 0
        t = _grad_tensor(output)
        if t is not None:
            t.register_hook(lambda grad, b=b, attack=attack: self._count_backward(b, attack))

    def _count_backward(self, b: int, attack: bool) -> None:
        self.backward += b
        self.attack_backward += b if attack else 0

    # ------------------------------------------------------------------------------------------------ events
    def _started(self, engine: Engine) -> None:
        # hooked here, not in attach: MONAI attaches train_handlers before the trainer holds its network
        if self._handle is None:
            net = unwrap(self.network if self.network is not None else engine.network)
            self._handle = net.register_forward_hook(self._forward_hook)
        self._t_start = time.perf_counter()

    def _totals(self) -> dict:
        return {"forward": self.forward, "backward": self.backward, "attack_forward": self.attack_forward,
                "attack_backward": self.attack_backward, "samples": self.samples,
                "iterations": self.iterations, "iteration_time_s": self.iteration_time}

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_start = self._totals()

    def _iteration_started(self, engine: Engine) -> None:
        batch = engine.state.batch  # still collated here (MONAI decollates at ITERATION_COMPLETED)
        if isinstance(batch, dict):
            batch = (batch["image"],) if "image" in batch else tuple(batch.values())
        self._batch = _batch_size(tuple(batch) if isinstance(batch, (list, tuple)) else (batch,))
        self._active = True
        self._t_iter = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        self.iteration_time += time.perf_counter() - self._t_iter
        self._active = False
        self.iterations += 1
        self.samples += self._batch

    def _epoch_completed(self, engine: Engine) -> None:
        now = self._totals()
        self.epochs.append({"epoch": int(engine.state.epoch),
                            **{k: now[k] - self._epoch_start.get(k, 0) for k in now}})
        self.wall_time = self._wall_before + time.perf_counter() - self._t_start
        self.write()

    def _completed(self, engine: Engine) -> None:
        self.wall_time = self._wall_before + time.perf_counter() - self._t_start
        self.write()
        s = self.summary()
        logger.info(f"cost: {s['forward_per_sample']:.3g} forward + {s['backward_per_sample']:.3g} backward passes per "
                    f"training sample, {self.iteration_time:.1f} s in training iterations, {self.wall_time:.1f} s "
                    "wall time")

    # ------------------------------------------------------------------------------------------------ results
    def summary(self) -> dict:
        """The totals, the passes per training sample and the per-epoch figures, as written to the file."""
        n = max(self.samples, 1)
        return {
            "version": COST_VERSION,
            "run": self.name,
            **self._totals(),
            "forward_per_sample": self.forward / n,
            "backward_per_sample": self.backward / n,
            "passes_per_sample": (self.forward + self.backward) / n,
            "attack_forward_per_sample": self.attack_forward / n,
            "attack_backward_per_sample": self.attack_backward / n,
            "wall_time_s": self.wall_time,
            "epochs": list(self.epochs),
        }

    def write(self) -> None:
        if self.output_file and is_main_process():
            atomic_write_json(self.output_file, self.summary())

    def detach(self) -> None:
        """Remove the forward hook (the counter stops counting)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
