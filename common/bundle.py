"""The helpers bundle configs call as ``robust_bundles.bundle.<name>``: where the bundle is, which checkpoint to
resume from, command-line flags, component lists. What else they call lives where it belongs
(``check_command_line``: :mod:`robust_bundles.command_line`; ``explain_errors``: :mod:`robust_bundles.errors`;
``image_datalist``: :mod:`robust_bundles.data.msd`; ``latest_checkpoint``: :mod:`robust_bundles.checkpointing`; the
synthetic-data mark: :mod:`robust_bundles.data.synthetic`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["find_root", "resume_checkpoint", "drop_none", "handler_of", "require_file", "flag", "tensorboard_enabled"]


def _names_bundle(folder: Path, name: str) -> bool:
    """Whether ``folder`` is the root of bundle ``name`` (its configs/metadata.json names it, or it is so called)."""
    meta = folder / "configs" / "metadata.json"
    if not meta.is_file():
        return False
    if folder.name == name:
        return True
    try:
        return json.loads(meta.read_text()).get("name") == name
    except (OSError, ValueError):
        return False


def find_root(name: str) -> str:
    """The folder of bundle ``name``, from whatever directory the command runs in.

    ``python -m monai.bundle run --config_file <bundle>/configs/train.json`` puts ``<bundle>`` on ``sys.path`` before
    it runs the config, so that folder is found from any working directory. Otherwise (or when that entry is another
    bundle) the working directory (the bundle folder itself or the repository root), ``./bundles/<name>`` and
    ``./<name>`` are tried.

    Raises:
        FileNotFoundError: none of them is bundle ``name``; the message says how to point to it.
    """
    cwd = Path.cwd()
    candidates = [Path(p) for p in sys.path if p]
    candidates += [cwd, cwd / "bundles" / name, cwd / name]
    for c in candidates:
        if _names_bundle(c, name):
            return str(c.resolve())
    raise FileNotFoundError(
        f"Cannot find the bundle {name!r} from {cwd}: give the config files by their path "
        f"(--config_file <bundle>/configs/train.json), run the command in the bundle folder, or pass "
        f"--bundle_root PATH."
    )



def resume_checkpoint(ckpt_dir: str | os.PathLike, resume: Any) -> str:
    """The checkpoint a training run resumes from (:func:`latest_checkpoint`), or ``""`` when ``resume`` is off.

    Meant to run before anything of the training is built (train.json's ``run`` calls it first), so that a
    ``--resume true`` without a checkpoint stops before any folder is made.
    """
    from .checkpointing import latest_checkpoint

    return latest_checkpoint(ckpt_dir) if flag(resume, "resume") else ""



def drop_none(items: Iterable[Any] | Mapping[Any, Any]) -> list | dict:
    """The items that are not None (components with ``"_disabled_": true`` resolve to None); for a mapping, the
    entries whose value is not None (e.g. a save_dict whose optional perturbation memory is off)."""
    if isinstance(items, Mapping):
        return {k: v for k, v in items.items() if v is not None}
    return [i for i in items if i is not None]


def handler_of(handlers: Iterable[Any], kind: str) -> Any:
    """The first handler in ``handlers`` whose class is named ``kind`` (e.g. ``"PassCounter"``), or None.

    A save_dict names a handler of the list this way (``"$robust_bundles.bundle.handler_of(@train#handlers,
    'PassCounter')"``), so that the list keeps plain component dicts, as MONAI's ``check_properties`` reads it."""
    return next((h for h in handlers if h is not None and type(h).__name__ == kind), None)


def require_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it, what it is, and the fix."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"The {what} {path} does not exist: {fix}")
    return str(path)


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "", "none")


def flag(value: Any, name: str = "flag") -> bool:
    """A boolean config value, also when it came from the command line as text.

    ``python -m monai.bundle run ... --resume true`` passes the string ``"true"`` (fire only turns ``True`` into a
    bool), and the string ``"false"`` would be truthy. This reads bools, 0/1 and the usual words.

    Args:
        value: the config value.
        name: its config key, for the error message.

    Raises:
        ValueError: the value is not one of the accepted spellings.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"--{name} {value!r} is not a yes/no value: give --{name} true or --{name} false.")


_TENSORBOARD_WARNED: list[bool] = []


def tensorboard_enabled(value: Any = True, name: str = "tensorboard") -> bool:
    """Whether this process writes TensorBoard event files: the ``--tensorboard`` flag, the package, the main process.

    MONAI's ``TensorBoardStatsHandler`` imports TensorBoard lazily and fails when the handler is built without it,
    which would stop a training for a missing logger. The bundles' TensorBoard handlers carry
    ``"_disabled_": "$not robust_bundles.bundle.tensorboard_enabled(@tensorboard)"`` instead: without the
    ``tensorboard`` package the run goes on without event files and says so once (a warning naming the fix); under
    data-parallel training only process 0 writes them.

    Args:
        value: the config flag (``--tensorboard false`` turns the handlers off).
        name: its config key, for the error message of a value that is not yes/no.
    """
    if not flag(value, name):
        return False
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - what MONAI's handler imports
    except ImportError as e:
        if not _TENSORBOARD_WARNED:
            import logging

            logging.getLogger("robust_bundles").warning(
                f"TensorBoard is not available ({e}): this run writes no TensorBoard event files (training, "
                "evaluation and the MLflow tracking are unaffected). To get them: pip install tensorboard; to silence "
                f"this: --{name} false."
            )
            _TENSORBOARD_WARNED.append(True)
        return False
    from .distributed import is_main_process

    return is_main_process()
