"""The runs' robustness results as the reports read them: run names and row labels, :func:`collect` (every run's
``eval/<run>/robustness.json``, with its fine-tuning record and training cost), the order of the rows, the metrics of
the results (names, :class:`~robust_bundles.metrics.MetricSpec`, the part of a summary that holds one metric) and the
cells of a table. Used by :mod:`robust_bundles.report` (tables, the report folder) and
:mod:`robust_bundles.report_figures`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import layout, methods
from .finetune import read_init_record
from .metrics import MetricSpec


# ------------------------------------------------------------------------------------------------------ run names
def run_name(method: str, eps: float | None = None) -> str:
    """The run name of a method: ``run_name("VAT", 6) -> "vat_eps6"``, ``run_name("AMAT") -> "amat"``.

    Args:
        method: a registered method (:mod:`robust_bundles.methods`; any case).
        eps: the training noise level of a method with eps (VAT, TEAT; L2, input intensity units); ignored for the
            others.
    """
    return methods.get(method).run_name(eps)


def parse_run(run: str) -> tuple[str, float | None, str]:
    """``"vat_eps6" -> ("VAT", 6.0, "VAT (eps 6)")``; ``"amat" -> ("AMAT", None, "AMAT")``; a variant of a method,
    ``"std_bce" -> ("STD", None, "STD (bce)")``; other names as given (methods: :mod:`robust_bundles.methods`)."""
    found = methods.parse_run(run)
    if found is not None:
        method, eps = found
        return method.name, eps, method.name if eps is None else f"{method.name} (eps {format(eps, 'g')})"
    if any(m.takes_eps and re.match(rf"^{m.key}_eps", run) for m in methods.all_methods()):
        return run, None, run  # an eps that is not a number
    if run.upper() in methods.names():
        return run.upper(), None, run.upper()
    method, _, variant = run.partition("_")
    if method.upper() in methods.names() and variant:
        return method.upper(), None, f"{method.upper()} ({variant})"
    return run, None, run


def robustness_stage(run: str) -> str:
    """The experiment-tool stage that writes ``eval/<run>/robustness.json``."""
    return f"robustness_{run}"


# ----------------------------------------------------------------------------------------------------------- read
def collect(output_root: str | Path, runs: Iterable[str], labels: dict[str, str] | None = None,
            models_root: str | Path | None = None) -> list[dict]:
    """Read ``<output_root>/eval/<run>/robustness.json`` of every run.

    Args:
        output_root: the experiment's output folder (holds ``models/`` and ``eval/``).
        runs: run names, e.g. ``["std", "vat_eps6", "amat"]``.
        labels: row labels by run, replacing :func:`parse_run`'s (e.g. ``{"std_bce": "STD (BCE)"}``).
        models_root: the folder holding ``models/<run>`` when it is not ``output_root`` (e.g. evaluations of several
            splits under one experiment).

    Returns:
        One dict per run, in the order given: ``run``, ``method``, ``train_eps`` (None for STD and AMAT), ``label``
        (the table's row label, with " (fine-tuned)" for a run that started from trained weights), ``path``,
        ``settings`` and ``summary`` (as written by the robustness handler), ``init_from`` (the run's
        ``models/<run>/init_from.json`` record, None when trained from scratch).

    Raises:
        FileNotFoundError: a run has no robustness.json; the message names the file and the stage to run.
        ValueError: a file is not a robustness result (no summary with clean and attacks).
    """
    root = Path(output_root)
    models = Path(models_root) if models_root is not None else root
    out = []
    for run in runs:
        path = Path(layout.robustness_file(root, run))
        if not path.is_file():
            model = Path(layout.model_file(models, run))
            also = "" if model.is_file() else (
                f" (its model {model} is missing too: run the training stage {run!r} first)")
            raise FileNotFoundError(
                f"No robustness result for run {run!r}: {path} does not exist. Run the stage "
                f"{robustness_stage(run)!r} (scripts/experiment.py ... --stages \"[{robustness_stage(run)}]\"){also}."
            )
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); re-run the stage {robustness_stage(run)!r}.") from e
        summary = data.get("summary") if isinstance(data, dict) else None
        if not isinstance(summary, dict) or "clean" not in summary or "attacks" not in summary:
            raise ValueError(
                f"{path} holds no robustness summary (expected 'summary' with 'clean' and 'attacks'); re-run the stage "
                f"{robustness_stage(run)!r}."
            )
        method, eps, label = parse_run(run)
        label = (labels or {}).get(run) or label
        init = read_init_record(layout.run_dir(models, run))
        cost_path = Path(layout.cost_file(models, run))
        try:
            cost = json.loads(cost_path.read_text()) if cost_path.is_file() else None
        except ValueError:
            cost = None  # a damaged cost file loses the cost column, not the report
        out.append({"run": run, "method": method, "train_eps": eps,
                    "label": label + (" (fine-tuned)" if init else ""), "path": str(path),
                    "settings": data.get("settings", {}), "summary": summary, "init_from": init, "cost": cost})
    return out


def fine_tuned_note(results: Sequence[dict]) -> str:
    """One sentence naming the runs that started from trained weights (their source file, its SHA-256 prefix and
    their epochs), or "" when every run was trained from scratch."""
    parts = []
    for r in ordered(results):
        init = r.get("init_from")
        if init:
            src = Path(str(init.get("init_from", "?")))
            epochs = init.get("max_epochs")
            parts.append(f"{parse_run(r['run'])[2]} from {src.parent.name}/{src.name} (sha256 "
                         f"{str(init.get('sha256', ''))[:12]}{f', {epochs} epochs' if epochs else ''})")
    if not parts:
        return ""
    return ("Fine-tuned runs start from trained weights, with their own optimizer and schedule: "
            + "; ".join(parts) + ".")


def ordered(results: Sequence[dict]) -> list[dict]:
    """STD, VAT by eps, TEAT by eps, AMAT (a method before its variants, e.g. STD before std_bce), then any other
    run in the order given."""
    order = methods.names()
    rank = {m: i for i, m in enumerate(order)}
    keyed = [(rank.get(r["method"], len(order)), r["train_eps"] if r["train_eps"] is not None else -1.0,
              r["run"] != r["method"].lower() and r["train_eps"] is None, i, r)
             for i, r in enumerate(results)]
    return [k[-1] for k in sorted(keyed, key=lambda k: k[:4])]


def eps_key(e: Any) -> str:
    """An eps as the key of a summary (``6.0 -> "6"``)."""
    return format(float(e), "g")


def metric_names(results: Sequence[dict]) -> list[str]:
    """The metrics of the runs, the headline (the first run's) first."""
    names: list[str] = []
    for r in results:
        names.append(str(r["summary"].get("metric", "metric")))
        names += [str(m["name"]) for m in r["settings"].get("metrics", []) or []]
        names += list((r["summary"].get("metrics") or {}))
    return list(dict.fromkeys(names))


def metric_view(summary: dict, metric: str | None) -> dict:
    """The part of a summary that holds one metric: ``clean``, ``attacks`` (and ``worst``); the headline by default."""
    if metric is None or metric == summary.get("metric"):
        return summary
    by_metric = summary.get("metrics") or {}
    if metric not in by_metric:
        return {"clean": float("nan"), "attacks": {}}
    return by_metric[metric]


def metric_spec(results: Sequence[dict], metric: str | None = None) -> MetricSpec:
    """The :class:`~robust_bundles.metrics.MetricSpec` (name, unit, direction, description) of a metric of
    :func:`collect`'s results (the headline by default), from the spec every robustness.json carries; a file with a
    single metric and no specs gives its name and ``settings["higher_is_better"]``."""
    if not results:
        return MetricSpec(metric or "metric")
    first = results[0]
    name = metric if metric is not None else str(first["summary"].get("metric", "metric"))
    for r in results:
        for m in r["settings"].get("metrics", []) or []:
            if m.get("name") == name:
                return MetricSpec.from_dict(m)
    return MetricSpec(name, higher_is_better=bool(first["settings"].get("higher_is_better", True)))


def columns(results: Sequence[dict], metric: str | None = None) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Column names and, for each, (attack, eps key or "avg"); the clean column is (\"clean\", None)."""
    attacks: dict[str, list[str]] = {}
    for r in results:
        for name, by_eps in metric_view(r["summary"], metric)["attacks"].items():
            keys = attacks.setdefault(name, [])
            for k in by_eps:
                if k != "avg" and k not in keys:
                    keys.append(k)
    names, refs = ["clean"], [("clean", None)]
    for name, keys in attacks.items():
        for k in sorted(keys, key=float):
            if float(k) == 0:  # eps 0 is the clean column
                continue
            names.append(f"{name} {k}")
            refs.append((name, k))
        names.append(f"{name} Avg.")
        refs.append((name, "avg"))
    return names, refs


def cell_value(summary: dict, ref: tuple[str, str | None]) -> float:
    """A cell: the clean metric, an attack at one eps, or ("avg") the mean of the attack over its eps > 0 (the
    handler's own "avg" would include an eps 0 level)."""
    name, key = ref
    if name == "clean":
        return as_float(summary.get("clean"))
    by_eps = summary["attacks"].get(name, {})
    if key != "avg":
        return as_float(by_eps.get(key))
    vals = [as_float(v) for k, v in by_eps.items() if k != "avg" and float(k) > 0]
    return sum(vals) / len(vals) if vals else as_float(by_eps.get("avg"))


def as_float(v: Any) -> float:
    """A value as a float, NaN when it is none."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def norm_text(results: Sequence[dict]) -> str:
    """The attacks' norms of the results (``L2``, ``L2/LINF``)."""
    norms = {str(a.get("norm", "l2")).upper() for r in results for a in r["settings"].get("attacks", {}).values()}
    return "/".join(sorted(norms)) or "L2"


# ------------------------------------------------------------------------------------------ the data a run used
_SPLIT = re.compile(r"(train|validation|test) split: (\d+) cases?, (\d+) slices")


def splits_used(root: str | Path) -> dict[str, dict[str, int]]:
    """The cases and slices of each split the runs of output root ``root`` used, read from the last run written to
    the STD stage's log (train, validation) and its robustness stage's (test): ``{"train": {"cases": 9, "slices":
    324}, ...}``; empty where a task's data logs no such line."""
    out: dict[str, dict[str, int]] = {}
    for stage in (layout.STD_RUN, f"robustness_{layout.STD_RUN}"):
        log = Path(root) / layout.LOGS / f"{stage}.log"
        if log.is_file():
            for name, cases, slices in _SPLIT.findall(log.read_text(errors="replace").split("===== cwd:")[-1]):
                out[name] = {"cases": int(cases), "slices": int(slices)}
    return out


def data_used(splits: dict[str, dict[str, int]]) -> str:
    """``"train 9 cases (324 slices); validation 1 case (36 slices)"`` (empty for no splits)."""
    return "; ".join(f"{name} {s['cases']} case{'' if s['cases'] == 1 else 's'} ({s['slices']} slices)"
                     for name, s in splits.items())
