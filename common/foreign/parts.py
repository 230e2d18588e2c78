"""The parts of a foreign MONAI bundle, found in its own configs: network, preprocessing, inferer, loss, metric, data.

A model-zoo bundle has no fixed layout. The parts are found, in this order:

1. named by the user: ``--parts "{'loss': 'lossfn', 'preprocessing': 'eval_transforms'}"`` (ids of the bundle's own
   configs);
2. by structure (:func:`discover`): the bundle's ``SupervisedTrainer`` / ``SupervisedEvaluator`` (or subclasses, a
   bundle's own ``scripts.*`` classes included) wherever they sit, and their arguments followed through ``@``
   references (``loss_function``, ``inferer``, data loader -> dataset -> ``transform``...);
3. by the conventional ids of :data:`CANDIDATES` (``validate#preprocessing``, ``loss``...).

When all fail, :class:`MissingPart` names what was tried, the ids of the config that look like the part, and ends with
a command line that the tool accepts (``--parts`` naming the part).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CANDIDATES",
    "CONFIG_EXTS",
    "MissingPart",
    "config_path",
    "discover",
    "default_config_files",
    "find",
    "find_id",
    "given_flags",
    "load_parser",
    "metric_config",
    "numpy_compat",
    "pretrained_off",
    "suggest_command",
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
    "dataset": ("validate#dataset", "evaluate#dataset"),
    "trainer": ("train#trainer", "trainer"),
    "evaluator": ("validate#evaluator", "evaluate#evaluator", "evaluator"),
    "train_network": ("network", "network_def"),
    "optimizer": ("optimizer",),
    "train_handlers": ("train#handlers", "handlers"),
    "train_loader": ("train#dataloader", "train_dataloader"),
    "train_dataset": ("train#dataset", "train_dataset"),
}
"""The config ids tried for each part, first match wins."""

PARTS_HELP = {
    "network": "the network definition (a torch module component)",
    "preprocessing": "the evaluation preprocessing (a Compose of dict transforms)",
    "inferer": "the evaluation inferer",
    "loss": "the training loss (the attack's loss)",
    "data": "the evaluation datalist (a list of {'image': ..., 'label': ...})",
    "dataset": "the evaluation dataset (e.g. NPZDictItemDataset, with its own transform), when there is no datalist",
    "metric": "the evaluator's key metric",
    "postprocessing": "the evaluator's postprocessing",
    "prepare_batch": "the evaluator's prepare_batch",
    "trainer": "the SupervisedTrainer",
    "evaluator": "the SupervisedEvaluator",
    "train_network": "the network the trainer trains",
    "optimizer": "the optimizer",
    "train_handlers": "the trainer's handler list",
    "train_loader": "the training data loader",
    "train_dataset": "the training dataset",
    "train_data": "the training datalist",
    "train_preprocessing": "the training preprocessing",
    "train_inferer": "the training inferer",
}
"""The parts ``--parts`` can name, with what each must be."""

_LOOKS_LIKE = {
    "loss": ("Loss",), "inferer": ("Inferer",), "preprocessing": ("Compose",), "train_preprocessing": ("Compose",),
    "train_inferer": ("Inferer",), "dataset": ("Dataset",), "train_dataset": ("Dataset",), "optimizer": ("Adam",
    "SGD", "AdamW", "Novograd", "RMSprop"), "metric": ("Dice", "Metric", "Accuracy", "Distance", "AUC"),
    "postprocessing": ("Compose",), "trainer": ("Trainer",), "evaluator": ("Evaluator",),
    "train_loader": ("DataLoader",),
}
_DEFAULT_COMPONENT = {
    "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
    "inferer": {"_target_": "SimpleInferer"},
    "train_inferer": {"_target_": "SimpleInferer"},
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
                overrides: Mapping[str, Any] | None = None, parts: Mapping[str, str] | None = None,
                command: tuple[str, Mapping[str, Any]] | None = None):
    """A MONAI ``ConfigParser`` of the bundle's configs with ``bundle_root`` set to ``bundle_dir`` and the overrides
    applied (refused when an override names no id of the configs, as it would be silently unused; a new id that
    ``parts`` names is accepted), and the bundle's parts found (:func:`discover`, ``parts`` first).

    Args:
        bundle_dir: the bundle folder.
        config_file: config files (relative to ``bundle_dir`` or absolute); default :func:`default_config_files`.
        overrides: config ids to set, e.g. ``{"dataset_dir": "/data/Task09_Spleen"}``.
        parts: part name -> config id (``{"loss": "lossfn"}``), see :data:`PARTS_HELP`.
        command: ``(name, flags)`` of the command being run (``("audit", {"dataset_dir": "/d"})``), so that a
            :class:`MissingPart` message can end with the same command plus the fix.
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
    parts = check_parts(parts)
    numpy_compat()
    missing_packages(root)
    bundle_on_path(root)
    parser = ConfigParser()
    parser.read_config(files)
    overrides = dict(overrides or {})
    named = {str(v).replace("::", "#") for v in parts.values()}
    problems = unknown_override_errors(parser.get(),
                                       [k for k in overrides if k != "bundle_root" and k.replace("::", "#") not in named])
    if problems:
        raise KeyError("; ".join(problems))
    parser["bundle_root"] = str(root)
    for k, v in overrides.items():
        parser[k.replace("::", "#")] = v
    parser.compat = monai_compat(parser)  # type: ignore[attr-defined]
    parser.files = files  # type: ignore[attr-defined]
    parser.given_parts = parts  # type: ignore[attr-defined]
    parser.discovered = discover(parser.get())  # type: ignore[attr-defined]
    parser.command = (command[0], dict(command[1])) if command else None  # type: ignore[attr-defined]
    missing_ids = []
    for p, i in parts.items():
        if not _has(parser.get(), i):
            import difflib

            near = difflib.get_close_matches(i, list(_config_ids(parser.get())), n=2, cutoff=0.6)
            missing_ids.append(f"{p}: {i!r}" + (f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""))
    if missing_ids:
        raise MissingPart(f"--parts names ids the configs ({', '.join(Path(f).name for f in files)}) do not have: "
                          f"{'; '.join(missing_ids)}. Give ids of the bundle's own config, or define them with "
                          "--override.")
    return parser


