"""AMAT calibration study: which AMAT settings give the best robustness at the scale users run, measured on the
VALIDATION split, against the clean-versus-robust frontier that VAT draws with a fixed noise level.

    python scripts/amat_study.py --bundle bundles/hippocampus_mri_segmentation \\
        --dataset_dir ../shared/data/msd_hippocampus --output_root runs/amat_study
    python scripts/amat_study.py ... --dry_run                 # the plan and the commands
    python scripts/amat_study.py ... --phase validation        # the study only, no test-split evaluation

What runs (every stage is a ``python -m monai.bundle run`` of the bundle, with the profile overlay last, through the
stage machinery of ``robust_bundles.experiment``: a stage whose output exists and whose command did not change is skipped,
an interrupted training resumes, so running the same command again continues where it stopped):

1. Phase "validation": STD (the profile's training), the thresholds xi with two rules (mean + 2 std, the 0.9
   quantile), VAT at several noise levels fine-tuned from STD for the same epochs as the fine-tuned AMAT (the
   frontier a fixed noise level can reach at that budget; ``--vat_eps`` adds VAT from scratch), TEAT fine-tuned, and
   every AMAT configuration of the grid (:data:`DEFAULT_GRID`: from scratch or fine-tuned from STD,
   the paper's fixed Delta 1/2/3 or the schedule-aware margin, training attack steps 3/5, xi rule, epochs 6/9).
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
bundle's quick profile has one), else from :data:`STUDY_DEFAULTS` (the hippocampus study). The stages and their
resume are the experiment engine's (:mod:`robust_bundles.experiment`); the command line is
``scripts/amat_study.py``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from . import experiment as tool
from . import methods, report
from .io import atomic_write_json, atomic_write_text
from .margins import MARGIN_RULES, MarginBook
from .metrics import MetricSpec

ExperimentError = tool.ExperimentError

STUDY_DIR = "study"
XI_RULES = {"mean_std": "models/std/thresholds.json", "quantile": "models/std/thresholds_quantile.json"}
"""xi rule -> thresholds file (relative to the output root). mean_std is the profile's own thresholds stage."""
SPLITS = ("validation", "test")


# ------------------------------------------------------------------------------------------------------------ grid
@dataclass
class AmatConfig:
    """One AMAT configuration of the study.

    Args:
        name: short name; the run is ``amat_<name>``.
        init: "scratch" (random initialisation) or "std" (fine-tuned from the STD model, fresh optimizer).
        epochs: training epochs of the run; None for the profile's.
        margin_rule: "fixed" (Delta = expansion_step, the paper's rule) or "target" (schedule-aware: Delta from
            target_margin, the epochs and reach_fraction).
        expansion_step: Delta of the fixed rule (L2, input intensity units).
        target_margin: M of the target rule (same units); the cap.
        reach_fraction: rho of the target rule.
        attack_steps: T, PGD steps of the training attack.
        xi: threshold rule, a key of :data:`XI_RULES`.
        beta: weight of the clean loss (AMAT's 0.5).
        perturbation_memory: warm-start the training attack from each sample's last perturbation (True), cold start
            (False), or None for the study's setting (--override, the profile); e.g. a T = 5 cold-start entry in a
            study of T = 1 with the memory.
        reference: the profile's AMAT settings before the study (also evaluated on the test split).
    """

    name: str
    init: str = methods.FINE_TUNED
    epochs: int | None = None
    margin_rule: str = "target"
    expansion_step: float | None = None
    target_margin: float | None = None
    reach_fraction: float = 0.5
    attack_steps: int = 3
    xi: str = "mean_std"
    beta: float = 0.5
    perturbation_memory: bool | None = None
    reference: bool = False

    def __post_init__(self) -> None:
        where = f"grid entry {self.name!r}"
        if not self.name or not all(c.isalnum() or c in "_-." for c in self.name):
            raise ExperimentError(f"{where}: the name must be a non-empty word (letters, digits, _ - .).")
        if self.init not in (methods.SCRATCH, methods.FINE_TUNED):
            raise ExperimentError(f"{where}: init must be 'scratch' or 'std', not {self.init!r}.")
        if self.margin_rule == "fixed" and not (self.expansion_step and self.expansion_step > 0):
            raise ExperimentError(f"{where}: the fixed rule needs expansion_step > 0.")
        if self.margin_rule == "target" and not (self.target_margin and self.target_margin > 0):
            raise ExperimentError(f"{where}: the target rule needs target_margin > 0.")
        if self.margin_rule not in MARGIN_RULES:
            raise ExperimentError(f"{where}: margin_rule must be 'fixed' or 'target', not {self.margin_rule!r}.")
        if self.xi not in XI_RULES:
            raise ExperimentError(f"{where}: xi must be one of {sorted(XI_RULES)}, not {self.xi!r}.")
        if int(self.attack_steps) != self.attack_steps or self.attack_steps < 1:
            raise ExperimentError(f"{where}: attack_steps must be a whole number >= 1.")
        if self.perturbation_memory not in (None, True, False):
            raise ExperimentError(f"{where}: perturbation_memory must be true, false or left out (the study's "
                                  f"setting), not {self.perturbation_memory!r}.")

    @property
    def run(self) -> str:
        return f"{methods.candidate().key}_{self.name}"

    def delta(self, epochs: int) -> float:
        """The expansion step this configuration trains with (target rule: from its epochs)."""
        return MarginBook(1, rule=self.margin_rule, expansion_step=self.expansion_step,
                          target_margin=self.target_margin, epochs=epochs,
                          reach_fraction=self.reach_fraction).expansion_step

    def margin_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"margin_rule": self.margin_rule, "attack_steps": int(self.attack_steps),
                                "amat_beta": float(self.beta)}
        if self.perturbation_memory is not None:
            args["perturbation_memory"] = self.perturbation_memory
        if self.margin_rule == "fixed":
            args["expansion_step"] = float(self.expansion_step)
        else:
            args.update(target_margin=float(self.target_margin), reach_fraction=float(self.reach_fraction))
        return args


