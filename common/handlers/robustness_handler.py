"""Robustness evaluation for a MONAI evaluator: the clean metric plus white-box attacks at a list of noise levels.

Attach :class:`RobustnessEvaluationHandler` to a ``SupervisedEvaluator`` that runs over the test set. For every
batch it takes the evaluator's own inputs (after ``prepare_batch``), its network (in eval mode) and inferer, and
computes per sample the task metric on the clean input and on the adversarial input of every attack at every eps.
eps = 0 is the clean input itself (the attacks return ``x`` unchanged), so it reproduces the clean metric exactly.

Outputs, in ``output_dir`` (written whole): ``robustness.json`` (settings, summary, warnings), ``robustness.csv``
(one row per sample, attack and eps: metric, final loss, perturbation norm, zero-gradient steps) and
``robustness.md`` (a table). The summary is also put into ``engine.state.metrics`` (``"PGD-L2_eps6"``...) and kept in
``handler.summary``. Besides each attack, the per-sample worst case over all attacks is reported ("worst").
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from monai.data import list_data_collate

from ..attacks import Attack, gradient_masking_warning
from ..bundle import is_synthetic
from ..io import atomic_write_json, atomic_write_text
from ..losses import per_sample_terms
from ..metrics import nanmean, slice_dice

__all__ = ["RobustnessEvaluationHandler", "format_eps"]

logger = logging.getLogger("robust_bundles.robustness")


SYNTHETIC_NOTE = "SYNTHETIC DATA: these numbers say nothing about the real task."


def format_eps(eps: float) -> str:
    """6.0 -> '6', 0.5 -> '0.5'."""
    return f"{eps:g}"


class RobustnessEvaluationHandler:
    """Per-sample clean and adversarial metrics over an evaluator's data.

    Args:
        loss_fn: the task loss the attacks maximise (per-sample, see :mod:`robust_bundles.losses`).
        attacks: attacks by name, e.g. ``{"PGD": L2PGD(steps=100), "IFGSM": L2IFGSM(steps=10)}`` (a list is named
            by ``Attack.name``). Their ``eps`` is ignored: the levels come from ``eps``.
        eps: noise levels (input intensity units, the attacks' norm) evaluated for every attack.
        metric_fn: ``metric_fn(pred, label) -> (B,)`` per-sample metric (NaN for samples that do not count);
            default: :func:`robust_bundles.metrics.slice_dice`.
        higher_is_better: direction of the metric (the worst case takes the min when True, the max otherwise).
        output_dir: folder for the report files; None to keep results in memory only.
        metric_name: column name of the metric in the reports.
        seed: seed of the attacks' random starts (evaluation is deterministic).
        restarts: random restarts per attack (random-start attacks only); the per-sample worst is kept.
        id_keys: batch keys copied into the per-sample rows when present.
        log_every: log progress (with an ETA) every this many batches.
        dataset_dir: the data evaluated on, recorded in the settings; a synthetic dataset
            (:func:`robust_bundles.bundle.is_synthetic`) is flagged in every output.
    """

    def __init__(
        self,
        loss_fn: Callable,
        attacks: Mapping[str, Attack] | Sequence[Attack],
        eps: Sequence[float],
        metric_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        higher_is_better: bool = True,
        output_dir: str | Path | None = None,
        metric_name: str = "dice",
        seed: int = 0,
        restarts: int = 1,
        id_keys: Sequence[str] = ("sample_id", "case", "slice"),
        log_every: int = 1,
        dataset_dir: str | Path | None = None,
    ) -> None:
        if not isinstance(attacks, Mapping):
            attacks = {a.name: a for a in attacks}
        if not attacks:
            raise ValueError("Give at least one attack.")
        bad = [e for e in eps if not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0)]
        if bad:
            raise ValueError(f"Noise levels must be finite numbers >= 0; got {bad}.")
        if restarts < 1:
            raise ValueError("restarts must be >= 1.")
        self.loss_fn = loss_fn
        self.attacks = dict(attacks)
        self.eps = sorted(float(e) for e in eps)
        self.metric_fn = metric_fn or slice_dice
        self.higher_is_better = higher_is_better
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.metric_name = metric_name
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

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self._started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
            engine.add_event_handler(Events.COMPLETED, self._completed)

    # ---------------------------------------------------------------------------------------------------------------
    def _started(self, engine: Engine) -> None:
        self.rows, self.summary, self.warnings = [], {}, []
        self._zero_grad: dict[tuple[str, float], list[torch.Tensor]] = {}
        self._t0 = time.time()
        self._count = 0

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

    def _metric(self, pred: Any, label: Any) -> torch.Tensor:
        m = torch.as_tensor(self.metric_fn(pred, label)).float().reshape(-1).cpu()
        return m

    def __call__(self, engine: Engine) -> None:
        batchdata = engine.state.batch
        if isinstance(batchdata, list):  # MONAI decollates the batch at ITERATION_COMPLETED when decollate=True
            batchdata = list_data_collate(batchdata)
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        network = engine.network
        network.eval()

        def forward(x: torch.Tensor) -> Any:
            return engine.inferer(x, network, *args, **kwargs)

        self.input_shape = list(inputs.shape[1:])  # (C, *spatial): L2 eps grows with sqrt of its size
        keys = self._keys_of(batchdata, inputs.shape[0])
        with torch.no_grad():
            clean_pred = forward(inputs)
            clean = self._metric(clean_pred, targets)
            clean_loss = per_sample_terms(self.loss_fn, clean_pred, targets).sum(1).cpu()
        for b, k in enumerate(keys):
            self.rows.append(
                {**k, "attack": "clean", "eps": 0.0, self.metric_name: float(clean[b]), "loss": float(clean_loss[b]),
                 "norm": 0.0, "zero_grad_steps": 0}
            )
        gen = torch.Generator(device=inputs.device)
        gen.manual_seed(self.seed + self._count)
        for name, attack in self.attacks.items():
            for eps in self.eps:
                best_metric, best = None, None
                tries = self.restarts if attack.random_start else 1
                for _ in range(tries):
                    with torch.enable_grad():
                        res = attack.run(
                            inputs, targets, eps=eps, model=network, loss_fn=self.loss_fn, forward=forward,
                            generator=gen, train=False,
                        )
                    with torch.no_grad():
                        m = self._metric(forward(res.x_adv), targets)
                    if best_metric is None:
                        best_metric, best = m, res
                    else:
                        worse = m < best_metric if self.higher_is_better else m > best_metric
                        best_metric = torch.where(worse, m, best_metric)
                        if worse.any():  # keep the worst sample's figures
                            w = worse.to(res.norms.device)
                            best.norms = torch.where(w, res.norms, best.norms)
                            best.loss = torch.where(w[:, None], res.loss, best.loss)
                self._zero_grad.setdefault((name, eps), []).append(best.zero_grad_steps.cpu())
                loss_total = best.loss.sum(1).cpu() if best.loss is not None else torch.full_like(clean, float("nan"))
                for b, k in enumerate(keys):
                    self.rows.append(
                        {**k, "attack": name, "eps": eps, self.metric_name: float(best_metric[b]),
                         "loss": float(loss_total[b]), "norm": float(best.norms[b]),
                         "zero_grad_steps": int(best.zero_grad_steps[b])}
                    )
        self._count += inputs.shape[0]
        it, total = engine.state.iteration, engine.state.epoch_length
        if it % self.log_every == 0 or it == total:
            elapsed = time.time() - self._t0
            eta = elapsed / it * (total - it) if total else float("nan")
            logger.info(
                f"robustness: batch {it}/{total}, {self._count} samples, {elapsed:.0f}s elapsed, ETA {eta:.0f}s"
            )

    # ---------------------------------------------------------------------------------------------------------------
    def _aggregate(self) -> dict:
        by: dict[tuple[str, float], dict[Any, float]] = {}
        for r in self.rows:
            by.setdefault((r["attack"], r["eps"]), {})[r["index"]] = r[self.metric_name]
        clean = by.get(("clean", 0.0), {})
        summary: dict = {"metric": self.metric_name, "clean": nanmean(torch.tensor(list(clean.values()))),
                         "num_samples": len(clean), "attacks": {}, "worst": {}}
        summary["num_counted"] = int(sum(1 for v in clean.values() if not math.isnan(v)))
        for name in self.attacks:
            summary["attacks"][name] = {
                format_eps(e): nanmean(torch.tensor(list(by[(name, e)].values()))) for e in self.eps
            }
            vals = list(summary["attacks"][name].values())
            summary["attacks"][name]["avg"] = sum(vals) / len(vals) if vals else float("nan")
        pick = min if self.higher_is_better else max
        for e in self.eps:
            worst = []
            for idx, c in clean.items():
                vals = [by[(n, e)][idx] for n in self.attacks]
                worst.append(float("nan") if any(math.isnan(v) for v in vals) else pick(vals))
            summary["worst"][format_eps(e)] = nanmean(torch.tensor(worst)) if worst else float("nan")
        # distribution of the per-sample metric, for the report
        summary["quantiles"] = {}
        for (name, e), vals in by.items():
            t = torch.tensor([v for v in vals.values() if not math.isnan(v)])
            if t.numel():
                q = torch.quantile(t, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])).tolist()
                summary["quantiles"][f"{name}@{format_eps(e)}"] = dict(zip(["q05", "q25", "median", "q75", "q95"], q))
        return summary

    def _completed(self, engine: Engine) -> None:
        self.summary = self._aggregate()
        for (name, eps), zs in self._zero_grad.items():
            steps = self.attacks[name].steps
            w = gradient_masking_warning(torch.cat(zs), steps) if eps > 0 else None
            if w:
                self.warnings.append(f"{name} eps {format_eps(eps)}: {w}")
                logger.warning(self.warnings[-1])
        self.summary["warnings"] = self.warnings
        engine.state.metrics[f"{self.metric_name}_clean"] = self.summary["clean"]
        for name, res in self.summary["attacks"].items():
            for e, v in res.items():
                engine.state.metrics[f"{name}_eps{e}"] = v
        logger.info(("\n" + SYNTHETIC_NOTE if self.synthetic else "") + "\n" + self.markdown())
        if self.output_dir is not None:
            self.write(self.output_dir)

    def settings(self) -> dict:
        return {
            "eps": self.eps,
            "attacks": {
                n: {"type": type(a).__name__, "norm": a.norm, "steps": a.steps, "alpha": a.alpha,
                    "random_start": a.random_start, "clamp": a.clamp}
                for n, a in self.attacks.items()
            },
            "restarts": self.restarts,
            "seed": self.seed,
            "input_shape": self.input_shape,
            "higher_is_better": self.higher_is_better,
            "dataset": {"dir": self.dataset_dir, "synthetic": self.synthetic},
        }

    def markdown(self) -> str:
        s = self.summary
        heads = ["clean"]
        cells = [f"{s['clean']:.4f}"]
        for name, res in s["attacks"].items():
            for e in self.eps:
                heads.append(f"{name} {format_eps(e)}")
                cells.append(f"{res[format_eps(e)]:.4f}")
            heads.append(f"{name} avg")
            cells.append(f"{res['avg']:.4f}")
        for e in self.eps:
            heads.append(f"worst {format_eps(e)}")
            cells.append(f"{s['worst'][format_eps(e)]:.4f}")
        return "| " + " | ".join(heads) + " |\n|" + "---|" * len(heads) + "\n| " + " | ".join(cells) + " |\n"

    def write(self, output_dir: str | Path) -> None:
        out = Path(output_dir)
        atomic_write_json(out / "robustness.json", {"settings": self.settings(), "summary": self.summary})
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(out / "robustness.csv", buf.getvalue())
        atomic_write_text(
            out / "robustness.md",
            (f"**{SYNTHETIC_NOTE}**\n\n" if self.synthetic else "")
            + f"{self.metric_name} over {self.summary['num_counted']} of {self.summary['num_samples']} samples; "
            f"eps in input intensity units ({', '.join(f'{n}: {a.norm.upper()} {a.steps} steps' for n, a in self.attacks.items())})\n\n"
            + self.markdown(),
        )
        logger.info(f"robustness report written to {out}")

