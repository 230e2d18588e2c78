"""The report's figures and AMAT's margins: the metric against eps (``metric_vs_eps.png``), the histogram of AMAT's
final margins (``margins.png``) and their summary; figures are drawn without pyplot's global state and written whole.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from .io import atomic_write
from .results import cell_value, metric_spec, metric_view, norm_text, ordered


def read_margins(margins_csv: str | Path) -> list[float]:
    """The ``margin`` column of AMAT's ``margins.csv``."""
    path = Path(margins_csv)
    if not path.is_file():
        raise FileNotFoundError(f"No AMAT margins: {path} does not exist (the AMAT training stage writes it).")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "margin" not in reader.fieldnames:
            raise ValueError(f"{path} has no 'margin' column (columns: {reader.fieldnames}).")
        return [float(row["margin"]) for row in reader if row["margin"] not in ("", None)]


def quantile(sorted_vals: Sequence[float], q: float) -> float:
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
    vals = sorted(read_margins(margins_csv))
    n = len(vals)
    return {
        "num_samples": n,
        "mean": sum(vals) / n if n else float("nan"),
        "q05": quantile(vals, 0.05),
        "median": quantile(vals, 0.5),
        "q95": quantile(vals, 0.95),
        "max": vals[-1] if n else float("nan"),
    }


def figure(size: tuple[float, float]):
    """A matplotlib Figure drawn by the Agg backend, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path) -> Path:
    """Write a figure as a PNG, whole (temporary file, then rename)."""
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
    rows = ordered(results)
    fig = figure((7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    styles = ["-", "--", ":", "-."]
    attack_names = list(dict.fromkeys(n for r in rows for n in metric_view(r["summary"], metric)["attacks"]))
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for r, color in zip(rows, colors):
        view = metric_view(r["summary"], metric)
        clean = cell_value(view, ("clean", None))
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
    ax.set_xlabel(f"eps ({norm_text(rows)}, input intensity units)")
    ax.set_ylabel(spec.label())
    ax.set_title(f"{spec.name} under attack ({', '.join(attack_names)}; eps 0 = clean)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return save_png(fig, path)


def plot_margin_histogram(margins_csv: str | Path, path: str | Path, eval_eps: Sequence[float] | None = None) -> Path:
    """PNG histogram of AMAT's final margins, with a vertical line at each evaluation eps.

    Args:
        margins_csv: AMAT's ``models/amat/margins.csv`` (columns sample_id, margin).
        path: the PNG file to write (written whole).
        eval_eps: the noise levels of the robustness evaluation (same units as the margins); None for no lines.
    """
    vals = read_margins(margins_csv)
    s = margin_summary(margins_csv)
    fig = figure((6.0, 4.0))
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
    return save_png(fig, path)