# Base (first): fine-tuned from STD for 6 epochs, schedule-aware margin to 10 (the largest evaluated eps) at half of
# the run, T = 3, xi = mean + 2 std. Each other entry changes one factor of the base; the reference changes several: it
# is the quick profile's AMAT before this study. Cut to fit about 5 CPU hours on the real data (measured: one CPU
# thread of a shared 2-core machine): T = 10 (1.5 VAT runs), 12 fine-tuned epochs (1.25) and the schedule-aware
# margin from scratch (1.25); give them with --grid to run them.
DEFAULT_GRID: tuple[dict, ...] = (
    dict(name="ft6_m10", epochs=6),
    dict(name="scratch_d1", init="scratch", margin_rule="fixed", expansion_step=1.0, reference=True),
    dict(name="ft6_d1", epochs=6, margin_rule="fixed", expansion_step=1.0),
    dict(name="ft6_d2", epochs=6, margin_rule="fixed", expansion_step=2.0),
    dict(name="ft6_d3", epochs=6, margin_rule="fixed", expansion_step=3.0),
    dict(name="ft6_m10_t5", epochs=6, attack_steps=5),
    dict(name="ft6_m10_q90", epochs=6, xi="quantile"),
    dict(name="ft9_m10", epochs=9),
)
for _entry in DEFAULT_GRID:
    _entry.setdefault("target_margin", 10.0 if _entry.get("margin_rule", "target") == "target" else None)


def baseline_options() -> dict[str, tuple[str, str]]:
    """The study's options of the registered methods with eps (the frontier and the other baselines), by option
    name: ``"<key>_eps"`` (runs from scratch) and ``"<key>_ft_eps"`` (fine-tuned from STD) -> (method, init)."""
    out = {}
    for m in methods.all_methods():
        if m.takes_eps and m.role in ("frontier", "baseline"):
            out[f"{m.key}_eps"] = (m.name, methods.SCRATCH)
            out[f"{m.key}_ft_eps"] = (m.name, methods.FINE_TUNED)
    return out


def study_defaults() -> dict[str, Any]:
    """The study's settings when neither the command line nor the profile's ``experiment.study`` gives them: the
    hippocampus study (its eps in z-score units, its tolerance in Dice); each baseline's fine-tuned noise levels are
    its registry entry's ``study_ft_eps``, none from scratch. A bundle whose metric or noise levels have other scales
    (the landmark bundle: eps 0.5-2 of grey levels in [0, 1], MRE in mm) states its own in its profile."""
    eps = {option: tuple(methods.get(name).study_ft_eps) if init != methods.SCRATCH else ()
           for option, (name, init) in baseline_options().items()}
    return {"grid": None, **eps, "val_cases": 8, "finetune_epochs": 6, "clean_tolerance": 0.03}


def __getattr__(name: str) -> Any:
    if name == "STUDY_DEFAULTS":  # the registry's current methods
        return study_defaults()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def study_settings(profile_file: Path | None, given: dict[str, Any]) -> dict[str, Any]:
    """The study's settings: those given (not None), else the profile's ``experiment.study``, else
    :func:`study_defaults`.

    Args:
        profile_file: the profile (``configs/profiles/<profile>.json``), None without one.
        given: the command line's values by name (None: not given).
    """
    own: Any = {}
    if profile_file is not None and profile_file.is_file():
        own = json.loads(profile_file.read_text()).get("experiment", {}).get("study", {})
    if not isinstance(own, dict):
        raise ExperimentError(f"{profile_file}: experiment.study must be a dict of study settings such as "
                              f"{{\"vat_ft_eps\": [1, 2]}}; got {own!r}.")
    defaults = study_defaults()
    unknown = sorted(k for k in set(own) - set(defaults) if not k.startswith("_desc"))
    if unknown:
        raise ExperimentError(f"{profile_file}: experiment.study has unknown key(s) {unknown}; known: "
                              f"{sorted(defaults)}.")
    return {k: given[k] if given.get(k) is not None else own.get(k, default) for k, default in defaults.items()}


