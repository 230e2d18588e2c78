"""The experiment report's attack-suite table: per run, PGD against the suite's per-sample worst case at every eps.

How much PGD alone over-rated each model is the difference of the two (in metric units; the worst case is never
better than PGD, :mod:`robust_bundles.attack_suite`); the table adds the attack that reached the worst case for the
most samples at the largest eps and the suite's cost relative to PGD (counted passes, ``summary.cost``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["suite_table"]

REFERENCE = "PGD"


def _eps_keys(summary: dict) -> list[str]:
    return sorted((k for k in summary.get("worst", {}) if float(k) > 0), key=float)


def suite_table(results: Sequence[dict]) -> tuple[str, list[dict]]:
    """Markdown and JSON rows of the suite table for :func:`robust_bundles.report.collect`'s results.

    Args:
        results: one dict per run (``label``, ``run``, ``settings``, ``summary``); runs without a PGD column or a
            worst case are left out.

    Returns:
        ``(markdown, rows)``; ``("", [])`` when no run has both.
    """
    rows: list[dict[str, Any]] = []
    for r in results:
        s = r["summary"]
        pgd = s.get("attacks", {}).get(REFERENCE)
        keys = _eps_keys(s)
        if not pgd or not keys:
            continue
        found = (s.get("worst_found_by") or {}).get(keys[-1], {})
        top = max(found, key=found.get) if found else None
        rows.append({
            "label": r["label"], "run": r["run"], "suite": r["settings"].get("suite") or "-",
            "pgd": {k: float(pgd.get(k, math.nan)) for k in keys},
            "worst": {k: float(s["worst"][k]) for k in keys},
            "most_found_by": None if top is None else {"attack": top, "samples": found[top], "eps": keys[-1]},
            "cost_relative_to_pgd": (s.get("cost") or {}).get("relative_to_PGD"),
        })
    if not rows:
        return "", []
    keys = sorted({k for row in rows for k in row["pgd"]}, key=float)
    head = ("| method | suite | " + " | ".join(f"PGD / worst eps {k}" for k in keys)
            + " | worst found most by (largest eps) | cost (x PGD) |")
    lines = ["Attack suite: PGD alone against the per-sample worst case over the suite's attacks (their difference is "
             "how much PGD over-rated the model); the attack that reached the worst case for the most samples; the "
             "suite's counted passes relative to PGD's.", "", head, "|---|---|" + "---:|" * len(keys) + "---|---:|"]
    for row in rows:
        cells = [f"{row['pgd'][k]:.3f} / {row['worst'][k]:.3f}" if k in row["pgd"] else "n/a" for k in keys]
        top = row["most_found_by"]
        cost = row["cost_relative_to_pgd"]
        lines.append(f"| {row['label']} | {row['suite']} | " + " | ".join(cells) + " | "
                     + (f"{top['attack']} ({top['samples']})" if top else "-") + " | "
                     + (f"{cost:.1f}" if cost is not None else "-") + " |")
    return "\n".join(lines) + "\n", rows