FOREIGN_MISMATCH = ("Build the network the weights were trained with: give the config ids the training changed "
                    "(the network's own settings, input sizes), e.g. --override \"{'network_def#in_shape': [1, 64, 64]}\", "
                    "or the weights of this config with --model_path.")
"""The fix of a weights file that does not fit the network a foreign bundle's config builds."""


_NUMPY_REMOVED = {"product": "prod", "cumproduct": "cumprod", "alltrue": "all", "sometrue": "any"}


def numpy_compat() -> list[str]:
    """Restore the NumPy aliases that NumPy 2.0 removed (``numpy.product`` -> ``numpy.prod``...) for bundles written
    before it (the model zoo's ``valve_landmarks`` calls ``np.product``); each alias added is logged. Nothing
    changes on NumPy 1.x, and an existing attribute is never replaced."""
    import numpy

    added = []
    for old, new in _NUMPY_REMOVED.items():
        try:
            getattr(numpy, old)
        except AttributeError:
            setattr(numpy, old, getattr(numpy, new))
            added.append(f"numpy.{old} = numpy.{new}")
    if added:
        logging.getLogger("robust_bundles.foreign").info(
            f"NumPy {numpy.__version__}: restored aliases removed in NumPy 2.0 for the bundle's code: {', '.join(added)}")
    return added


_REMOVED_ARGS = {"SwinUNETR": ("img_size",)}
"""Arguments that MONAI removed from a class after model-zoo bundles were published (``SwinUNETR(img_size=...)``,
unused since MONAI 1.3 and gone in 1.5)."""

_REMOVED_CLASSES = {
    "AsChannelFirstd": ("EnsureChannelFirstd", {"channel_dim": -1}),
    "AsChannelFirst": ("EnsureChannelFirst", {"channel_dim": -1}),
    "AddChanneld": ("EnsureChannelFirstd", {"channel_dim": "no_channel"}),
    "AddChannel": ("EnsureChannelFirst", {"channel_dim": "no_channel"}),
}
"""Transforms that MONAI removed (1.3) and the ones that do the same (``AsChannelFirstd`` moved the last dimension
first, ``AddChanneld`` added a channel dimension): target and default arguments."""

