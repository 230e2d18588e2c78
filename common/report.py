"""The paper-style robustness report of a whole experiment: one table and two figures from the runs' result files.

Every robustness run of a bundle writes ``<output_root>/eval/<run>/robustness.json`` (see
:class:`robust_bundles.handlers.RobustnessEvaluationHandler`). This module reads those files and writes, in one folder:

- ``results.md``: the table of the paper (rows STD, VAT (eps ...), TEAT (eps ...), AMAT; columns clean, each attack at
  each eps and its average), 3 decimals, best value of each column in bold, a caption that states the metric with its
  unit and direction, the attacks, the eps units, the input size and the number of test samples counted; first for
  the headline metric, then one table for each further metric of the task (e.g. landmark SDR at 2/2.5/3/4 mm);
- ``results.csv`` and ``results.json``: the same numbers at full precision (NaN is an empty CSV cell, ``null`` in JSON);
- ``metric_vs_eps.png``: the metric against eps for every method (eps 0 is the clean metric);
- ``margins.png``: the histogram of AMAT's final margins (when ``models/amat/margins.csv`` exists).

The report needs no task knowledge: every robustness.json carries its metrics' specs (name, unit, direction) in
``settings["metrics"]`` and their values in ``summary["metrics"]``; files with a single metric (``summary["metric"]``
and ``settings["higher_is_better"]``) are read too.

Run names follow the experiment tool: ``std``, ``vat_eps<g>``, ``teat_eps<g>``, ``amat`` (``format(eps, 'g')``).
Every file is written whole (temporary file, then ``os.replace``), figures included.

    from robust_bundles import report
    results = report.collect("bundles/x/runs/quick", ["std", "vat_eps6", "amat"])
    markdown, csv_text, table = report.paper_table(results, caption="quick profile")
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import layout, methods
from .finetune import read_init_record
from .io import atomic_write, atomic_write_json, atomic_write_text
from .metrics import MetricSpec
from .suite_report import suite_table

__all__ = [
    "run_name",
    "parse_run",
    "robustness_stage",
    "collect",
    "metric_names",
    "metric_spec",
    "paper_table",
    "margin_summary",
    "fine_tuned_note",
    "strong_attack_flags",
    "cost_table",
    "plot_metric_vs_eps",
    "plot_margin_histogram",
    "write_report",
]


def __getattr__(name: str):
    if name == "METHODS":  # the registry's names, read when asked (a method registered later is included)
        return methods.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


STRONG_ATTACK = "PGD_strong"
"""The robustness evaluation's optional stronger attack (``--strong_attack true``: PGD-50, 3 restarts, worst case)."""
REFERENCE_ATTACK = "PGD"
STRONG_TOLERANCE = 0.02
"""A model whose strong-attack metric is worse than the report's PGD by more than this is flagged."""


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
    for r in _ordered(results):
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


def _ordered(results: Sequence[dict]) -> list[dict]:
    """STD, VAT by eps, TEAT by eps, AMAT (a method before its variants, e.g. STD before std_bce), then any other
    run in the order given."""
    order = methods.names()
    rank = {m: i for i, m in enumerate(order)}
    keyed = [(rank.get(r["method"], len(order)), r["train_eps"] if r["train_eps"] is not None else -1.0,
              r["run"] != r["method"].lower() and r["train_eps"] is None, i, r)
             for i, r in enumerate(results)]
    return [k[-1] for k in sorted(keyed, key=lambda k: k[:4])]


def _eps_key(e: Any) -> str:
    return format(float(e), "g")


def metric_names(results: Sequence[dict]) -> list[str]:
    """The metrics of the runs, the headline (the first run's) first."""
    names: list[str] = []
    for r in results:
        names.append(str(r["summary"].get("metric", "metric")))
        names += [str(m["name"]) for m in r["settings"].get("metrics", []) or []]
        names += list((r["summary"].get("metrics") or {}))
    return list(dict.fromkeys(names))