def parse_grid(grid: Any) -> list[AmatConfig]:
    """The grid from a list of dicts, a JSON text, a JSON file or None (:data:`DEFAULT_GRID`)."""
    if grid is None:
        entries = [dict(e) for e in DEFAULT_GRID]
    else:
        if isinstance(grid, (str, Path)) and Path(str(grid)).is_file():
            grid = Path(str(grid)).read_text()
        if isinstance(grid, str):
            try:
                grid = json.loads(grid)
            except ValueError as e:
                raise ExperimentError(f"--grid is neither a JSON list nor a JSON file ({e}).") from None
        if not isinstance(grid, (list, tuple)) or not all(isinstance(e, dict) for e in grid):
            raise ExperimentError("--grid must be a list of dicts such as [{\"name\": \"ft6\", \"epochs\": 6}].")
        entries = [dict(e) for e in grid]
    known = set(AmatConfig.__dataclass_fields__)
    configs = []
    for e in entries:
        unknown = set(e) - known
        if unknown:
            raise ExperimentError(f"grid entry {e.get('name')!r}: unknown key(s) {sorted(unknown)}; known: "
                                  f"{sorted(known)}.")
        configs.append(AmatConfig(**e))
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ExperimentError(f"--grid: names must be unique; got {names}.")
    return configs


def cost_units(epochs: int, steps: int, beta: float) -> int:
    """Forward-backward passes per batch over a run: ``epochs * (T + 1 + [beta > 0])`` (module docstring)."""
    return int(epochs) * (int(steps) + 1 + (1 if beta > 0 else 0))


# ----------------------------------------------------------------------------------------------------------- study
@dataclass
class Baseline:
    """A run of a baseline method with eps (VAT, TEAT, ...) in the study."""

    method: str
    eps: float
    init: str = methods.SCRATCH

    @property
    def run(self) -> str:
        name = methods.get(self.method).run_name(self.eps)
        return name if self.init == methods.SCRATCH else f"{name}_ft"


