"""Checkpoints that survive a crash at any moment: written whole, old ones removed only after the new one exists,
and stale epoch checkpoints of an interrupted run cleaned up after a resume."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from ..distributed import is_main_process

__all__ = ["AtomicCheckpointSaver", "KeepLatestCheckpoints"]

logger = logging.getLogger("robust_bundles.checkpointing")


class _AtomicDiskSaver(DiskSaver):
    """ignite's atomic DiskSaver (temporary file, then rename; group/others may read), with an optional fixed file
    name, and removals deferred until the next file is written: a crash never leaves no checkpoint at all."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), atomic=True, create_dir=True, require_empty=False)
        self.filename = filename
        self._pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename if self.filename is not None else filename
        super().__call__(checkpoint, name, metadata)
        for old in self._pending:
            if old != name:
                super().remove(old)
        self._pending = []

    def remove(self, filename: str) -> None:
        if self.filename is None:  # a fixed name is replaced by the next write itself
            self._pending.append(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are always whole.

    MONAI writes checkpoints in place (``atomic=False``) and ignite removes the previous checkpoint before it writes
    the next one, so a run killed while saving leaves a truncated file, or none. Here every file is written to a
    temporary name and renamed, and a file to be replaced is removed only after its successor exists.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            ckpt = getattr(self, name, None)
            if ckpt is not None:
                ckpt.save_handler = _AtomicDiskSaver(self.save_dir, getattr(ckpt.save_handler, "filename", None))


class KeepLatestCheckpoints:
    """Delete all but the ``keep`` newest ``<prefix>_checkpoint_epoch=N.pt`` files of a folder after every epoch.

    A saver with ``n_saved`` removes only the files it wrote itself in this process: after a resume, the epoch
    checkpoint of the interrupted run would stay beside the new ones. Attach this handler after the saver (it runs
    at EPOCH_COMPLETED, after the new checkpoint is written).

    Args:
        ckpt_dir: the run folder.
        prefix: the saver's ``file_prefix``.
        keep: how many epoch checkpoints to keep.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, prefix: str = "checkpoint", keep: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1; got {keep}.")
        self.ckpt_dir = Path(ckpt_dir)
        self.pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_epoch=(\d+)\.pt$")
        self.keep = int(keep)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if not self.ckpt_dir.is_dir() or not is_main_process():
            return
        found = sorted(
            ((int(m.group(1)), p) for p in self.ckpt_dir.iterdir() if (m := self.pattern.match(p.name))),
            key=lambda t: t[0],
        )
        for _, p in found[: -self.keep]:
            p.unlink(missing_ok=True)
            logger.info(f"removed the older checkpoint {p}")
