"""Case splits: train / validation / test, deterministic and by case (never by slice or patch).

Slices or patches of one volume are strongly correlated, so a split by sample would put the same anatomy in training
and test; the dataset readers of this package split whole cases with :func:`split_cases`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["SPLITS", "split_cases", "first_cases"]

#: The names of the splits made by :func:`split_cases`, in order.
SPLITS = ("train", "validation", "test")


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(not np.isfinite(f) or f < 0 for f in fractions):
        raise ValueError(f"fractions={fractions}: give three non-negative fractions (train, validation, test).")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions={fractions} sum to {sum(fractions):.6g}: they must sum to 1, e.g. (0.7, 0.1, 0.2)")
    return fractions  # type: ignore[return-value]


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions``, then at least one case in every split with a fraction > 0."""
    exact = [n * f for f in fractions]
    counts = [int(np.floor(x)) for x in exact]
    # remainders rounded so that float noise (208 * 0.7 = 145.59999...) does not decide ties
    by_remainder = sorted(range(len(exact)), key=lambda i: (-round(exact[i] - counts[i], 9), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


def split_cases(
    cases: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[str]]:
    """Split case names into train/validation/test, deterministically and by case (never by slice).

    The names are sorted, permuted with ``numpy.random.default_rng(seed)`` and cut into consecutive parts of
    ``fractions`` (largest-remainder rounding, so 208 cases with (0.7, 0.1, 0.2) give 146/21/41). The result depends
    only on the set of names, the fractions and the seed: the input order does not matter.

    Args:
        cases: unique case names, e.g. ``["hippocampus_001", ...]``.
        fractions: (train, validation, test) fractions of the cases; non-negative, summing to 1. A split whose
            fraction is 0 is empty; every other split gets at least one case.
        seed: seed of the permutation.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each list sorted; every case is in exactly one.

    Raises:
        ValueError: bad fractions, duplicate names, or fewer cases than splits with a fraction > 0 (e.g. fewer
            than 3 cases for three non-empty splits).
    """
    fractions = _check_fractions(fractions)
    names = sorted(str(c) for c in cases)
    duplicates = sorted({c for c, d in zip(names, names[1:]) if c == d})
    if duplicates:
        raise ValueError(f"split_cases got case {duplicates[0]!r} more than once: case names must be unique.")
    needed = sum(f > 0 for f in fractions)
    if len(names) < needed:
        raise ValueError(
            f"Cannot split {len(names)} case(s) into {needed} non-empty splits with fractions={fractions}: "
            f"use at least {needed} cases (a test split must not share a case with training), or set the fraction "
            f"of an unused split to 0."
        )
    counts = _split_counts(len(names), fractions)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    bounds = np.cumsum([0, *counts])
    return {split: sorted(shuffled[bounds[i] : bounds[i + 1]]) for i, split in enumerate(SPLITS)}


def first_cases(cases: Sequence, max_cases: int | None, what: str = "cases") -> list:
    """The first ``max_cases`` of a split's ``cases`` (all of them for None), for quick profiles and tests.

    Raises:
        ValueError: ``max_cases`` is below 1.
    """
    if max_cases is None:
        return list(cases)
    if int(max_cases) < 1:
        raise ValueError(f"max_cases={max_cases}: give a positive number of {what}, or None for all of them.")
    return list(cases)[: int(max_cases)]