class Study(tool.Experiment):
    """The study's stages on top of the experiment tool (plan, skip, resume, logs, failure messages).

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
        no_runs = {m.name: [] for m in methods.all_methods() if m.takes_eps}
        super().__init__(bundle, profile, dataset_dir, output_root, override, eps=no_runs)
        if output_root is None:
            self.output_root = self.bundle / "runs" / "amat_study"
        s = study_settings(self.bundle / self.profile_file if self.profile_file else None, dict(
            grid=grid, val_cases=val_cases, finetune_epochs=finetune_epochs, clean_tolerance=clean_tolerance,
            **baseline_eps))
        val_cases, finetune_epochs, clean_tolerance = s["val_cases"], s["finetune_epochs"], s["clean_tolerance"]
        self.grid = parse_grid(s["grid"])
        self.baselines = [Baseline(name, e, init) for option, (name, init) in options.items()
                          for e in tool.eps_list(s[option], option)]
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
        self.finetune_epochs = tool.whole_epochs(finetune_epochs)
        self.clean_tolerance = float(clean_tolerance)
        configs = [self.bundle / "configs" / "train.json"]
        if self.profile:
            configs.append(self.bundle / "configs" / "profiles" / f"{self.profile}.json")
        merged: dict[str, Any] = {}
        for c in configs:
            merged.update(json.loads(c.read_text()))
        merged.update(self.overrides)
        self.profile_epochs = int(merged["epochs"])  # of STD, the VAT/TEAT from scratch and AMAT without epochs
        self.profile_steps = int(merged["attack_steps"])  # T of every VAT and TEAT run
        self._stage: tool.Stage | None = None
        self.metric = MetricSpec("metric")  # the headline metric, read by rows()
        self.stages = self.phase_stages("validation")

    # ------------------------------------------------------------------------------------------------ stages
    def epochs_of(self, config: AmatConfig) -> int:
        return int(config.epochs) if config.epochs is not None else self.profile_epochs

    def train_stages(self) -> list[tool.Stage]:
        std = methods.STD.run_name()
        stages = [s for s in tool.build_stages() if s.kind in ("train", "thresholds") and s.run in (std, None)]
        for s in stages:
            if s.kind == "thresholds":  # pinned: the study compares the rules, whatever the profile's default
                s.args["threshold_rule"] = "mean_std"
        if any(c.xi == "quantile" for c in self.grid):
            stages.append(tool.Stage("thresholds_quantile", "thresholds", XI_RULES["quantile"],
                                     needs=[tool.model_file(std)], configs=["train.json", "thresholds.json"],
                                     args={"threshold_rule": "quantile",
                                           "thresholds_file": str(self.path(XI_RULES["quantile"]))}))
        for c in self.grid:
            args = {"run_name": c.run, **c.margin_args(), "thresholds_file": str(self.path(XI_RULES[c.xi]))}
            if c.epochs is not None:
                args["epochs"] = int(c.epochs)
            stage = tool.Stage(c.run, "train", tool.model_file(c.run), needs=[XI_RULES[c.xi]],
                               configs=["train.json", methods.AMAT.overlay], args=args, run=c.run)
            stages.append(tool.finetune(stage, c.init))
        for b in self.baselines:
            overlay = methods.get(b.method).overlay
            stage = tool.Stage(b.run, "train", tool.model_file(b.run), configs=["train.json", overlay],
                               args={"train_eps": float(b.eps), "run_name": b.run,
                                     "attack_steps": self.profile_steps}, run=b.run)
            stages.append(tool.finetune(stage, b.init, self.finetune_epochs))
        return stages

    def eval_stage(self, run: str, split: str) -> tool.Stage:
        out = f"{split}/eval/{run}/robustness.json"
        args: dict[str, Any] = {"run_name": run, "eval_split": split, "output_dir": str(self.path(out).parent)}
        if split == "validation":  # PGD only: the choice reads PGD; IFGSM with 0 steps is a clean copy, not reported
            args.update(max_test_cases=self.val_cases, ifgsm_steps=0)
        prefix = "robustness" if split == "validation" else "test"
        return tool.Stage(f"{prefix}_{run}", "robustness", out, needs=[tool.model_file(run)],
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

    def phase_stages(self, phase: str, chosen: str | None = None) -> list[tool.Stage]:
        """The stages of one phase; the test phase needs the chosen run (from study/choice.json)."""
        if phase == "validation":
            evals = {r: self.eval_stage(r, "validation") for r in self.study_runs()}
            stages = []
            for s in self.train_stages():  # each model's evaluation right after its training: results come early
                stages += [s] + ([evals[s.run]] if s.run in evals else [])
            return stages + [tool.Stage("study", "report", f"{STUDY_DIR}/choice.json",
                                        needs=[e.output for e in evals.values()])]
        runs = self.test_runs(chosen)
        evals = [self.eval_stage(r, "test") for r in runs]
        return evals + [tool.Stage("test_report", "report", "test/report/results.md",
                                   needs=[e.output for e in evals] + [f"{STUDY_DIR}/choice.json"])]

    def describe(self) -> str:
        amat = ", ".join(c.name for c in self.grid)
        base = ", ".join(f"{b.run}" for b in self.baselines)
        return "\n".join([
            f"AMAT study: bundle {self.bundle.name}, profile {self.profile or '(none)'}",
            f"  output root: {self.output_root}",
            f"  dataset: {self.dataset_dir or 'the bundle default (dataset_dir not given)'}",
            f"  baselines: std, {base}",
            f"  AMAT grid ({len(self.grid)}): {amat}",
            f"  choice on the first {self.val_cases} validation cases: best PGD avg with clean at most "
            f"{self.clean_tolerance:g} worse than STD's and cost <= one VAT run ({self.profile_epochs} epochs, T {self.profile_steps})",
        ] + ([f"  overrides: {json.dumps(self.overrides)}"] if self.overrides else []))

    def signature(self, stage: tool.Stage) -> list:
        if stage.kind == "report":
            return [stage.name, stage.needs, self.clean_tolerance, [asdict(c) for c in self.grid],
                    self.report_caption()]
        return super().signature(stage)

    # ---------------------------------------------------------------------------------------------- reports
    def run_stage(self, stage: tool.Stage, resume: bool) -> None:
        """Run a stage (the experiment tool's way) and add the CPU time of its process to its log record."""
        self._stage = stage
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        super().run_stage(stage, resume)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        record = self._record(stage) or {}
        if stage.kind != "report":  # a resumed training adds to the CPU time of its earlier part
            record["cpu_seconds"] = cpu + (float(record.get("cpu_seconds", 0.0)) if resume else 0.0)
            atomic_write_json(self.record_file(stage), record)

    def report_target(self) -> str:
        return f"robust_bundles.study: the analysis -> {self.output_root / STUDY_DIR}"

    def write_report(self) -> dict[str, Path]:
        if self._stage is not None and self._stage.name == "test_report":
            return self.write_test_report()
        return self.write_study()

    def cpu_time(self, run: str) -> float | None:
        """CPU seconds of the run's training stage (user + system of its process), None when unknown."""
        rec = self._record(tool.Stage(run, "train", tool.model_file(run))) or {}
        return float(rec["cpu_seconds"]) if rec.get("status") == "done" and "cpu_seconds" in rec else None

    def wall_time(self, run: str) -> float | None:
        """Seconds of the run's training stage (from its log record), None when unknown."""
        rec = self._record(tool.Stage(run, "train", tool.model_file(run)))
        try:
            t0 = time.mktime(time.strptime(rec["started"], "%Y-%m-%d %H:%M:%S"))
            t1 = time.mktime(time.strptime(rec["finished"], "%Y-%m-%d %H:%M:%S"))
        except (TypeError, KeyError, ValueError):
            return None
        return t1 - t0 if rec.get("status") == "done" else None

    def rows(self, split: str, runs: Sequence[str]) -> list[dict]:
        """One row per run: the metrics on ``split``, the settings, margins, time and cost."""
        results = {r["run"]: r for r in report.collect(self.path(split), runs, models_root=self.output_root)}
        self.metric = report.metric_spec(list(results.values()))
        vat_cost = cost_units(self.profile_epochs, self.profile_steps, 0.0)
        out = []
        for run in runs:
            res = results[run]
            s = res["summary"]
            pgd = {k: float(v) for k, v in s["attacks"].get("PGD", {}).items() if k != "avg" and float(k) > 0}
            ifgsm_run = res["settings"].get("attacks", {}).get("IFGSM", {}).get("steps", 1) > 0
            ifgsm = {k: float(v) for k, v in s["attacks"].get("IFGSM", {}).items()
                     if ifgsm_run and k != "avg" and float(k) > 0}
            row: dict[str, Any] = {
                "run": run, "clean": float(s["clean"]), "pgd": pgd, "pgd_avg": _mean(pgd.values()),
                "ifgsm_avg": _mean(ifgsm.values()), "num_counted": s.get("num_counted"),
                "train_seconds": self.wall_time(run), "train_cpu_seconds": self.cpu_time(run),
            }
            config = next((c for c in self.grid if c.run == run), None)
            base = next((b for b in self.baselines if b.run == run), None)
            if config is not None:
                epochs = self.epochs_of(config)
                row.update(method=methods.candidate().name, init=config.init, epochs=epochs, steps=int(config.attack_steps),
                           rule=config.margin_rule, delta=config.delta(epochs), xi=config.xi,
                           target=config.target_margin if config.margin_rule == "target" else None,
                           cost=cost_units(epochs, config.attack_steps, config.beta) / vat_cost,
                           reference=config.reference, config=asdict(config))
                margins_csv = self.path(f"models/{run}/margins.csv")
                row["margins"] = report.margin_summary(margins_csv) if margins_csv.is_file() else None
            elif base is not None:
                epochs = self.finetune_epochs if base.init != methods.SCRATCH and self.finetune_epochs else \
                    self.profile_epochs
                row.update(method=base.method, init=base.init, epochs=epochs, steps=self.profile_steps,
                           eps=base.eps, cost=cost_units(epochs, self.profile_steps, 0.0) / vat_cost)
            else:
                row.update(method=methods.reference().name, init=methods.SCRATCH, epochs=self.profile_epochs, steps=0,
                           cost=cost_units(self.profile_epochs, 0, 0.0) / vat_cost)
            out.append(row)
        return out

    def write_study(self) -> dict[str, Path]:
        rows = self.rows("validation", self.study_runs())
        analysis = analyse(rows, self.clean_tolerance, higher_is_better=self.metric.higher_is_better)
        analysis["metric"] = self.metric.to_dict()
        out = self.path(STUDY_DIR)
        files = {"frontier": plot_frontier(rows, analysis, out / "frontier.png",
                                           f"validation split ({self.val_cases} cases)", self.metric.label())}
        md = study_markdown(rows, analysis, self.clean_tolerance, self.val_cases, self.report_caption(),
                            self.metric.label())
        files["markdown"] = atomic_write_text(out / "study.md", md)
        files["csv"] = atomic_write_text(out / "study.csv", study_csv(rows, analysis))
        files["json"] = atomic_write_json(out / "study.json", report._finite({"rows": rows, "analysis": analysis}))
        choice = analysis["choice"] and {**analysis["choice"], "metric": self.metric.to_dict()}
        files["choice"] = atomic_write_json(out / "choice.json", report._finite(choice))
        return files

    def write_test_report(self) -> dict[str, Path]:
        chosen = self.chosen()
        runs = self.test_runs(chosen)
        files = report.write_report(self.path("test"), runs, caption=self.report_caption()
                                    + f" Test split, evaluated once after the choice of {chosen} on the validation "
                                      f"split.", out_dir=self.path("test/report"), margins_run=chosen,
                                    models_root=self.output_root)
        rows = self.rows("test", runs)
        analysis = analyse(rows, self.clean_tolerance, chosen=chosen, higher_is_better=self.metric.higher_is_better)
        analysis["metric"] = self.metric.to_dict()
        files["test_frontier"] = plot_frontier(rows, analysis, self.path(STUDY_DIR) / "test_frontier.png",
                                               "test split", self.metric.label())
        md = test_markdown(rows, analysis, chosen, self.clean_tolerance, self.metric.label())
        files["test_markdown"] = atomic_write_text(self.path(STUDY_DIR) / "test.md", md)
        atomic_write_json(self.path(STUDY_DIR) / "test.json", report._finite({"rows": rows, "analysis": analysis}))
        return files

    def chosen(self) -> str:
        path = self.path(f"{STUDY_DIR}/choice.json")
        try:
            return json.loads(path.read_text())["run"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ExperimentError(f"No choice in {path}: run the validation phase first.") from None


# -------------------------------------------------------------------------------------------------------- analysis
def _mean(values) -> float:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else float("nan")


def frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The frontier of (clean, robust) points: those that no other point beats on both axes, sorted by clean (then
    joined by straight lines, :func:`frontier_at`).

    Args:
        points: (clean, robust) pairs, e.g. STD (VAT at eps 0) and every VAT run.
    """
    pts = sorted({(float(c), float(r)) for c, r in points if not (math.isnan(c) or math.isnan(r))},
                 key=lambda q: (-q[0], -q[1]))
    front: list[tuple[float, float]] = []
    for p in pts:  # from the cleanest: keep a point only when it is more robust than every cleaner one
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return sorted(front)


def frontier_at(front: Sequence[tuple[float, float]], clean: float) -> float | None:
    """The frontier's robust value at ``clean``: linear between its points, flat beyond its ends (less clean than its
    most robust point: that point's robustness; cleaner than its cleanest point, e.g. STD: that point's); None for an
    empty frontier."""
    if not front:
        return None
    if clean <= front[0][0]:
        return front[0][1]
    if clean >= front[-1][0]:
        return front[-1][1]
    for (c0, r0), (c1, r1) in zip(front, front[1:]):
        if c0 <= clean <= c1:
            return r0 + (r1 - r0) * (clean - c0) / (c1 - c0)
    return front[-1][1]  # pragma: no cover - the loop covers [front[0], front[-1]]


def analyse(rows: list[dict], tolerance: float, chosen: str | None = None, higher_is_better: bool = True) -> dict:
    """Frontier, heights, eligibility and the choice (module docstring's criterion); ``chosen`` fixes the choice
    (the test split never chooses).

    Args:
        rows: the study's rows (:meth:`Study.rows`): ``method``, ``clean``, ``pgd_avg``, ``cost``...
        tolerance: how much worse than STD's clean metric a configuration may be (in the metric's units).
        chosen: the run chosen on the validation split (the test phase); None: choose.
        higher_is_better: the metric's direction (``MetricSpec.higher_is_better``; False for a landmark MRE):
            "better", the frontier, the heights (positive: better than the frontier) and the choice follow it.
    """
    sign = 1.0 if higher_is_better else -1.0
    role = {m.name: m.role for m in methods.all_methods()}
    std = next(r for r in rows if role.get(r["method"]) == "reference")
    vat = [r for r in rows if role.get(r["method"]) == "frontier"]
    # the frontier of "goodness" (the metric times its direction), mapped back to the metric's values
    front = [(sign * c, sign * g) for c, g in frontier(
        [(sign * std["clean"], sign * std["pgd_avg"])] + [(sign * r["clean"], sign * r["pgd_avg"]) for r in vat])]
    front.sort()
    for r in rows:
        f = frontier_at(sorted((sign * c, sign * g) for c, g in front), sign * r["clean"])
        r["frontier"] = None if f is None else sign * f
        r["height"] = None if f is None else sign * r["pgd_avg"] - f
        r["clean_ok"] = sign * r["clean"] >= sign * std["clean"] - tolerance - 1e-12
        r["cost_ok"] = r.get("cost", 0.0) <= 1.0 + 1e-9
        r["eligible"] = role.get(r["method"]) == "candidate" and r["clean_ok"] and r["cost_ok"]
    amat = [r for r in rows if role.get(r["method"]) == "candidate"]
    if chosen is None:
        eligible = [r for r in amat if r["eligible"]]
        if eligible:
            pick, why = max(eligible, key=lambda r: sign * r["pgd_avg"]), "best PGD average among the eligible"
        elif amat:
            pick = max(amat, key=lambda r: (r["clean_ok"], r["cost_ok"], sign * r["pgd_avg"]))
            why = "no configuration met both conditions: the best PGD average among those meeting the most"
        else:
            pick, why = None, "no AMAT configuration"
    else:
        pick, why = next((r for r in amat if r["run"] == chosen), None), "chosen on the validation split"
    others = [r for r in rows if role.get(r["method"]) in ("frontier", "baseline")]
    best_other = max(others, key=lambda r: sign * r["pgd_avg"]) if others else None
    choice = None
    if pick is not None:
        choice = {"run": pick["run"], "why": why, "config": pick.get("config"), "clean": pick["clean"],
                  "pgd_avg": pick["pgd_avg"], "height": pick["height"], "std_clean": std["clean"],
                  "best_baseline": best_other and {k: best_other[k] for k in ("run", "clean", "pgd_avg")},
                  "beats_best_baseline": bool(best_other and sign * pick["pgd_avg"] >= sign * best_other["pgd_avg"]),
                  "above_frontier": bool(pick["height"] is not None and pick["height"] > 0)}
    return {"frontier": front, "std_clean": std["clean"], "tolerance": tolerance, "choice": choice,
            "higher_is_better": bool(higher_is_better)}


# --------------------------------------------------------------------------------------------------------- output
def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _time(seconds: float | None) -> str:
    return "n/a" if seconds is None else tool.fmt_time(seconds)


def _setting(r: dict) -> str:
    if r.get("eps") is not None:
        return f"{r['method']} eps {format(r['eps'], 'g')}"
    if r.get("rule") is None:
        return r["method"]
    rule = f"M {format(r['target'], 'g')}" if r["rule"] == "target" else "fixed"
    return f"{r['method']} {rule}"


def study_table(rows: list[dict], analysis: dict) -> str:
    """The Markdown table of the rows (validation or test)."""
    eps_keys = sorted({k for r in rows for k in r["pgd"]}, key=float)
    head = (["run", "setting", "init", "epochs", "T", "Delta", "xi", "clean"] + [f"PGD {k}" for k in eps_keys]
            + ["PGD avg", "height", "margins q05/med/q95/max", "train CPU", "cost"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    chosen = (analysis.get("choice") or {}).get("run")
    for r in rows:
        m = r.get("margins")
        margins = "" if not m else f"{m['q05']:.3g} / {m['median']:.3g} / {m['q95']:.3g} / {m['max']:.3g}"
        name = f"**{r['run']}**" if r["run"] == chosen else r["run"]
        failed = [w for w, ok in (("clean", r["clean_ok"]), ("cost", r["cost_ok"])) if not ok]
        flags = f" ({', '.join(failed)})" if r["method"] == methods.candidate().name and failed else ""
        cells = [name, _setting(r), r["init"], str(r["epochs"]), str(r["steps"] or "-"),
                 _f(r.get("delta"), 2) if r.get("delta") is not None else "-", r.get("xi", "-"), _f(r["clean"])]
        cells += [_f(r["pgd"].get(k)) for k in eps_keys]
        cells += [_f(r["pgd_avg"]), _f(r["height"]) if r["height"] is not None else "n/a", margins,
                  _time(r["train_cpu_seconds"]), f"{r['cost']:.2f}{flags}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def study_markdown(rows: list[dict], analysis: dict, tolerance: float, val_cases: int, caption: str,
                   metric: str = "Dice") -> str:
    c = analysis["choice"] or {}
    text = [
        "# AMAT calibration study (validation split)\n",
        study_table(rows, analysis),
        (f"\nValidation split, first {val_cases} cases; {metric} under white-box L2 PGD at each "
         f"eps (L2 norm of the perturbation of the whole network input, in input intensity units after the bundle's "
         f"normalisation). 'height': how much better than the VAT frontier a run's PGD avg is "
         f"(STD and the VAT runs that no other VAT run beats on both axes, joined by straight lines) at the same "
         f"clean value; positive is better. 'cost': forward-backward passes per "
         f"batch over the run, relative to one VAT run of the profile; 'train CPU': CPU time of the training process "
         f"(one thread; wall time on a shared machine is in study.csv); '(clean)' / '(cost)' mark AMAT rows that fail "
         f"the clean condition ({_clean_condition(analysis, tolerance)}) or the cost condition "
         f"(cost <= 1). T: training PGD steps; Delta: expansion step (target rule: M / (rho E)). {caption}\n"),
    ]
    if c:
        text.append(
            f"\nChoice ({c['why']}): **{c['run']}**, clean {c['clean']:.3f} (STD {c['std_clean']:.3f}), PGD avg "
            f"{c['pgd_avg']:.3f}, height above the VAT frontier {_f(c['height'])}; best VAT/TEAT PGD avg "
            f"{c['best_baseline']['pgd_avg']:.3f} ({c['best_baseline']['run']}, clean "
            f"{c['best_baseline']['clean']:.3f}).\n")
    text.append(f"\n![clean vs robust {metric}](frontier.png)\n")
    return "".join(text)


def _clean_condition(analysis: dict, tolerance: float) -> str:
    """The clean condition in the metric's direction: ``clean >= STD - tol`` or ``clean <= STD + tol``."""
    if analysis.get("higher_is_better", True):
        return f"clean >= STD {analysis['std_clean']:.3f} - {tolerance:g}"
    return f"clean <= STD {analysis['std_clean']:.3f} + {tolerance:g}"


def test_markdown(rows: list[dict], analysis: dict, chosen: str, tolerance: float, metric: str = "Dice") -> str:
    c = analysis["choice"] or {}
    best = c.get("best_baseline") or {}
    return "".join([
        f"# The chosen configuration on the test split ({chosen})\n\n",
        study_table(rows, analysis),
        (f"\nTest split, evaluated once after the choice. {chosen}: clean {c.get('clean', float('nan')):.3f} "
         f"(STD {analysis['std_clean']:.3f}, tolerance {tolerance}), PGD avg {c.get('pgd_avg', float('nan')):.3f}; "
         f"best VAT/TEAT {best.get('run')} PGD avg {best.get('pgd_avg', float('nan')):.3f} (clean "
         f"{best.get('clean', float('nan')):.3f}); height above the VAT frontier {_f(c.get('height'))}.\n"),
        f"\n![clean vs robust {metric}, test split](test_frontier.png)\n",
    ])


def study_csv(rows: list[dict], analysis: dict) -> str:
    eps_keys = sorted({k for r in rows for k in r["pgd"]}, key=float)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "method", "init", "epochs", "steps", "rule", "delta", "target", "xi", "eps", "clean",
                *[f"pgd_{k}" for k in eps_keys], "pgd_avg", "ifgsm_avg", "frontier", "height", "margin_q05",
                "margin_median", "margin_q95", "margin_max", "train_seconds", "train_cpu_seconds", "cost", "clean_ok",
                "cost_ok",
                "eligible", "chosen"])
    chosen = (analysis.get("choice") or {}).get("run")
    for r in rows:
        m = r.get("margins") or {}
        w.writerow([r["run"], r["method"], r["init"], r["epochs"], r["steps"], r.get("rule", ""),
                    _csv(r.get("delta")), _csv(r.get("target")), r.get("xi", ""), _csv(r.get("eps")),
                    _csv(r["clean"]), *[_csv(r["pgd"].get(k)) for k in eps_keys], _csv(r["pgd_avg"]),
                    _csv(r["ifgsm_avg"]), _csv(r["frontier"]), _csv(r["height"]), _csv(m.get("q05")),
                    _csv(m.get("median")), _csv(m.get("q95")), _csv(m.get("max")), _csv(r["train_seconds"]),
                    _csv(r["train_cpu_seconds"]),
                    _csv(r["cost"]), r["clean_ok"], r["cost_ok"], r["eligible"], r["run"] == chosen])
    return buf.getvalue()