_CUDA = re.compile(r"torch\.device\(\s*(['\"])cuda(:\d+)?\1\s*\)|(?<=map_location=)(['\"])cuda(:\d+)?\3")
"""An unconditional CUDA device in a config expression (``torch.device('cuda')``, ``map_location='cuda:0'``)."""


def monai_compat(parser) -> dict[str, Any]:
    """Make a bundle written for another MONAI or machine build here, each change logged, nothing changed where the
    bundle already builds:

    - arguments of :data:`_REMOVED_ARGS` dropped where the installed MONAI class no longer takes them;
    - transforms of :data:`_REMOVED_CLASSES` replaced where MONAI no longer has them (``AsChannelFirstd`` ->
      ``EnsureChannelFirstd(channel_dim=-1)``);
    - without CUDA, an unconditional ``torch.device('cuda')`` (``map_location='cuda'``) in an expression -> the CPU
      (the DiNTS bundles load their architecture with ``map_location=torch.device('cuda')``).

    Returns:
        config id -> its new raw value, to override in a run of the bundle's own configs (robustify).
    """
    import torch
    from monai.utils.module import locate

    from ..command_line import _target_parameters

    changed: dict[str, Any] = {}
    notes = []
    for i, c in list(_components(parser.get())):
        name = _short(c.get("_target_"))
        for arg in _REMOVED_ARGS.get(name, ()):
            params = _target_parameters(c["_target_"]) if arg in c else None
            if params is not None and arg not in params:
                del c[arg]
                changed[i] = c
                notes.append(f"{i}#{arg} dropped (MONAI no longer takes it; it had no effect)")
        if name in _REMOVED_CLASSES:
            try:
                located = locate(c["_target_"]) if "." in c["_target_"] else locate(f"monai.transforms.{name}")
            except Exception:  # noqa: BLE001 (not importable: replaced below)
                located = None
            if located is None:
                new, defaults = _REMOVED_CLASSES[name]
                c["_target_"] = new
                for k, v in defaults.items():
                    c.setdefault(k, v)
                changed[i] = c
                notes.append(f"{i}: {name} -> {new}({', '.join(f'{k}={v!r}' for k, v in defaults.items())})")
    if not torch.cuda.is_available():
        for i, v in _config_ids(parser.get()).items():
            if isinstance(v, str) and v.startswith("$") and _CUDA.search(v):
                new = _CUDA.sub(lambda m: "torch.device('cpu')" if m.group(1) else "'cpu'", v)
                parser[i] = new
                changed[i] = new
                notes.append(f"{i}: CUDA -> CPU (no CUDA here)")
    if notes:
        import monai

        logging.getLogger("robust_bundles.foreign").info(
            f"MONAI {monai.__version__}: the bundle's configs were adapted to this installation: {'; '.join(notes)}")
    return changed


def missing_packages(bundle_dir: str | os.PathLike) -> list[str]:
    """The packages the bundle's ``configs/metadata.json`` lists (``required_packages_version``,
    ``optional_packages_version``) that are not installed, with a warning naming them and the ``pip install``; the
    parts that use them fail later (e.g. ``einops`` for SwinUNETR, ``itk`` for an ``ITKReader``)."""
    import json

    from ..command_line import _installed_version

    meta = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    names = {**dict(data.get("optional_packages_version") or {}), **dict(data.get("required_packages_version") or {})}
    missing = sorted(n for n in names if _installed_version(n) is None)
    if missing:
        logging.getLogger("robust_bundles.foreign").warning(
            f"{meta} lists packages that are not installed: {', '.join(missing)}; the parts that use them will fail "
            f"(pip install {' '.join(missing)}).")
    return missing


def bundle_on_path(bundle_dir: str | os.PathLike) -> None:
    """Make the bundle's own code importable as ``monai.bundle run`` from its folder does (``scripts.*`` targets,
    ``$import scripts``): its folder first on ``sys.path``, and a ``scripts`` package of another folder (another
    bundle read before in this process) forgotten."""
    import sys

    root = str(Path(bundle_dir).resolve())
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        where = str(getattr(sys.modules[name], "__file__", "") or "")
        if not where.startswith(root + os.sep):
            del sys.modules[name]


