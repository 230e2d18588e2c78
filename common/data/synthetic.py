"""The mark of synthetic data: every synthetic dataset the bundles write says so, in a file and in the logs."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SYNTHETIC_MARKER", "mark_synthetic", "is_synthetic", "announce_synthetic"]

SYNTHETIC_MARKER = "SYNTHETIC_DATA.txt"


def mark_synthetic(folder: str | os.PathLike, generator: str) -> None:
    """Mark ``folder`` as synthetic data written by ``generator`` (see :func:`is_synthetic`)."""
    from ..io import atomic_write_text

    atomic_write_text(
        Path(folder) / SYNTHETIC_MARKER,
        f"This folder holds SYNTHETIC data written by {generator}.\n"
        "Models trained and evaluated on it say nothing about the real task: give --dataset_dir a real dataset.\n",
    )


def is_synthetic(folder: str | os.PathLike | None) -> bool:
    """Whether ``folder`` is a synthetic dataset written by one of the bundles' generators."""
    return folder is not None and (Path(folder) / SYNTHETIC_MARKER).is_file()


def announce_synthetic(folder: str | os.PathLike, what: str = "the bundle's default") -> str:
    """Log, loudly, that a run uses synthetic data; return ``folder`` as a string (for ``dataset_dir`` defaults)."""
    import logging

    bar = "!" * 100
    logging.getLogger("robust_bundles.data").warning(
        f"\n{bar}\nSYNTHETIC DATA: no --dataset_dir was given, so this run uses {what}, synthetic data written to "
        f"{folder}.\nIts numbers say nothing about the real task. Give --dataset_dir a real dataset.\n{bar}"
    )
    return str(folder)