def _view(summary: dict, metric: str | None) -> dict:
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


def _columns(results: Sequence[dict], metric: str | None = None) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Column names and, for each, (attack, eps key or "avg"); the clean column is (\"clean\", None)."""
    attacks: dict[str, list[str]] = {}
    for r in results:
        for name, by_eps in _view(r["summary"], metric)["attacks"].items():
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


def _value(summary: dict, ref: tuple[str, str | None]) -> float:
    """A cell: the clean metric, an attack at one eps, or ("avg") the mean of the attack over its eps > 0 (the
    handler's own "avg" would include an eps 0 level)."""
    name, key = ref
    if name == "clean":
        return _float(summary.get("clean"))
    by_eps = summary["attacks"].get(name, {})
    if key != "avg":
        return _float(by_eps.get(key))
    vals = [_float(v) for k, v in by_eps.items() if k != "avg" and float(k) > 0]
    return sum(vals) / len(vals) if vals else _float(by_eps.get("avg"))


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _attack_text(settings: dict) -> str:
    parts = []
    for name, a in settings.get("attacks", {}).items():
        start = "random start" if a.get("random_start") else "no random start"
        steps = a.get("steps", "?")
        parts.append(f"{name} {str(a.get('norm', '?')).upper()} {steps} step{'' if steps == 1 else 's'}, {start}")
    return "; ".join(parts)


def _norm(results: Sequence[dict]) -> str:
    norms = {str(a.get("norm", "l2")).upper() for r in results for a in r["settings"].get("attacks", {}).values()}
    return "/".join(sorted(norms)) or "L2"


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


# ---------------------------------------------------------------------------------------------------------- table
def paper_table(
    results: Sequence[dict], caption: str = "", input_shape: Sequence[int] | None = None, metric: str | None = None
) -> tuple[str, str, dict]:
    """The paper's table from :func:`collect`'s results.

    Args:
        results: one dict per run from :func:`collect` (any order; rows are sorted STD, VAT, TEAT, AMAT).
        caption: free text appended to the caption line (e.g. the profile's description).
        input_shape: optional spatial size of the network input, stated in the caption (L2 eps grows with
            sqrt(#pixels)).
        metric: the metric to tabulate (see :func:`metric_names`); default the headline metric.

    Returns:
        ``(markdown, csv_text, table)``: the Markdown table with its caption (3 decimals, best of each column in bold;
        ties at 3 decimals are all bold), the CSV text (full precision, empty cell for NaN) and a JSON-ready dict
        (``metric``, ``unit``, ``higher_is_better``, ``columns``, ``rows`` with ``label``, ``run``, ``method``, ``train_eps``,
        ``values``, ``num_counted``, ``num_samples``; ``caption``, ``settings``, ``warnings``; NaN as None).
    """
    if not results:
        raise ValueError("No results to tabulate: give at least one run.")
    rows = _ordered(results)
    names, refs = _columns(rows, metric)
    values = [[_value(_view(r["summary"], metric), ref) for ref in refs] for r in rows]
    spec = metric_spec(rows, metric)
    hib = spec.higher_is_better

    best = []
    for j in range(len(names)):
        col = [round(v[j], 3) for v in values if not math.isnan(v[j])]
        best.append((max(col) if hib else min(col)) if col else None)

    head = "| method | " + " | ".join(names) + " |"
    rule = "|---|" + "---:|" * len(names)
    body = []
    for r, vals in zip(rows, values):
        cells = []
        for j, v in enumerate(vals):
            s = _fmt(v)
            cells.append(f"**{s}**" if best[j] is not None and not math.isnan(v) and round(v, 3) == best[j] else s)
        body.append(f"| {r['label']} | " + " | ".join(cells) + " |")

    caption_line = _caption(rows, spec, caption, input_shape)
    if fine_tuned_note(rows):
        caption_line += " " + fine_tuned_note(rows)
    warnings = [f"{r['label']}: {w}" for r in rows for w in r["summary"].get("warnings", []) or []]
    warnings += strong_attack_flags(rows, metric)
    md = "\n".join([head, rule, *body]) + "\n\n" + caption_line + "\n"
    if warnings:
        md += "\nWarnings of the robustness runs (possible gradient masking):\n\n"
        md += "".join(f"- {w}\n" for w in warnings)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "run", "train_eps", *names, "num_counted", "num_samples"])
    for r, vals in zip(rows, values):
        w.writerow([r["label"], r["run"], "" if r["train_eps"] is None else format(r["train_eps"], "g"),
                    *("" if math.isnan(v) else repr(v) for v in vals),
                    r["summary"].get("num_counted", ""), r["summary"].get("num_samples", "")])

    table = {
        "metric": spec.name,
        "unit": spec.unit,
        "higher_is_better": hib,
        "columns": names,
        "rows": [
            {"label": r["label"], "run": r["run"], "method": r["method"], "train_eps": r["train_eps"],
             "values": {n: (None if math.isnan(v) else v) for n, v in zip(names, vals)},
             "init_from": r.get("init_from"),
             "num_counted": r["summary"].get("num_counted"), "num_samples": r["summary"].get("num_samples")}
            for r, vals in zip(rows, values)
        ],
        "caption": caption_line,
        "settings": {r["run"]: r["settings"] for r in rows},
        "warnings": warnings,
    }
    return md, buf.getvalue(), _finite(table)


