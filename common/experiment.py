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

This module holds the experiment's own plan (its stages, from the method registry and the profile) and its command
line; the stage engine (:mod:`robust_bundles.engine`: inputs, plan and resume decisions, the runner) is shared with
the study (:mod:`robust_bundles.study`).

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

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import methods, report
from .attack_suite import SUITES
from .console import fmt_time
from .engine import inputs as tool_inputs
from .engine.cli import ExperimentError, eps_list, run_cli, whole_epochs
from .engine.inputs import BASE_CONFIGS, TOOL_KEYS, Inputs
from .engine.plan import (
    FINETUNE_CONFIG,
    LOG_DIR,
    REPORT_DIR,
    SCRATCH,
    THRESHOLDS_FILE,
    PlanItem,
    Stage,
    finetune,
    groups,
    model_file,
    robustness_file,
    transfer_from_std,
)
from .engine.runner import Runner, print_plan
from .results import data_used, splits_used

__all__ = ["Experiment", "ExperimentError", "Stage", "build_stages", "bundle_configs", "groups", "main", "cli",
           "method_options", "model_file", "robustness_file", "THRESHOLDS_FILE"]


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


def eps_levels(inputs: Inputs, given: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """The training noise levels of every method with eps whose overlay the bundle has, by method name: the option's
    (``given``, by method), else the profile's ``"<key>_eps"``, else the overlay's ``train_eps``; asking for runs of a
    method without an overlay is an error naming the missing file."""
    asked_by = {str(k).upper(): v for k, v in (given or {}).items() if v is not None}
    out = {}
    for m in methods.all_methods():
        if not m.takes_eps:
            continue
        asked = asked_by.get(m.name, inputs.experiment.get(f"{m.key}_eps"))
        if m.name not in inputs.present:
            if eps_list(asked, f"{m.key}_eps"):
                raise ExperimentError(f"{m.key}_eps asks for {m.name} runs, but the bundle has no "
                                      f"configs/{m.overlay}: render it (python scripts/bundles.py render) or "
                                      f"drop the option.")
            continue
        out[m.name] = eps_list(default_eps(inputs.configs, m) if asked is None else asked, f"{m.key}_eps")
    return out


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


# ----------------------------------------------------------------------------------------------------- experiment
class Experiment:
    """The experiment of one bundle, profile and output folder: its stages (its plan) and the runner that runs them.

    Args: see the module docstring (the command-line options).
    """

    def __init__(self, bundle: str | Path, profile: str | None = "quick", dataset_dir: str | Path | None = None,
                 output_root: str | Path | None = None, override: dict | str | None = None,
                 eps: Mapping[str, Any] | None = None, inits: dict[str, Any] | None = None,
                 finetune_epochs: Any = None, attack_suite: str | None = None) -> None:
        self.inputs = ins = tool_inputs.load(bundle, profile, override, dataset_dir, output_root,
                                             default_root=profile or "default")
        self.bundle, self.output_root, self.profile = ins.bundle, ins.output_root, ins.profile
        self.present, self.overrides, experiment = ins.present, ins.overrides, ins.experiment
        if attack_suite is not None:  # --attack_suite: the robustness stages' attack_suite config key
            if attack_suite not in SUITES:
                raise ExperimentError(f"--attack_suite {attack_suite!r}: give one of {list(SUITES)}.")
            self.overrides["attack_suite"] = attack_suite
        cfg = ins.configs
        self.eps = eps_levels(ins, eps)
        self.extra_runs = extra_runs_of(experiment.get("extra_runs"))
        self.inits = _inits(experiment, inits or {})
        if finetune_epochs is None and "epochs" in self.overrides:  # --override epochs N: every run is N epochs
            finetune_epochs = self.overrides["epochs"]
        self.finetune_epochs = whole_epochs(finetune_epochs if finetune_epochs is not None
                                            else experiment.get("finetune_epochs"))
        if any(v != SCRATCH for v in self.inits.values()) and not (cfg / FINETUNE_CONFIG).is_file():
            raise ExperimentError(f"Fine-tuning ({self.inits}) needs configs/{FINETUNE_CONFIG} in {self.bundle}, "
                                  f"which does not exist: add it (see the hippocampus bundle) or use scratch.")
        self.stages = build_stages(self.eps, self.inits, self.finetune_epochs, self.extra_runs, self.present)
        method_overrides = method_overrides_of(experiment)
        for stage in self.stages:  # under the stage's own arguments and under --override
            method = method_of_stage(stage)
            extra = {k: v for k, v in method_overrides.get(method, {}).items() if k not in self.overrides}
            stage.args = {**extra, **stage.args}
        if self.overrides.get("attack_suite") == "strong":
            self.stages = [transfer_from_std(s, self.output_root) for s in self.stages]
        self.runner = Runner(ins, self)
        self.runner.check_overrides(self.stages)

    def runs(self) -> list[str]:
        return [s.run for s in self.stages if s.kind == "train"]

    def plan(self, stages: Any = None, force: Any = False) -> list[PlanItem]:
        """``(stage, action, reason)`` for every selected stage (:func:`robust_bundles.engine.plan.make_plan`)."""
        return self.runner.plan(self.stages, stages, force)

    # --------------------------------------------------------------------------------------------- the report
    def _labels(self) -> dict[str, str]:
        return {run: spec["label"] for run, spec in self.extra_runs.items() if spec["label"]}

    def report_signature(self, stage: Stage) -> list:
        labels = self._labels()
        return ["report", self.runs(), self.inputs.caption(), *([labels] if labels else [])]

    def report_target(self, stage: Stage) -> str:
        """What a report stage writes, for the dry run."""
        return f"robust_bundles.report.write_report -> {self.output_root / REPORT_DIR}"

    def write_report(self, stage: Stage | None = None) -> dict[str, Path]:
        """The report; its caption states the profile's description and, read from the stage logs, the data the runs
        actually used (the profile's case counts are upper bounds, and --override may change them)."""
        used = data_used(splits_used(self.output_root))
        caption = self.inputs.caption() + (f" Data used (from the stage logs): {used}." if used else "")
        return report.write_report(self.output_root, self.runs(), caption=caption,
                                   labels=self._labels(), out_dir=self.output_root / REPORT_DIR)

    # ------------------------------------------------------------------------------------------------- printing
    def describe(self) -> str:
        lines = [
            f"Experiment: bundle {self.bundle.name} ({self.bundle}), profile {self.profile or '(none)'}",
            f"  output root: {self.output_root}",
            f"  dataset: {self.inputs.dataset_dir or 'the bundle default (dataset_dir not given)'}",
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
    print_plan(exp.describe(), plan)
    exp.runner.run_plan(plan, t0, dry_run, verbose)
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


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, "experiment", argv)


if __name__ == "__main__":
    sys.exit(cli())
