"""The stage engine on its own (robust_bundles.engine): the resume decisions of a plan from the files and records of an
output root, without a bundle or a subprocess; and the tools compose it (the study is no experiment)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from robust_bundles.engine.cli import ExperimentError
from robust_bundles.engine.plan import OutputRoot, Stage, make_plan


def _touch(path: Path, text: str = "x", mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _done(root: OutputRoot, stage: Stage, signature: list) -> None:
    _touch(root.record_file(stage), json.dumps({"stage": stage.name, "signature": signature, "status": "done"}))


STD = Stage("std", "train", "models/std/model.pt", run="std")
VAT = Stage("vat_eps2", "train", "models/vat_eps2/model.pt", needs=["models/std/model.pt"], run="vat_eps2")
EVAL = Stage("robustness_vat_eps2", "robustness", "eval/vat_eps2/robustness.json", needs=["models/vat_eps2/model.pt"],
             run="vat_eps2")


def test_resume_decisions_from_outputs_records_and_signatures(tmp_path):
    root = OutputRoot(tmp_path)
    signature = {"std": ["a"], "vat_eps2": ["b"], "robustness_vat_eps2": ["c"]}

    def plan(**kw) -> list[tuple[str, str, str]]:
        return [(s.name, a, r) for s, a, r in make_plan([STD, VAT, EVAL], root, lambda s: signature[s.name], **kw)]

    # nothing yet: every stage runs, in order
    assert [a for _, a, _ in plan()] == ["run", "run", "run"]
    # STD done with the same command, VAT interrupted (a checkpoint, no model, same command): skip, resume, run
    _touch(tmp_path / "models/std/model.pt", mtime=1_000)
    _done(root, STD, ["a"])
    _touch(tmp_path / "models/vat_eps2/checkpoint_3.pt")
    assert plan() == [("std", "skip", "models/std/model.pt exists"),
                      ("vat_eps2", "resume", "interrupted: checkpoint_3.pt but no model.pt"),
                      ("robustness_vat_eps2", "run", "eval/vat_eps2/robustness.json missing")]
    # STD's command changed: it runs again, and VAT, which reads its model, starts afresh instead of resuming
    signature["std"] = ["a2"]
    assert plan()[:2] == [("std", "run", "settings changed since the last run (see logs/std.json)"),
                          ("vat_eps2", "run", "models/vat_eps2/model.pt missing")]
    signature["std"] = ["a"]
    # everything done, then VAT's input made newer than VAT's model: VAT is outdated, its evaluation reads a remade file
    _touch(tmp_path / "models/vat_eps2/model.pt", mtime=2_000)
    _done(root, VAT, ["b"])
    _touch(tmp_path / "eval/vat_eps2/robustness.json", mtime=3_000)
    _done(root, EVAL, ["c"])
    assert [a for _, a, _ in plan()] == ["skip", "skip", "skip"]
    os.utime(tmp_path / "models/std/model.pt", (2_500, 2_500))
    assert plan()[1:] == [("vat_eps2", "run", "outdated: models/std/model.pt is newer"),
                          ("robustness_vat_eps2", "run", "its input models/vat_eps2/model.pt is remade")]
    # --force of a group, and a selection that lacks the maker of a missing input
    assert [a for _, a, _ in plan(force=["robustness"])] == ["skip", "run", "run"]
    (tmp_path / "models/vat_eps2/model.pt").unlink()
    with pytest.raises(ExperimentError, match=r"add 'vat_eps2' to --stages"):
        plan(wanted=["robustness_vat_eps2"])


def test_the_study_composes_the_runner_instead_of_inheriting_the_experiment(tmp_path):
    from robust_bundles.engine.runner import Runner
    from robust_bundles.experiment import Experiment
    from robust_bundles.study import Study

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "hippocampus_mri_segmentation"
    study = Study(str(bundle), None, str(tmp_path))
    assert not isinstance(study, Experiment)
    assert isinstance(study.runner, Runner) and study.runner.reports is study
    assert study.runner.root.root == tmp_path.resolve() and study.plan()[0][0].name == "std"