def strong_attack_flags(results: Sequence[dict], metric: str | None = None, tolerance: float = STRONG_TOLERANCE,
                        reference: str = REFERENCE_ATTACK, strong: str = STRONG_ATTACK) -> list[str]:
    """Gradient-masking check against the known failure of fast adversarial training (catastrophic overfitting):
    one warning per run whose ``strong`` attack (PGD-50 with 3 restarts, per-sample worst case) gives a metric worse
    than the report's ``reference`` attack by more than ``tolerance`` (metric units, in the metric's direction) at some
    eps or on average. Runs evaluated without the strong attack are not checked.

    Args:
        results: :func:`collect`'s results.
        metric: the metric (default the headline).
        tolerance: the largest gap accepted (0.02).
        reference, strong: the attack names in the robustness summaries.
    """
    out = []
    for r in results:
        attacks = _view(r["summary"], metric).get("attacks", {})
        if strong not in attacks or reference not in attacks:
            continue
        hib = metric_spec([r], metric).higher_is_better
        gaps = {}
        for e, ref in attacks[reference].items():
            st = attacks[strong].get(e)
            if st is None or ref is None or math.isnan(_float(st)) or math.isnan(_float(ref)):
                continue
            gaps[e] = (_float(ref) - _float(st)) if hib else (_float(st) - _float(ref))
        bad = {e: g for e, g in gaps.items() if g > tolerance}
        if bad:
            worst = max(bad, key=bad.get)
            where = "on average" if worst == "avg" else f"at eps {worst}"
            out.append(
                f"{r['label']}: the strong attack ({strong}) is worse than the report's {reference} by "
                f"{bad[worst]:.3f} {where} (> {tolerance:g}; eps {', '.join(k for k in bad if k != 'avg') or '-'}): "
                "catastrophic overfitting or gradient masking; the report's robust metrics overestimate this model."
            )
    return out


