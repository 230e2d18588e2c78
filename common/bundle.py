"""Small helpers that bundle configs call: where the bundle is, which checkpoint to resume from, command-line flags,
the images of an inference run, and readable errors."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "find_root",
    "latest_checkpoint",
    "resume_checkpoint",
    "drop_none",
    "handler_of",
    "require_file",
    "flag",
    "image_datalist",
    "explain_errors",
    "check_command_line",
    "check_versions",
    "error_line",
    "unknown_override_errors",
    "RENAMED_KEYS",
    "renamed_key_errors",
    "SYNTHETIC_MARKER",
    "mark_synthetic",
    "is_synthetic",
    "announce_synthetic",
]


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


def latest_checkpoint(ckpt_dir: str | os.PathLike, final_name: str = "checkpoint.pt") -> str:
    """The checkpoint to resume from: the newest readable one of ``final_name`` and the ``*epoch=N.pt`` files.

    Checkpoints are ordered by the epoch stored in them (the file name's N for epoch checkpoints); a file that cannot
    be read (e.g. truncated by a crash while an older version of the saver wrote it) is skipped with a warning, so a
    resume falls back to the previous complete checkpoint.

    Raises:
        FileNotFoundError: no readable checkpoint in ``ckpt_dir``; the message names the folder and the fix.
    """
    import logging

    d = Path(ckpt_dir)
    candidates: list[tuple[int, int, Path]] = []
    unreadable: list[str] = []
    if d.is_dir():
        for f in d.glob("*.pt"):
            m = re.search(r"epoch=(\d+)", f.name)
            if m is None and f.name != final_name:
                continue
            epoch = _epoch_of(f)
            if epoch is None:
                unreadable.append(f.name)
                continue
            candidates.append((epoch, int(f.name == final_name), f))
    for name in sorted(unreadable):
        logging.getLogger("robust_bundles.checkpointing").warning(
            f"{d / name} cannot be read (damaged or not a training checkpoint): not resuming from it"
        )
    if not candidates:
        found = f" ({', '.join(sorted(unreadable))} cannot be read)" if unreadable else ""
        raise FileNotFoundError(
            f"No checkpoint to resume from in {d}{found}: train first (without --resume), or point --ckpt_dir to the "
            f"run."
        )
    return str(max(candidates, key=lambda c: (c[0], c[1]))[2])


def resume_checkpoint(ckpt_dir: str | os.PathLike, resume: Any) -> str:
    """The checkpoint a training run resumes from (:func:`latest_checkpoint`), or ``""`` when ``resume`` is off.

    Meant to run before anything of the training is built (train.json's ``run`` calls it first), so that a
    ``--resume true`` without a checkpoint stops before any folder is made.
    """
    return latest_checkpoint(ckpt_dir) if flag(resume, "resume") else ""


def _epoch_of(path: Path) -> int | None:
    """The epoch a training checkpoint was saved at, or None when it cannot be read or holds no trainer state."""
    try:
        import torch

        sd = torch.load(path, map_location="cpu", weights_only=True)
        state = sd["trainer"]
        if "epoch" in state:
            return int(state["epoch"])
        # an ignite Engine.state_dict() holds the iteration and the epoch length, not the epoch
        return int(state["iteration"]) // max(int(state["epoch_length"]), 1)
    except Exception:
        return None


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


_WRAPPER_MESSAGES = ("Failed to evaluate", "Failed to instantiate", "applying transform", "Component to instantiate")


def _is_wrapper(exc: BaseException) -> bool:
    """Whether ``exc`` only wraps another error (MONAI's config and transform wrappers)."""
    return isinstance(exc, RuntimeError) and str(exc).lstrip().startswith(_WRAPPER_MESSAGES) and (
        exc.__cause__ is not None or exc.__context__ is not None
    )


def _root_cause(exc: BaseException) -> BaseException:
    """The error that says what went wrong: the outermost exception of the chain that is not a MONAI wrapper.

    MONAI wraps every error raised while a config item is built or a transform runs (``RuntimeError: Failed to
    evaluate ...``, ``applying transform ...``). Below the wrappers sits the error of the code that knew the context
    (e.g. ``ValueError: image /data/x.nii.gz cannot be read ...``), and below that possibly a low-level cause
    (``EOFError: Compressed file ended ...``) that names no file: the middle one is reported.
    """
    seen = set()
    while _is_wrapper(exc) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__  # type: ignore[assignment]
    return exc


#: what :func:`check_versions` found wrong with the installed packages (repeated on the last line of a failed run)
_VERSION_PROBLEMS: list[str] = []


def error_line(cause: BaseException) -> str:
    """``<type>: <message>`` on one line (a multi-line message, e.g. PyTorch's refusal of a pickle, is joined), with
    the installed packages older than the bundle's pins (:func:`check_versions`) named after it: the likely cause
    of an error that follows them."""
    text = " ".join(f"{type(cause).__name__}: {cause}".split())
    if _VERSION_PROBLEMS:
        text += " (and: " + "; ".join(_VERSION_PROBLEMS) + ")"
    return text


def explain_errors() -> None:
    """Repeat the root cause of an uncaught error at the very end of the output.

    ``monai.bundle run`` wraps every error raised while a config item is built in ``RuntimeError: Failed to evaluate
    ConfigExpression ...`` / ``Failed to instantiate ...``; the message that says what to fix (a missing file, a wrong
    dataset layout) sits in the middle of a long traceback. Called first by a config's ``run`` (its ``setup`` list), this installs
    a ``sys.excepthook`` that prints the usual traceback and then one line ``ERROR (cause): <type>: <message>``
    (:func:`error_line`).
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
        if not isinstance(cause, KeyboardInterrupt):
            sys.stdout.flush()
            sys.stderr.write(f"\nERROR (cause): {error_line(cause)}\n")
            sys.stderr.flush()

    hook._robust_bundles_explain = True  # type: ignore[attr-defined]
    sys.excepthook = hook


# ----------------------------------------------------------------------------------------------------------------------
# command-line overrides
# ----------------------------------------------------------------------------------------------------------------------

#: the arguments of ``monai.bundle run`` itself; every other ``--key`` is a config override
RUN_ARGUMENTS = frozenset(
    {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}
)


#: config keys that were renamed so that every bundle uses one word for one thing (old -> new); an old key on the
#: command line, in ``--override`` or in a config file is refused with its new name instead of being silently unused
RENAMED_KEYS = {
    "max_images": "max_cases",
    "max_val_images": "max_val_cases",
    "max_test_images": "max_test_cases",
    "slices": "samples",
    "slice_preprocessing": "sample_preprocessing",
}


def renamed_key_errors(config: Mapping, keys: Iterable[str] | None = None, where: str = "--") -> list[str]:
    """The problems of old key names (:data:`RENAMED_KEYS`), one message per key, each naming the new key.

    A key counts only when the config holds its new name (a bundle of this project), so a bundle that uses the old
    word for something of its own is left alone.

    Args:
        config: the merged config.
        keys: the ids to check (command-line overrides); None: the config's own top-level keys (a config file that
            still sets an old key, e.g. a user's profile).
        where: how a key is shown: ``"--"`` for the command line, ``""`` for a config file's key.
    """
    out = []
    for name in (str(k).replace("::", "#") for k in (config if keys is None else keys)):
        head, sep, rest = name.partition("#")  # "slices#channels" -> "samples#channels"
        if head in RENAMED_KEYS and RENAMED_KEYS[head] in config:
            new = f"{RENAMED_KEYS[head]}{sep}{rest}"
            out.append(f"{where}{name}: renamed {where}{new} (one vocabulary of keys across the bundles), so this "
                       f"{'override' if where else 'key'} would be ignored; use {where}{new}")
    return out


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
        renamed = renamed_key_errors(config, [raw])
        if renamed:
            problems += renamed
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
    _VERSION_PROBLEMS[:] = problems
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
    renamed = renamed_key_errors(parser.get(), where="")
    if renamed:
        raise ValueError("Renamed config key(s) in the config files: " + " | ".join(renamed)
                         + f" (configs: {', '.join(str(f) for f in files)}; rename the key in your config file).")
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


# ----------------------------------------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------------------------------------

#: a file in the root of every synthetic dataset the bundles write, so that logs and reports can say so
SYNTHETIC_MARKER = "SYNTHETIC_DATA.txt"


def mark_synthetic(folder: str | os.PathLike, generator: str) -> None:
    """Mark ``folder`` as synthetic data written by ``generator`` (see :func:`is_synthetic`)."""
    from .io import atomic_write_text

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
