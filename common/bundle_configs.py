"""One family of bundles, one set of configs: a bundle's configs rendered from a shared base and its small overlay.

The five bundles (three MRI segmentations, landmarks, detection) run the same skeleton: a reader with stable sample
ids, the task's loss, metric and batch layout, the method overlays of the registry, thresholds, robustness evaluation,
inference and multi-GPU overlay. What they share lives once, in ``robust_bundles/configs/<family>/`` (the family
``base``: ``train.json``, ``evaluate.json``, ``inference.json``, ...; its default values are those of the 2D MRI
segmentation pipeline, which the hippocampus bundle uses unchanged; each bundle's ``bundle_root`` is rendered from its
folder name, and a method's overlay starts with its registry entry's params). What a task changes lives in its bundle, in ``<bundle>/task.json``:

.. code-block:: json

    {"family": "base",
     "common": {"num_classes": 2, "network_def#in_channels": 1},
     "configs": {"train.json": {"epochs": 50, "+setup": ["..."]}, "vat.json": {"train_eps": 15.0}}}

Every overlay key must name a key of the base (a misspelt ``"trian#epochs"`` is refused with the nearest key); a key
that adds what the base does not have is listed in the task's ``"new_keys"`` (e.g. ``["channels",
"samples#channels"]``).

A method's overlay (``vat.json``, ``teat.json``, ...) is rendered from the method's registry entry
(:mod:`robust_bundles.methods`) and its base: the entry's ``params`` (e.g. ``train_eps``) come first, a value the task
gives once for every method in its ``"method_values"`` (``{"train_eps": 15.0, "output_activation": ...}``, the
task's units and outputs) replacing the default; the base overlay does not repeat them.

``common`` is applied first to every base config that runs alone (that defines ``bundle_root``: ``train.json`` and
``inference.json`` here), so what both need (network, classes, channels) is written once.

Each overlay is applied to the base file of the same name exactly as MONAI applies an overlay config given after it
in ``--config_file``: ``"a#b"`` keys replace nested values (and create missing ones), ``"+key"`` extends a list or
updates a dict, other keys replace the whole value. The result is written to ``<bundle>/configs/<file>``: complete
MONAI configs, so a bundle (and its zip) still runs alone with ``--config_file configs/train.json``. A bundle
without a ``task.json`` is not rendered. ``python scripts/bundles.py render`` rewrites the configs after a change of
the base or of an overlay; ``render --check`` (and the tests) fail when a committed config differs from its
rendering, so nobody edits a rendered config by hand and loses the change at the next render.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from .io import atomic_write_text

__all__ = ["TASK_FILE", "FAMILIES_DIR", "family_dir", "apply_overlay", "derive_overlay", "derive_task", "format_task",
           "render_bundle", "stale_configs"]

TASK_FILE = "task.json"
"""The file in a bundle folder that names its family and holds its overlays."""

FAMILIES_DIR = Path(__file__).resolve().parent / "configs"
"""Where the base configs of every family live: ``<FAMILIES_DIR>/<family>/``."""

_MERGE, _SEP, _DELETE = "+", "#", "~"
_FLAT_LIST = re.compile(r"^( *)(.*)\[\n\s+([^\[\]{}]*?)\n\s*\]", re.MULTILINE)
_LINE = 120


def _dumps(config: dict) -> str:
    """JSON with an indent of 4, lists of plain values on one line where the line stays within 120 characters."""

    def one_line(match: re.Match) -> str:
        flat = f"{match.group(1)}{match.group(2)}[{', '.join(v.strip() for v in match.group(3).split(',' + chr(10)))}]"
        return flat if len(flat) <= _LINE else match.group(0)

    return _FLAT_LIST.sub(one_line, json.dumps(config, indent=4, ensure_ascii=False)) + "\n"


def family_dir(family: str) -> Path:
    """The folder of the base configs of ``family`` (e.g. ``"base"``); errors list the families."""
    folder = FAMILIES_DIR / str(family)
    if not folder.is_dir():
        known = sorted(p.name for p in FAMILIES_DIR.iterdir() if p.is_dir())
        raise ValueError(f"no config family {family!r} in {FAMILIES_DIR}: use one of {known}.")
    return folder


def _parent(config: dict, path: list[str], key: str, new: bool = True) -> Any:
    """The container holding the last part of ``path`` (missing dicts are created when ``new``, else refused with
    the nearest existing key); ``key`` is for errors."""
    node: Any = config
    for i, part in enumerate(path):
        if isinstance(node, dict) and part not in node and not new:
            near = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.6)
            where = _SEP.join(path[:i]) or "the top level"
            hint = f" (nearest: {_SEP.join(path[:i] + near[:1])!r})" if near else ""
            raise ValueError(f"overlay key {key!r}: {part!r} is not a key of the base config at {where}{hint}. Fix the "
                             f"spelling, or list {key.lstrip(_MERGE)!r} in the \"new_keys\" of the task.json to add "
                             f"a key the base does not have.")
        if i == len(path) - 1:
            break
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ValueError(f"overlay key {key!r}: {part!r} is a {type(node).__name__}, not a dict or a list.")
    return node


def _path(config: Mapping[str, Any], key: str, new: bool = False) -> list[str]:
    """The parts of an overlay key. A method overlay (``teat.json``) holds MONAI path keys such as
    ``"train#trainer#iteration_update"`` literally, at its top level, for MONAI to apply when it stacks the file on
    ``train.json``. A key the config has literally stays literal; else the longest literal prefix is followed
    (``"a#b"`` of ``"a#b#c"``); else, in such an overlay file, a new path key (one in ``new_keys``) whose first part
    the file lacks stays literal (split, ``"train#..."`` would add a top-level ``"train"`` that replaces the whole
    training section); anywhere else a path key names nested dicts (created when new), as MONAI does."""
    parts = key.split(_SEP)
    overlay_file = any(_SEP in str(k) for k in config)  # a config that holds path keys is itself an overlay file
    if key in config:
        return [key]
    for n in range(len(parts) - 1, 1, -1):  # the longest literal path key first: "a#b" of "a#b#c" gives ["a#b", "c"]
        if _SEP.join(parts[:n]) in config:
            return [_SEP.join(parts[:n]), *parts[n:]]
    if overlay_file and new and len(parts) > 1 and parts[0] not in config:
        return [key]
    return parts


def apply_overlay(base: Mapping[str, Any], overlay: Mapping[str, Any], new_keys: Iterable[str] | None = None) -> dict:
    """``base`` with ``overlay`` applied the way MONAI applies a later config file (see the module docstring).

    Args:
        base: a config as loaded from JSON (not modified).
        overlay: ``{key: value}``; keys may be ``"a#b#0"`` paths and may start with ``"+"`` (extend a list, update
            a dict) or ``"~"`` (``"~a#b": null`` deletes what the base has there: a task that has no use for a
            base key, e.g. the slicing of 3D volumes in a 2D X-ray bundle; this one is ours, not MONAI's).
        new_keys: the overlay keys (without ``"+"``) that may add what the base does not have; any other key must
            name an existing one, so that a misspelt key (``"trian#epochs"``) is refused with the nearest key
            instead of silently creating a new one. None: every key may add (MONAI's own rule).

    Returns:
        A new config dict.

    Raises:
        ValueError: a key names what the base does not have (and is not in ``new_keys``), or a ``"+key"`` names a
            value that is not a list or dict, or does not match the overlay's type.
    """
    config = copy.deepcopy(dict(base))
    allowed = None if new_keys is None else {str(k).lstrip(_MERGE) for k in new_keys}
    for key, value in overlay.items():
        if key.startswith(_DELETE):
            path = _path(config, key[len(_DELETE):])
            try:
                parent = _parent(config, path, key, new=False)
            except ValueError as e:
                parent, reason = None, str(e).split(". Fix")[0]
            last = path[-1] if not isinstance(parent, list) else int(path[-1])
            if parent is None or value is not None or (isinstance(parent, dict) and last not in parent):
                raise ValueError(f"overlay key {key!r} deletes {key[len(_DELETE):]!r}: its value must be null and the "
                                 f"base must have it" + (f" ({reason})" if parent is None else "") + ".")
            del parent[last]
            continue
        merge = key.startswith(_MERGE)
        listed = allowed is not None and key.lstrip(_MERGE) in allowed
        new = allowed is None or listed or key.startswith(("_desc", "_comment"))
        path = _path(config, key[len(_MERGE):] if merge else key, listed)
        parent = _parent(config, path, key, new)
        last = int(path[-1]) if isinstance(parent, list) else path[-1]
        value = copy.deepcopy(value)
        if merge and isinstance(parent, dict) and parent.get(last) is not None:
            old = parent[last]
            if isinstance(old, list) and isinstance(value, list):
                value = old + value
            elif isinstance(old, dict) and isinstance(value, dict):
                value = {**old, **value}
            else:
                raise ValueError(
                    f"overlay key {key!r} merges a {type(value).__name__} into a {type(old).__name__}: '+' extends "
                    f"a list with a list or updates a dict with a dict."
                )
        parent[last] = value
    return config


def derive_overlay(base: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """The smallest overlay that turns ``base`` into ``config`` (``apply_overlay(base, overlay, new_keys) ==
    config``), and the keys it adds. A dict or list that differs is written whole, key by key (dicts),
    element by element (``"handlers#2#output_transform"``, lists of the same length) or as its elements
    after the base's (``"+key"``), whichever is shortest; any other value that differs is replaced whole; keys the
    config lacks are deleted (``"~key": null``)."""

    def walk(b: Mapping[Any, Any], c: Mapping[Any, Any], prefix: str) -> tuple[dict[str, Any], list[str]]:
        overlay: dict[str, Any] = {}
        new_keys: list[str] = []
        for k, v in c.items():
            key = f"{prefix}{k}"
            if k not in b:
                overlay[key] = copy.deepcopy(v)
                new_keys.append(key)
            elif isinstance(b[k], dict) and isinstance(v, dict):
                options = [walk(b[k], v, f"{key}{_SEP}")]
                if b[k] != v:
                    options.append(({key: copy.deepcopy(v)}, []))
                sub, sub_new = min(options, key=lambda option: len(json.dumps(option[0])))
                overlay.update(sub)
                new_keys += sub_new
            elif isinstance(b[k], list) and isinstance(v, list) and b[k] != v:
                options = [({key: copy.deepcopy(v)}, [])]
                if len(v) > len(b[k]) and v[:len(b[k])] == b[k]:
                    options.append(({f"{_MERGE}{key}": copy.deepcopy(v[len(b[k]):])}, []))
                elif len(v) == len(b[k]):
                    options.append(walk(dict(enumerate(b[k])), dict(enumerate(v)), f"{key}{_SEP}"))
                sub, sub_new = min(options, key=lambda option: len(json.dumps(option[0])))
                overlay.update(sub)
                new_keys += sub_new
            elif b[k] != v or type(b[k]) is not type(v):
                overlay[key] = copy.deepcopy(v)
        for k in b:
            if k not in c:
                overlay[f"{_DELETE}{prefix}{k}"] = None
        return overlay, new_keys

    return walk(base, config, "")


def derive_task(bundle_dir: str | os.PathLike, family: str) -> dict:
    """A ``task.json`` for a bundle whose configs were written by hand: for every base config of ``family``, the
    overlay that renders the bundle's config of the same name (:func:`derive_overlay`); what the overlays of the
    configs that run alone (``train.json``, ``inference.json``) set alike is written once, in ``common``. Rendering
    the bundle from it gives back JSON values equal to its configs (``stale_configs`` is empty), so the bundle keeps
    running as before while what it shares with the family lives once, in the base."""
    configs = Path(bundle_dir) / "configs"
    task: dict[str, Any] = {"family": family, "new_keys": [], "common": {}, "configs": {}}
    own: dict[str, Any] = {}
    standalone = []
    for base_file in sorted(family_dir(family).iterdir()):
        if base_file.suffix != ".json":
            continue
        path = configs / base_file.name
        if not path.is_file():
            raise ValueError(f"{path} is missing: every config of the {family!r} family ({base_file.name}) needs one.")
        base = json.loads(base_file.read_text(encoding="utf-8"))
        if "bundle_root" in base:
            base["bundle_root"] = _root(Path(bundle_dir).resolve().name)
        own[base_file.name] = json.loads(path.read_text(encoding="utf-8"))
        overlay, added = derive_overlay(base, own[base_file.name])
        task["configs"][base_file.name] = overlay
        task["new_keys"] += [k for k in added if k not in task["new_keys"]]
        if "bundle_root" in base:
            standalone.append(base_file.name)
    if len(standalone) > 1:
        first, *rest = (task["configs"][name] for name in standalone)
        shared = {k: v for k, v in first.items() if all(k in o and o[k] == v for o in rest)}
        hoisted = {"family": family, "new_keys": task["new_keys"], "common": shared,
                   "configs": {n: {k: v for k, v in o.items() if n not in standalone or k not in shared}
                               for n, o in task["configs"].items()}}
        if all(_render(hoisted, Path(bundle_dir).resolve().name)[n] == own[n] for n in own):  # an overlay whose order matters keeps its keys
            task = hoisted
    task["configs"] = {n: o for n, o in task["configs"].items() if o}
    if not task["common"]:
        del task["common"]
    return task


def format_task(task: Mapping[str, Any]) -> str:
    """``task.json``'s text: JSON with an indent of 4, its ``new_keys`` filled into lines of 120 characters."""
    keys = [json.dumps(k, ensure_ascii=False) for k in task.get("new_keys", [])]
    lines, line = [], ""
    for k in keys:
        if line and len(line) + len(k) + 2 > _LINE - 8:
            lines.append(line + ",")
            line = ""
        line = f"{line}, {k}" if line else k
    placeholder = "\u0000new_keys\u0000"
    text = _dumps({**task, "new_keys": placeholder} if keys else dict(task))
    wrapped = "[\n" + "".join(f"        {l}\n" for l in lines + [line]) + "    ]"
    return text.replace(json.dumps(placeholder), wrapped)


def _task(bundle_dir: Path) -> dict | None:
    path = bundle_dir / TASK_FILE
    if not path.is_file():
        return None
    task = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(task, dict) or not isinstance(task.get("family"), str):
        raise ValueError(f'{path} needs a "family" (e.g. "base"), "common": {{...}} and "configs": {{file: overlay}}.')
    values = task.get("method_values", {})
    if not isinstance(values, dict):
        raise ValueError(f'{path}: "method_values" must be a dict such as {{"train_eps": 15.0}}.')
    from . import methods

    takes = {v for m in methods.all_methods() for v in m.task_values}
    unknown_values = sorted(set(values) - takes)
    if unknown_values:
        raise ValueError(f'{path}: "method_values" {unknown_values} are taken by no registered method; use '
                         f'{sorted(takes)}.')
    if not isinstance(task.get("new_keys", []), list):
        raise ValueError(f'{path}: "new_keys" must be a list of overlay keys that add to the base (e.g. ["channels"]).')
    unknown = sorted(set(task.get("configs", {})) - {p.name for p in family_dir(task["family"]).iterdir()})
    if unknown:
        raise ValueError(
            f"{path} overlays {unknown}, which the {task['family']!r} family does not have: overlay one of "
            f"{sorted(p.name for p in family_dir(task['family']).iterdir())}."
        )
    return task


def _root(bundle: str) -> str:
    """The ``bundle_root`` of the configs that run alone: the bundle's folder, found by its name."""
    return f"$robust_bundles.bundle.find_root({bundle!r})"


def _render(task: Mapping[str, Any], bundle: str) -> dict[str, Any]:
    """``{file name: config}`` of every JSON base config of the task's family with the task's overlays applied, for
    the bundle folder named ``bundle`` (the ``bundle_root`` of the configs that run alone)."""
    from . import methods

    out = {}
    new_keys = task.get("new_keys", [])
    for base_file in sorted(family_dir(task["family"]).iterdir()):
        if base_file.suffix == ".json":
            config = json.loads(base_file.read_text(encoding="utf-8"))
            params = methods.overlay_params(base_file.name, task.get("method_values"))
            repeated = sorted(set(params) & set(config))
            if repeated:
                raise ValueError(f"{base_file} sets {repeated}, which the method registry renders into it "
                                 f"(robust_bundles.methods: the entry's params): remove them from the base.")
            config = {**params, **config}
            if "bundle_root" in config:
                config["bundle_root"] = _root(bundle)
                config = apply_overlay(config, task.get("common", {}), new_keys)
            out[base_file.name] = apply_overlay(config, task.get("configs", {}).get(base_file.name, {}), new_keys)
    return out


def rendered_configs(bundle_dir: str | os.PathLike) -> dict[str, str]:
    """The text of every config of a bundle as its ``task.json`` renders it: ``{file name: text}`` ({} without one).

    JSON files are base + ``common`` overlay (configs that run alone) + the file's overlay, written with an indent of
    4; other files (``logging.conf``) are copied.
    """
    task = _task(Path(bundle_dir))
    if task is None:
        return {}
    configs = _render(task, Path(bundle_dir).resolve().name)
    return {f.name: _dumps(configs[f.name]) if f.name in configs else f.read_text(encoding="utf-8")
            for f in sorted(family_dir(task["family"]).iterdir())}


def _same(name: str, a: str, b: str) -> bool:
    """Equal configs: equal JSON values for .json files (formatting is free), equal text otherwise."""
    if name.endswith(".json"):
        try:
            return json.loads(a) == json.loads(b)
        except ValueError:
            return False
    return a == b


def stale_configs(bundle_dir: str | os.PathLike) -> list[str]:
    """The config files of a bundle that differ from their rendering (missing ones included), sorted."""
    configs = Path(bundle_dir) / "configs"
    stale = []
    for name, text in rendered_configs(bundle_dir).items():
        path = configs / name
        if not path.is_file() or not _same(name, path.read_text(encoding="utf-8"), text):
            stale.append(name)
    return stale


def render_bundle(bundle_dir: str | os.PathLike) -> list[Path]:
    """Write the configs of a bundle that differ from their rendering (atomically); return the files written.

    A config whose JSON value already equals its rendering is left as it is (its formatting too).
    """
    rendered = rendered_configs(bundle_dir)
    written = []
    for name in stale_configs(bundle_dir):
        path = Path(bundle_dir) / "configs" / name
        atomic_write_text(path, rendered[name])
        written.append(path)
    return written