def cost_table(results: Sequence[dict]) -> tuple[str, list[dict]]:
    """The training cost of every run with a ``models/<run>/cost.json`` (:class:`robust_bundles.handlers.PassCounter`):
    counted network forward and backward passes per training sample visit, their ratio to STD's (the machine-
    independent cost), and the wall time of the training iterations with its ratio to STD's.

    Returns:
        ``(markdown, rows)``; ``("", [])`` when no run has a cost file.
    """
    rows = [r for r in _ordered(results) if isinstance(r.get("cost"), dict)]
    if not rows:
        return "", []
    std = next((r["cost"] for r in rows if r["method"] == methods.reference().name), None)

    def ratio(a: Any, b: Any) -> float:
        a, b = _float(a), _float(b)
        return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")

    out = []
    lines = ["| method | forward / sample | backward / sample | passes vs STD | iteration time s | time vs STD | "
             "wall time s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["cost"]
        row = {"label": r["label"], "run": r["run"], "forward_per_sample": c.get("forward_per_sample"),
               "backward_per_sample": c.get("backward_per_sample"),
               "passes_vs_std": ratio(c.get("passes_per_sample"), std.get("passes_per_sample")) if std else None,
               "iteration_time_s": c.get("iteration_time_s"), "wall_time_s": c.get("wall_time_s"),
               "time_vs_std": ratio(_float(c.get("iteration_time_s")) / max(c.get("samples") or 1, 1),
                                    _float(std.get("iteration_time_s")) / max(std.get("samples") or 1, 1))
               if std else None}
        out.append(row)
        cells = [_fmt(_float(row["forward_per_sample"])), _fmt(_float(row["backward_per_sample"])),
                 "n/a" if row["passes_vs_std"] is None else _fmt(row["passes_vs_std"]),
                 _fmt(_float(row["iteration_time_s"])),
                 "n/a" if row["time_vs_std"] is None else _fmt(row["time_vs_std"]), _fmt(_float(row["wall_time_s"]))]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    md = ("Training cost: network passes counted per training sample visit (robust_bundles.handlers.PassCounter; "
          "a pass over a batch of B counts B), relative to STD; time vs STD is the training-iteration time per "
          "sample relative to STD's (machine-dependent).\n\n" + "\n".join(lines) + "\n")
    return md, out


def _caption(rows: Sequence[dict], spec: MetricSpec, caption: str, input_shape: Sequence[int] | None) -> str:
    counted = {(r["summary"].get("num_counted"), r["summary"].get("num_samples")) for r in rows}
    if len(counted) == 1:
        c, n = counted.pop()
        samples = f"{c} of {n} test samples counted"
    else:
        samples = "test samples counted per run: " + ", ".join(
            f"{r['label']} {r['summary'].get('num_counted')}/{r['summary'].get('num_samples')}" for r in rows)
    attack_texts = {_attack_text(r["settings"]) for r in rows}
    attacks = attack_texts.pop() if len(attack_texts) == 1 else "attack settings differ between runs: " + " | ".join(
        f"{r['label']}: {_attack_text(r['settings'])}" for r in rows)
    shape = f", network input {' x '.join(str(s) for s in input_shape)} pixels" if input_shape else ""
    text = (
        f"Table: {spec.label()[:-1]}, best of each column in bold) on the test set, "
        f"{samples}. White-box attacks on the task loss, model in eval mode: {attacks or 'none'}. "
        f"eps is the {_norm(rows)} norm of the perturbation of the whole network input, in input intensity units "
        f"(after the bundle's intensity normalisation){shape}; Avg. is the mean over the eps > 0 columns."
    )
    return text + (f" {caption.strip()}" if caption and caption.strip() else "")


# -------------------------------------------------------------------------------------------------------- margins
def _read_margins(margins_csv: str | Path) -> list[float]:
    path = Path(margins_csv)
    if not path.is_file():
        raise FileNotFoundError(f"No AMAT margins: {path} does not exist (the AMAT training stage writes it).")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "margin" not in reader.fieldnames:
            raise ValueError(f"{path} has no 'margin' column (columns: {reader.fieldnames}).")
        return [float(row["margin"]) for row in reader if row["margin"] not in ("", None)]


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    if not sorted_vals:
        return float("nan")
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def margin_summary(margins_csv: str | Path) -> dict:
    """Distribution of AMAT's final margins (``margins.csv``: columns sample_id, margin).

    Returns:
        ``num_samples``, ``mean``, ``q05``, ``median``, ``q95``, ``max`` (L2, input intensity units).
    """
    vals = sorted(_read_margins(margins_csv))
    n = len(vals)
    return {
        "num_samples": n,
        "mean": sum(vals) / n if n else float("nan"),
        "q05": _quantile(vals, 0.05),
        "median": _quantile(vals, 0.5),
        "q95": _quantile(vals, 0.95),
        "max": vals[-1] if n else float("nan"),
    }


# -------------------------------------------------------------------------------------------------------- figures
def _figure(size: tuple[float, float]):
    """A matplotlib Figure drawn by the Agg backend, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def plot_metric_vs_eps(results: Sequence[dict], path: str | Path, metric: str | None = None) -> Path:
    """PNG of the metric against eps: one colour per method, the clean metric at eps 0, then each attack's eps
    (the first attack, PGD, solid; the others, IFGSM, dashed/dotted).

    Args:
        results: from :func:`collect`.
        path: the PNG file to write (written whole).
        metric: the metric to plot; default the headline metric.
    """
    if not results:
        raise ValueError("No results to plot: give at least one run.")
    rows = _ordered(results)
    fig = _figure((7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    styles = ["-", "--", ":", "-."]
    attack_names = list(dict.fromkeys(n for r in rows for n in _view(r["summary"], metric)["attacks"]))
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for r, color in zip(rows, colors):
        view = _view(r["summary"], metric)
        clean = _value(view, ("clean", None))
        for k, name in enumerate(attack_names):
            by_eps = view["attacks"].get(name)
            if not by_eps:
                continue
            pts = sorted((float(e), float(v)) for e, v in by_eps.items() if e != "avg" and float(e) > 0)
            xs = [0.0] + [p[0] for p in pts]
            ys = [clean] + [p[1] for p in pts]
            ax.plot(xs, ys, linestyle=styles[k % len(styles)], marker="o" if k == 0 else "s", markersize=4,
                    color=color, label=f"{r['label']} {name}")
    spec = metric_spec(rows, metric)
    ax.set_xlabel(f"eps ({_norm(rows)}, input intensity units)")
    ax.set_ylabel(spec.label())
    ax.set_title(f"{spec.name} under attack ({', '.join(attack_names)}; eps 0 = clean)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return _save(fig, path)


def plot_margin_histogram(margins_csv: str | Path, path: str | Path, eval_eps: Sequence[float] | None = None) -> Path:
    """PNG histogram of AMAT's final margins, with a vertical line at each evaluation eps.

    Args:
        margins_csv: AMAT's ``models/amat/margins.csv`` (columns sample_id, margin).
        path: the PNG file to write (written whole).
        eval_eps: the noise levels of the robustness evaluation (same units as the margins); None for no lines.
    """
    vals = _read_margins(margins_csv)
    s = margin_summary(margins_csv)
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(vals, bins=min(40, max(5, len(set(vals)))), color="C0", alpha=0.8)
    for k, e in enumerate(sorted({float(e) for e in (eval_eps or []) if float(e) > 0})):
        ax.axvline(e, color="C3", linestyle="--", linewidth=1, label="evaluation eps" if k == 0 else None)
    ax.set_xlim(left=0)
    ax.set_xlabel("margin (L2, input intensity units)")
    ax.set_ylabel("training samples")
    ax.set_title(f"AMAT final margins: {s['num_samples']} samples, median {s['median']:.3g}, q95 {s['q95']:.3g}")
    if eval_eps:
        ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------- all
def _finite(obj: Any) -> Any:
    """NaN and infinities to None, so that the JSON file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(
    output_root: str | Path,
    runs: Sequence[str],
    caption: str = "",
    out_dir: str | Path | None = None,
    input_shape: Sequence[int] | None = None,
    margins_run: str | None = None,
    labels: dict[str, str] | None = None,
    models_root: str | Path | None = None,
) -> dict[str, Path]:
    """Collect the runs, write results.md/.csv/.json and the figures into ``out_dir``.

    Args:
        output_root: the experiment's output folder (holds ``models/`` and ``eval/``).
        runs: run names to tabulate.
        caption: free text appended to the table's caption (e.g. the profile's description).
        out_dir: where to write; default ``<output_root>/report``.
        input_shape: optional spatial size of the network input, stated in the caption.
        margins_run: the run whose ``models/<run>/margins.csv`` is summarised and plotted when present (default:
            the study candidate's run, ``robust_bundles.methods.candidate()``).
        labels: row labels by run (see :func:`collect`).
        models_root: the folder holding ``models/<run>`` when it is not ``output_root`` (see :func:`collect`).

    Returns:
        The written files by name: ``markdown``, ``csv``, ``json``, ``metric_vs_eps`` and, with margins, ``margins``.
        The CSV holds the headline metric; the JSON holds the headline table and, under ``other_metrics``, the table
        of every further metric.
    """
    root = Path(output_root)
    margins_run = methods.candidate().run_name() if margins_run is None else margins_run
    out = Path(out_dir) if out_dir is not None else Path(layout.report_dir(root))
    models = Path(models_root) if models_root is not None else root
    results = collect(root, runs, labels, models_root=models)
    if input_shape is None and results:  # recorded by the robustness handler: (C, *spatial)
        recorded = results[0]["settings"].get("input_shape")
        input_shape = recorded[1:] if recorded else None
    md, csv_text, table = paper_table(results, caption, input_shape)
    synthetic = sorted(r["run"] for r in results if (r["settings"].get("dataset") or {}).get("synthetic"))
    table["synthetic_data"] = bool(synthetic)
    if synthetic:
        md = (f"**SYNTHETIC DATA** (runs {', '.join(synthetic)}): the bundle's default data, written by its "
              f"generator; these numbers say nothing about the real task. Give --dataset_dir a real dataset.\n\n" + md)
    files = {"metric_vs_eps": plot_metric_vs_eps(results, out / "metric_vs_eps.png")}
    others = metric_names(results)[1:]
    if others:  # the task's further metrics, one table each (the headline's caption states the settings)
        table["other_metrics"] = {}
        for name in others:
            other_md, _, other_table = paper_table(results, "", input_shape, metric=name)
            table["other_metrics"][name] = other_table
            rows_only = other_md.split("\n\n", 1)[0]  # the table without its caption
            md += f"\n{metric_spec(results, name).label()}:\n\n{rows_only}\n"

    suite_md, suite_rows = suite_table(results)
    if suite_md:
        md += "\n" + suite_md
        table["attack_suite"] = suite_rows

    cost_md, cost_rows = cost_table(results)
    if cost_md:
        md += "\n" + cost_md
        table["cost"] = cost_rows

    margins_csv = Path(layout.margins_file(models, margins_run))
    if margins_run in runs and margins_csv.is_file():
        eval_eps = sorted({float(e) for r in results for e in r["settings"].get("eps", [])})
        s = margin_summary(margins_csv)
        table["margins"] = {"run": margins_run, "path": str(margins_csv), **s}
        md += (
            f"\n{parse_run(margins_run)[2]} final margins over {s['num_samples']} training samples (L2, input "
            f"intensity units): mean {s['mean']:.3g}, q05 {s['q05']:.3g}, median {s['median']:.3g}, "
            f"q95 {s['q95']:.3g}, max {s['max']:.3g}.\n"
        )
        files["margins"] = plot_margin_histogram(margins_csv, out / "margins.png", eval_eps)
    md += "\n" + "".join(f"![{name}]({p.name})\n" for name, p in files.items())

    files["markdown"] = atomic_write_text(out / "results.md", md)
    files["csv"] = atomic_write_text(out / "results.csv", csv_text)
    files["json"] = atomic_write_json(out / "results.json", _finite(table))
    return files
