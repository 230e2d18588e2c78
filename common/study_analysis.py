"""The AMAT calibration study's analysis: the cost of a run, the VAT frontier, each point's height above it, and the
choice by the criterion stated before the runs (:mod:`robust_bundles.study`'s docstring). Pure functions of the
study's rows; hand-checked in tests/test_amat_study.py."""

from __future__ import annotations

import math
from typing import Sequence

from . import methods


def cost_units(epochs: int, steps: int, beta: float) -> int:
    """Forward-backward passes per batch over a run: ``epochs * (T + 1 + [beta > 0])`` (the study's docstring)."""
    return int(epochs) * (int(steps) + 1 + (1 if beta > 0 else 0))


def mean_or_nan(values) -> float:
    """The mean of the values, NaN for none."""
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else float("nan")


def frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The frontier of (clean, robust) points: those that no other point beats on both axes, sorted by clean (then
    joined by straight lines, :func:`frontier_at`).

    Args:
        points: (clean, robust) pairs, e.g. STD (VAT at eps 0) and every VAT run.
    """
    pts = sorted({(float(c), float(r)) for c, r in points if not (math.isnan(c) or math.isnan(r))},
                 key=lambda q: (-q[0], -q[1]))
    front: list[tuple[float, float]] = []
    for p in pts:  # from the cleanest: keep a point only when it is more robust than every cleaner one
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return sorted(front)


def frontier_at(front: Sequence[tuple[float, float]], clean: float) -> float | None:
    """The frontier's robust value at ``clean``: linear between its points, flat beyond its ends (less clean than its
    most robust point: that point's robustness; cleaner than its cleanest point, e.g. STD: that point's); None for an
    empty frontier."""
    if not front:
        return None
    if clean <= front[0][0]:
        return front[0][1]
    if clean >= front[-1][0]:
        return front[-1][1]
    for (c0, r0), (c1, r1) in zip(front, front[1:]):
        if c0 <= clean <= c1:
            return r0 + (r1 - r0) * (clean - c0) / (c1 - c0)
    return front[-1][1]  # pragma: no cover - the loop covers [front[0], front[-1]]


def analyse(rows: list[dict], tolerance: float, chosen: str | None = None, higher_is_better: bool = True) -> dict:
    """Frontier, heights, eligibility and the choice (the criterion of :mod:`robust_bundles.study`); ``chosen`` fixes the choice
    (the test split never chooses).

    Args:
        rows: the study's rows (:func:`robust_bundles.study_report.rows`): ``method``, ``clean``, ``pgd_avg``, ``cost``...
        tolerance: how much worse than STD's clean metric a configuration may be (in the metric's units).
        chosen: the run chosen on the validation split (the test phase); None: choose.
        higher_is_better: the metric's direction (``MetricSpec.higher_is_better``; False for a landmark MRE):
            "better", the frontier, the heights (positive: better than the frontier) and the choice follow it.
    """
    sign = 1.0 if higher_is_better else -1.0
    role = {m.name: m.role for m in methods.all_methods()}
    std = next(r for r in rows if role.get(r["method"]) == "reference")
    vat = [r for r in rows if role.get(r["method"]) == "frontier"]
    # the frontier of "goodness" (the metric times its direction), mapped back to the metric's values
    front = [(sign * c, sign * g) for c, g in frontier(
        [(sign * std["clean"], sign * std["pgd_avg"])] + [(sign * r["clean"], sign * r["pgd_avg"]) for r in vat])]
    front.sort()
    for r in rows:
        f = frontier_at(sorted((sign * c, sign * g) for c, g in front), sign * r["clean"])
        r["frontier"] = None if f is None else sign * f
        r["height"] = None if f is None else sign * r["pgd_avg"] - f
        r["clean_ok"] = sign * r["clean"] >= sign * std["clean"] - tolerance - 1e-12
        r["cost_ok"] = r.get("cost", 0.0) <= 1.0 + 1e-9
        r["eligible"] = role.get(r["method"]) == "candidate" and r["clean_ok"] and r["cost_ok"]
    amat = [r for r in rows if role.get(r["method"]) == "candidate"]
    if chosen is None:
        eligible = [r for r in amat if r["eligible"]]
        if eligible:
            pick, why = max(eligible, key=lambda r: sign * r["pgd_avg"]), "best PGD average among the eligible"
        elif amat:
            pick = max(amat, key=lambda r: (r["clean_ok"], r["cost_ok"], sign * r["pgd_avg"]))
            why = "no configuration met both conditions: the best PGD average among those meeting the most"
        else:
            pick, why = None, "no AMAT configuration"
    else:
        pick, why = next((r for r in amat if r["run"] == chosen), None), "chosen on the validation split"
    others = [r for r in rows if role.get(r["method"]) in ("frontier", "baseline")]
    best_other = max(others, key=lambda r: sign * r["pgd_avg"]) if others else None
    choice = None
    if pick is not None:
        choice = {"run": pick["run"], "why": why, "config": pick.get("config"), "clean": pick["clean"],
                  "pgd_avg": pick["pgd_avg"], "height": pick["height"], "std_clean": std["clean"],
                  "best_baseline": best_other and {k: best_other[k] for k in ("run", "clean", "pgd_avg")},
                  "beats_best_baseline": bool(best_other and sign * pick["pgd_avg"] >= sign * best_other["pgd_avg"]),
                  "above_frontier": bool(pick["height"] is not None and pick["height"] > 0)}
    return {"frontier": front, "std_clean": std["clean"], "tolerance": tolerance, "choice": choice,
            "higher_is_better": bool(higher_is_better)}
