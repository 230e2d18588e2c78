"""The parts of a foreign MONAI bundle, found in its own configs: network, preprocessing, inferer, loss, metric, data.

A model-zoo bundle has no fixed layout, but most follow the MONAI bundle conventions (``configs/train.json`` with
``network_def``, ``loss``, ``validate#preprocessing``, ``validate#inferer``, ``validate#dataset#data``,
``validate#key_metric``; ``configs/evaluate.json`` overriding ``validate#...``; ``configs/inference.json`` with
``preprocessing`` and ``inferer``). :func:`find` tries the ids of :data:`CANDIDATES` in order and, when none exists,
stops with an error that names the ids it looked for and the override that supplies the part.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CANDIDATES",
    "CONFIG_EXTS",
    "MissingPart",
    "config_path",
    "default_config_files",
    "find",
    "find_id",
    "load_parser",
    "metric_config",
]

CONFIG_EXTS = (".json", ".yaml", ".yml")

CANDIDATES: dict[str, tuple[str, ...]] = {
    "network": ("network_def", "network"),
    "preprocessing": ("validate#preprocessing", "evaluate#preprocessing", "test#preprocessing", "preprocessing"),
    "inferer": ("validate#inferer", "evaluate#inferer", "test#inferer", "inferer"),
    "loss": ("loss", "loss_function", "train#loss", "train#trainer#loss_function"),
    "data": ("validate#dataset#data", "evaluate#dataset#data", "test#dataset#data", "val_datalist", "datalist"),
    "metric": ("validate#key_metric", "evaluate#key_metric", "test#key_metric"),
    "train_data": ("train#dataset#data", "train_datalist"),
    "train_preprocessing": ("train#preprocessing",),
    "train_inferer": ("train#inferer",),
}
"""The config ids tried for each part, first match wins."""

HOW_TO_SUPPLY = {
    "network": "--network_def \"{'_target_': 'UNet', ...}\" (a component config) or a --config_file that defines it",
    "preprocessing": "--override \"{'validate#preprocessing': {...}}\" or a --config_file with validate#preprocessing "
                     "(e.g. the bundle's inference config)",
    "inferer": "--override \"{'validate#inferer': {'_target_': 'SlidingWindowInferer', 'roi_size': [96, 96, 96]}}\"",
    "loss": "--override \"{'loss': {'_target_': 'DiceCELoss', 'to_onehot_y': True, 'softmax': True}}\"",
    "data": "--datalist FILE.json (MSD/decathlon format) or --override \"{'validate#dataset#data': [...]}\"",
    "metric": "--metric dice",
    "train_data": "--override \"{'train#dataset#data': [...]}\"",
    "train_preprocessing": "--override \"{'train#preprocessing': {...}}\"",
    "train_inferer": "--override \"{'train#inferer': {'_target_': 'SimpleInferer'}}\"",
}


class MissingPart(KeyError):
    """A part of the bundle could not be found; the message names the ids tried and the override."""

    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0])


def config_path(bundle_dir: str | os.PathLike, name: str) -> Path | None:
    """``configs/<name>.json|yaml|yml`` of a bundle, or None."""
    for ext in CONFIG_EXTS:
        p = Path(bundle_dir) / "configs" / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def default_config_files(bundle_dir: str | os.PathLike, names: Sequence[str] = ("train", "evaluate")) -> list[str]:
    """The bundle's configs to merge, in order: ``train`` then ``evaluate`` (whichever exist, JSON or YAML); the
    ``inference`` config when neither does."""
    files = [str(p) for p in (config_path(bundle_dir, n) for n in names) if p is not None]
    if not files:
        p = config_path(bundle_dir, "inference")
        if p is not None:
            files = [str(p)]
    if not files:
        raise FileNotFoundError(
            f"{Path(bundle_dir) / 'configs'} holds no train, evaluate or inference config (.json/.yaml/.yml): give the "
            "bundle folder (the one with configs/ and models/), or name its configs with --config_file "
            "\"['configs/a.json', 'configs/b.yaml']\"."
        )
    return files


def load_parser(bundle_dir: str | os.PathLike, config_file: str | Sequence[str] | None = None,
                overrides: Mapping[str, Any] | None = None):
    """A MONAI ``ConfigParser`` of the bundle's configs with ``bundle_root`` set to ``bundle_dir`` and the overrides
    applied (refused when an override names no id of the configs, as it would be silently unused).

    Args:
        bundle_dir: the bundle folder.
        config_file: config files (relative to ``bundle_dir`` or absolute); default :func:`default_config_files`.
        overrides: config ids to set, e.g. ``{"dataset_dir": "/data/Task09_Spleen"}``.
    """
    from monai.bundle import ConfigParser

    from ..command_line import unknown_override_errors

    root = Path(bundle_dir)
    if not (root / "configs").is_dir():
        raise FileNotFoundError(f"{root} has no configs/ folder: give the bundle folder (the one with configs/).")
    if config_file is None:
        files = default_config_files(root)
    else:
        files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
        files = [str(f if Path(f).is_absolute() else root / f) for f in files]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"Config file(s) {missing} do not exist: fix --config_file.")
    parser = ConfigParser()
    parser.read_config(files)
    overrides = dict(overrides or {})
    problems = unknown_override_errors(parser.get(), [k for k in overrides if k != "bundle_root"])
    if problems:
        raise KeyError("; ".join(problems))
    parser["bundle_root"] = str(root)
    for k, v in overrides.items():
        parser[k.replace("::", "#")] = v
    parser.files = files  # type: ignore[attr-defined]
    return parser


def find_id(parser, part: str, candidates: Sequence[str] | None = None, required: bool = True) -> str | None:
    """The first id of ``CANDIDATES[part]`` the config holds; a :class:`MissingPart` (or None) when none."""
    ids = tuple(candidates) if candidates is not None else CANDIDATES[part]
    for i in ids:
        try:
            if i in parser:
                return i
        except (KeyError, TypeError, IndexError):
            continue
    if not required:
        return None
    files = ", ".join(Path(f).name for f in getattr(parser, "files", [])) or "the configs"
    raise MissingPart(
        f"Could not find the bundle's {part} in {files}: looked for the config id(s) {', '.join(map(repr, ids))}. "
        f"Supply it with {HOW_TO_SUPPLY.get(part, '--override')}."
    )


def find(parser, part: str, candidates: Sequence[str] | None = None) -> tuple[str, Any]:
    """``(id, parsed object)`` of a part (see :func:`find_id`); instantiation errors name the id."""
    i = find_id(parser, part, candidates)
    try:
        return i, parser.get_parsed_content(i)
    except Exception as e:
        raise RuntimeError(f"The bundle's {part} ({i!r}) could not be built: {type(e).__name__}: {e}") from e


def metric_config(parser) -> tuple[str | None, dict | None]:
    """``(id, raw config)`` of the first key metric of the evaluation configs, or ``(None, None)``."""
    i = find_id(parser, "metric", required=False)
    if i is None:
        return None, None
    raw = parser.get(i)
    if isinstance(raw, dict) and raw and "_target_" not in raw:  # {"val_mean_dice": {"_target_": "MeanDice", ...}}
        name = next(iter(raw))
        return f"{i}#{name}", raw[name]
    return i, raw if isinstance(raw, dict) else None
