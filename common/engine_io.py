"""The network output and the batch of an Ignite engine's current iteration, in the batched form a task metric reads
(MONAI's evaluators decollate both when ``decollate=True``)."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from monai.data import list_data_collate
from monai.utils import CommonKeys

__all__ = ["engine_pred_and_batch"]


def engine_pred_and_batch(engine: Engine, pred_key: str = CommonKeys.PRED) -> tuple[Any, Any]:
    """The batched network output and the collated batch dict of the engine's current iteration.

    MONAI decollates both (lists of per-sample dicts) when the engine has ``decollate=True``; they are collated back.
    """
    output, batch = engine.state.output, engine.state.batch
    if isinstance(output, list):
        preds = [item[pred_key] for item in output]
        pred = list_data_collate([{"pred": p} for p in preds])["pred"]
    elif isinstance(output, dict):
        pred = output[pred_key]
    else:
        raise TypeError(
            f"Cannot read the prediction {pred_key!r} from an engine output of type {type(output).__name__}: "
            f"expected a dict or a list of per-sample dicts (MONAI evaluators)."
        )
    if isinstance(batch, list):
        batch = list_data_collate(batch)
    return pred, batch
