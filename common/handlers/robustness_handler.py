"""Robustness evaluation for a MONAI evaluator: the clean metrics plus white-box attacks at a list of noise levels.

Attach :class:`RobustnessEvaluationHandler` to a ``SupervisedEvaluator`` that runs over the test set. For every
batch it takes the evaluator's own inputs (after ``prepare_batch``), its network (in eval mode) and inferer, and
evaluates the task metric (:class:`robust_bundles.metrics.TaskMetric`, e.g. slice Dice, landmark MRE and SDR, COCO
mAP) on the clean input and on the adversarial input of every attack at every eps. The metric gets the raw eval-mode
network output and the collated batch dict (which carries per-sample metadata such as pixel spacing); one copy of it
accumulates per (attack, eps). eps = 0 is the clean input itself (the attacks return ``x`` unchanged), so it
reproduces the clean metrics exactly.

The per-sample worst case over all attacks ("worst") is reported at every eps:

- per-sample metrics: for every metric on its own, the sample's worst value over the attacks in that metric's
  direction (the minimum of a higher-is-better metric, the maximum of a lower-is-better one), then the mean over
  samples; different metrics of one sample may take their worst from different attacks;
- dataset-level metrics (no per-sample value): for every sample the adversarial input with the highest task loss
  over the attacks is fed to a separate "worst" copy of the metric, and the worst case is the worst of that and of
  every attack's own value (the loss picks by proxy: the mix alone can come out better than an attack's inputs).

Every attack maximises its own loss when it has one (``attack.loss_fn``: the suites of
:mod:`robust_bundles.attack_suite` run APGD on several losses), else the task loss. The summary says, per eps, which
attack reached each sample's worst case (``worst_found_by``) and what every attack cost in network passes counted at
run time (``cost``); ``robustness.md`` shows both under the table.

Restarts (random-start attacks): per sample the restart with the worst headline metric is kept (per-sample metrics)
or the one with the highest loss (dataset-level metrics).

Outputs, in ``output_dir`` (written whole): ``robustness.json`` (settings with the metric specs, summary, warnings),
``robustness.csv`` (one row per sample, attack and eps: every per-sample metric, final loss, perturbation norm,
zero-gradient steps) and ``robustness.md`` (a table). The summary is also put into ``engine.state.metrics`` (headline:
``"<metric>_clean"``, ``"PGD_eps6"``, ``"PGD_epsavg"``, ``"worst_eps6"``...; other metrics: ``"<metric>_clean"``,
``"<metric>_PGD_eps6"``, ``"<metric>_worst_eps6"``) and kept in
``handler.summary``, at the end of the evaluation epoch (``EPOCH_COMPLETED``), so that metric loggers attached after
this handler (MONAI's ``MLFlowHandler`` and ``TensorBoardStatsHandler``) record the per-eps series.

Under DDP each rank evaluates its own shard and would write the same files: run the robustness evaluation on one process.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from monai.data import list_data_collate

from ..attacks import Attack, ChannelAttack, check_channels, gradient_masking_warning
from ..data.synthetic import is_synthetic
from ..io import atomic_write_json, atomic_write_text
from ..losses import per_sample_terms, primary_output, weighted_total
from ..metrics import FunctionMetric, MetricSpec, TaskMetric, nanmean
from ..transfer import transfer_warnings

__all__ = ["RobustnessEvaluationHandler", "format_eps"]

logger = logging.getLogger("robust_bundles.robustness")

_QUANTILES = (("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95))


SYNTHETIC_NOTE = "SYNTHETIC DATA: these numbers say nothing about the real task."


def format_eps(eps: float) -> str:
    """6.0 -> '6', 0.5 -> '0.5'."""
    return f"{eps:g}"


class RobustnessEvaluationHandler:
    """Clean and adversarial task metrics over an evaluator's data (see the module docstring).

    Args:
        loss_fn: the task loss the attacks maximise (per-sample, see :mod:`robust_bundles.losses`).
        attacks: attacks by name, e.g. ``{"PGD": L2PGD(steps=100), "IFGSM": L2IFGSM(steps=10)}`` (a list is named
            by ``Attack.name``). Their ``eps`` is ignored: the levels come from ``eps``.
        eps: noise levels (input intensity units, the attacks' norm) evaluated for every attack.
        metric: the task metric, e.g. slice Dice (:class:`robust_bundles.tasks.segmentation.SliceDice`); this or ``metric_fn``
            is required (no default task).
        metric_fn: instead of ``metric``, a per-sample function ``metric_fn(pred, label) -> (B,)`` (NaN for samples
            that do not count), named ``metric_name`` with direction ``higher_is_better``.
        higher_is_better: direction of ``metric_fn``.
        output_dir: folder for the report files; None to keep results in memory only.
        metric_name: name of ``metric_fn``.
        seed: seed of the attacks' random starts (evaluation is deterministic); every attack draws from its own stream
            (seed, first sample's index and the attack's name), the same in any suite.
        restarts: random restarts per attack (random-start attacks only); the per-sample worst is kept. An attack's
            own ``restarts`` (e.g. the strong check ``L2PGD(steps=50, restarts=3)``) wins over this.
        id_keys: batch keys copied into the per-sample rows when present (the task's sample-id fields, e.g.
            ``["sample_id", "case", "slice"]`` for segmentation slices).
        log_every: log progress (with an ETA) every this many batches.
        dataset_dir: the data evaluated on, recorded in the settings; a synthetic dataset
            (:func:`robust_bundles.data.synthetic.is_synthetic`) is flagged in every output.
        eps_unit: ``"norm"`` (default): ``eps`` is the norm of the perturbation of a sample's whole input;
            ``"rms"``: ``eps`` is a per-value RMS, the attacked L2 norm is ``eps * sqrt(number of input values of the
            sample)`` (comparable across input sizes; the reports keep the RMS levels as labels).
        suite: the name of the attack suite the attacks come from (:mod:`robust_bundles.attack_suite`), recorded in
            the settings and stated in the report; None when the attacks were given one by one.
        metric_on_targets: give the metric the evaluator's prepared targets (what the loss gets from its
            ``prepare_batch``) under its label key, instead of the batch's own label: for an evaluator whose
            ``prepare_batch`` builds the target (a foreign bundle's own, another key than ``label``).
        attack_channels: the input channels the attacks may change (indices along dim 1, e.g. ``[0]`` for a network
            whose channel 1 is a click-guidance map or a mask made from the label); the others keep their clean
            values (:class:`robust_bundles.attacks.ChannelAttack`), and eps is measured on the attacked channels
            only (``rms``: L2 norm ``eps * sqrt(number of attacked values of the sample)``). None (default): every
            channel.
    """

    def __init__(
        self,
        loss_fn: Callable,
        attacks: Mapping[str, Attack] | Sequence[Attack],
        eps: Sequence[float],
        metric: TaskMetric | None = None,
        metric_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        higher_is_better: bool = True,
        output_dir: str | Path | None = None,
        metric_name: str = "metric",
        seed: int = 0,
        restarts: int = 1,
        id_keys: Sequence[str] = ("sample_id",),
        log_every: int = 1,
        dataset_dir: str | Path | None = None,
        eps_unit: str = "norm",
        suite: str | None = None,
        metric_on_targets: bool = False,
        attack_channels: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(attacks, Mapping):
            attacks = {a.name: a for a in attacks}
        # a config entry with "_disabled_": true resolves to None (e.g. the optional strong attack)
        attacks = {name: a for name, a in attacks.items() if a is not None}
        # An attack of 0 steps without a random start returns the clean input: reporting it would print clean figures
        # under an attack's name (the calibration study sets ifgsm_steps 0 on its validation runs). It is left out.
        idle = [name for name, a in attacks.items()
                if getattr(a, "steps", 1) == 0 and not getattr(a, "random_start", True)]
        if idle and len(idle) < len(attacks):
            logger.info("attack(s) %s have 0 steps and no random start (the clean input): left out of the report",
                        ", ".join(idle))
            attacks = {name: a for name, a in attacks.items() if name not in idle}
        elif idle:
            raise ValueError(f"Every attack ({', '.join(idle)}) has 0 steps and no random start: it would report the "
                             "clean input as the attacked one. Give at least one attack with steps >= 1.")
        if not attacks:
            raise ValueError("Give at least one attack.")
        bad = [e for e in eps if not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0)]
        if bad:
            raise ValueError(f"Noise levels must be finite numbers >= 0; got {bad}.")
        if restarts < 1:
            raise ValueError("restarts must be >= 1.")
        if metric is not None and metric_fn is not None:
            raise ValueError("Give either metric (a TaskMetric) or metric_fn (a per-sample function), not both.")
        if metric is None and metric_fn is None:
            raise ValueError(
                "Give the task metric: metric=<a robust_bundles.metrics.TaskMetric> (e.g. SliceDice for segmentation, "
                "robust_bundles.tasks.landmarks.LandmarkMetric) or metric_fn=<per-sample function>; the handler has "
                "no default task."
            )
        if metric is None:
            metric = FunctionMetric(metric_fn, MetricSpec(metric_name, "", bool(higher_is_better)))
        if not isinstance(metric, TaskMetric):
            raise TypeError(f"metric must be a robust_bundles.metrics.TaskMetric; got {type(metric).__name__}.")
        metric.headline  # noqa: B018 - a clear error for a metric without specs
        if eps_unit not in ("norm", "rms"):
            raise ValueError(f"eps_unit must be 'norm' or 'rms'; got {eps_unit!r}.")
        self.eps_unit = eps_unit
        self.attack_channels = check_channels(attack_channels)
        self.suite = suite
        self.metric_on_targets = bool(metric_on_targets)
        self.loss_fn = loss_fn
        self.attacks = dict(attacks)
        self.eps = sorted(float(e) for e in eps)
        self.metric = metric
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.seed = seed
        self.restarts = restarts
        self.id_keys = tuple(id_keys)
        self.log_every = max(1, int(log_every))
        self.dataset_dir = str(dataset_dir) if dataset_dir is not None else None
        self.synthetic = is_synthetic(dataset_dir)
        self.rows: list[dict] = []
        self.input_shape: list[int] | None = None
        self.summary: dict = {}
        self.warnings: list[str] = []
        self._accumulators: dict[tuple[str, float], TaskMetric] = {}
        self.passes: dict[str, dict[str, int]] = {}
        self._found_by: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def specs(self) -> tuple[MetricSpec, ...]:
        return tuple(self.metric.specs)

    @property
    def metric_name(self) -> str:
        """The headline metric's name."""
        return self.metric.headline.name

    @property
    def higher_is_better(self) -> bool:
        """The headline metric's direction."""
        return self.metric.headline.higher_is_better

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self._started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
            # at the end of the (single) evaluation epoch rather than at COMPLETED: the handlers attached after this
            # one that log the evaluator's metrics at EPOCH_COMPLETED (MONAI's MLFlowHandler of --tracking mlflow,
            # TensorBoardStatsHandler) then see the robustness summary
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    # ---------------------------------------------------------------------------------------------------- batches
    def _started(self, engine: Engine) -> None:
        self.rows, self.summary, self.warnings = [], {}, []
        self._zero_grad: dict[tuple[str, float], list[torch.Tensor]] = {}
        self._accumulators = {}
        self.passes = {}
        self._found_by = {}
        self._t0 = time.time()
        self._count = 0

    def _accumulator(self, attack: str, eps: float) -> TaskMetric:
        key = (attack, eps)
        if key not in self._accumulators:
            acc = copy.deepcopy(self.metric)
            acc.reset()
            self._accumulators[key] = acc
        return self._accumulators[key]

    def _keys_of(self, batchdata: Any, batch_size: int) -> list[dict]:
        out = [{"index": self._count + b} for b in range(batch_size)]
        if isinstance(batchdata, dict):
            for k in self.id_keys:
                if k in batchdata:
                    v = batchdata[k]
                    vals = v.tolist() if isinstance(v, torch.Tensor) else list(v)
                    for b in range(batch_size):
                        out[b][k] = vals[b]
        return out

    def _loss(self, out: Any, targets: Any) -> torch.Tensor:
        return weighted_total(self.loss_fn, per_sample_terms(self.loss_fn, out, targets)).detach().float().cpu()

    def _rows(self, keys: list[dict], attack: str, eps: float, values: Mapping[str, torch.Tensor] | None,
              loss: torch.Tensor, norms: torch.Tensor, zero_grad: torch.Tensor) -> None:
        for b, k in enumerate(keys):
            row = {**k, "attack": attack, "eps": eps}
            for name, v in (values or {}).items():
                row[name] = float(v[b])
            row.update(loss=float(loss[b]), norm=float(norms[b]), zero_grad_steps=int(zero_grad[b]))
            self.rows.append(row)

    def _worse(self, new: torch.Tensor, old: torch.Tensor, higher_is_better: bool) -> torch.Tensor:
        """Per sample: is ``new`` worse than ``old``? (NaN never is.)"""
        return new < old if higher_is_better else new > old

    def _counted(self, name: str, forward: Callable) -> Callable:
        """``forward`` that adds the samples it passes to ``self.passes[name]`` (with and without input gradient)."""
        count = self.passes.setdefault(name, {"gradient": 0, "forward": 0})

        def note(x: torch.Tensor) -> None:
            count["gradient" if torch.is_grad_enabled() else "forward"] += int(x.shape[0])

        def counted(x: torch.Tensor) -> Any:
            note(x)
            return forward(x)

        counted.note = note  # an attack that runs another network (the transfer check's surrogate) counts with it
        return counted

    def _attack(self, attack: Attack, eps: float, inputs, targets, batchdata, forward, network, gen):
        """One attack at one eps, with restarts: (x_adv, output, loss (B,), norms (B,), zero-gradient steps (B,)).
        The attack maximises its own loss (``attack.loss_fn``) when it has one, else the task loss."""
        name = next((n for n, a in self.attacks.items() if a is attack), attack.name)
        tries = (getattr(attack, "restarts", None) or self.restarts) if attack.random_start else 1
        objective = attack.loss_fn if attack.loss_fn is not None else self.loss_fn
        counted = self._counted(name, forward)
        runner = ChannelAttack(attack, self.attack_channels) if self.attack_channels is not None else attack
        best = None
        for _ in range(tries):
            with torch.enable_grad():
                res = runner.run(inputs, targets, eps=eps, model=network, loss_fn=objective, forward=counted,
                                 generator=gen, train=False)
            with torch.no_grad():
                out = forward(res.x_adv)
                loss = self._loss(out, targets)
            cur = {"x": res.x_adv, "out": out, "loss": loss, "norms": res.norms.detach().cpu(),
                   "zero_grad": res.zero_grad_steps.detach().cpu()}
            if best is None:
                best = cur
                continue
            if self.metric.per_sample:
                probe = copy.deepcopy(self.metric)
                probe.reset()
                name, hib = self.metric_name, self.higher_is_better
                old = probe.update(best["out"], batchdata)[name]
                new = probe.update(out, batchdata)[name]
                worse = self._worse(new, old, hib)
            else:
                worse = loss > best["loss"]
            if worse.any():
                w = worse.to(inputs.device).reshape(-1, *([1] * (inputs.ndim - 1)))
                best = {"x": torch.where(w, res.x_adv, best["x"]), "out": None,
                        "loss": torch.where(worse, loss, best["loss"]),
                        "norms": torch.where(worse, cur["norms"], best["norms"]),
                        "zero_grad": torch.where(worse, cur["zero_grad"], best["zero_grad"])}
                with torch.no_grad():
                    best["out"] = forward(best["x"])
        return best["x"], best["out"], best["loss"], best["norms"], best["zero_grad"]

    def attacked_values(self, inputs: torch.Tensor) -> int:
        """The number of values of one sample of ``inputs`` (B, C, ...) that the attacks change: every value, or
        those of the attacked channels."""
        per_sample = inputs[0].numel()
        if self.attack_channels is None:
            return int(per_sample)
        return int(per_sample // inputs.shape[1] * len(self.attack_channels))

    def _with_targets(self, batchdata: Any, targets: Any) -> Any:
        """The batch with the prepared targets under the metric's label key (see ``metric_on_targets``)."""
        key = getattr(self.metric, "label_key", "label")
        if targets is None:
            raise ValueError(f"The evaluator's prepare_batch gave no target (None) for a batch with keys "
                             f"{sorted(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__}: "
                             "the robustness metric needs the label; evaluate labelled data.")
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"The batch is a {type(batchdata).__name__}, not a dict: the robustness report names its "
                            "samples and reads their labels from dict batches (dict transforms, the *d ones).")
        if isinstance(targets, Mapping):  # a dict of targets (HoVerNet's branches): the metric scores the first
            targets = primary_output(targets)
        return {**batchdata, key: targets}

    def __call__(self, engine: Engine) -> None:
        batchdata = engine.state.batch
        if isinstance(batchdata, list):  # MONAI decollates the batch at ITERATION_COMPLETED when decollate=True
            batchdata = list_data_collate(batchdata)
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        if self.metric_on_targets:
            batchdata = self._with_targets(batchdata, targets)
        network = engine.network
        network.eval()

        def forward(x: torch.Tensor) -> Any:
            return engine.inferer(x, network, *args, **kwargs)

        self.input_shape = list(inputs.shape[1:])  # (C, *spatial): L2 eps grows with sqrt of its size
        size = inputs.shape[0]
        keys = self._keys_of(batchdata, size)
        zeros = torch.zeros(size)
        with torch.no_grad():
            clean_out = forward(inputs)
            values = self._accumulator("clean", 0.0).update(clean_out, batchdata)
            clean_loss = self._loss(clean_out, targets)
        self._rows(keys, "clean", 0.0, values, clean_loss, zeros, zeros.long())
        gen = torch.Generator(device=inputs.device)
        scale = math.sqrt(self.attacked_values(inputs)) if self.eps_unit == "rms" else 1.0
        for eps in self.eps:
            losses, x_advs = [], []
            for name in self.attacks:
                # every attack draws from its own seed (by name), so an attack's random starts are the same whatever
                # other attacks the suite runs: PGD of the standard suite is PGD of the quick suite, sample for sample
                gen.manual_seed(self.seed + self._count + zlib.crc32(name.encode()) % 1_000_003)
                x_adv, out, loss, norms, zero_grad = self._attack(
                    self.attacks[name], eps * scale, inputs, targets, batchdata, forward, network, gen)
                with torch.no_grad():
                    values = self._accumulator(name, eps).update(out, batchdata)
                self._zero_grad.setdefault((name, eps), []).append(zero_grad)
                self._rows(keys, name, eps, values, loss, norms, zero_grad)
                losses.append(loss)
                x_advs.append(x_adv)
            if not self.metric.per_sample:  # the highest-loss adversarial input of every sample
                pick = torch.stack(losses).argmax(0)
                found = self._found_by.setdefault(format_eps(eps), dict.fromkeys(self.attacks, 0))
                for a, n in zip(self.attacks, torch.bincount(pick, minlength=len(self.attacks)).tolist()):
                    found[a] += n
                x_worst = torch.stack(x_advs)[pick.to(inputs.device), torch.arange(size, device=inputs.device)]
                with torch.no_grad():
                    self._accumulator("worst", eps).update(forward(x_worst), batchdata)
        self._count += size
        it, total = engine.state.iteration, engine.state.epoch_length
        if it % self.log_every == 0 or it == total:
            elapsed = time.time() - self._t0
            eta = elapsed / it * (total - it) if total else float("nan")
            logger.info(
                f"robustness: batch {it}/{total}, {self._count} samples, {elapsed:.0f}s elapsed, ETA {eta:.0f}s"
            )

    # ------------------------------------------------------------------------------------------------- summaries
    def _per_sample(self, name: str) -> dict[tuple[str, float], dict[int, float]]:
        by: dict[tuple[str, float], dict[int, float]] = {}
        for r in self.rows:
            if name in r:
                by.setdefault((r["attack"], r["eps"]), {})[r["index"]] = r[name]
        return by

    def _metric_summary(self, spec: MetricSpec, aggregated: dict[tuple[str, float], dict[str, float]]) -> dict:
        name = spec.name
        out: dict = {"clean": aggregated[("clean", 0.0)][name], "attacks": {}, "worst": {}}
        for attack in self.attacks:
            by_eps = {format_eps(e): aggregated[(attack, e)][name] for e in self.eps}
            vals = list(by_eps.values())
            by_eps["avg"] = sum(vals) / len(vals) if vals else float("nan")
            out["attacks"][attack] = by_eps
        if self.metric.per_sample:
            by = self._per_sample(name)
            pick = min if spec.higher_is_better else max
            for e in self.eps:
                worst = []
                for idx in by.get(("clean", 0.0), {}):
                    vals = [by[(a, e)][idx] for a in self.attacks]
                    worst.append(float("nan") if any(math.isnan(v) for v in vals) else pick(vals))
                out["worst"][format_eps(e)] = nanmean(torch.tensor(worst)) if worst else float("nan")
            out["quantiles"] = {}
            for (attack, e), vals in by.items():
                t = torch.tensor([v for v in vals.values() if not math.isnan(v)])
                if t.numel():
                    q = torch.quantile(t, torch.tensor([q for _, q in _QUANTILES])).tolist()
                    out["quantiles"][f"{attack}@{format_eps(e)}"] = dict(zip([n for n, _ in _QUANTILES], q))
        else:
            # the highest-loss input of every image is a guess (the loss is not the metric): the worst case is the
            # worst of that mix and of every attack's own inputs, so it is never better than any attack's column
            pick = min if spec.higher_is_better else max
            out["worst"] = {format_eps(e): pick([aggregated[(a, e)][name] for a in ("worst", *self.attacks)])
                            for e in self.eps}
        return out

    def _worst_found_by(self) -> dict[str, dict[str, int]]:
        """Per eps, for every attack the number of samples whose worst headline value it reached (ties count for every
        attack that reached it; samples with a NaN value do not count)."""
        by = self._per_sample(self.metric_name)
        pick = min if self.higher_is_better else max
        out = {}
        for e in self.eps:
            found = dict.fromkeys(self.attacks, 0)
            for idx in by.get(("clean", 0.0), {}):
                vals = {a: by[(a, e)][idx] for a in self.attacks}
                if any(math.isnan(v) for v in vals.values()):
                    continue
                worst = pick(vals.values())
                for a, v in vals.items():
                    found[a] += v == worst
            out[format_eps(e)] = found
        return out

    def _cost(self, num_samples: int) -> dict:
        """Network passes per sample and eps level of every attack (with input gradient, forward only; restarts
        included), their total and the total relative to PGD's."""
        runs = max(num_samples * len(self.eps), 1)
        per = {a: {k: v / runs for k, v in self.passes.get(a, {"gradient": 0, "forward": 0}).items()}
               for a in self.attacks}
        total = sum(c["gradient"] + c["forward"] for c in per.values())
        ref = per.get("PGD")
        out: dict = {"passes_per_sample_and_eps": per, "total": total}
        if ref and ref["gradient"] + ref["forward"] > 0:
            out["relative_to_PGD"] = total / (ref["gradient"] + ref["forward"])
        return out

    def _aggregate(self) -> dict:
        aggregated = {key: acc.aggregate() for key, acc in self._accumulators.items()}
        num_samples = sum(1 for r in self.rows if r["attack"] == "clean")
        if self.metric.per_sample:
            clean = self._per_sample(self.metric_name).get(("clean", 0.0), {})
            num_counted = int(sum(1 for v in clean.values() if not math.isnan(v)))
        else:
            num_counted = num_samples
        metrics = {spec.name: self._metric_summary(spec, aggregated) for spec in self.specs}
        head = metrics[self.metric_name]
        summary: dict = {
            # the headline metric, in the layout reports of a single metric read
            "metric": self.metric_name,
            "clean": head["clean"],
            "attacks": head["attacks"],
            "worst": head["worst"],
            "quantiles": head.get("quantiles", {}),
            "num_samples": num_samples,
            "num_counted": num_counted,
            # every metric of the task, the headline included
            "metrics": metrics,
        }
        summary["worst_found_by"] = self._worst_found_by() if self.metric.per_sample else self._found_by
        summary["cost"] = self._cost(num_samples)
        details = {f"{a}@{format_eps(e)}": acc.details() for (a, e), acc in self._accumulators.items()}
        details = {k: v for k, v in details.items() if v}
        if details:
            summary["details"] = details
        return summary

    def _completed(self, engine: Engine) -> None:
        if not self.rows:
            raise ValueError("The robustness evaluation saw no sample: the evaluator's data loader is empty.")
        self.summary = self._aggregate()
        for (name, eps), zs in self._zero_grad.items():
            steps = self.attacks[name].steps
            w = gradient_masking_warning(torch.cat(zs), steps) if eps > 0 else None
            if w:
                self.warnings.append(f"{name} eps {format_eps(eps)}: {w}")
                logger.warning(self.warnings[-1])
        for w in transfer_warnings(self.summary, self.higher_is_better):
            self.warnings.append(w)
            logger.warning(w)
        self.summary["warnings"] = self.warnings
        for spec in self.specs:
            m = self.summary["metrics"][spec.name]
            engine.state.metrics[f"{spec.name}_clean"] = m["clean"]
            prefix = "" if spec.name == self.metric_name else f"{spec.name}_"
            for attack, res in m["attacks"].items():
                for e, v in res.items():
                    engine.state.metrics[f"{prefix}{attack}_eps{e}"] = v
            for e, v in (m.get("worst") or {}).items():
                engine.state.metrics[f"{prefix}worst_eps{e}"] = v
        logger.info(("\n" + SYNTHETIC_NOTE if self.synthetic else "") + "\n" + self.markdown())
        if self.output_dir is not None:
            self.write(self.output_dir)

    def settings(self) -> dict:
        return {
            "eps": self.eps,
            "attacks": {
                n: {"type": type(a).__name__, "norm": a.norm, "steps": a.steps, "alpha": a.alpha,
                    "loss": type(a.loss_fn if a.loss_fn is not None else self.loss_fn).__name__,
                    "random_start": a.random_start, "clamp": a.clamp,
                    "restarts": (getattr(a, "restarts", None) or self.restarts) if a.random_start else 1}
                for n, a in self.attacks.items()
            },
            "restarts": self.restarts,
            "suite": self.suite,
            "seed": self.seed,
            "input_shape": self.input_shape,
            "higher_is_better": self.higher_is_better,
            "metrics": [s.to_dict() for s in self.specs],
            "per_sample": bool(self.metric.per_sample),
            "dataset": {"dir": self.dataset_dir, "synthetic": self.synthetic},
            **({"eps_unit": "rms"} if self.eps_unit == "rms" else {}),
            **({"attack_channels": self.attack_channels} if self.attack_channels is not None else {}),
        }

    def markdown(self) -> str:
        """One row per metric: clean, every attack at every eps and its average, the worst case at every eps."""
        heads = ["metric", "clean"]
        for name in self.attacks:
            heads += [f"{name} {format_eps(e)}" for e in self.eps] + [f"{name} avg"]
        heads += [f"worst {format_eps(e)}" for e in self.eps]
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for spec in self.specs:
            m = self.summary["metrics"][spec.name]
            cells = [spec.label(), f"{m['clean']:.4f}"]
            for _name, res in m["attacks"].items():
                cells += [f"{res[format_eps(e)]:.4f}" for e in self.eps] + [f"{res['avg']:.4f}"]
            cells += [f"{m['worst'][format_eps(e)]:.4f}" for e in self.eps]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n" + self.suite_markdown()

    def suite_markdown(self) -> str:
        """Which attack found the per-sample worst case how often, and what every attack cost (counted passes)."""
        found, cost = self.summary.get("worst_found_by"), self.summary.get("cost")
        if not found or not cost:
            return ""
        how = ("samples whose worst " + self.metric_name + " the attack reached; ties count for every attack that "
               "reached it") if self.metric.per_sample else "samples whose highest-loss input it gave"
        lines = ["", f"Worst case found by ({how}):", "",
                 "| attack | " + " | ".join(f"eps {e}" for e in found) + " |", "|---|" + "---|" * len(found)]
        for a in self.attacks:
            lines.append(f"| {a} | " + " | ".join(str(found[e][a]) for e in found) + " |")
        per = cost["passes_per_sample_and_eps"]
        parts = [f"{a} {c['gradient']:g} + {c['forward']:g}" for a, c in per.items()]
        rel = f" ({cost['relative_to_PGD']:.1f} x PGD)" if "relative_to_PGD" in cost else ""
        lines += ["", "Cost, network passes per sample and eps (with input gradient + forward only): "
                  + ", ".join(parts) + f"; total {cost['total']:g}{rel}.", ""]
        return "\n".join(lines)

    def write(self, output_dir: str | Path) -> None:
        out = Path(output_dir)
        atomic_write_json(out / "robustness.json", {"settings": self.settings(), "summary": self.summary})
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(out / "robustness.csv", buf.getvalue())
        attacks = ", ".join(f"{n}: {a.norm.upper()} {a.steps} steps" for n, a in self.attacks.items())
        if self.suite is not None:
            attacks = f"attack suite {self.suite}: {attacks}"
        atomic_write_text(
            out / "robustness.md",
            (f"**{SYNTHETIC_NOTE}**\n\n" if self.synthetic else "")
            + f"{self.metric_name} over {self.summary['num_counted']} of {self.summary['num_samples']} samples; "
            + ("eps as per-value RMS (L2 norm = eps * sqrt(input values of the sample))" if self.eps_unit == "rms"
               else "eps in input intensity units")
            + (f"; attacked channels {self.attack_channels} (the others held at their clean values; eps measured on "
               "the attacked channels)" if self.attack_channels is not None else "")
            + f" ({attacks})\n\n" + self.markdown(),
        )
        logger.info(f"robustness report written to {out}")
