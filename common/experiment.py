"""Run a bundle's whole experiment, the paper's table at the end: STD, thresholds, VAT(eps), TEAT(eps), AMAT, the
robustness evaluation of every trained model, and the report.

    python scripts/experiment.py --bundle bundles/hippocampus_mri_segmentation --profile quick
    python scripts/experiment.py --bundle bundles/hippocampus_mri_segmentation --profile quick --dry_run
    python scripts/experiment.py --bundle bundles/hippocampus_mri_segmentation --profile paper \\
        --dataset_dir /data/Task04_Hippocampus
    python scripts/experiment.py --bundle ... --profile quick --stages "[amat,robustness_amat,report]" --force "[amat]"
    python scripts/experiment.py --bundle ... --profile quick --vat_eps "[2]" --teat_eps "[]" \\
        --override '{"epochs": 1, "filters": [8, 16, 32, 64]}'

Options: see ``python scripts/experiment.py --help`` (the docstring of :func:`main`).

Stages, in order: ``std`` (train.json), ``thresholds`` (train + thresholds), ``vat_eps<e>`` for each e (train + vat,
--train_eps e), ``teat_eps<e>`` (train + teat), ``amat`` (train + amat), then ``robustness_<run>`` for every trained run
(train + evaluate + robustness, --run_name <run>), then ``report`` (robust_bundles.report: report/results.md, .csv, .json,
metric_vs_eps.png, margins.png). Each bundle stage is a subprocess ``python -m monai.bundle run`` started in the
bundle folder; its output is streamed and appended to ``<output_root>/logs/<stage>.log``.

Fine-tuning: ``--amat_init std`` (likewise ``--vat_init``, ``--teat_init``; or a path to a model.pt / checkpoint.pt)
starts that method's runs from the trained weights instead of a random initialisation: the stage stacks
``finetune.json`` after the method overlay, trains ``--finetune_epochs`` epochs (default: the profile's) with a fresh
optimizer and schedule, and the report marks the run as fine-tuned. ``scratch`` (the default) trains from scratch.
The profile's "experiment" dict may set ``amat_init``, ``vat_init``, ``teat_init`` and ``finetune_epochs``, and
``amat_override`` (likewise ``vat_override``, ``teat_override``): config overrides of that method's training runs only,
e.g. ``{"attack_steps": 5}``; a key of ``--override`` wins over them.

Resume: a stage is skipped when its output exists, is newer than its inputs, and was made with the same command
(recorded in ``logs/<stage>.json``); stages after a re-run stage that read its output run again. A training stage that
was interrupted (checkpoint but no model.pt, same command) continues with ``--resume True``. Re-running the same
command after a failure or Ctrl-C therefore picks up where it stopped. Changing --override or the profile re-runs the
stages whose command changed. A training stage that starts afresh first deletes the ``*.pt`` files of its run folder
(``models/<run>/``), so that no stale checkpoint can be resumed later.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import fire

from . import layout, methods, report
from .attack_suite import SUITES
from .command_line import unknown_override_errors
from .console import Console, fmt_time
from .finetune import INIT_RECORD
from .io import atomic_write_json

BASE_CONFIGS = ("train.json", "thresholds.json", "evaluate.json", "robustness.json")
"""The configs every bundle of the experiment has besides the method overlays (:mod:`robust_bundles.methods`)."""


def bundle_configs() -> tuple[str, ...]:
    """The configs an experiment reads: train.json, every registered method's overlay, thresholds, evaluate and
    robustness (a bundle without a method's overlay has no runs of that method)."""
    return (BASE_CONFIGS[0], *(m.overlay for m in methods.with_overlay()), *BASE_CONFIGS[1:])


def default_eps(configs: Path, method: methods.Method) -> list[float]:
    """A method's default training noise levels in a bundle: the ``train_eps`` of its rendered overlay (the task's
    value, ``robust_bundles.methods``), [] when the overlay sets none."""
    try:
        value = json.loads((configs / method.overlay).read_text()).get("train_eps")
    except (OSError, ValueError):
        return []
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else []


def method_options(**given: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-method command-line options (``--<key>_eps``, ``--<key>_init`` of every registered method), by method
    name: ``(eps, inits)``; an option of no registered method is an error listing the valid ones."""
    valid = {f"{m.key}_eps": ("eps", m.name) for m in methods.all_methods() if m.takes_eps}
    valid.update({f"{m.key}_init": ("init", m.name) for m in methods.with_overlay()})
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ExperimentError(f"Unknown option(s) {', '.join('--' + u for u in unknown)}: the options of the "
                              f"registered methods are {', '.join('--' + v for v in valid)}.")
    out: dict[str, dict[str, Any]] = {"eps": {}, "init": {}}
    for key, value in given.items():
        kind, name = valid[key]
        out[kind][name] = value
    return out["eps"], out["init"]


def groups() -> tuple[str, ...]:
    """Stage groups of --stages/--force: train, each method with eps (its key: vat, teat), robustness."""
    return ("train", *(m.key for m in methods.all_methods() if m.takes_eps), "robustness")

REPORT_DIR = layout.report_dir("")
LOG_DIR = layout.logs_dir("")


class ExperimentError(RuntimeError):
    """A problem the user can fix (wrong option, missing input, failed stage); printed without a traceback."""


# ------------------------------------------------------------------------------------------------------------ stages
@dataclass
class Stage:
    """One step of the experiment.

    Args:
        name: stage name (``std``, ``thresholds``, ``vat_eps6``, ``robustness_amat``, ``report``...).
        kind: ``train``, ``thresholds``, ``robustness`` or ``report``.
        output: the file (relative to output_root) whose presence means the stage is done.
        needs: files (relative to output_root) the stage reads, made by earlier stages.
        configs: bundle config files (relative to ``<bundle>/configs``), before the profile overlay.
        args: stage-specific config overrides (run_name, train_eps).
        run: the run name the stage trains or evaluates (None for thresholds and report).
    """

    name: str
    kind: str
    output: str
    needs: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)
    run: str | None = None


def model_file(run: str) -> str:
    """The run's model, relative to the output root (robust_bundles.layout owns the layout)."""
    return layout.model_file("", run)


def robustness_file(run: str) -> str:
    """The run's robustness result, relative to the output root."""
    return layout.robustness_file("", run)


THRESHOLDS_FILE = layout.thresholds_file("")
FINETUNE_CONFIG = methods.FINETUNE_OVERLAY
SCRATCH = methods.SCRATCH


def finetune(stage: Stage, init: str | None, epochs: int | None = None) -> Stage:
    """Make a training stage start from trained weights: ``init`` is ``"std"`` (this experiment's STD model), a
    model file, or None / ``"scratch"`` (the stage is returned unchanged). ``epochs`` sets the run's length."""
    if init in (None, SCRATCH):
        return stage
    stage.configs = [*stage.configs, FINETUNE_CONFIG]
    if init == methods.STD.run_name():
        stage.needs = [*stage.needs, model_file(init)]  # finetune.json's default init_from
    else:
        stage.needs = [*stage.needs, str(init)]
        stage.args["init_from"] = str(init)
    if epochs is not None:
        stage.args["epochs"] = int(epochs)
    return stage


def build_stages(eps_levels: Mapping[str, Sequence[float]] | None = None, inits: dict[str, str] | None = None,
                 finetune_epochs: int | None = None, extra_runs: dict[str, dict] | None = None,
                 present: Sequence[str] | None = None) -> list[Stage]:
    """All stages in order: the paper's protocol, generated from the method registry (:mod:`robust_bundles.methods`).

    STD (train.json), the thresholds (when a registered method needs them), the extra runs, then every other method
    in registry order (VAT, TEAT, AMAT, ...): one run per training noise level for a method with eps, one run
    otherwise, each ``train.json`` + the method's overlay (+ finetune.json when fine-tuned); then the robustness
    evaluation of every trained run and the report.

    Args:
        eps_levels: training noise levels by method name (``{"VAT": [2, 6], "TEAT": [6]}``); a method with eps
            that is not given has no runs.
        inits: per method ("VAT", "TEAT", "AMAT"), where its runs start: "scratch", "std" or a model file.
        finetune_epochs: epochs of the fine-tuned runs (None: the profile's epochs).
        extra_runs: further STD-style runs (train.json with config overrides), by run name, each
            ``{"override": {...}, "label": "..."}`` (see :func:`extra_runs_of`); trained after the thresholds and
            evaluated like the others.
        present: the names of the methods whose overlay the bundle has (None: every registered method).
    """
    inits = inits or {}
    levels_of = {str(k).upper(): list(v) for k, v in (eps_levels or {}).items()}
    std = methods.STD.run_name()
    train = [Stage(std, "train", model_file(std), configs=["train.json"], args={"run_name": std}, run=std)]
    used = [m for m in methods.with_overlay() if present is None or m.name in present]
    if any(m.needs_thresholds for m in used):
        train.append(Stage("thresholds", "thresholds", THRESHOLDS_FILE, needs=[model_file(std)],
                           configs=["train.json", methods.THRESHOLDS_OVERLAY]))
    for run, spec in (extra_runs or {}).items():
        train.append(Stage(run, "train", model_file(run), configs=["train.json"],
                           args={**spec.get("override", {}), "run_name": run}, run=run))
    for method in used:
        for e in levels_of.get(method.name, []) if method.takes_eps else [None]:
            run = method.run_name(e)
            args = {"run_name": run} if e is None else {"train_eps": float(e), "run_name": run}
            needs = [THRESHOLDS_FILE] if method.needs_thresholds else []
            train.append(finetune(Stage(run, "train", model_file(run), needs=needs,
                                        configs=["train.json", method.overlay], args=args, run=run),
                                  inits.get(method.name), finetune_epochs))
    runs = [s.run for s in train if s.kind == "train"]
    evals = [Stage(report.robustness_stage(r), "robustness", robustness_file(r), needs=[model_file(r)],
                   configs=["train.json", "evaluate.json", "robustness.json"], args={"run_name": r}, run=r)
             for r in runs]
    needs = [robustness_file(r) for r in runs]
    return train + evals + [Stage("report", "report", f"{REPORT_DIR}/results.md", needs=needs)]


def transfer_from_std(stage: Stage, output_root: Path) -> Stage:
    """The strong suite's transfer check: the robustness stage of a run other than STD also attacks the experiment's
    STD model and applies that attack to the run's model (robust_bundles.transfer); the stage then needs STD's model."""
    std = methods.STD.run_name()
    if stage.kind == "robustness" and stage.run != std:
        stage.needs = [*stage.needs, model_file(std)]
        stage.args["transfer_surrogate"] = str(output_root / model_file(std))
    return stage


def extra_runs_of(value: Any) -> dict[str, dict]:
    """The profile's ``experiment.extra_runs``: ``{run: {"override": {config key: value}, "label": row label}}``.

    For example the landmark bundle's STD model with the BCE heatmap loss beside the default Dice one:
    ``{"std_bce": {"override": {"heatmap_loss": "bce"}, "label": "STD (BCE)"}}``. A run name is lower-case letters,
    digits and underscores and differs from the built-in runs.
    """
    if value in (None, {}):
        return {}
    if not isinstance(value, dict):
        raise ExperimentError(f"experiment.extra_runs must be a dict {{run: {{\"override\": {{...}}, \"label\": ...}}}}; "
                              f"got {value!r}.")
    out = {}
    for run, spec in value.items():
        if not re.fullmatch(r"[a-z0-9_]+", str(run)) or _method_run(str(run)):
            taken = ", ".join(m.key + ("_eps*" if m.takes_eps else "") for m in methods.all_methods())
            raise ExperimentError(f"experiment.extra_runs: {run!r} is not a free run name (lower-case letters, digits "
                                  f"and _, not {taken}).")
        spec = spec if isinstance(spec, dict) else {}
        override = spec.get("override", {})
        if not isinstance(override, dict) or set(override) & {"output_root", "dataset_dir", "run_name", "resume"}:
            raise ExperimentError(f"experiment.extra_runs.{run}.override must be a dict of config overrides (not "
                                  f"output_root, dataset_dir, run_name or resume); got {override!r}.")
        out[str(run)] = {"override": dict(override), "label": str(spec.get("label") or "")}
    return out


def _method_run(run: str) -> bool:
    """A run name of a registered method (``std``, ``amat``, ``vat_eps*``...)."""
    return any(m.run_pattern.match(run) or (m.takes_eps and run.startswith(f"{m.key}_eps"))
               for m in methods.all_methods())


def as_list(value: Any, what: str) -> list:
    """A fire value given as a list, a tuple, a comma-separated string or a single item, as a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    raise ExperimentError(f"--{what} must be a list such as \"[a,b]\"; got {value!r}.")


def eps_list(value: Any, what: str) -> list[float]:
    """Training noise levels (> 0, duplicates dropped) from a fire value; ``what`` names the option in errors."""
    out = []
    for v in as_list(value, what):
        try:
            e = float(v)
        except (TypeError, ValueError):
            raise ExperimentError(f"--{what}: {v!r} is not a number (L2 noise levels such as \"[2,6]\").") from None
        if not e > 0:
            raise ExperimentError(f"--{what}: the noise levels must be > 0; got {v!r}.")
        out.append(e)
    return list(dict.fromkeys(out))


def _inits(experiment: dict, given: dict[str, Any]) -> dict[str, str]:
    """Where each adversarial method starts: the options (``given``, by method) over the profile's
    ``<method>_init``; "scratch", "std" or an existing model file (made absolute)."""
    out = {}
    for method in (m.name for m in methods.with_overlay()):
        key = f"{method.lower()}_init"
        value = given.get(method)
        value = experiment.get(key, SCRATCH) if value is None else value
        value = str(value).strip() or SCRATCH
        if value not in (SCRATCH, methods.STD.run_name()):
            path = Path(value).expanduser().resolve()
            if not path.is_file():
                raise ExperimentError(f"--{key} {value!r}: give scratch, std (this experiment's STD model) or an "
                                      f"existing model file (model.pt / checkpoint.pt); {path} does not exist.")
            value = str(path)
        out[method] = value
    return out


#: config keys the tool sets itself; neither --override nor a profile's method override may set them
TOOL_KEYS = frozenset({"output_root", "dataset_dir", "run_name", "train_eps", "resume"})


def method_of_stage(stage: Stage) -> str | None:
    """The method whose overlay makes a training stage its run (None: STD, thresholds, evaluations)."""
    overlays = {m.overlay: m.name for m in methods.with_overlay()}
    return next((overlays[c] for c in stage.configs if c in overlays), None)


def method_overrides_of(experiment: dict) -> dict[str, dict]:
    """The profile's ``amat_override``, ``vat_override`` and ``teat_override``: config overrides of that method's
    training runs only (e.g. ``{"attack_steps": 5}`` for AMAT while VAT and TEAT keep the profile's 3), by method.
    A key given with ``--override`` wins over them."""
    out = {}
    for method in (m.name for m in methods.with_overlay()):
        key = f"{method.lower()}_override"
        value = experiment.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ExperimentError(f"experiment.{key} must be a dict of config overrides such as "
                                  f"{{\"attack_steps\": 5}}; got {value!r}.")
        reserved = (TOOL_KEYS | {"epochs"}) & set(value)
        if reserved:
            raise ExperimentError(f"experiment.{key} cannot set {sorted(reserved)}: use the tool's own options "
                                  f"(--finetune_epochs, --<method>_eps, ...).")
        out[method] = dict(value)
    return out


def whole_epochs(value: Any) -> int | None:
    if value is None:
        return None
    try:
        epochs = int(value)
    except (TypeError, ValueError):
        raise ExperimentError(f"--finetune_epochs must be a whole number of epochs; got {value!r}.") from None
    if epochs < 1 or epochs != float(value):
        raise ExperimentError(f"--finetune_epochs must be a whole number >= 1; got {value!r}.")
    return epochs


def select(stages: list[Stage], names: Any, what: str) -> set[str]:
    """Stage names from a list of stage names and group names (train, vat, teat, robustness)."""
    valid = [s.name for s in stages]
    chosen: set[str] = set()
    for n in as_list(names, what):
        n = str(n)
        if n in valid:
            chosen.add(n)
        elif n == "train":
            chosen |= {s.name for s in stages if s.kind in ("train", "thresholds")}
        elif n in groups()[1:-1]:
            chosen |= {s.name for s in stages if s.name.startswith(f"{n}_eps")}
        elif n == "robustness":
            chosen |= {s.name for s in stages if s.kind == "robustness"}
        else:
            raise ExperimentError(
                f"--{what}: unknown stage {n!r}. Stages of this experiment: {', '.join(valid)}; groups: "
                f"{', '.join(groups())}."
            )
    return chosen


# ------------------------------------------------------------------------------------------------------- commands
def _cli_value(value: Any) -> str:
    """A config value as a `monai.bundle run` (fire) argument that parses back to the same value."""
    if isinstance(value, str) and re.fullmatch(r"[\w./~\-]+", value):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value  # a plain word or path: fire keeps it as a string
    if isinstance(value, float) and value.is_integer():
        return format(value, "g")
    return repr(value)


def bundle_command(stage: Stage, profile_file: str | None, output_root: Path, dataset_dir: Path | None,
                   overrides: dict[str, Any], resume: bool = False) -> list[str]:
    """The `python -m monai.bundle run` command of a stage (run in the bundle folder)."""
    configs = [f"configs/{c}" for c in stage.configs] + ([profile_file] if profile_file else [])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
           "--output_root", str(output_root)]
    if dataset_dir is not None:
        cmd += ["--dataset_dir", str(dataset_dir)]
    args = {**stage.args, **({"resume": True} if resume else {})}
    for key, value in {**overrides, **args}.items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


def _signature(cmd: list[str]) -> list[str]:
    """The command without the interpreter and the resume flag: what decides whether an output is still valid."""
    out, skip = [], False
    for a in cmd[1:]:
        if skip:
            skip = False
            continue
        if a == "--resume":
            skip = True
            continue
        out.append(a)
    return out


# ----------------------------------------------------------------------------------------------------- experiment
class Experiment:
    """The stages of one bundle, profile and output folder, their status, and how to run them.

    Args: see the module docstring (the command-line options).
    """

    def __init__(self, bundle: str | Path, profile: str | None = "quick", dataset_dir: str | Path | None = None,
                 output_root: str | Path | None = None, override: dict | str | None = None,
                 eps: Mapping[str, Any] | None = None, inits: dict[str, Any] | None = None,
                 finetune_epochs: Any = None, attack_suite: str | None = None) -> None:
        self.bundle = Path(bundle).expanduser().resolve()
        cfg = self.bundle / "configs"
        missing = [c for c in BASE_CONFIGS if not (cfg / c).is_file()]
        self.present = [m.name for m in methods.with_overlay() if (cfg / m.overlay).is_file()]
        if missing:
            raise ExperimentError(f"{self.bundle} is not a complete bundle: configs/{', configs/'.join(missing)} "
                                  f"missing (give --bundle the bundle folder, e.g. bundles/<name>).")
        self.profile = profile or None
        experiment: dict[str, Any] = {}
        self.profile_file = None
        if self.profile:
            path = cfg / "profiles" / f"{self.profile}.json"
            if not path.is_file():
                have = sorted(p.stem for p in (cfg / "profiles").glob("*.json"))
                raise ExperimentError(f"No profile {self.profile!r}: {path} does not exist (profiles: "
                                      f"{', '.join(have) or 'none'}).")
            self.profile_file = f"configs/profiles/{self.profile}.json"
            experiment = dict(json.loads(path.read_text()).get("experiment", {}))

        if isinstance(override, str):
            try:
                override = json.loads(override)
            except ValueError as e:
                raise ExperimentError(f"--override is not a JSON dict ({e}): {override!r}") from None
        override = dict(override or {})
        if not all(isinstance(k, str) for k in override):
            raise ExperimentError(f"--override keys must be config ids (strings); got {list(override)}.")
        extra = override.pop("experiment", None) or {}
        if not isinstance(extra, dict):
            raise ExperimentError("--override: 'experiment' must be a dict such as {\"vat_eps\": [2]}.")
        experiment.update(extra)
        reserved = TOOL_KEYS & set(override)
        if reserved:
            raise ExperimentError(f"--override cannot set {sorted(reserved)}: use the tool's own options "
                                  f"(--output_root, --dataset_dir, --<method>_eps).")
        self.overrides = override
        if attack_suite is not None:  # --attack_suite: the robustness stages' attack_suite config key
            if attack_suite not in SUITES:
                raise ExperimentError(f"--attack_suite {attack_suite!r}: give one of {list(SUITES)}.")
            self.overrides["attack_suite"] = attack_suite

        given_eps = {str(k).upper(): v for k, v in (eps or {}).items() if v is not None}
        self.eps = {}
        for m in methods.all_methods():
            if not m.takes_eps:
                continue
            asked = given_eps.get(m.name, experiment.get(f"{m.key}_eps"))
            if m.name not in self.present:
                if eps_list(asked, f"{m.key}_eps"):
                    raise ExperimentError(f"{m.key}_eps asks for {m.name} runs, but the bundle has no "
                                          f"configs/{m.overlay}: render it (python scripts/bundles.py render) or "
                                          f"drop the option.")
                continue
            self.eps[m.name] = eps_list(default_eps(cfg, m) if asked is None else asked, f"{m.key}_eps")
        self.caption = str(experiment.get("caption", "") or "")
        self.extra_runs = extra_runs_of(experiment.get("extra_runs"))
        default_root = self.bundle / "runs" / (self.profile or "default")
        self.output_root = Path(output_root).expanduser().resolve() if output_root else default_root
        self.dataset_dir = Path(dataset_dir).expanduser().resolve() if dataset_dir else None
        self.inits = _inits(experiment, inits or {})
        if finetune_epochs is None and "epochs" in override:  # --override epochs N: every run is N epochs long
            finetune_epochs = override["epochs"]
        self.finetune_epochs = whole_epochs(finetune_epochs if finetune_epochs is not None
                                       else experiment.get("finetune_epochs"))
        if any(v != SCRATCH for v in self.inits.values()) and not (cfg / FINETUNE_CONFIG).is_file():
            raise ExperimentError(f"Fine-tuning ({self.inits}) needs configs/{FINETUNE_CONFIG} in {self.bundle}, "
                                  f"which does not exist: add it (see the hippocampus bundle) or use scratch.")
        self.stages = build_stages(self.eps, self.inits, self.finetune_epochs, self.extra_runs, self.present)
        self.method_overrides = method_overrides_of(experiment)
        for stage in self.stages:  # under the stage's own arguments and under --override
            method = method_of_stage(stage)
            extra = {k: v for k, v in self.method_overrides.get(method, {}).items() if k not in override}
            stage.args = {**extra, **stage.args}
        if self.overrides.get("attack_suite") == "strong":
            self.stages = [transfer_from_std(s, self.output_root) for s in self.stages]
        self._stage_keys_cache: dict[str, set[str]] = {}
        self.check_overrides()

    # -------------------------------------------------------------------------------------------------- status
    def path(self, rel: str) -> Path:
        return self.output_root / rel

    def log_file(self, stage: Stage) -> Path:
        return self.output_root / LOG_DIR / f"{stage.name}.log"

    def record_file(self, stage: Stage) -> Path:
        return self.output_root / LOG_DIR / f"{stage.name}.json"

    def _record(self, stage: Stage) -> dict | None:
        try:
            return json.loads(self.record_file(stage).read_text())
        except (OSError, ValueError):
            return None

    def signature(self, stage: Stage) -> list:
        if stage.kind == "report":
            labels = {run: spec["label"] for run, spec in self.extra_runs.items() if spec["label"]}
            return ["report", self.runs(), self.report_caption(), *([labels] if labels else [])]
        return _signature(bundle_command(stage, self.profile_file, self.output_root, self.dataset_dir,
                                         self.stage_overrides(stage)))

    def runs(self) -> list[str]:
        return [s.run for s in self.stages if s.kind == "train"]

    def _checkpoints(self, stage: Stage) -> list[Path]:
        d = self.path(stage.output).parent
        return sorted(p for p in d.glob("*.pt") if p.name != "model.pt") if d.is_dir() else []

    def plan(self, stages: Any = None, force: Any = False) -> list[tuple[Stage, str, str]]:
        """``(stage, action, reason)`` for every selected stage; action is ``run``, ``resume`` or ``skip``.

        Raises:
            ExperimentError: a selected stage needs a file that neither exists nor is made by a selected stage.
        """
        chosen = select(self.stages, stages, "stages") if stages not in (None, True, "", [], ()) else \
            {s.name for s in self.stages}
        forced = {s.name for s in self.stages} if force is True else select(self.stages, force or None, "force")
        producer = {s.output: s for s in self.stages}
        rebuilt: set[str] = set()  # outputs that this invocation will (re)make
        out = []
        for s in self.stages:
            if s.name not in chosen:
                continue
            output = self.path(s.output)
            record = self._record(s)
            same = record is None or record.get("signature") == self.signature(s)
            newer = [n for n in s.needs if output.is_file() and self.path(n).is_file()
                     and self.path(n).stat().st_mtime > output.stat().st_mtime]
            missing = [n for n in s.needs if n not in rebuilt and not self.path(n).is_file()]
            if missing:
                makers = sorted({producer[n].name for n in missing if n in producer})
                raise ExperimentError(
                    f"Stage {s.name!r} needs {', '.join(str(self.path(n)) for n in missing)}, which does not exist "
                    f"and is not made by a selected stage: add {', '.join(repr(m) for m in makers)} to --stages "
                    f"(or leave --stages out)."
                )
            if s.name in forced:
                action, reason = "run", "forced"
            elif not output.is_file():
                remade = any(n in rebuilt for n in s.needs)
                if s.kind == "train" and self._checkpoints(s) and same and not remade:
                    action, reason = "resume", f"interrupted: {self._checkpoints(s)[-1].name} but no model.pt"
                else:
                    action, reason = "run", f"{s.output} missing"
            elif any(n in rebuilt for n in s.needs):
                action, reason = "run", f"its input {next(n for n in s.needs if n in rebuilt)} is remade"
            elif record is not None and record.get("status") != "done":
                action, reason = "run", "the last run did not finish"
            elif not same:
                action, reason = "run", "settings changed since the last run (see logs/" + s.name + ".json)"
            elif newer:
                action, reason = "run", f"outdated: {newer[0]} is newer"
            else:
                action, reason = "skip", f"{s.output} exists"
            if action != "skip":
                rebuilt.add(s.output)
            out.append((s, action, reason))
        return out

    def command(self, stage: Stage, resume: bool = False) -> list[str]:
        return bundle_command(stage, self.profile_file, self.output_root, self.dataset_dir,
                              self.stage_overrides(stage), resume)

    def _stage_config(self, stage: Stage) -> dict:
        """The merged configs of a stage (its overlays, then the profile), for checking override keys."""
        from monai.bundle import ConfigParser

        files = [self.bundle / "configs" / c for c in stage.configs]
        if self.profile_file:
            files.append(self.bundle / self.profile_file)
        parser = ConfigParser()
        parser.read_config([str(f) for f in files])
        return parser.get()

    def stage_overrides(self, stage: Stage) -> dict[str, Any]:
        """The --override keys that the stage's configs have (e.g. robustness_eps goes to robustness stages only):
        a bundle run refuses keys it does not know, and a stage is not re-run for a setting it does not read."""
        if stage.kind == "report":
            return {}
        if stage.name not in self._stage_keys_cache:
            config = self._stage_config(stage)
            self._stage_keys_cache[stage.name] = {
                k for k in self.overrides if not unknown_override_errors(config, [k])}
        known = self._stage_keys_cache[stage.name]
        return {k: v for k, v in self.overrides.items() if k in known}

    def check_overrides(self) -> None:
        """Every --override key must be a key of some stage's configs (else it is a misspelling)."""
        unknown = set(self.overrides)
        problems: list[str] = []
        for stage in self.stages:
            if stage.kind != "report" and unknown:
                unknown -= set(self.stage_overrides(stage))
        if unknown:
            config = self._stage_config(self.stages[0])
            problems = unknown_override_errors(config, sorted(unknown))
            raise ExperimentError("--override: unknown config key(s), read by no stage of this bundle: "
                                  + " | ".join(problems))

    # ----------------------------------------------------------------------------------------------------- running
    def missing_at_plan(self, plan: list[tuple[Stage, str, str]]) -> set[str]:
        """The stages of a plan that will run because their output does not exist yet (not forced, not stale)."""
        return {s.name for s, action, reason in plan
                if action != "skip" and reason != "forced" and not self.path(s.output).is_file()}

    def done_meanwhile(self, stage: Stage) -> bool:
        """True when the stage's output appeared after the plan was made, finished and with this stage's settings:
        another process (a second study or experiment on the same output root) ran it. Running it again would first
        delete that output."""
        record = self._record(stage)
        return (self.path(stage.output).is_file() and record is not None and record.get("status") == "done"
                and record.get("signature") == self.signature(stage))

    def run_stage(self, stage: Stage, resume: bool) -> None:
        """Run one stage; raise ExperimentError naming the stage, the command and the log when it fails."""
        record = {"stage": stage.name, "signature": self.signature(stage), "status": "running",
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        if stage.kind == "report":
            atomic_write_json(self.record_file(stage), record)
            try:
                self.write_report()
            except (OSError, ValueError) as e:
                raise ExperimentError(f"Stage 'report' failed: {e}") from e
        else:
            if stage.kind == "train" and not resume:  # a fresh start: no stale checkpoint may be resumed later
                record_of_init = self.path(stage.output).parent / INIT_RECORD  # nor a stale "fine-tuned" mark
                for p in self._checkpoints(stage) + [self.path(stage.output), record_of_init]:
                    p.unlink(missing_ok=True)
            cmd = self.command(stage, resume)
            record["command"] = shlex.join(cmd)
            atomic_write_json(self.record_file(stage), record)
            self._subprocess(stage, cmd)
            if not self.path(stage.output).is_file():
                raise ExperimentError(
                    f"Stage {stage.name!r} finished but did not write {self.path(stage.output)}.\n"
                    f"  command: {shlex.join(cmd)}\n  log: {self.log_file(stage)}"
                )
        record.update(status="done", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        atomic_write_json(self.record_file(stage), record)

    def report_target(self) -> str:
        """What a report stage writes, for the dry run."""
        return f"robust_bundles.report.write_report -> {self.output_root / REPORT_DIR}"

    def run_plan(self, plan: list[tuple[Stage, str, str]], t0: float, dry_run: bool = False,
                 verbose: bool = False) -> None:
        """Run the stages of a plan in order (the one loop of the experiment and the study): skip what is done or
        was made meanwhile by another process on the same output root, show progress on the console
        (:class:`~robust_bundles.console.Console`; ``verbose``: every line of every stage); with ``dry_run``, print
        the commands instead."""
        n = len(plan)
        if dry_run:
            print(f"\nDry run: commands, in {self.bundle}:")
            for i, (s, action, _) in enumerate(plan, 1):
                prefix = f"[{i}/{n}] {s.name}" + (" (skip)" if action == "skip" else "")
                print(f"{prefix}: {self.report_target()}" if s.kind == "report" else
                      f"{prefix}:\n  {shlex.join(self.command(s, resume=action == 'resume'))}")
            return
        missing = self.missing_at_plan(plan)
        self.console = console = Console([s.kind for s, a, _ in plan if a != "skip"], verbose=verbose)
        console.t0 = t0
        for i, (s, action, reason) in enumerate(plan, 1):
            if action == "skip":
                console.skip(f"[{i}/{n}] skip {s.name}: {reason}")
                continue
            if s.name in missing and self.done_meanwhile(s):  # e.g. two studies sharing an output root, one per core
                console.skip(f"[{i}/{n}] skip {s.name}: {s.output} was made meanwhile (by another process)",
                             planned=True)
                continue
            what = "resume" if action == "resume" else "run"
            log = "" if s.kind == "report" else f"; log {self.log_file(s)}"
            console.start(f"[{i}/{n}]", s.name, f"{what}: {reason}{log}")
            ts = time.time()
            try:
                self.run_stage(s, resume=action == "resume")
            except BaseException:
                console.failed()
                raise
            console.end(f"[{i}/{n}]", s.name, s.kind, time.time() - ts)

    def _subprocess(self, stage: Stage, cmd: list[str]) -> None:
        log = self.log_file(stage)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("a", encoding="utf-8") as f:
            f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} stage {stage.name}\n"
                    f"===== cwd: {self.bundle}\n===== {shlex.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=self.bundle, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1, errors="replace")
            try:
                assert proc.stdout is not None
                console = getattr(self, "console", None) or Console([], verbose=True)  # outside run_plan: all
                for line in proc.stdout:
                    console.line(line)
                    f.write(line)
                rc = proc.wait()
            except KeyboardInterrupt:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                f.write("===== interrupted\n")
                raise
            f.write(f"===== exit code {rc}\n")
        if rc != 0:
            raise ExperimentError(
                f"Stage {stage.name!r} failed (exit code {rc}).\n"
                f"  command (in {self.bundle}):\n    {shlex.join(cmd)}\n"
                f"  log: {log}\n"
                f"Fix the cause and run the same experiment command again: finished stages are skipped and an "
                f"interrupted training resumes from its checkpoint."
            )

    def report_caption(self) -> str:
        """The profile's caption, plus the overrides of this experiment (they may contradict the caption)."""
        parts = [self.caption.strip() or (f"Profile {self.profile}" if self.profile else "")]
        if self.overrides:
            parts.append(f"Overrides of this experiment (they take precedence over the profile): "
                         f"{json.dumps(self.overrides)}")
        return " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts if p)

    def write_report(self) -> dict[str, Path]:
        labels = {run: spec["label"] for run, spec in self.extra_runs.items() if spec["label"]}
        return report.write_report(self.output_root, self.runs(), caption=self.report_caption(), labels=labels,
                                   out_dir=self.output_root / REPORT_DIR)

    # ------------------------------------------------------------------------------------------------- printing
    def describe(self) -> str:
        lines = [
            f"Experiment: bundle {self.bundle.name} ({self.bundle}), profile {self.profile or '(none)'}",
            f"  output root: {self.output_root}",
            f"  dataset: {self.dataset_dir or 'the bundle default (dataset_dir not given)'}",
            "  " + "; ".join(f"{m} eps: {', '.join(format(e, 'g') for e in levels) or 'none'}"
                             for m, levels in self.eps.items()),
        ]
        has_runs = {m.name: bool(self.eps.get(m.name)) if m.takes_eps else m.name in self.present
                    for m in methods.with_overlay()}
        tuned = {m: v for m, v in self.inits.items() if v != SCRATCH and has_runs[m]}
        if tuned:
            length = f"{self.finetune_epochs} epochs" if self.finetune_epochs else "the profile's epochs"
            lines.append("  fine-tuned: " + ", ".join(f"{m} from {v}" for m, v in tuned.items()) + f" ({length})")
        if self.extra_runs:
            lines.append("  extra runs: " + "; ".join(f"{run} {json.dumps(spec['override'])}"
                                                     for run, spec in self.extra_runs.items()))
        if self.overrides:
            lines.append(f"  overrides: {json.dumps(self.overrides)}")
        return "\n".join(lines)


def print_plan(exp: Experiment, plan: list[tuple[Stage, str, str]]) -> None:
    todo = sum(1 for _, a, _ in plan if a != "skip")
    print(exp.describe())
    print(f"Plan: {len(plan)} stages, {len(plan) - todo} done, {todo} to run")
    width = max((len(s.name) for s, _, _ in plan), default=0)
    for i, (s, action, reason) in enumerate(plan, 1):
        status = "done" if action == "skip" else action
        print(f"  {f'[{i}/{len(plan)}]':>7} {s.name:<{width}}  {status:<6} {reason}")
    sys.stdout.flush()


# -------------------------------------------------------------------------------------------------------------- CLI
def main(
    bundle: str,
    profile: str = "quick",
    dataset_dir: str | None = None,
    output_root: str | None = None,
    stages: Any = None,
    force: Any = False,
    override: Any = None,
    finetune_epochs: int | None = None,
    attack_suite: str | None = None,
    dry_run: bool = False,
    verbose: bool = False,
    **method_option: Any,
) -> None:
    """Plan, then run the experiment's stages and print the paper's table (stages and resume: module docstring).

    Args:
        bundle: the bundle folder (holds configs/train.json, thresholds.json, evaluate.json, robustness.json, the
            overlay of each method it trains (vat.json, ...) and profiles/<profile>.json).
        profile: the profile overlay configs/profiles/<profile>.json, appended LAST to the config list of every stage;
            its "experiment" dict gives the training noise levels of the methods with eps ("<key>_eps") and the
            table's "caption".
        dataset_dir: the data; default: the bundle's own default (synthetic data written on first use).
        output_root: where models/, eval/, logs/ and report/ go; default <bundle>/runs/<profile>.
        stages: the stages to consider, e.g. "[amat,robustness_amat,report]" (names from the plan, or the groups
            train, robustness and each method with eps by its key); default: all.
        force: re-run stages even when their output exists: --force (all selected stages) or --force "[amat,report]".
        override: JSON dict of config overrides given to every stage (after the profile), e.g. '{"epochs": 1}'; an
            "experiment" key changes the profile's experiment dict instead (e.g. '{"experiment": {"vat_eps": [2]}}').
        finetune_epochs: epochs of the fine-tuned runs (their own optimizer and schedule); default: the epochs of
            ``--override`` if it sets them (every run is then that long), else the profile's "finetune_epochs", else
            the profile's epochs.
        attack_suite: the attacks of the robustness stages (robust_bundles.attack_suite, docs/robustness_evaluation.md):
            "quick" (PGD, I-FGSM, noise), "standard" (PGD, noise and APGD on the task loss, each of its terms and
            the task's attack objectives; per-sample worst case) or "strong" (more APGD iterations and restarts, and
            the transfer check from this experiment's STD model); default: the configs' ("quick").
        dry_run: print the plan and the commands, run nothing.
        verbose: show every line of every stage on the console (by default they go to the stage's log file only;
            the console shows one line per stage start and end, a progress bar and each warning once).
        method_option: two options per registered method (``robust_bundles.methods``), named by its key:
            ``--<key>_eps`` for a method with eps (``--vat_eps "[2,6]"``: training noise levels, L2 in the network's
            input units, replacing the profile's ``"<key>_eps"``; "[]" for none; default: the profile's, else the
            ``train_eps`` of the bundle's overlay, the task's value) and ``--<key>_init`` (``--amat_init std``: where
            its runs start: "scratch" (random initialisation), "std" (fine-tune this experiment's STD model) or a
            model.pt / checkpoint.pt file; default: the profile's ``"<key>_init"``, else scratch).
    """
    t0 = time.time()
    eps, inits = method_options(**method_option)
    exp = Experiment(bundle, profile, dataset_dir, output_root, override, eps, inits=inits,
                     finetune_epochs=finetune_epochs, attack_suite=attack_suite)
    plan = exp.plan(stages, force)
    print_plan(exp, plan)
    exp.run_plan(plan, t0, dry_run, verbose)
    if dry_run:
        return

    report_dir = exp.output_root / REPORT_DIR
    if (report_dir / "results.md").is_file() and any(s.kind == "report" for s, _, _ in plan):
        print("\n" + (report_dir / "results.md").read_text())
        print(f"Files in {exp.output_root}:")
        print(f"  report:  {report_dir} (results.md, results.csv, results.json, metric_vs_eps.png, margins.png)")
        print(f"  models:  {exp.output_root / 'models'}/<run>/model.pt")
        print(f"  eval:    {exp.output_root / 'eval'}/<run>/robustness.json, robustness.csv")
        print(f"  logs:    {exp.output_root / LOG_DIR}/<stage>.log")
    print(f"Total time {fmt_time(time.time() - t0)}.")


#: options whose value is JSON (the study's --grid too)
JSON_OPTIONS = ("--override", "--grid")


def _json_override_argv(argv: list[str]) -> list[str]:
    """Turn the JSON of --override (and --grid) into a Python literal, which fire parses faithfully (fire reads JSON's
    true, false and null as the strings 'true', 'false', 'null')."""
    out = list(argv)
    for i, a in enumerate(out):
        option = next((o for o in JSON_OPTIONS if a == o or a.startswith(o + "=")), None)
        if option is None:
            continue
        if a == option and i + 1 < len(out):
            j, raw, prefix = i + 1, out[i + 1], ""
        elif a != option:
            j, raw, prefix = i, a[len(option) + 1:], option + "="
        else:
            continue
        try:
            out[j] = prefix + repr(json.loads(raw))
        except ValueError:
            pass  # not JSON: fire parses it as a Python literal
    return out


def run_cli(func, prog: str, argv: list[str] | None = None) -> int:
    """Run ``func`` as a fire command line: an ExperimentError is printed as ``<prog>: error: ...`` (exit code 1),
    Ctrl-C says how to continue (130)."""
    argv = _json_override_argv(sys.argv[1:] if argv is None else argv)
    try:
        fire.Fire(func, command=argv)
    except ExperimentError as e:
        print(f"\n{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted. Run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, "experiment", argv)


if __name__ == "__main__":
    sys.exit(cli())