def check_parts(parts: Mapping[str, str] | str | None) -> dict[str, str]:
    """``--parts`` checked: a dict of known part names (:data:`PARTS_HELP`) to config ids (``::`` read as ``#``)."""
    if parts is None:
        return {}
    if isinstance(parts, str):  # fire leaves a string that is not a Python literal as it is
        import ast

        try:
            parts = ast.literal_eval(parts)
        except (ValueError, SyntaxError):
            raise ValueError(f"--parts must be a dict of part names to config ids, e.g. --parts \"{{'loss': "
                             f"'lossfn'}}\"; got {parts!r}.") from None
    if not isinstance(parts, Mapping):
        raise ValueError(f"--parts must be a dict, e.g. --parts \"{{'loss': 'lossfn'}}\"; got {parts!r}.")
    unknown = [k for k in parts if k not in PARTS_HELP]
    if unknown:
        raise ValueError(f"--parts: unknown part(s) {unknown}; the parts are {', '.join(PARTS_HELP)}.")
    bad = [k for k, v in parts.items() if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"--parts: the value of {bad} must be a config id (a string such as 'lossfn').")
    return {k: v.replace("::", "#") for k, v in parts.items()}


def _candidates(config: Any, part: str) -> list[str]:
    """Ids of the config that look like ``part`` (by the class name of their ``_target_``), for the message."""
    ends = _LOOKS_LIKE.get(part.replace("train_", "") if part != "train_handlers" else part)
    out = []
    if part in ("network", "train_network"):
        import monai.networks.nets as nets

        out = [i for i, c in _components(config) if "#" not in i and (_short(c["_target_"]) in dir(nets)
                                                                        or "net" in i.lower())]
    elif part in ("data", "train_data"):
        out = [i for i, v in _config_ids(config).items() if isinstance(v, list) and v and isinstance(v[0], dict)
               and "_target_" not in v[0]] + [i for i in _config_ids(config) if "datalist" in i.rsplit("#", 1)[-1]]
    elif ends:
        out = [i for i, c in _components(config) if _short(c["_target_"]).endswith(ends)]
    return list(dict.fromkeys(out))[:6]


def _config_ids(config: Any, prefix: str = "") -> dict[str, Any]:
    from ..command_line import _config_ids as ids

    return ids(config, prefix)


