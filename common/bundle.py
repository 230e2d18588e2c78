"""Small helpers that bundle configs call: where the bundle is, which checkpoint to resume from."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

__all__ = ["find_root", "latest_checkpoint", "drop_none", "require_file"]


def find_root(name: str) -> str:
    """The folder of bundle ``name``, whether the command runs in the bundle folder or in the repository root.

    Looks, in order, at the working directory (its ``configs/metadata.json`` names the bundle, or the folder is called
    ``name``), ``./bundles/<name>`` and ``./<name>``.
    """
    cwd = Path.cwd()
    candidates = [cwd, cwd / "bundles" / name, cwd / name]
    for c in candidates:
        meta = c / "configs" / "metadata.json"
        if meta.is_file():
            if c.name == name:
                return str(c)
            try:
                if json.loads(meta.read_text()).get("name") == name:
                    return str(c)
            except (OSError, ValueError):
                pass
    raise FileNotFoundError(
        f"Cannot find the bundle {name!r} from {cwd}: run the command in the bundle folder or in the repository root "
        f"(which holds bundles/{name}), or pass --bundle_root PATH."
    )


def latest_checkpoint(ckpt_dir: str | os.PathLike, final_name: str = "checkpoint.pt") -> str:
    """The checkpoint to resume from: ``final_name`` if present, else the ``*epoch=N.pt`` with the largest N.

    Raises a FileNotFoundError naming the folder and the fix when there is none.
    """
    d = Path(ckpt_dir)
    best, best_epoch = None, -1
    if d.is_dir():
        for f in d.glob("*.pt"):
            m = re.search(r"epoch=(\d+)", f.name)
            if m and int(m.group(1)) > best_epoch:
                best, best_epoch = f, int(m.group(1))
        final = d / final_name
        if final.is_file():
            epoch_of_final = _epoch_of(final)
            if best is None or epoch_of_final is None or epoch_of_final >= best_epoch:
                best = final
    if best is None:
        raise FileNotFoundError(
            f"No checkpoint to resume from in {d}: train first (without --resume), or point --ckpt_dir to the run."
        )
    return str(best)


def _epoch_of(path: Path) -> int | None:
    try:
        import torch

        sd = torch.load(path, map_location="cpu", weights_only=True)
        return int(sd["trainer"]["epoch"]) if "trainer" in sd else None
    except Exception:  # an unreadable file is reported by the loader itself
        return None


def drop_none(items: Iterable[Any]) -> list:
    """The items that are not None (components with ``"_disabled_": true`` resolve to None)."""
    return [i for i in items if i is not None]


def require_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it, what it is, and the fix."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"The {what} {path} does not exist: {fix}")
    return str(path)
