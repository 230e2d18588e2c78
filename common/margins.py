"""The margin book of adaptive-margin adversarial training (AMAT): one noise level per training sample.

Every training sample ``i`` (with a stable integer id in ``[0, N)``) has a *margin* ``E[i]``: the radius of its L2 PGD
perturbation, in L2-norm units of the network input (after the bundle's intensity normalisation). Margins start at the
initial margin ``A`` and change with the robustness test of every visit (Ma & Liang 2024, the AMAT algorithm; the
README's "The method in a few lines of config" shows where each piece sits in a bundle):

- during an epoch, every visit of sample ``i`` with reached perturbation norm ``r = ||x_adv - x||_2`` updates the
  running average ``E_new[i] = max((E_new[i] + r) / 2, Delta)`` (``E_new`` starts each epoch as a copy of ``E``)
  and the AND of the robustness test over the visits of this epoch;
- at the end of the epoch ("epoch" mode, the default), a visited sample that was robust on every visit expands,
  ``E[i] = E[i] + Delta``; any other visited sample takes ``E[i] = E_new[i]``; an optional cap ``E_max`` bounds the
  result; samples not visited keep their margin. "iteration" mode applies the same rule to the samples of a batch right
  after the batch.

How fast margins may grow is a matter of the training length: a margin grows by at most Delta per epoch, so a sample
can reach margin ``A + (E - 1) Delta`` in ``E`` epochs at best. Two ways to set A, Delta and the cap:

- **fixed** (the paper's): give Delta (``expansion_step``); A defaults to Delta; no cap unless ``max_margin`` is given.
- **schedule-aware** (target mode): give the target margin ``M`` (the largest noise level a sample should reach,
  same units), the number of epochs ``E`` of this training run and the reach fraction ``rho``; see
  :func:`margin_schedule`. A sample that passes the robustness test in every epoch is then trained at ``M`` from
  epoch ``rho * E`` on, whatever ``E`` is: ``Delta = M / (rho E)`` with the default ``A = Delta``, and the cap is
  ``M``. Samples that fail the test grow later or not at all, as in the paper's rule.

Margins are training state: :class:`MarginBook` has ``state_dict``/``load_state_dict`` made only of tensors and plain
Python values, so it can be listed in the ``save_dict`` of MONAI's ``CheckpointSaver`` and the ``load_dict`` of
``CheckpointLoader`` (which loads with ``torch.load(weights_only=True)``). The epoch-end update is run by
:class:`robust_bundles.handlers.MarginHandler`, which also logs and exports the margins.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from .io import atomic_write_text

__all__ = ["MarginBook", "MarginSchedule", "margin_schedule", "UPDATE_MODES", "MARGIN_RULES"]

logger = logging.getLogger("robust_bundles.margins")

UPDATE_MODES = ("epoch", "iteration")
MARGIN_RULES = ("fixed", "target")
"""The margin rules of :class:`MarginBook`: ``fixed`` (the paper's Delta) and ``target`` (the schedule-aware margin)."""

_STATE_VERSION = 2
"""2: the config also holds target_margin, epochs and reach_fraction (target mode). Version 1 states load unchanged."""


@dataclass(frozen=True)
class MarginSchedule:
    """The margin settings of one AMAT run, derived from a target margin and the training length.

    Attributes:
        expansion_step: Delta, L2 norm units of the network input.
        initial_margin: A, same units.
        max_margin: the cap E_max, same units (the target margin unless given otherwise).
        reach_epoch: ``rho * E``, the (fractional) epoch from which a sample that passed the robustness test in every
            epoch is trained at the target margin.
    """

    expansion_step: float
    initial_margin: float
    max_margin: float | None
    reach_epoch: float


def _positive(value: Any, name: str) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return v


def margin_schedule(
    target_margin: float,
    epochs: int,
    reach_fraction: float = 0.5,
    initial_margin: float | None = None,
    max_margin: float | None = None,
) -> MarginSchedule:
    """Delta, A and the cap from a target margin and the number of epochs (the schedule-aware margin).

    With the epoch-end update, a sample that passes the robustness test in every epoch is trained in epoch ``e``
    (1, 2, ...) at margin ``A + (e - 1) Delta``. It should be trained at the target margin ``M`` from the reach epoch
    ``e* = rho * E`` on (at least epoch 1), so ``A + (e* - 1) Delta = M``:

    - default ``A = Delta``: ``Delta = M / e*``;
    - a given ``A < M``: ``Delta = (M - A) / (e* - 1)`` (needs ``e* > 1``).

    The cap is ``M`` unless ``max_margin`` is given. Examples: ``M = 10, E = 6, rho = 0.5``: Delta = A = 10/3, margins
    10/3, 20/3, 10, 10, 10, 10 for an always-robust sample. ``M = 10, E = 100, rho = 0.5``: Delta = 0.2. "iteration"
    mode gives the same counts when every sample is visited once per epoch.

    Args:
        target_margin: M, the largest margin a sample should reach, in L2 norm units of the network input; > 0.
        epochs: E, the number of epochs of this training run (of the fine-tuning, when fine-tuning); >= 1.
        reach_fraction: rho in (0, 1], the fraction of the run after which an always-robust sample is at M.
        initial_margin: A; None for A = Delta (the paper's default).
        max_margin: the cap; None for M.

    Returns:
        A :class:`MarginSchedule`.

    Raises:
        ValueError: a value is out of range, or A is given with ``rho * E <= 1`` or ``A >= M``.
    """
    m = _positive(target_margin, "target_margin (M)")
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1 (the length of the training run), got {epochs!r}.")
    rho = float(reach_fraction)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"reach_fraction (rho) must lie in (0, 1], got {reach_fraction!r}.")
    reach = max(rho * int(epochs), 1.0)
    if initial_margin is None:
        delta = m / reach
        a = delta
    else:
        a = _positive(initial_margin, "initial_margin (A)")
        if not a < m:
            raise ValueError(f"initial_margin (A = {a:g}) must be below target_margin (M = {m:g}).")
        if reach <= 1.0:
            raise ValueError(
                f"reach_fraction * epochs = {rho * epochs:g} <= 1 leaves no epoch to grow from A = {a:g} to M = {m:g}: "
                "train longer, raise reach_fraction, or leave initial_margin unset (A = Delta)."
            )
        delta = (m - a) / (reach - 1.0)
    cap = m if max_margin is None else float(max_margin)
    return MarginSchedule(expansion_step=delta, initial_margin=a, max_margin=cap, reach_epoch=reach)


