"""Checks of a ``monai.bundle run`` command line before anything runs: unknown override keys (with the nearest key)
and installed packages older than the bundle's pins."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import errors

__all__ = ["RUN_ARGUMENTS", "unknown_override_errors", "check_versions",
           "check_command_line"]

#: the arguments of ``monai.bundle run`` itself; every other ``--key`` is a config override
RUN_ARGUMENTS = frozenset(
    {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}
)


def _config_ids(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every id of a config (``"train#dataloader#batch_size"``...) and its raw value."""
    out: dict[str, Any] = {}
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for k, v in items:
        key = f"{prefix}#{k}" if prefix else str(k)
        out[key] = v
        out.update(_config_ids(v, key))
    return out


def _target_parameters(target: Any) -> list[str] | None:
    """The keyword parameters of a config component's ``_target_`` (a class or function, located as MONAI does), or
    None when that cannot be known (an expression, an unimportable name, a ``**kwargs`` signature)."""
    import inspect

    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        return None
    try:
        from monai.bundle.config_item import ConfigComponent
        from monai.utils.module import locate

        component = locate(ConfigComponent({"_target_": target}).resolve_module_name())
        signature = inspect.signature(component)
    except Exception:  # noqa: BLE001 (anything unknown: leave the check to the run)
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return [n for n, p in signature.parameters.items() if p.kind in kinds]


def unknown_override_errors(config: Mapping, overrides: Iterable[str]) -> list[str]:
    """The problems of command-line override ids against a config, one message per unknown id.

    An id is known when the config holds it. A new id is accepted only as a new argument of a component (a dict with
    ``_target_``) that its target takes (``train#trainer#max_epoch`` is refused before any work, with
    ``max_epochs`` suggested; a target whose parameters cannot be known is given the benefit of the doubt); anywhere
    else it would be silently unused, so it is reported with the nearest valid ids.

    Args:
        config: the merged config (all ``--config_file`` files).
        overrides: override ids as given (``"epochs"``, ``"train::dataloader::batch_size"``, ``"+key"`` is not a CLI
            form and is reported too).
    """
    import difflib

    ids = _config_ids(config)
    problems = []
    for raw in overrides:
        key = str(raw).replace("::", "#")
        if key in ids:
            continue
        parent, _, leaf = key.rpartition("#")
        params: list[str] | None = None
        if parent and isinstance(ids.get(parent), dict) and "_target_" in ids[parent]:
            params = _target_parameters(ids[parent]["_target_"])
            if params is None or leaf in params:
                continue  # a new constructor argument of a component (one its target accepts, where known)
        level = [i for i in ids if i.count("#") == key.count("#")]
        if params is not None:  # the component's own arguments first: max_epoch -> max_epochs
            level = list(dict.fromkeys([f"{parent}#{n}" for n in params] + level))
        near = difflib.get_close_matches(key, level, n=3, cutoff=0.6) or difflib.get_close_matches(
            key, list(ids), n=3, cutoff=0.6
        )
        hint = f"did you mean {' or '.join('--' + n for n in near)}?" if near else "no config key is close to it."
        where = f"--{raw}"
        if params is not None:
            problems.append(f"{where}: {ids[parent]['_target_']} ({parent!r}) takes no argument {leaf!r}, so this "
                            f"run would fail when it is built; {hint}")
        elif parent and parent not in ids:
            problems.append(f"{where}: the config has no {parent!r}, so this override would be ignored; {hint}")
        else:
            problems.append(f"{where}: the config has no key {key!r}, so this override would be ignored; {hint}")
    return problems


def _parse_run_argv(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]] | None:
    """``(run arguments, override ids)`` of a ``monai.bundle run`` command line, or None for another command."""
    import ast

    args = list(argv)
    if "run" not in args:
        return None
    args = args[args.index("run") + 1 :]
    run_args: dict[str, Any] = {}
    overrides: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("--"):
            continue  # a value, or a positional run_id
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i < len(args) and not args[i].startswith("--"):
                value = args[i]
                i += 1
        name_u = name.replace("-", "_")
        if name_u in RUN_ARGUMENTS:
            try:
                run_args[name_u] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                run_args[name_u] = value
        else:
            overrides.append(name)
    return run_args, overrides


