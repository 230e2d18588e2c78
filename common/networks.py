"""The nnU-Net network planner moved to the segmentation adapter (:mod:`robust_bundles.tasks.segmentation`:
:func:`~robust_bundles.tasks.segmentation.nnunet_plan`, :func:`~robust_bundles.tasks.segmentation.nnunet_dynunet`);
these names keep configs and code written before the move working. Resolved on first use."""

from __future__ import annotations

from typing import Any

__all__: list[str] = []
_MOVED = ("nnunet_plan", "nnunet_dynunet")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module("robust_bundles.tasks.segmentation"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