def _as_ids(ids: Any) -> torch.Tensor:
    """Convert sample ids (tensor, list, numpy array or int) to an int64 tensor, keeping the device of a tensor."""
    if isinstance(ids, torch.Tensor):
        t = ids
    else:
        t = torch.as_tensor(np.asarray(ids))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"Sample ids must be integers, got a tensor of dtype {t.dtype}.")
    return t.long()


class MarginBook:
    """Per-sample margins (noise levels) of AMAT and their update rule.

    The book lives on the CPU whatever the device of the batches: ids, robustness flags and norms are moved to the CPU
    for the bookkeeping, and :meth:`get` returns the margins on the device of the ids.

    Args:
        num_samples: N, the number of training samples; sample ids are ``0 .. N-1``. Must equal the size of the
            training set (a 2D slice of a 3D volume counts as one sample).
        expansion_step: Delta, the amount a margin grows after an epoch in which its sample passed the robustness test
            on every visit, and the floor of the running average ``E_new``. L2 norm units of the network input; > 0.
            The paper's fixed rule; None in target mode.
        initial_margin: A, the margin of every sample before training (same units, > 0). Default: ``expansion_step``.
        max_margin: optional cap E_max on every updated margin (same units, >= ``initial_margin``). None: no cap
            (fixed rule) or the target margin (target mode).
        update: when the rule runs: ``"epoch"`` (at :meth:`end_epoch`, the default) or ``"iteration"`` (right after
            each :meth:`record`, as the paper's text describes).
        key_digest: optional digest of the ordered sample keys of the training set (see :meth:`digest_keys`). It is
            stored in checkpoints, and :meth:`load_state_dict` refuses a checkpoint whose digest differs, which catches
            a resume on another split whose sample count happens to be equal.
        target_margin: M, the target mode (schedule-aware margin): Delta, A and the cap follow from M, ``epochs`` and
            ``reach_fraction`` (:func:`margin_schedule`). Give either ``expansion_step`` or ``target_margin``.
        epochs: the number of epochs of this training run (target mode only).
        reach_fraction: rho, the fraction of the run after which an always-robust sample is at M (target mode only).
        rule: which of ``expansion_step`` and ``target_margin`` sets the margins: ``"fixed"`` (the paper's rule, Delta
            = ``expansion_step``; ``target_margin`` is ignored) or ``"target"`` (the schedule-aware rule from
            ``target_margin``, ``epochs`` and ``reach_fraction``; ``expansion_step`` is ignored). A bundle passes both
            values and its ``margin_rule``. None: the rule follows from which of the two is given (exactly one).

    Attributes:
        margins: float32 tensor (N,), the current margins E.
        epochs_completed: number of :meth:`end_epoch` calls so far.
        last_expanded_fraction: fraction of the samples visited in the last completed epoch that expanded (0 when no
            sample was visited).
        last_visited: number of distinct samples visited in the last completed epoch.
        last_expanded: number of them that expanded.
    """

    def __init__(
        self,
        num_samples: int,
        expansion_step: float | None = None,
        initial_margin: float | None = None,
        max_margin: float | None = None,
        update: str = "epoch",
        key_digest: str | None = None,
        target_margin: float | None = None,
        epochs: int | None = None,
        reach_fraction: float = 0.5,
        rule: str | None = None,
    ) -> None:
        if rule is not None:
            if rule not in MARGIN_RULES:
                raise ValueError(f"rule (margin_rule) must be one of {MARGIN_RULES}, got {rule!r}: 'fixed' with "
                                 "expansion_step (Delta) or 'target' with target_margin (and epochs).")
            needed = expansion_step if rule == "fixed" else target_margin
            if needed is None:
                what = "expansion_step (Delta)" if rule == "fixed" else "target_margin (M)"
                raise ValueError(f"The {rule!r} margin rule needs {what}; it is None. In a bundle: --margin_rule "
                                 f"{rule} --{what.split()[0]} <value>.")
            if rule == "fixed":
                target_margin = None
            else:
                expansion_step = None
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(
                f"num_samples must be an integer >= 1 (the size of the training set), got {num_samples!r}."
            )
        if (expansion_step is None) == (target_margin is None):
            raise ValueError(
                "Give either expansion_step (Delta, the paper's fixed rule) or target_margin (the schedule-aware rule, "
                f"with epochs), not {'both' if target_margin is not None else 'neither'}: got expansion_step="
                f"{expansion_step!r}, target_margin={target_margin!r}. In a bundle: --margin_rule fixed (with "
                "--expansion_step) or --margin_rule target (with --target_margin)."
            )
        self.target_margin = self.epochs = self.reach_fraction = None
        if target_margin is not None:
            if epochs is None:
                raise ValueError("target_margin needs epochs, the number of epochs of this training run.")
            plan = margin_schedule(target_margin, epochs, reach_fraction, initial_margin, max_margin)
            expansion_step, initial_margin, max_margin = plan.expansion_step, plan.initial_margin, plan.max_margin
            self.target_margin, self.epochs, self.reach_fraction = float(target_margin), int(epochs), float(reach_fraction)
        expansion_step = float(expansion_step)
        if not np.isfinite(expansion_step) or expansion_step <= 0:
            raise ValueError(f"expansion_step (Delta) must be a finite number > 0, got {expansion_step!r}.")
        initial_margin = expansion_step if initial_margin is None else float(initial_margin)
        if not np.isfinite(initial_margin) or initial_margin <= 0:
            raise ValueError(f"initial_margin (A) must be a finite number > 0, got {initial_margin!r}.")
        if max_margin is not None:
            max_margin = float(max_margin)
            if not max_margin >= initial_margin:
                raise ValueError(
                    f"max_margin (E_max = {max_margin!r}) must be >= initial_margin (A = {initial_margin!r}), or None."
                )
        if update not in UPDATE_MODES:
            raise ValueError(f"update must be one of {UPDATE_MODES}, got {update!r}.")
        if key_digest is not None and not isinstance(key_digest, str):
            raise TypeError(f"key_digest must be a string or None, got {type(key_digest).__name__}.")

        self.num_samples = int(num_samples)
        self.rule = "target" if self.target_margin is not None else "fixed"
        self.expansion_step = expansion_step
        self.initial_margin = initial_margin
        self.max_margin = max_margin
        self.update = update
        self.key_digest = key_digest

        n = self.num_samples
        self.margins = torch.full((n,), initial_margin, dtype=torch.float32)
        # pending state, reset after every update of a sample
        self.margins_new = self.margins.clone()
        self.visited = torch.zeros(n, dtype=torch.bool)
        self.all_robust = torch.ones(n, dtype=torch.bool)
        # per-epoch statistics (equal to the pending state in "epoch" mode)
        self.epoch_visited = torch.zeros(n, dtype=torch.bool)
        self.epoch_all_robust = torch.ones(n, dtype=torch.bool)
        self.pending_epoch: int | None = None
        self.epochs_completed = 0
        self.last_expanded_fraction = 0.0
        self.last_visited = 0
        self.last_expanded = 0

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def digest_keys(keys: Iterable[str]) -> str:
        """Return a SHA-256 hex digest of the ordered sample keys (e.g. ``"case_007/slice_012"``) for ``key_digest``.

        Args:
            keys: the sample keys in id order, ``keys[i]`` naming sample ``i``.
        """
        h = hashlib.sha256()
        for k in keys:
            h.update(str(k).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        target = (
            f", target_margin={self.target_margin}, epochs={self.epochs}, reach_fraction={self.reach_fraction}"
            if self.target_margin is not None else ""
        )
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, expansion_step={self.expansion_step:.6g}, "
            f"initial_margin={self.initial_margin:.6g}, max_margin={self.max_margin}, update={self.update!r}"
            f"{target}, epochs_completed={self.epochs_completed})"
        )

    def _check_range(self, ids: torch.Tensor) -> None:
        if ids.numel() == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.num_samples:
            bad = lo if lo < 0 else hi
            raise IndexError(
                f"Sample id {bad} is out of range: the margin book holds ids 0..{self.num_samples - 1}. "
                "The book size (num_samples) must equal the number of training samples, and every sample needs a "
                "stable id in [0, N)."
            )

    # ------------------------------------------------------------------ reading
    def get(self, ids: Any) -> torch.Tensor:
        """Return the margins of the given samples.

        Args:
            ids: sample ids, an integer tensor (B,) on any device, a list or a numpy array.

        Returns:
            float32 tensor with the shape of ``ids`` (usually (B,)), on the device of ``ids`` (CPU for lists): the
            noise level eps_b of every sample, in L2 norm units of the network input.
        """
        t = _as_ids(ids)
        device = t.device
        t = t.cpu()
        self._check_range(t)
        return self.margins[t].to(device)

    # ------------------------------------------------------------------ bookkeeping
    def record(self, ids: Any, robust: Any, reached_norm: Any, epoch: int | None = None) -> None:
        """Remember the outcome of one batch.

        For every sample ``b`` (in batch order, so an id repeated in a batch counts as two visits):
        ``E_new[i] = max((E_new[i] + reached_norm_b) / 2, Delta)``, ``visited[i] = True`` and
        ``all_robust[i] &= robust_b``. In "iteration" mode the rule is applied to these samples at once
        (:meth:`commit`).

        Args:
            ids: sample ids (B,), integers in ``[0, N)``, any device.
            robust: bool tensor (B,): True when the sample passed the robustness test (every loss term <= xi).
            reached_norm: tensor (B,): the L2 norm ``||x_adv_b - x_b||_2`` of the perturbation actually reached, in
                L2 norm units of the network input.
            epoch: optional current epoch (e.g. ``engine.state.epoch``). When given, "epoch" mode checks that the
                epoch-end update of an earlier epoch did not go missing.

        Raises:
            IndexError: an id is outside ``[0, N)``.
            ValueError: the three arguments do not have the same number of elements.
            RuntimeError: "epoch" mode, and records of an earlier epoch were never committed by :meth:`end_epoch`.
        """
        t = _as_ids(ids).reshape(-1).cpu()
        rob = torch.as_tensor(robust).detach().reshape(-1).cpu().bool()
        norm = torch.as_tensor(reached_norm).detach().reshape(-1).cpu().float()
        if not (t.numel() == rob.numel() == norm.numel()):
            raise ValueError(
                f"record() needs one robustness flag and one reached norm per sample id: got {t.numel()} ids, "
                f"{rob.numel()} flags and {norm.numel()} norms."
            )
        self._check_range(t)
        if t.numel() == 0:
            return

        if epoch is not None and self.update == "epoch":
            epoch = int(epoch)
            if self.pending_epoch is not None and self.pending_epoch != epoch and bool(self.visited.any()):
                raise RuntimeError(
                    f"The margin book still holds the uncommitted records of epoch {self.pending_epoch} while "
                    f"recording epoch {epoch}: the epoch-end margin update never ran. Attach "
                    "robust_bundles.handlers.MarginHandler to the trainer (before the CheckpointSaver)."
                )
            self.pending_epoch = epoch

        delta = self.expansion_step
        if torch.unique(t).numel() == t.numel():
            new = torch.clamp((self.margins_new[t] + norm) / 2, min=delta)
            self.margins_new[t] = new
            self.visited[t] = True
            self.all_robust[t] &= rob
            self.epoch_visited[t] = True
            self.epoch_all_robust[t] &= rob
        else:  # repeated ids in one batch: visit them one after the other
            for i, r, n in zip(t.tolist(), rob.tolist(), norm.tolist()):
                self.margins_new[i] = max((float(self.margins_new[i]) + n) / 2, delta)
                self.visited[i] = True
                self.all_robust[i] &= r
                self.epoch_visited[i] = True
                self.epoch_all_robust[i] &= r

        if self.update == "iteration":
            self.commit(t)

    def commit(self, ids: Any | None = None) -> int:
        """Apply the update rule to the visited samples among ``ids`` and reset their pending state.

        Visited and robust on every visit: ``E = E + Delta``; visited and not robust: ``E = E_new``; then
        ``E = min(E, E_max)`` when a cap is set. Samples not visited are unchanged. Afterwards ``E_new = E``,
        ``visited = False`` and ``all_robust = True`` for these samples.

        Args:
            ids: sample ids (B,) to update; None updates every sample (what :meth:`end_epoch` does).

        Returns:
            The number of samples that expanded.
        """
        if ids is None:
            sel = self.visited.clone()
        else:
            t = _as_ids(ids).reshape(-1).cpu()
            self._check_range(t)
            sel = torch.zeros(self.num_samples, dtype=torch.bool)
            sel[t] = True
            sel &= self.visited
        expand = sel & self.all_robust
        move = sel & ~self.all_robust
        self.margins[expand] += self.expansion_step
        self.margins[move] = self.margins_new[move]
        if self.max_margin is not None:
            self.margins[sel] = torch.clamp(self.margins[sel], max=self.max_margin)
        self.margins_new[sel] = self.margins[sel]
        self.visited[sel] = False
        self.all_robust[sel] = True
        if not bool(self.visited.any()):
            self.pending_epoch = None
        return int(expand.sum())

    def end_epoch(self) -> dict[str, float]:
        """Close the epoch: apply the update rule to every visited sample ("epoch" mode) and reset the epoch counters.

        In "iteration" mode the rule already ran after each batch; only the epoch statistics are computed and reset.
        A sample counts as *expanded* in both modes when it was visited and robust on every visit of the epoch.

        Returns:
            ``{"epoch": epochs_completed, "visited": number of distinct samples visited, "expanded": number of them
            that expanded, "expanded_fraction": expanded / visited (0 when none was visited)}``.
        """
        self.commit(None)  # "iteration" mode: nothing is pending, this is a no-op
        visited = int(self.epoch_visited.sum())
        expanded = int((self.epoch_visited & self.epoch_all_robust).sum())
        self.epoch_visited.zero_()
        self.epoch_all_robust.fill_(True)
        self.pending_epoch = None
        self.epochs_completed += 1
        self.last_visited = visited
        self.last_expanded = expanded
        self.last_expanded_fraction = expanded / visited if visited else 0.0
        return {
            "epoch": float(self.epochs_completed),
            "visited": float(visited),
            "expanded": float(expanded),
            "expanded_fraction": self.last_expanded_fraction,
        }

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, float]:
        """Statistics of the current margins (L2 norm units of the network input).

        Returns:
            ``mean``, ``std`` (population, 0 for one sample), ``min``, ``q05``, ``q25``, ``median``, ``q75``, ``q95``,
            ``max`` of the margins, and ``expanded_fraction``, ``visited`` (of the last completed epoch) and
            ``epochs_completed``.
        """
        m = self.margins.double()
        q = torch.quantile(m, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)).tolist()
        return {
            "mean": float(m.mean()),
            "std": float(m.std(correction=0)),
            "min": float(m.min()),
            "q05": q[0],
            "q25": q[1],
            "median": q[2],
            "q75": q[3],
            "q95": q[4],
            "max": float(m.max()),
            "expanded_fraction": float(self.last_expanded_fraction),
            "visited": float(self.last_visited),
            "epochs_completed": float(self.epochs_completed),
        }

    def histogram(self, bins: int = 20, range: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Histogram of the margins.

        Args:
            bins: number of equal-width bins.
            range: (low, high) of the bins in margin units; default: (min, max) of the margins.

        Returns:
            ``(counts (bins,), edges (bins + 1,))``, float32 tensors.
        """
        if range is None:
            lo, hi = float(self.margins.min()), float(self.margins.max())
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            range = (lo, hi)
        counts, edges = torch.histogram(self.margins, bins=int(bins), range=(float(range[0]), float(range[1])))
        return counts, edges

    def to_csv(self, path: str | os.PathLike, ids_to_keys: Sequence[str] | None = None) -> str:
        """Write the margins to a CSV file, atomically (temporary file in the same folder, then ``os.replace``).

        Columns: ``sample_id``, ``key`` (only with ``ids_to_keys``), ``margin`` (L2 norm units of the network input).
        Parent folders are created.

        Args:
            path: output file.
            ids_to_keys: optional sequence of N sample keys, ``ids_to_keys[i]`` naming sample ``i``.

        Returns:
            The path written, as a string.
        """
        if ids_to_keys is not None and len(ids_to_keys) != self.num_samples:
            raise ValueError(
                f"ids_to_keys has {len(ids_to_keys)} keys but the margin book has {self.num_samples} samples."
            )
        path = os.fspath(path)
        values = self.margins.numpy()
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow(["sample_id", "key", "margin"] if ids_to_keys is not None else ["sample_id", "margin"])
        for i, v in enumerate(values):
            # str(np.float32) is the shortest text that reads back to the same float32
            writer.writerow([i, ids_to_keys[i], str(v)] if ids_to_keys is not None else [i, str(v)])
        atomic_write_text(path, buf.getvalue())
        return path

    # ------------------------------------------------------------------ checkpointing
    def config(self) -> dict[str, Any]:
        """The settings of the book as plain values: initial_margin, expansion_step, max_margin, update, and the
        target mode's target_margin, epochs, reach_fraction (None with the fixed rule)."""
        return {
            "initial_margin": self.initial_margin,
            "expansion_step": self.expansion_step,
            "max_margin": self.max_margin,
            "update": self.update,
            "target_margin": self.target_margin,
            "epochs": self.epochs,
            "reach_fraction": self.reach_fraction,
        }

    def state_dict(self) -> dict[str, Any]:
        """The whole state as tensors and plain Python values (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "version": _STATE_VERSION,
            "num_samples": self.num_samples,
            "margins": self.margins.clone(),
            "margins_new": self.margins_new.clone(),
            "visited": self.visited.clone(),
            "all_robust": self.all_robust.clone(),
            "epoch_visited": self.epoch_visited.clone(),
            "epoch_all_robust": self.epoch_all_robust.clone(),
            "pending_epoch": self.pending_epoch,
            "config": self.config(),
            "epochs_completed": self.epochs_completed,
            "last_expanded_fraction": float(self.last_expanded_fraction),
            "last_visited": self.last_visited,
            "last_expanded": self.last_expanded,
            "key_digest": self.key_digest,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`.

        The settings of this book (A, Delta, cap, update mode: the current config) are kept; a difference with the
        checkpoint's settings is reported with a warning. A book without ``key_digest`` takes the checkpoint's.

        States of version 1 (before the target mode) load unchanged: their config has no target-mode keys.

        Raises:
            ValueError: the checkpoint holds another number of samples, or another ``key_digest`` (both set), or was
                written by a newer version of this library.
            KeyError: the mapping is not a margin-book state.
        """
        if "margins" not in state_dict:
            raise KeyError(
                f"Not a MarginBook state: the 'margins' entry is missing (keys: {sorted(state_dict)})."
            )
        version = int(state_dict.get("version", 1))
        if version > _STATE_VERSION:
            raise ValueError(
                f"The margin book in the checkpoint has state version {version}, newer than this library's "
                f"{_STATE_VERSION}: update robust_bundles to resume from it."
            )
        margins = torch.as_tensor(state_dict["margins"])
        n_ckpt = int(margins.numel())
        if n_ckpt != self.num_samples or margins.dim() != 1:
            raise ValueError(
                f"The margin book in the checkpoint has {n_ckpt} samples but the training set has {self.num_samples}: "
                "resume with the same dataset/split."
            )
        digest = state_dict.get("key_digest")
        if digest is not None and self.key_digest is not None and digest != self.key_digest:
            raise ValueError(
                f"The margin book in the checkpoint was built on other sample keys (key digest {digest[:12]}... "
                f"against {self.key_digest[:12]}... for the training set): resume with the same dataset/split."
            )
        ckpt_config = dict(state_dict.get("config", {}))
        diff = {k: (v, ckpt_config[k]) for k, v in self.config().items() if k in ckpt_config and ckpt_config[k] != v}
        if diff:
            warnings.warn(
                "The margin book settings differ from the checkpoint's; the current ones are used: "
                + ", ".join(f"{k}={now!r} (checkpoint {old!r})" for k, (now, old) in diff.items()),
                stacklevel=2,
            )

        def _tensor(name: str, dtype: torch.dtype, default: torch.Tensor) -> torch.Tensor:
            if name not in state_dict:
                return default.clone()
            t = torch.as_tensor(state_dict[name]).detach().to("cpu", dtype).reshape(-1)
            if t.numel() != self.num_samples:
                raise ValueError(f"The '{name}' entry of the margin-book checkpoint has {t.numel()} values, not "
                                 f"{self.num_samples}: the checkpoint is inconsistent.")
            return t.clone()

        n = self.num_samples
        self.margins = _tensor("margins", torch.float32, self.margins)
        self.margins_new = _tensor("margins_new", torch.float32, self.margins)
        self.visited = _tensor("visited", torch.bool, torch.zeros(n, dtype=torch.bool))
        self.all_robust = _tensor("all_robust", torch.bool, torch.ones(n, dtype=torch.bool))
        self.epoch_visited = _tensor("epoch_visited", torch.bool, self.visited)
        self.epoch_all_robust = _tensor("epoch_all_robust", torch.bool, self.all_robust)
        pending = state_dict.get("pending_epoch")
        self.pending_epoch = None if pending is None else int(pending)
        self.epochs_completed = int(state_dict.get("epochs_completed", 0))
        self.last_expanded_fraction = float(state_dict.get("last_expanded_fraction", 0.0))
        self.last_visited = int(state_dict.get("last_visited", 0))
        self.last_expanded = int(state_dict.get("last_expanded", 0))
        if self.key_digest is None:
            self.key_digest = digest
        if self.update == "iteration" and bool(self.visited.any()):
            # records pending from an "epoch"-mode checkpoint: apply them now rather than never
            self.commit(None)