def _csv(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(v)


def plot_frontier(rows: list[dict], analysis: dict, path: Path, where: str, metric: str = "Dice") -> Path:
    """PNG: the clean metric (x) against its PGD average (y): STD, VAT runs and their frontier, TEAT, AMAT
    configurations; point styles from the method registry (:meth:`robust_bundles.methods.Method.style`)."""
    fig = report._figure((7.0, 5.0))
    fig.set_dpi(100)
    ax = fig.add_subplot(1, 1, 1)
    front = analysis["frontier"]
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], color="C0", linewidth=1, alpha=0.6,
                label="VAT frontier (with STD)")
    seen = set()
    chosen = (analysis.get("choice") or {}).get("run")
    for r in rows:
        color, marker, label = point_style(r["method"], r["init"])
        ax.scatter([r["clean"]], [r["pgd_avg"]], color=color, marker=marker, s=70 if r["run"] == chosen else 28,
                   edgecolors="k" if r["run"] == chosen else "none", label=None if label in seen else label, zorder=3)
        seen.add(label)
        text = (format(r["eps"], "g") if r.get("eps") is not None else
                r["run"].replace(f"{methods.candidate().key}_", "") if r["method"] == methods.candidate().name
                else "")
        if text:
            ax.annotate(text, (r["clean"], r["pgd_avg"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    higher = analysis.get("higher_is_better", True)  # the clean condition's edge: STD - tol, or STD + tol (MRE)
    ax.axvline(analysis["std_clean"] + (-1 if higher else 1) * analysis["tolerance"], color="grey", linestyle=":",
               linewidth=1, label=f"STD clean {'-' if higher else '+'} {analysis['tolerance']:g}")
    ax.set_xlabel(f"clean {metric}")
    ax.set_ylabel(f"{metric} under L2 PGD, average over eps")
    ax.set_title(f"Clean vs robust {metric}, {where}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return report._save(fig, path)


def point_style(method: str, init: str) -> tuple[str, str, str]:
    """``(color, marker, label)`` of a run in the frontier plot: the registered method's style, grey x otherwise."""
    try:
        return methods.get(method).style(init)
    except KeyError:
        return ("C7", "x", method)


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
    tolerance in mm), else to :func:`study_defaults` (the hippocampus study, given in brackets below).

    Args:
        bundle: the bundle folder (with configs/finetune.json and configs/profiles/<profile>.json).
        dataset_dir: the data (an MSD task folder); default: the bundle's synthetic data.
        output_root: where models/, validation/, test/, study/ and logs/ go; default <bundle>/runs/amat_study.
        profile: the profile overlay of every stage (its epochs and attack steps are the VAT baseline's).
        phase: "validation" (train and choose), "test" (evaluate the choice once on the test split) or "all".
        grid: the AMAT configurations: a JSON list of dicts (keys of AmatConfig) or a JSON file [the
            DEFAULT_GRID of robust_bundles.study].
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
    print(f"Total time {tool.fmt_time(time.time() - t0)}.")


def _run_plan(study: Study, stages: Any, force: Any, dry_run: bool, t0: float, verbose: bool = False) -> None:
    names = {s.name for s in study.stages}
    wanted = None if stages in (None, True, "", [], ()) else [n for n in tool.as_list(stages, "stages") if n in names]
    if wanted == []:
        return  # none of the selected stages belongs to this phase
    plan = study.plan(wanted, force)
    tool.print_plan(study, plan)
    study.run_plan(plan, t0, dry_run, verbose)


def cli(argv: list[str] | None = None) -> int:
    return tool.run_cli(main, "amat_study", argv)