def _installed_version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_versions(meta: Mapping | str | os.PathLike) -> list[str]:
    """Compare the installed packages with the versions a bundle's ``metadata.json`` pins; warn about each one that
    is missing or older (e.g. torch 2.13 for a bundle made with 2.14.1), and name them again on the last line of a
    failed run (:func:`error_line`), where they are the likely cause. A newer version passes silently.

    Args:
        meta: the metadata (a dict, or the path of ``metadata.json``).

    Returns:
        One message per problem (empty when every pinned package is installed at its version or newer).
    """
    import logging

    from monai.utils import version_leq

    if not isinstance(meta, Mapping):
        meta = json.loads(Path(meta).read_text(encoding="utf-8"))
    pins = {"torch": meta.get("pytorch_version"), "monai": meta.get("monai_version"),
            "numpy": meta.get("numpy_version"), **dict(meta.get("required_packages_version") or {})}
    problems = []
    for package, pinned in pins.items():
        if not pinned:
            continue
        installed = _installed_version(package)
        if installed is None:
            problems.append(f"{package} is not installed but this bundle needs {package}=={pinned}: "
                            f"pip install {package}=={pinned}")
        elif not version_leq(str(pinned), installed.split("+")[0]):
            problems.append(f"{package} {installed} is installed, older than the {pinned} this bundle was made "
                            f"and tested with (configs/metadata.json): pip install {package}=={pinned}")
    errors._VERSION_PROBLEMS[:] = problems
    for problem in problems:
        logging.getLogger("robust_bundles.bundle").warning("WARNING: %s", problem)
    return problems


def _metadata_of(run_args: Mapping[str, Any]) -> Path | None:
    """The metadata.json of a run: ``--meta_file``, else ``metadata.json`` next to the first config file."""
    meta = run_args.get("meta_file")
    if isinstance(meta, (list, tuple)):
        meta = meta[0] if meta else None
    if meta is None:
        configs = run_args.get("config_file")
        first = configs if isinstance(configs, (str, os.PathLike)) else next(iter(configs or []), None)
        meta = Path(first).parent / "metadata.json" if first else None
    return Path(meta) if meta is not None and Path(meta).is_file() else None


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Refuse command-line overrides of config keys that do not exist, naming the nearest valid keys; warn about
    installed packages older than the bundle's metadata.json pins (:func:`check_versions`).

    ``python -m monai.bundle run ... --data_dir /data`` (for ``--dataset_dir``) or ``--epoch 5`` (for ``--epochs``)
    would otherwise add an unused key and silently run on the defaults, e.g. train on synthetic data. Called first
    by every config's ``run``; it reads the command line (``sys.argv``) and the config files it names, so other
    ways of running a config (Python, the experiment tool's dry run) are unaffected.

    Raises:
        ValueError: some override names no key of the configs; the message lists each with the nearest valid keys.
    """
    parsed = _parse_run_argv(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        return
    run_args, overrides = parsed
    meta = _metadata_of(run_args)
    if meta is not None:
        check_versions(meta)
    from monai.bundle import ConfigParser

    config_files = run_args.get("config_file")
    if "args_file" in run_args:
        extra = ConfigParser.load_config_file(str(run_args["args_file"]))
        config_files = config_files if config_files is not None else extra.get("config_file")
        overrides += [k for k in extra if k not in RUN_ARGUMENTS]
    if not config_files:
        return
    files = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
    parser = ConfigParser()
    try:  # as MONAI reads them ("a.json,b.json" included)
        parser.read_config(str(config_files) if isinstance(config_files, os.PathLike) else config_files)
    except Exception:  # noqa: BLE001 (a form this check does not know: the run itself reports it)
        if not overrides:
            return
        raise
    if not overrides:
        return
    tracking = run_args.get("tracking")
    if tracking:  # --tracking mlflow adds its own keys (tracking_uri, experiment_name, ...): they may be overridden
        from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

        settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else None
        if settings is None and isinstance(tracking, (str, os.PathLike)) and Path(tracking).is_file():
            settings = ConfigParser.load_config_file(str(tracking))
        overrides = [o for o in overrides if o.replace("::", "#").split("#")[0] not in (settings or {}).get("configs", {})]
    problems = unknown_override_errors(parser.get(), overrides)
    if problems:
        raise ValueError(
            "Unknown config key(s) on the command line: " + " | ".join(problems)
            + f" (configs: {', '.join(str(f) for f in files)}; to add a new key on purpose, put it in an overlay "
            f"config file)."
        )
