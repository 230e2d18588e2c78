"""The stages of a tool, what is done, and the resume decisions.

A stage is done when its output exists, is newer than its inputs, and was made with the same command (the signature
recorded in ``logs/<stage>.json``); stages after a re-run stage that read its output run again. A training stage that
was interrupted (a checkpoint but no model.pt, same command) resumes. :func:`make_plan` gives each selected stage its
action (``run``, ``resume`` or ``skip``) and the reason, in the order of the stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import layout, methods
from .cli import ExperimentError, as_list

REPORT_DIR = layout.report_dir("")
LOG_DIR = layout.logs_dir("")
THRESHOLDS_FILE = layout.thresholds_file("")
FINETUNE_CONFIG = methods.FINETUNE_OVERLAY
SCRATCH = methods.SCRATCH

#: ``(stage, action, reason)``: action is ``run``, ``resume`` or ``skip``
PlanItem = tuple["Stage", str, str]


@dataclass
class Stage:
    """One step of a tool.

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


def transfer_from_std(stage: Stage, output_root: Path) -> Stage:
    """The strong suite's transfer check: the robustness stage of a run other than STD also attacks the experiment's
    STD model and applies that attack to the run's model (robust_bundles.transfer); the stage then needs STD's model."""
    std = methods.STD.run_name()
    if stage.kind == "robustness" and stage.run != std:
        stage.needs = [*stage.needs, model_file(std)]
        stage.args["transfer_surrogate"] = str(output_root / model_file(std))
    return stage


def groups() -> tuple[str, ...]:
    """Stage groups of --stages/--force: train, each method with eps (its key: vat, teat), robustness."""
    return ("train", *(m.key for m in methods.all_methods() if m.takes_eps), "robustness")


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


class OutputRoot:
    """The files of one output root that the plan reads: the stages' outputs, their log records and logs.

    Args:
        root: the output root (models/, eval/, logs/, report/ below it).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel

    def log_file(self, stage: Stage) -> Path:
        return self.root / LOG_DIR / f"{stage.name}.log"

    def record_file(self, stage: Stage) -> Path:
        return self.root / LOG_DIR / f"{stage.name}.json"

    def record(self, stage: Stage) -> dict | None:
        """The stage's log record (signature, status, times), None when there is none."""
        try:
            return json.loads(self.record_file(stage).read_text())
        except (OSError, ValueError):
            return None

    def checkpoints(self, stage: Stage) -> list[Path]:
        """The checkpoints of a training stage's run folder (its ``*.pt`` but model.pt)."""
        d = self.path(stage.output).parent
        return sorted(p for p in d.glob("*.pt") if p.name != "model.pt") if d.is_dir() else []

    def done_meanwhile(self, stage: Stage, signature: list) -> bool:
        """True when the stage's output appeared after the plan was made, finished and with this stage's settings:
        another process (a second study or experiment on the same output root) ran it. Running it again would first
        delete that output."""
        record = self.record(stage)
        return (self.path(stage.output).is_file() and record is not None and record.get("status") == "done"
                and record.get("signature") == signature)

    def missing_at_plan(self, plan: Sequence[PlanItem]) -> set[str]:
        """The stages of a plan that will run because their output does not exist yet (not forced, not stale)."""
        return {s.name for s, action, reason in plan
                if action != "skip" and reason != "forced" and not self.path(s.output).is_file()}


def make_plan(stages: list[Stage], root: OutputRoot, signature: Callable[[Stage], list], wanted: Any = None,
              force: Any = False) -> list[PlanItem]:
    """``(stage, action, reason)`` for every selected stage; action is ``run``, ``resume`` or ``skip``.

    Args:
        stages: the tool's stages, in order.
        root: the output root.
        signature: what decides whether a stage's output is still valid (its command without the resume flag).
        wanted: the --stages option (stage and group names); None: every stage.
        force: the --force option: True (every selected stage) or stage and group names.

    Raises:
        ExperimentError: a selected stage needs a file that neither exists nor is made by a selected stage.
    """
    chosen = select(stages, wanted, "stages") if wanted not in (None, True, "", [], ()) else {s.name for s in stages}
    forced = {s.name for s in stages} if force is True else select(stages, force or None, "force")
    producer = {s.output: s for s in stages}
    rebuilt: set[str] = set()  # outputs that this invocation will (re)make
    out = []
    for s in stages:
        if s.name not in chosen:
            continue
        output = root.path(s.output)
        record = root.record(s)
        same = record is None or record.get("signature") == signature(s)
        newer = [n for n in s.needs if output.is_file() and root.path(n).is_file()
                 and root.path(n).stat().st_mtime > output.stat().st_mtime]
        missing = [n for n in s.needs if n not in rebuilt and not root.path(n).is_file()]
        if missing:
            makers = sorted({producer[n].name for n in missing if n in producer})
            raise ExperimentError(
                f"Stage {s.name!r} needs {', '.join(str(root.path(n)) for n in missing)}, which does not exist "
                f"and is not made by a selected stage: add {', '.join(repr(m) for m in makers)} to --stages "
                f"(or leave --stages out)."
            )
        if s.name in forced:
            action, reason = "run", "forced"
        elif not output.is_file():
            remade = any(n in rebuilt for n in s.needs)
            if s.kind == "train" and root.checkpoints(s) and same and not remade:
                action, reason = "resume", f"interrupted: {root.checkpoints(s)[-1].name} but no model.pt"
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
