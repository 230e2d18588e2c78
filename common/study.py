"""AMAT calibration study: which AMAT settings give the best robustness at the scale users run, measured on the
VALIDATION split, against the clean-versus-robust frontier that VAT draws with a fixed noise level.

    python scripts/amat_study.py --bundle bundles/hippocampus_mri_segmentation \\
        --dataset_dir ../shared/data/msd_hippocampus --output_root runs/amat_study
    python scripts/amat_study.py ... --dry_run                 # the plan and the commands
    python scripts/amat_study.py ... --phase validation        # the study only, no test-split evaluation

What runs (every stage is a ``python -m monai.bundle run`` of the bundle, with the profile overlay last, run by the
stage engine's runner (:mod:`robust_bundles.engine`), as the experiment tool's: a stage whose output exists and whose
command did not change is skipped, an interrupted training resumes, so running the same command again continues where
it stopped):

1. Phase "validation": STD (the profile's training), the thresholds xi with two rules (mean + 2 std, the 0.9
   quantile), VAT at several noise levels fine-tuned from STD for the same epochs as the fine-tuned AMAT (the
   frontier a fixed noise level can reach at that budget; ``--vat_eps`` adds VAT from scratch), TEAT fine-tuned, and
   every AMAT configuration of the grid (:data:`robust_bundles.study_grid.DEFAULT_GRID`: from scratch or fine-tuned
   from STD, the paper's fixed Delta 1/2/3 or the schedule-aware margin, training attack steps 3/5, xi rule, epochs 6/9).
   Each model is evaluated on the first ``--val_cases`` cases of the validation split (the profile's PGD, its
   foreground-slices setting; IFGSM is skipped there, the choice reads PGD only). The study report
   ``study/study.md`` (+ .csv, .json, ``frontier.png``) tabulates clean Dice, Dice under PGD at each eps and the
   average, AMAT's final margin quantiles, training CPU time and cost, and each AMAT point's height above the VAT
   frontier; it chooses one configuration by the criterion below and writes ``study/choice.json``.
2. Phase "test": the chosen AMAT configuration, STD, every VAT and TEAT model (and the profile's AMAT defaults before
   the study, ``reference`` in the grid) are evaluated ONCE on the test split (``test/eval/<run>``); the paper-style
   table goes to ``test/report/`` and a last section of ``study/study.md``. Nothing on the test split feeds a choice.

Criterion (stated before the runs): among the AMAT configurations whose clean validation Dice is within
``--clean_tolerance`` (0.03) of STD's and whose training cost is at most that of one VAT run of the profile, the
highest average Dice under PGD over the evaluated eps. Cost is counted in forward-backward passes per batch, which is
what wall time follows on a CPU (an attack step costs one; AMAT's clean pass with beta 0.5 one more):
``epochs * (T + 1 + [beta > 0])``; VAT of the profile: ``epochs * (T + 1)``. Wall times are reported too, but a
shared machine makes them noisy; the CPU time of each stage's process (user + system) is recorded in its log record
(``logs/<stage>.json``, ``cpu_seconds``) and tabulated. The VAT frontier: STD (VAT at eps 0) and the VAT runs that no
other of them beats on both clean Dice and PGD average, joined by straight lines; a point's "height" is its PGD
average minus the frontier at its clean Dice.

Dice stands for the bundle's headline metric: the study reads its name and direction from the ``MetricSpec`` that
every robustness.json carries, so on a lower-is-better metric (the landmark bundle's MRE) "best", the frontier, the
heights (positive: better than the frontier) and the clean tolerance (how much worse than STD) follow that direction.
Settings whose scale depends on the bundle (the grid's margins, the VAT and TEAT noise levels, the clean tolerance,
the number of validation cases) come from the command line, else from the profile's ``experiment.study`` (the landmark
bundle's quick profile has one), else from :func:`robust_bundles.study_grid.study_defaults` (the hippocampus study).

This module holds the study's plan (the stages of each phase) and its command line (``scripts/amat_study.py``); what
it compares (the grid, the baselines, the settings) is :mod:`robust_bundles.study_grid`, the analysis
:mod:`robust_bundles.study_analysis`, the tables and plots :mod:`robust_bundles.study_report`, the stages' planning,
resume and running :mod:`robust_bundles.engine`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import methods, study_report
from .console import fmt_time
from .engine import inputs as tool_inputs
from .engine.cli import ExperimentError, as_list, eps_list, run_cli, whole_epochs
from .engine.plan import PlanItem, Stage, finetune, model_file
from .engine.runner import Runner, print_plan
from .experiment import build_stages
from .study_grid import XI_RULES, AmatConfig, Baseline, baseline_options, parse_grid, study_settings
from .study_report import STUDY_DIR

__all__ = ["Study", "ExperimentError", "main", "cli"]


class Study:
    """The study's plan (its stages, phase by phase) and the runner that runs them (the experiment tool's engine:
    plan, skip, resume, logs, failure messages).

    Args: see :func:`main`.
    """

    def __init__(self, bundle: str, dataset_dir: str | None, output_root: str | None, profile: str = "quick",
                 override: Any = None, grid: Any = None, val_cases: int | None = None,
                 finetune_epochs: int | None = None, clean_tolerance: float | None = None,
                 test_baselines: str = "best", **baseline_eps: Any) -> None:
        options = baseline_options()
        unknown = sorted(set(baseline_eps) - set(options))
        if unknown:
            raise ExperimentError(f"Unknown option(s) {', '.join('--' + u for u in unknown)}: the baselines' options "
                                  f"are {', '.join('--' + o for o in options)}.")
        self.inputs = ins = tool_inputs.load(bundle, profile, override, dataset_dir, output_root,
                                             default_root="amat_study")
        self.bundle, self.output_root, self.profile = ins.bundle, ins.output_root, ins.profile
        self.present, self.overrides = ins.present, ins.overrides
        s = study_settings(self.bundle / ins.profile_file if ins.profile_file else None, dict(
            grid=grid, val_cases=val_cases, finetune_epochs=finetune_epochs, clean_tolerance=clean_tolerance,
            **baseline_eps))
        val_cases, finetune_epochs, clean_tolerance = s["val_cases"], s["finetune_epochs"], s["clean_tolerance"]
        self.grid = parse_grid(s["grid"])
        self.baselines = [Baseline(name, e, init) for option, (name, init) in options.items()
                          for e in eps_list(s[option], option)]
        absent = sorted({b.method for b in self.baselines} - set(self.present))
        if absent:
            raise ExperimentError(f"The study asks for {', '.join(absent)} runs, but {self.bundle} has no overlay "
                                  f"for them: render the bundle (python scripts/bundles.py render).")
        if test_baselines not in ("best", "all"):
            raise ExperimentError(f"--test_baselines must be 'best' or 'all'; got {test_baselines!r}.")
        self.test_baselines = test_baselines
        self.val_cases = int(val_cases)
        if self.val_cases < 1:
            raise ExperimentError(f"--val_cases must be >= 1; got {val_cases!r}.")
        self.finetune_epochs = whole_epochs(finetune_epochs)
        self.clean_tolerance = float(clean_tolerance)
        configs = [ins.configs / "train.json"]
        if self.profile:
            configs.append(ins.configs / "profiles" / f"{self.profile}.json")
        merged: dict[str, Any] = {}
        for c in configs:
            merged.update(json.loads(c.read_text()))
        merged.update(self.overrides)
        self.profile_epochs = int(merged["epochs"])  # of STD, the VAT/TEAT from scratch and AMAT without epochs
        self.profile_steps = int(merged["attack_steps"])  # T of every VAT and TEAT run
        self.runner = Runner(ins, self)
        self.stages = self.phase_stages("validation")
        self.runner.check_overrides(self.stages)

    def path(self, rel: str) -> Path:
        return self.runner.root.path(rel)

    def plan(self, stages: Any = None, force: Any = False) -> list[PlanItem]:
        """``(stage, action, reason)`` for every selected stage of the current phase."""
        return self.runner.plan(self.stages, stages, force)

    # ------------------------------------------------------------------------------------------------ stages
    def epochs_of(self, config: AmatConfig) -> int:
        return int(config.epochs) if config.epochs is not None else self.profile_epochs

    def train_stages(self) -> list[Stage]:
        std = methods.STD.run_name()
        stages = [s for s in build_stages() if s.kind in ("train", "thresholds") and s.run in (std, None)]
        for s in stages:
            if s.kind == "thresholds":  # pinned: the study compares the rules, whatever the profile's default
                s.args["threshold_rule"] = "mean_std"
        if any(c.xi == "quantile" for c in self.grid):
            stages.append(Stage("thresholds_quantile", "thresholds", XI_RULES["quantile"],
                                needs=[model_file(std)], configs=["train.json", "thresholds.json"],
                                args={"threshold_rule": "quantile",
                                      "thresholds_file": str(self.path(XI_RULES["quantile"]))}))
        for c in self.grid:
            args = {"run_name": c.run, **c.margin_args(), "thresholds_file": str(self.path(XI_RULES[c.xi]))}
            if c.epochs is not None:
                args["epochs"] = int(c.epochs)
            stage = Stage(c.run, "train", model_file(c.run), needs=[XI_RULES[c.xi]],
                          configs=["train.json", methods.AMAT.overlay], args=args, run=c.run)
            stages.append(finetune(stage, c.init))
        for b in self.baselines:
            overlay = methods.get(b.method).overlay
            stage = Stage(b.run, "train", model_file(b.run), configs=["train.json", overlay],
                          args={"train_eps": float(b.eps), "run_name": b.run, "attack_steps": self.profile_steps},
                          run=b.run)
            stages.append(finetune(stage, b.init, self.finetune_epochs))
        return stages

    def eval_stage(self, run: str, split: str) -> Stage:
        out = f"{split}/eval/{run}/robustness.json"
        args: dict[str, Any] = {"run_name": run, "eval_split": split, "output_dir": str(self.path(out).parent)}
        if split == "validation":  # PGD only: the choice reads PGD; IFGSM with 0 steps is a clean copy, not reported
            args.update(max_test_cases=self.val_cases, ifgsm_steps=0)
        prefix = "robustness" if split == "validation" else "test"
        return Stage(f"{prefix}_{run}", "robustness", out, needs=[model_file(run)],
                     configs=["train.json", "evaluate.json", "robustness.json"], args=args, run=run)

    def study_runs(self) -> list[str]:
        return [methods.STD.run_name()] + [b.run for b in self.baselines] + [c.run for c in self.grid]

    def test_runs(self, chosen: str) -> list[str]:
        """STD, the baselines ("all"; "best": the VAT/TEAT run with the best validation PGD average, read from
        study/study.json), the reference AMAT ("all" only) and the chosen configuration."""
        if self.test_baselines == "all":
            runs = [methods.STD.run_name()] + [b.run for b in self.baselines]
            return runs + [c.run for c in self.grid if c.reference and c.run != chosen] + [chosen]
        return [methods.STD.run_name()] + self.best_baselines() + [chosen]

    def best_baselines(self) -> list[str]:
        """The VAT/TEAT run of this study with the best validation PGD average (a list: empty without baselines)."""
        path = self.path(f"{STUDY_DIR}/study.json")
        try:
            data = json.loads(path.read_text())
            rows = data["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ExperimentError(f"No validation study in {path}: run the validation phase first.") from None
        sign = 1.0 if (data.get("analysis") or {}).get("higher_is_better", True) else -1.0  # MRE: the lowest
        runs = {b.run for b in self.baselines}
        best = [r for r in rows if r["run"] in runs and r.get("pgd_avg") is not None]
        return [max(best, key=lambda r: sign * r["pgd_avg"])["run"]] if best else []

    def phase_stages(self, phase: str, chosen: str | None = None) -> list[Stage]:
        """The stages of one phase; the test phase needs the chosen run (from study/choice.json)."""
        if phase == "validation":
            evals = {r: self.eval_stage(r, "validation") for r in self.study_runs()}
            stages = []
            for s in self.train_stages():  # each model's evaluation right after its training: results come early
                stages += [s] + ([evals[s.run]] if s.run in evals else [])
            return stages + [Stage("study", "report", f"{STUDY_DIR}/choice.json",
                                   needs=[e.output for e in evals.values()])]
        runs = self.test_runs(chosen)
        evals = [self.eval_stage(r, "test") for r in runs]
        return evals + [Stage("test_report", "report", "test/report/results.md",
                              needs=[e.output for e in evals] + [f"{STUDY_DIR}/choice.json"])]

    def describe(self) -> str:
        amat = ", ".join(c.name for c in self.grid)
        base = ", ".join(f"{b.run}" for b in self.baselines)
        return "\n".join([
            f"AMAT study: bundle {self.bundle.name}, profile {self.profile or '(none)'}",
            f"  output root: {self.output_root}",
            f"  dataset: {self.inputs.dataset_dir or 'the bundle default (dataset_dir not given)'}",
            f"  baselines: std, {base}",
            f"  AMAT grid ({len(self.grid)}): {amat}",
            f"  choice on the first {self.val_cases} validation cases: best PGD avg with clean at most "
            f"{self.clean_tolerance:g} worse than STD's and cost <= one VAT run ({self.profile_epochs} epochs, "
            f"T {self.profile_steps})",
        ] + ([f"  overrides: {json.dumps(self.overrides)}"] if self.overrides else []))

    # --------------------------------------------------------------------------------------------- the reports
    def report_signature(self, stage: Stage) -> list:
        return [stage.name, stage.needs, self.clean_tolerance, [asdict(c) for c in self.grid], self.inputs.caption()]

    def report_target(self, stage: Stage) -> str:
        return f"robust_bundles.study: the analysis -> {self.output_root / STUDY_DIR}"

    def write_report(self, stage: Stage) -> dict[str, Path]:
        """The report of a phase (:mod:`robust_bundles.study_report`): the study on the validation split, or the
        test split's evaluation of the choice."""
        if stage.name == "test_report":
            return study_report.write_test_report(self)
        return study_report.write_study(self)

    def chosen(self) -> str:
        path = self.path(f"{STUDY_DIR}/choice.json")
        try:
            return json.loads(path.read_text())["run"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ExperimentError(f"No choice in {path}: run the validation phase first.") from None


# ------------------------------------------------------------------------------------------------------------- CLI
def main(
    bundle: str,
    dataset_dir: str | None = None,
    output_root: str | None = None,
    profile: str = "quick",
    phase: str = "all",
    grid: Any = None,
    test_baselines: str = "best",
    val_cases: int | None = None,
    finetune_epochs: int | None = None,
    clean_tolerance: float | None = None,
    override: Any = None,
    stages: Any = None,
    force: Any = False,
    dry_run: bool = False,
    verbose: bool = False,
    **baseline_eps: Any,
) -> None:
    """Run the study (module docstring): plan, then the validation phase, the choice, and the test phase.

    The settings grid, the baselines' eps lists, val_cases, finetune_epochs and clean_tolerance default to the
    profile's ``experiment.study`` (e.g. the landmark bundle's quick profile: eps and margins in its units, the
    tolerance in mm), else to :func:`robust_bundles.study_grid.study_defaults` (the hippocampus study, given in brackets below).

    Args:
        bundle: the bundle folder (with configs/finetune.json and configs/profiles/<profile>.json).
        dataset_dir: the data (an MSD task folder); default: the bundle's synthetic data.
        output_root: where models/, validation/, test/, study/ and logs/ go; default <bundle>/runs/amat_study.
        profile: the profile overlay of every stage (its epochs and attack steps are the VAT baseline's).
        phase: "validation" (train and choose), "test" (evaluate the choice once on the test split) or "all".
        grid: the AMAT configurations: a JSON list of dicts (keys of AmatConfig) or a JSON file [the
            DEFAULT_GRID of robust_bundles.study_grid].
        test_baselines: which baselines the test phase evaluates besides STD and the choice: "best" (the VAT/TEAT
            run with the best validation PGD average; the cheap default) or "all" (every one, and the reference AMAT).
        val_cases: the number of validation cases evaluated (the first ones of the split) [8].
        finetune_epochs: epochs of the fine-tuned VAT and TEAT runs [6].
        clean_tolerance: the clean condition of the criterion: how much worse than STD's clean metric a
            configuration may be, in the metric's units (Dice below STD's; mm of MRE above STD's for landmarks)
            [0.03].
        override: JSON dict of config overrides for every stage (as the experiment tool's), e.g. for a smoke test.
        stages: run only these stages of the phase(s), e.g. "[std,thresholds,amat_ft6_m10,robustness_amat_ft6_m10]".
        force: re-run stages even when done: --force or --force "[stage,...]".
        dry_run: print the plan and the commands, run nothing.
        verbose: show every line of every stage on the console (by default: the stage's log file only).
        baseline_eps: two options per registered method with eps (``robust_bundles.methods``), by its key:
            ``--<key>_eps`` (noise levels trained from scratch [none]) and ``--<key>_ft_eps`` (fine-tuned from STD
            for finetune_epochs epochs; "[]" for none) [its registry entry's ``study_ft_eps``: VAT 2, 4, 6, 8 (the
            frontier), TEAT 6, TRADES none].
    """
    if phase not in ("validation", "test", "all"):
        raise ExperimentError(f"--phase must be validation, test or all; got {phase!r}.")
    t0 = time.time()
    study = Study(bundle, dataset_dir, output_root, profile, override, grid, val_cases, finetune_epochs,
                  clean_tolerance, test_baselines, **baseline_eps)
    phases = ["validation", "test"] if phase == "all" else [phase]
    for name in phases:
        if name == "test":
            if dry_run and not study.path(f"{STUDY_DIR}/choice.json").is_file():
                print("\nPhase test: evaluates the chosen configuration (study/choice.json, made by the validation "
                      "phase) and the baselines once on the test split.")
                break
            study.stages = study.phase_stages("test", study.chosen())
        print(f"\n=== Phase {name} ===")
        _run_plan(study, stages, force, dry_run, t0, verbose)
        if name == "validation" and not dry_run and study.path(f"{STUDY_DIR}/study.md").is_file():
            print("\n" + study.path(f"{STUDY_DIR}/study.md").read_text())
    if not dry_run and "test" in phases and study.path(f"{STUDY_DIR}/test.md").is_file():
        print("\n" + study.path(f"{STUDY_DIR}/test.md").read_text())
    print(f"Total time {fmt_time(time.time() - t0)}.")


def _run_plan(study: Study, stages: Any, force: Any, dry_run: bool, t0: float, verbose: bool = False) -> None:
    names = {s.name for s in study.stages}
    wanted = None if stages in (None, True, "", [], ()) else [n for n in as_list(stages, "stages") if n in names]
    if wanted == []:
        return  # none of the selected stages belongs to this phase
    plan = study.plan(wanted, force)
    print_plan(study.describe(), plan)
    study.runner.run_plan(plan, t0, dry_run, verbose)


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, "amat_study", argv)

