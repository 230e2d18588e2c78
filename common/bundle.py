"""Small helpers that bundle configs call: where the bundle is, which checkpoint to resume from, command-line flags,
the images of an inference run, and readable errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

__all__ = ["find_root", "latest_checkpoint", "drop_none", "require_file", "flag", "image_datalist", "explain_errors"]


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
        if "trainer" not in sd:
            return None
        state = sd["trainer"]
        if "epoch" in state:
            return int(state["epoch"])
        # an ignite Engine.state_dict() holds the iteration and the epoch length, not the epoch
        return int(state["iteration"]) // max(int(state["epoch_length"]), 1)
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


_NIFTI = (".nii.gz", ".nii")


def image_datalist(source: Any) -> list[dict]:
    """The ``[{"image": path}, ...]`` list of an inference run, from a folder or a list of paths or dicts.

    Args:
        source: a folder (every ``*.nii.gz`` and ``*.nii`` file in it, sorted; macOS ``._`` files skipped), or a list
            of image paths or of dicts with an ``"image"`` path.

    Returns:
        One dict per image, with the path as a string (other keys of given dicts are kept).

    Raises:
        FileNotFoundError: the folder or a listed image does not exist, or the folder holds no NIfTI file.
        ValueError: a list item is neither a path nor a dict with an "image" path.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"The input folder {folder} does not exist: set --input_dir to a folder of NIfTI images (.nii.gz), "
                f"or give --datalist \"[{{'image': 'path/to/image.nii.gz'}}]\"."
            )
        files = sorted(
            f for f in folder.iterdir() if f.name.endswith(_NIFTI) and not f.name.startswith("._") and f.is_file()
        )
        if not files:
            raise FileNotFoundError(
                f"The input folder {folder} holds no NIfTI image (*.nii.gz, *.nii): set --input_dir to a folder of "
                f"images, or give --datalist."
            )
        return [{"image": str(f)} for f in files]
    if not isinstance(source, (list, tuple)):
        raise ValueError(
            f"The inference input {source!r} is neither a folder nor a list: give --input_dir FOLDER or "
            f"--datalist \"[{{'image': 'path/to/image.nii.gz'}}]\"."
        )
    items = []
    for index, item in enumerate(source):
        if isinstance(item, (str, os.PathLike)):
            item = {"image": item}
        if not (isinstance(item, dict) and isinstance(item.get("image"), (str, os.PathLike))):
            raise ValueError(
                f"Item {index} of the inference datalist is {item!r}: each item is an image path or a dict "
                f"{{'image': path}}."
            )
        require_file(item["image"], "input image", "fix the path in --datalist, or use --input_dir FOLDER")
        items.append({**item, "image": str(item["image"])})
    if not items:
        raise ValueError("The inference datalist is empty: give --input_dir FOLDER, or images in --datalist.")
    return items


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of an explicit ``raise ... from`` chain (MONAI's config wrappers use it)."""
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def explain_errors() -> None:
    """Repeat the root cause of an uncaught error at the very end of the output.

    ``monai.bundle run`` wraps every error raised while a config item is built in ``RuntimeError: Failed to evaluate
    ConfigExpression ...`` / ``Failed to instantiate ...``; the message that says what to fix (a missing file, a wrong
    dataset layout) sits in the middle of a long traceback. Called from a config's ``initialize`` list, this installs
    a ``sys.excepthook`` that prints the usual traceback and then one line ``ERROR (cause): <type>: <message>``.
    Installed once; other exceptions and the previous hook are left as they were.
    """
    import sys

    previous = sys.excepthook
    if getattr(previous, "_robust_bundles_explain", False):
        return

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if exc is None:
            return
        cause = _root_cause(exc)
        if cause is not exc:
            sys.stdout.flush()
            sys.stderr.write(f"\nERROR (cause): {type(cause).__name__}: {cause}\n")
            sys.stderr.flush()

    hook._robust_bundles_explain = True  # type: ignore[attr-defined]
    sys.excepthook = hook
