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
Every file is written whole (temporary file, then ``os.replace``), figures included. Reading the results (run names,
:func:`collect`, the metrics) is :mod:`robust_bundles.results`, the figures :mod:`robust_bundles.report_figures`; their
public functions are importable from here too.

    from robust_bundles import report
    results = report.collect("bundles/x/runs/quick", ["std", "vat_eps6", "amat"])
    markdown, csv_text, table = report.paper_table(results, caption="quick profile")
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from . import layout, methods
from .io import atomic_write_json, atomic_write_text
from .metrics import MetricSpec
from .report_figures import margin_summary, plot_margin_histogram, plot_metric_vs_eps
from .results import (
    as_float,
    cell_value,
    collect,
    columns,
    fine_tuned_note,
    metric_names,
    metric_spec,
    metric_view,
    norm_text,
    ordered,
    parse_run,
    robustness_stage,
    run_name,
)
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


def _attack_text(settings: dict) -> str:
    parts = []
    for name, a in settings.get("attacks", {}).items():
        start = "random start" if a.get("random_start") else "no random start"
        steps = a.get("steps", "?")
        parts.append(f"{name} {str(a.get('norm', '?')).upper()} {steps} step{'' if steps == 1 else 's'}, {start}")
    return "; ".join(parts)


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
    rows = ordered(results)
    names, refs = columns(rows, metric)
    values = [[cell_value(metric_view(r["summary"], metric), ref) for ref in refs] for r in rows]
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
        attacks = metric_view(r["summary"], metric).get("attacks", {})
        if strong not in attacks or reference not in attacks:
            continue
        hib = metric_spec([r], metric).higher_is_better
        gaps = {}
        for e, ref in attacks[reference].items():
            st = attacks[strong].get(e)
            if st is None or ref is None or math.isnan(as_float(st)) or math.isnan(as_float(ref)):
                continue
            gaps[e] = (as_float(ref) - as_float(st)) if hib else (as_float(st) - as_float(ref))
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
    rows = [r for r in ordered(results) if isinstance(r.get("cost"), dict)]
    if not rows:
        return "", []
    std = next((r["cost"] for r in rows if r["method"] == methods.reference().name), None)

    def ratio(a: Any, b: Any) -> float:
        a, b = as_float(a), as_float(b)
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
               "time_vs_std": ratio(as_float(c.get("iteration_time_s")) / max(c.get("samples") or 1, 1),
                                    as_float(std.get("iteration_time_s")) / max(std.get("samples") or 1, 1))
               if std else None}
        out.append(row)
        cells = [_fmt(as_float(row["forward_per_sample"])), _fmt(as_float(row["backward_per_sample"])),
                 "n/a" if row["passes_vs_std"] is None else _fmt(row["passes_vs_std"]),
                 _fmt(as_float(row["iteration_time_s"])),
                 "n/a" if row["time_vs_std"] is None else _fmt(row["time_vs_std"]), _fmt(as_float(row["wall_time_s"]))]
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
        f"eps is the {norm_text(rows)} norm of the perturbation of the whole network input, in input intensity units "
        f"(after the bundle's intensity normalisation){shape}; Avg. is the mean over the eps > 0 columns."
    )
    return text + (f" {caption.strip()}" if caption and caption.strip() else "")


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