def suggest_command(parser, parts: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> str:
    """The command being run (``parser.command``) with ``parts`` (and ``overrides``) added: a line to paste."""
    name, flags = getattr(parser, "command", None) or ("audit", {})
    flags = dict(flags)
    bundle = flags.pop("bundle_dir", "BUNDLE")
    flags["parts"] = {**dict(flags.get("parts") or {}), **dict(parts)}
    if overrides:
        flags["override"] = {**dict(flags.get("override") or {}), **dict(overrides)}
    words = ["robust_bundles", name, _quote(str(bundle))]
    for k, v in flags.items():
        if v is None or v is False:
            continue
        words += [f"--{k}"] if v is True else [f"--{k}", _quote(v if isinstance(v, str) else repr(v))]
    return " ".join(words)


def _quote(text: str) -> str:
    """A shell word: as it is when safe, in double quotes when that needs no escape (``"{'loss': 'lossfn'}"``)."""
    q = shlex.quote(text)
    if q == text or any(c in text for c in '"$`\\!'):
        return q
    return f'"{text}"'


def _missing(parser, part: str, tried: Sequence[str]) -> MissingPart:
    config = parser.get()
    files = ", ".join(Path(f).name for f in getattr(parser, "files", [])) or "the configs"
    disc = getattr(parser, "discovered", {})
    engines = ", ".join(f"{k} {disc[k]!r}" for k in ("trainer", "evaluator") if k in disc) or "no SupervisedTrainer/"\
        "SupervisedEvaluator component"
    cands = _candidates(config, part)
    text = (f"Could not find the bundle's {part} ({PARTS_HELP.get(part, part)}) in {files}: found {engines}, none "
            f"naming it, and none of the ids {', '.join(map(repr, tried))}.")
    if cands:
        text += f" Ids that look like it: {', '.join(map(repr, cands))}. Name the right one with: " + \
            suggest_command(parser, {part: cands[0]})
    if part in _DEFAULT_COMPONENT:
        new = f"robust_{part}"
        text += f"{' Or d' if cands else ' D'}efine one and name it with: " + \
            suggest_command(parser, {part: new}, {new: _DEFAULT_COMPONENT[part]})
    elif not cands:
        text += " Name the id that holds it (or define it with --override) with: " + \
            suggest_command(parser, {part: "ID"})
    return MissingPart(text)


def find_id(parser, part: str, candidates: Sequence[str] | None = None, required: bool = True) -> str | None:
    """The id of a part: named by ``--parts``, else found by structure, else the first of ``CANDIDATES[part]`` the
    config holds; a :class:`MissingPart` (or None) when none. With ``candidates``, only those ids are tried."""
    config = parser.get()
    if candidates is None:
        given = getattr(parser, "given_parts", {}).get(part)
        if given is not None:
            return given
        found = getattr(parser, "discovered", {}).get(part)
        if found is not None:
            return found
    ids = tuple(candidates) if candidates is not None else CANDIDATES.get(part, ())
    for i in ids:
        if _has(config, i):
            return follow(config, i) if candidates is None else i  # "train#trainer": "@trainer" -> "trainer"
    if not required:
        return None
    raise _missing(parser, part, ids)


def find(parser, part: str, candidates: Sequence[str] | None = None) -> tuple[str, Any]:
    """``(id, parsed object)`` of a part (see :func:`find_id`); instantiation errors name the id."""
    i = find_id(parser, part, candidates)
    try:
        return i, parser.get_parsed_content(i)
    except Exception as e:
        from ..errors import _root_cause

        cause = _root_cause(e) or e
        raise RuntimeError(f"The bundle's {part} ({i!r}) could not be built: {type(cause).__name__}: {cause}"
                           + _download_hint(parser, e) + _package_hint(cause)) from e


def _package_hint(cause: BaseException) -> str:
    """A sentence on a missing optional package (MONAI's ``OptionalImportError``)."""
    m = re.search(r"package `([\w.-]+)`", str(cause))
    if type(cause).__name__ != "OptionalImportError" or m is None:
        return ""
    return (f". The bundle needs the package {m.group(1)!r} (its configs/metadata.json lists what it needs): pip "
            f"install {m.group(1)}, or override the component that uses it (e.g. an image reader: reader "
            "NibabelReader).")


def _download_hint(parser, error: BaseException) -> str:
    """A sentence on pretrained weights when building failed on a download (offline machine)."""
    chain, e = [], error
    while e is not None and len(chain) < 10:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = " ".join(chain).lower()
    if not any(w in text for w in ("urlopen", "urlerror", "http", "download", "connection", "name resolution")):
        return ""
    flags = [i for i, v in _config_ids(parser.get()).items() if i.rsplit("#", 1)[-1] in _PRETRAINED_ARGS]
    fix = " or ".join(f"--{i} false" for i in flags[:2]) or "the network's pretrained argument set false"
    return (f". It tried to download something (pretrained backbone weights?) and this machine cannot reach it: "
            f"the bundle's trained weights are loaded over them anyway, so switch the download off with {fix}.")


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


# ------------------------------------------------------------------------------------------- discovery by structure
_REF = re.compile(r"@([A-Za-z0-9_#:]+)")
_ALIAS = re.compile(r"^\$?@([A-Za-z0-9_#:]+)(\.to\([^()]*\))?$")  # "@x", "$@x", "$@network_def.to(@device)"
_ENGINE_KINDS = {"trainer": "SupervisedTrainer", "evaluator": "SupervisedEvaluator"}
_EVALUATOR_ARGS = {"network": "network", "inferer": "inferer", "postprocessing": "postprocessing",
                   "metric": "key_val_metric", "prepare_batch": "prepare_batch", "loader": "val_data_loader"}
_TRAINER_ARGS = {"train_network": "network", "loss": "loss_function", "train_inferer": "inferer",
                 "optimizer": "optimizer", "train_handlers": "train_handlers", "train_loader": "train_data_loader",
                 "train_prepare_batch": "prepare_batch"}


def raw_get(config: Any, i: str) -> Any:
    """The raw value at a config id (``"a#b#0"``); KeyError when the config has no such id (a reference on the way
    is not followed: ``train#trainer#x`` with ``"train#trainer": "@trainer"`` does not exist)."""
    node = config
    for k in str(i).replace("::", "#").split("#"):
        if isinstance(node, dict) and k in node:
            node = node[k]
        elif isinstance(node, list) and k.lstrip("-").isdigit() and -len(node) <= int(k) < len(node):
            node = node[int(k)]
        else:
            raise KeyError(i)
    return node


def _has(config: Any, i: str) -> bool:
    try:
        raw_get(config, i)
        return True
    except KeyError:
        return False


def follow(config: Any, i: str, max_hops: int = 20) -> str:
    """The id a config id stands for: ``"@x"`` and ``"$@x.to(@device)"`` aliases are followed to ``x`` (an
    expression of any other form is where the part is)."""
    for _ in range(max_hops):
        v = raw_get(config, i) if _has(config, i) else None
        m = _ALIAS.match(v) if isinstance(v, str) else None
        if m is None or not _has(config, m.group(1).replace("::", "#")):
            return i
        i = m.group(1).replace("::", "#")
    return i


def _short(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1] if isinstance(target, str) else type(target).__name__


GENERATIVE_NAMES = ("Gan", "Diffusion", "LDM", "Autoencoder", "VQVAE", "ControlNet", "Discriminator", "DDPM",
                    "DDIM")
"""Words of class names (CamelCase words: ``Gan`` in ``GanTrainer``, not in ``Organ``) that mark a generative
bundle's engines, networks, inferers and schedulers (MONAI's ``GanTrainer``, ``DiffusionInferer``,
``DiffusionPrepareBatch``, ``AutoencoderKL``, ``DDPMScheduler``...; a bundle's own ``scripts.ldm_trainer.LDMTrainer``)."""
_GENERATIVE = re.compile(r"(?:^|(?<=[a-z0-9_]))(?:" + "|".join(GENERATIVE_NAMES) + r")(?=[A-Z0-9_]|$)")


def is_generative(target: Any) -> bool:
    """Whether a component's ``_target_`` names a generative part (:data:`GENERATIVE_NAMES`)."""
    return isinstance(target, str) and bool(_GENERATIVE.search(_short(target)))


def target_kind(target: Any) -> str | None:
    """``"trainer"``/``"evaluator"`` when a ``_target_`` is MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` or
    a subclass (located as MONAI does, without building anything); a bundle's own ``scripts.*`` class (not imported
    here: it may need the bundle on ``sys.path``) and any name that cannot be located count by their name
    (``...Trainer``/``...Evaluator``)."""
    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        return None
    import monai.engines as me

    cls = None
    if "." not in target:  # MONAI's short names of engines live in monai.engines (no scan of all of MONAI)
        cls = getattr(me, target, None)
    elif not target.startswith("scripts."):
        try:
            from monai.utils.module import locate

            cls = locate(target)
        except Exception:  # noqa: BLE001 (unknown: judge by the name)
            cls = None
    if isinstance(cls, type):
        if issubclass(cls, me.SupervisedTrainer):
            return "trainer"
        if issubclass(cls, (me.SupervisedEvaluator, me.Evaluator)):
            return "evaluator"
        return None  # GanTrainer, AdversarialTrainer: not supervised (robust_bundles.foreign.audit.refuse_unsupported)
    if is_generative(target):
        return None
    name = _short(target)
    for kind in ("trainer", "evaluator"):
        if name.endswith(kind.capitalize()):
            return kind
    return None


def _components(config: Any, prefix: str = ""):
    """``(id, dict)`` of every component (a dict with ``_target_``) of a raw config, in config order."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for k, v in items:
        key = f"{prefix}#{k}" if prefix else str(k)
        if isinstance(v, dict) and "_target_" in v:
            yield key, v
        yield from _components(v, key)


def _arg(config: Any, owner: str, arg: str) -> str | None:
    """The id of argument ``arg`` of component ``owner``, aliases followed; None when the component lacks it."""
    i = f"{owner}#{arg}"
    if not _has(config, i) or raw_get(config, i) is None:
        return None
    return follow(config, i)


def _validators(config: Any) -> list[str]:
    """Ids of the evaluators that a ``ValidationHandler`` runs (the trainer's validation)."""
    out = []
    for i, c in _components(config):
        if _short(c.get("_target_")) == "ValidationHandler" and "validator" in c:
            out.append(follow(config, f"{i}#validator"))
    return out


def discover(config: Mapping) -> dict[str, str]:
    """The parts of a bundle found by structure in its raw config (nothing is built).

    The trainer is the first ``SupervisedTrainer`` (or subclass) component, the evaluator the one a
    ``ValidationHandler`` runs, else the first ``SupervisedEvaluator`` (or subclass), wherever they sit (``trainer``,
    ``train#trainer``, a list of workflows). Their arguments are followed through ``@`` references to the network,
    ``loss_function``, inferer, data loader -> dataset -> ``transform`` (preprocessing) and ``data``, postprocessing,
    key metric and ``prepare_batch``.

    Args:
        config: the raw merged config (``ConfigParser.get()``).

    Returns:
        part name -> config id (only the parts found): ``trainer``, ``evaluator``, ``network``, ``inferer``,
        ``preprocessing``, ``data``, ``dataset``, ``loader``, ``postprocessing``, ``metric``, ``prepare_batch``,
        ``loss``, ``train_network``, ``optimizer``, ``train_handlers``, ``train_loader``, ``train_dataset``,
        ``train_data``, ``train_preprocessing``, ``train_inferer``, ``train_prepare_batch``.
    """
    found: dict[str, list[str]] = {"trainer": [], "evaluator": []}
    for i, c in _components(config):
        kind = target_kind(c.get("_target_"))
        if kind is not None:
            found[kind].append(i)
    out: dict[str, str] = {}
    validators = [v for v in _validators(config) if v in found["evaluator"]]
    if found["trainer"]:
        out["trainer"] = found["trainer"][0]
    if validators or found["evaluator"]:
        out["evaluator"] = (validators or found["evaluator"])[0]
    for engine, args, prefix in (("trainer", _TRAINER_ARGS, "train_"), ("evaluator", _EVALUATOR_ARGS, "")):
        if engine not in out:
            continue
        for part, arg in args.items():
            i = _arg(config, out[engine], arg)
            if i is not None:
                out[part] = i
        loader = out.get(f"{prefix}loader")
        dataset = _arg(config, loader, "dataset") if loader else None
        if dataset is not None:
            out[f"{prefix}dataset"] = dataset
            for part, arg in (("preprocessing", "transform"), ("data", "data")):
                i = _arg(config, dataset, arg)
                if i is not None:
                    out[f"{prefix}{part}"] = i
    if "network" not in out and "train_network" in out:
        out["network"] = out["train_network"]
    if "network" in out:  # the definition (network_def), not its device copy
        out["network"] = follow(config, out["network"])
    return out


_PRETRAINED_ARGS = ("pretrained", "use_pretrained", "pretrain", "load_pretrained", "use_imagenet_pretrain")


def pretrained_off(parser, user: Mapping[str, Any] | None = None) -> dict[str, bool]:
    """Switch off the download of pretrained backbone weights (``use_imagenet_pretrain``, a network's
    ``pretrained``...): the audit and the fine-tuning load the bundle's trained weights over them anyway, and these
    machines are often offline. Ids the user set are left alone.

    Args:
        parser: the bundle's parser (changed in place).
        user: the user's overrides.

    Returns:
        The ids set to False (pass them on to a ``monai.bundle run``); each is logged.
    """
    config = parser.get()
    user_ids = {str(k).replace("::", "#") for k in (user or {})}
    ids = [i for i, v in _config_ids(config).items() if v is True and i.rsplit("#", 1)[-1] in _PRETRAINED_ARGS]
    for net in {getattr(parser, "discovered", {}).get(p) for p in ("network", "train_network")} - {None}:
        for arg in _PRETRAINED_ARGS:
            i = f"{net}#{arg}"
            if _has(config, i) and isinstance(raw_get(config, i), str):
                ids.append(follow(config, i))
    out = {}
    for i in dict.fromkeys(ids):
        if i not in user_ids and raw_get(config, i) is True:
            parser[i] = False
            out[i] = False
            logging.getLogger("robust_bundles.foreign").info(
                f"pretrained weights off: {i} = False (the bundle's trained weights are loaded over them; set "
                f"--{i} true to download them anyway)")
    return out


def given_flags(fn: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of a call of ``fn`` that differ from its defaults (``values``: its ``locals()`` at the start),
    keyword overrides (``**overrides``) spread out: the flags of the command line that was run."""
    import inspect

    out: dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is p.VAR_KEYWORD:
            out.update(values.get(name) or {})
        elif name in values and (p.default is p.empty or values[name] != p.default):
            out[name] = values[name]
    return out
