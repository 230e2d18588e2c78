"""Running a tool's stages: the ``python -m monai.bundle run`` command of a stage, the subprocess with its log
(``logs/<stage>.log``) and record (``logs/<stage>.json``: signature, status, times, CPU seconds), the report stages
the tool runs in process, and the console's progress (:class:`~robust_bundles.console.Console`)."""

from __future__ import annotations

import ast
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

from ..command_line import unknown_override_errors
from ..console import Console
from ..finetune import INIT_RECORD
from ..io import atomic_write_json
from .cli import ExperimentError
from .inputs import Inputs
from .plan import OutputRoot, PlanItem, Stage, make_plan


class Reports(Protocol):
    """What a tool does for its report stages (kind ``report``: run in this process, not as a bundle run)."""

    def report_signature(self, stage: Stage) -> list:
        """What decides whether the report stage's output is still valid."""

    def write_report(self, stage: Stage) -> Any:
        """Write the report stage's files."""

    def report_target(self, stage: Stage) -> str:
        """What the report stage writes, for the dry run."""


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


class Runner:
    """Runs the stages of one bundle into one output root, with the tool's inputs and report stages.

    Args:
        inputs: the tool's inputs (bundle, profile, overrides, data and output folders).
        reports: the tool, for its report stages (:class:`Reports`).
    """

    def __init__(self, inputs: Inputs, reports: Reports) -> None:
        self.inputs = inputs
        self.bundle = inputs.bundle
        self.root = OutputRoot(inputs.output_root)
        self.reports = reports
        self.console: Console | None = None
        self._stage_keys_cache: dict[str, set[str]] = {}

    # ------------------------------------------------------------------------------------------------ commands
    def command(self, stage: Stage, resume: bool = False) -> list[str]:
        return bundle_command(stage, self.inputs.profile_file, self.inputs.output_root, self.inputs.dataset_dir,
                              self.stage_overrides(stage), resume)

    def signature(self, stage: Stage) -> list:
        """What decides whether the stage's output is still valid: its command without the resume flag, or the
        tool's report signature."""
        if stage.kind == "report":
            return self.reports.report_signature(stage)
        return _signature(self.command(stage))

    def _stage_config(self, stage: Stage) -> dict:
        """The merged configs of a stage (its overlays, then the profile), for checking override keys."""
        from monai.bundle import ConfigParser

        files = [self.bundle / "configs" / c for c in stage.configs]
        if self.inputs.profile_file:
            files.append(self.bundle / self.inputs.profile_file)
        parser = ConfigParser()
        parser.read_config([str(f) for f in files])
        return parser.get()

    def stage_overrides(self, stage: Stage) -> dict[str, Any]:
        """The --override keys that the stage's configs have (e.g. robustness_eps goes to robustness stages only):
        a bundle run refuses keys it does not know, and a stage is not re-run for a setting it does not read."""
        overrides = self.inputs.overrides
        if stage.kind == "report":
            return {}
        if stage.name not in self._stage_keys_cache:
            config = self._stage_config(stage)
            self._stage_keys_cache[stage.name] = {k for k in overrides if not unknown_override_errors(config, [k])}
        known = self._stage_keys_cache[stage.name]
        return {k: v for k, v in overrides.items() if k in known}

    def check_overrides(self, stages: Sequence[Stage]) -> None:
        """Every --override key must be a key of some stage's configs (else it is a misspelling)."""
        unknown = set(self.inputs.overrides)
        for stage in stages:
            if stage.kind != "report" and unknown:
                unknown -= set(self.stage_overrides(stage))
        if unknown:
            problems = unknown_override_errors(self._stage_config(stages[0]), sorted(unknown))
            raise ExperimentError("--override: unknown config key(s), read by no stage of this bundle: "
                                  + " | ".join(problems))

    def plan(self, stages: list[Stage], wanted: Any = None, force: Any = False) -> list[PlanItem]:
        """The plan of the stages (:func:`robust_bundles.engine.plan.make_plan`) with this runner's signatures."""
        return make_plan(stages, self.root, self.signature, wanted, force)

    # ------------------------------------------------------------------------------------------------- running
    def run_stage(self, stage: Stage, resume: bool) -> None:
        """Run one stage; raise ExperimentError naming the stage, the command and the log when it fails. The record
        of a bundle stage gets the CPU time of its process (user + system; a resumed training adds to its earlier
        part's)."""
        root = self.root
        record = {"stage": stage.name, "signature": self.signature(stage), "status": "running",
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        if stage.kind == "report":
            atomic_write_json(root.record_file(stage), record)
            try:
                self.reports.write_report(stage)
            except (OSError, ValueError) as e:
                raise ExperimentError(f"Stage {stage.name!r} failed: {e}") from e
        else:
            earlier = float((root.record(stage) or {}).get("cpu_seconds", 0.0)) if resume else 0.0
            if stage.kind == "train" and not resume:  # a fresh start: no stale checkpoint may be resumed later
                record_of_init = root.path(stage.output).parent / INIT_RECORD  # nor a stale "fine-tuned" mark
                for p in root.checkpoints(stage) + [root.path(stage.output), record_of_init]:
                    p.unlink(missing_ok=True)
            cmd = self.command(stage, resume)
            record["command"] = shlex.join(cmd)
            atomic_write_json(root.record_file(stage), record)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            self._subprocess(stage, cmd)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            record["cpu_seconds"] = earlier + (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            if not root.path(stage.output).is_file():
                raise ExperimentError(
                    f"Stage {stage.name!r} finished but did not write {root.path(stage.output)}.\n"
                    f"  command: {shlex.join(cmd)}\n  log: {root.log_file(stage)}"
                )
        record.update(status="done", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        atomic_write_json(root.record_file(stage), record)

    def run_plan(self, plan: list[PlanItem], t0: float, dry_run: bool = False, verbose: bool = False) -> None:
        """Run the stages of a plan in order (the one loop of the experiment and the study): skip what is done or
        was made meanwhile by another process on the same output root, show progress on the console
        (:class:`~robust_bundles.console.Console`; ``verbose``: every line of every stage); with ``dry_run``, print
        the commands instead."""
        n = len(plan)
        if dry_run:
            print(f"\nDry run: commands, in {self.bundle}:")
            for i, (s, action, _) in enumerate(plan, 1):
                prefix = f"[{i}/{n}] {s.name}" + (" (skip)" if action == "skip" else "")
                print(f"{prefix}: {self.reports.report_target(s)}" if s.kind == "report" else
                      f"{prefix}:\n  {shlex.join(self.command(s, resume=action == 'resume'))}")
            return
        missing = self.root.missing_at_plan(plan)
        self.console = console = Console([s.kind for s, a, _ in plan if a != "skip"], verbose=verbose)
        console.t0 = t0
        for i, (s, action, reason) in enumerate(plan, 1):
            if action == "skip":
                console.skip(f"[{i}/{n}] skip {s.name}: {reason}")
                continue
            if s.name in missing and self.root.done_meanwhile(s, self.signature(s)):  # e.g. two studies, one per core
                console.skip(f"[{i}/{n}] skip {s.name}: {s.output} was made meanwhile (by another process)",
                             planned=True)
                continue
            what = "resume" if action == "resume" else "run"
            log = "" if s.kind == "report" else f"; log {self.root.log_file(s)}"
            console.start(f"[{i}/{n}]", s.name, f"{what}: {reason}{log}")
            ts = time.time()
            try:
                self.run_stage(s, resume=action == "resume")
            except BaseException:
                console.failed()
                raise
            console.end(f"[{i}/{n}]", s.name, s.kind, time.time() - ts)

    def _subprocess(self, stage: Stage, cmd: list[str]) -> None:
        log = self.root.log_file(stage)
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
                console = self.console or Console([], verbose=True)  # outside run_plan: every line
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


def print_plan(description: str, plan: list[PlanItem]) -> None:
    """The tool's description and its plan: one line per stage with its action and the reason."""
    todo = sum(1 for _, a, _ in plan if a != "skip")
    print(description)
    print(f"Plan: {len(plan)} stages, {len(plan) - todo} done, {todo} to run")
    width = max((len(s.name) for s, _, _ in plan), default=0)
    for i, (s, action, reason) in enumerate(plan, 1):
        status = "done" if action == "skip" else action
        print(f"  {f'[{i}/{len(plan)}]':>7} {s.name:<{width}}  {status:<6} {reason}")
    sys.stdout.flush()
