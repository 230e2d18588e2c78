"""scripts/experiment.py: plan, commands, skipping, forcing, resuming, failures, and one real end-to-end run.

Most tests use a stand-in bundle written into tmp_path: its configs only write the files a stage must produce (a few
seconds per stage, no training), which checks the tool's orchestration on any bundle that keeps the contract. The
last test runs the whole tool on the hippocampus bundle with tiny settings (marked slow).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import forkserver
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "experiment.py"
HIPPOCAMPUS = ROOT / "bundles" / "hippocampus_mri_segmentation"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

from robust_bundles import experiment as experiment  # noqa: E402  (the engine; scripts/ holds its thin command line)


@pytest.fixture(autouse=True)
def _forked_stages(monkeypatch):
    """The tool's `python -m monai.bundle run` stages are forked from the tests' fork server (tests/forkserver.py):
    each its own process, without importing MONAI again."""
    forkserver.patch_popen(monkeypatch)


# ------------------------------------------------------------------------------------------------ stand-in bundle
def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _file(rel: str, text: str) -> list[str]:
    """Config expressions that write ``text`` to ``@output_root/<rel>`` (rel may use @run_name)."""
    return [
        f"$pathlib.Path(@output_root, {rel}).parent.mkdir(parents=True, exist_ok=True)",
        f"$pathlib.Path(@output_root, {rel}).write_text({text})",
    ]


ROBUSTNESS = {
    "settings": {"eps": [2.0, 6.0], "higher_is_better": True,
                 "attacks": {"PGD": {"norm": "l2", "steps": 3, "random_start": True},
                             "IFGSM": {"norm": "l2", "steps": 2, "random_start": False}}},
    "summary": {"metric": "dice", "clean": 0.8, "num_samples": 4, "num_counted": 3, "warnings": [],
                "attacks": {"PGD": {"2": 0.5, "6": 0.2, "avg": 0.35}, "IFGSM": {"2": 0.6, "6": 0.3, "avg": 0.45}}},
}


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A bundle that keeps the experiment contract without training: every stage writes its output file and prints
    what it was given; the environment variable FAIL_RUN=NAME makes the stages of run NAME fail."""
    b = tmp_path / "fake_bundle"
    c = b / "configs"
    _write(c / "train.json", {
        "imports": ["$import pathlib", "$import json", "$import os"],
        "output_root": "$str(pathlib.Path.cwd())",
        "dataset_dir": "synthetic",
        "run_name": "std",
        "train_eps": 0,
        "resume": False,
        "fail_run": "$os.environ.get('FAIL_RUN', '')",
        "run": ["$print('STAGE', @run_name, 'train_eps', @train_eps, 'resume', @resume, 'data', @dataset_dir)",
                "$1 / 0 if @run_name == @fail_run else None",
                *_file("'models', @run_name, 'model.pt'", "'weights'")],
    })
    _write(c / "thresholds.json", {"run": _file("'models', 'std', 'thresholds.json'", "'{}'")})
    _write(c / "vat.json", {"train_eps": 9.0})
    _write(c / "teat.json", {"train_eps": 9.0})
    _write(c / "amat.json", {"+run": _file("'models', 'amat', 'margins.csv'", "'sample_id,margin\\n0,1.0\\n1,3.0\\n'")})
    _write(c / "evaluate.json", {"run": ["$1 / 0 if @run_name == @fail_run else None",
                                         *_file("'eval', @run_name, 'robustness.json'",
                                                f"json.dumps({ROBUSTNESS!r})")]})
    _write(c / "robustness.json", {"robustness_eps": [2, 6]})
    _write(c / "profiles" / "tiny.json", {"experiment": {"vat_eps": [3], "teat_eps": [], "caption": "tiny caption"},
                                          "epochs": 1})
    return b


def run_tool(capsys, *args) -> tuple[int, str, str]:
    rc = experiment.cli([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def commands(out: str) -> dict[str, list[str]]:
    """Stage name -> command of a --dry_run output."""
    lines = out.splitlines()
    cmds = {}
    for i, line in enumerate(lines):
        if line.startswith("[") and line.rstrip().endswith(":") and i + 1 < len(lines):
            name = line.split("] ", 1)[1].split(" ")[0].rstrip(":")
            cmds[name] = shlex.split(lines[i + 1].strip())
    return cmds


def config_files(cmd: list[str]) -> list[str]:
    return ast.literal_eval(cmd[cmd.index("--config_file") + 1])


def arg(cmd: list[str], key: str) -> str | None:
    return cmd[cmd.index(key) + 1] if key in cmd else None


# -------------------------------------------------------------------------------------------------------- dry run
def test_dry_run_hippocampus_lists_stages_with_profile_last(tmp_path):
    """The real CLI in a subprocess: plan, commands, profile overlay last, JSON overrides (true/null) kept."""
    out_root = tmp_path / "out"
    p = forkserver.run(
        [sys.executable, str(SCRIPT), "--bundle", str(HIPPOCAMPUS), "--profile", "quick",
         "--output_root", str(out_root),
         "--dry_run", "--override", '{"epochs": 2, "amp": false, "max_margin": null, "filters": [8, 16]}'],
        ROOT, timeout=120, stderr_apart=True,
    )
    assert p.returncode == 0, p.stderr
    from robust_bundles import methods

    # the profile's lists, then every other method with eps at the task's train_eps (6 for the hippocampus)
    others = [m.run_name(6) for m in methods.with_overlay() if m.takes_eps and m.name not in ("VAT", "TEAT")]
    runs = ["std", "vat_eps2", "vat_eps6", "teat_eps6", "amat", *others]
    expected = ["std", "thresholds", *runs[1:], *(f"robustness_{r}" for r in runs), "report"]
    cmds = commands(p.stdout)
    assert list(cmds) == expected[:-1]
    n = len(expected)
    assert f"[{n}/{n}] report" in p.stdout and f"Plan: {n} stages, 0 done, {n} to run" in p.stdout
    assert not out_root.exists()  # a dry run writes nothing
    overlays = {"std": ["train.json"], "thresholds": ["train.json", "thresholds.json"],
                "vat_eps2": ["train.json", "vat.json"], "teat_eps6": ["train.json", "teat.json"],
                "amat": ["train.json", "amat.json", "finetune.json"],  # the quick profile fine-tunes AMAT from STD
                "robustness_amat": ["train.json", "evaluate.json", "robustness.json"]}
    for name, cmd in cmds.items():
        assert cmd[1:4] == ["-m", "monai.bundle", "run"]
        files = config_files(cmd)
        assert files[-1] == "configs/profiles/quick.json", name  # the profile overlay is last
        if name in overlays:
            assert files[:-1] == [f"configs/{f}" for f in overlays[name]]
        assert arg(cmd, "--output_root") == str(out_root) and "--dataset_dir" not in cmd
        # --override epochs 2: every run is 2 epochs long, the fine-tuned AMAT too (not the profile's finetune_epochs 6)
        assert arg(cmd, "--epochs") == "2", name
        assert arg(cmd, "--amp") == "False" and arg(cmd, "--filters") == "[8, 16]"
        # a key goes only to the stages whose configs have it (a bundle run refuses unknown keys)
        assert arg(cmd, "--max_margin") == ("None" if name == "amat" else None), name
    assert arg(cmds["vat_eps6"], "--train_eps") == "6" and arg(cmds["vat_eps6"], "--run_name") == "vat_eps6"
    assert arg(cmds["teat_eps6"], "--train_eps") == "6"
    assert arg(cmds["robustness_teat_eps6"], "--run_name") == "teat_eps6"
    assert "--train_eps" not in cmds["amat"] and "--resume" not in cmds["std"]
    # the study's choice: AMAT trains with 5 PGD steps (the profile's amat_override), VAT and TEAT with the profile's 3
    assert arg(cmds["amat"], "--attack_steps") == "5" and "--attack_steps" not in cmds["vat_eps2"]


def test_attack_suite_goes_to_the_robustness_stages(capsys, tmp_path):
    rc, out, _ = run_tool(capsys, "--bundle", HIPPOCAMPUS, "--output_root", tmp_path, "--attack_suite", "standard",
                          "--stages", "[std,robustness_std]", "--dry_run")
    assert rc == 0
    cmds = commands(out)
    assert arg(cmds["robustness_std"], "--attack_suite") == "standard" and "--attack_suite" not in cmds["std"]
    assert "--transfer_surrogate" not in cmds["robustness_std"]
    rc, out, _ = run_tool(capsys, "--bundle", HIPPOCAMPUS, "--output_root", tmp_path, "--attack_suite", "strong",
                          "--stages", "[std,thresholds,amat,robustness_std,robustness_amat]", "--dry_run")
    cmds = commands(out)
    # the strong suite's transfer check: AMAT's evaluation also attacks STD's model, STD's own does not
    assert arg(cmds["robustness_amat"], "--transfer_surrogate") == str(tmp_path / "models" / "std" / "model.pt")
    assert "--transfer_surrogate" not in cmds["robustness_std"]
    rc, _, err = run_tool(capsys, "--bundle", HIPPOCAMPUS, "--attack_suite", "fast", "--dry_run")
    assert rc == 1 and "--attack_suite 'fast': give one of ['quick', 'standard', 'strong']" in err


def test_default_output_root_and_eps_options(bundle, capsys, tmp_path):
    rc, out, _ = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--dataset_dir", tmp_path)
    assert rc == 0
    cmds = commands(out)
    assert list(cmds) == ["std", "thresholds", "vat_eps3", "amat", "robustness_std", "robustness_vat_eps3",
                          "robustness_amat"]
    assert arg(cmds["std"], "--output_root") == str(bundle / "runs" / "tiny")
    assert arg(cmds["std"], "--dataset_dir") == str(tmp_path)
    # the profile's eps lists: replaced by options, or by an "experiment" override
    rc, out, _ = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--vat_eps", "[]",
                          "--teat_eps", "[2,0.5]")
    assert [n for n in commands(out) if not n.startswith("robustness")] == [
        "std", "thresholds", "teat_eps2", "teat_eps0.5", "amat"]
    rc, out, _ = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--override",
                          '{"experiment": {"vat_eps": [4, 5]}, "epochs": 3}')
    cmds = commands(out)
    assert "vat_eps4" in cmds and "vat_eps5" in cmds and "vat_eps3" not in cmds
    assert "experiment" not in " ".join(cmds["std"]) and arg(cmds["std"], "--epochs") == "3"


def test_fine_tuning_options(bundle, capsys, tmp_path):
    """--amat_init std / a file: the stage stacks finetune.json, needs the STD model (or the file), trains
    --finetune_epochs epochs; the profile's experiment dict gives the defaults."""
    _write(bundle / "configs" / "finetune.json", {})
    rc, out, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--amat_init", "std",
                            "--finetune_epochs", "4")
    assert rc == 0, err
    cmds = commands(out)
    assert config_files(cmds["amat"]) == ["configs/train.json", "configs/amat.json", "configs/finetune.json",
                                          "configs/profiles/tiny.json"]
    assert arg(cmds["amat"], "--epochs") == "4" and "--init_from" not in cmds["amat"]
    assert "configs/finetune.json" not in config_files(cmds["vat_eps3"]) and "--epochs" not in cmds["vat_eps3"]
    assert "fine-tuned: AMAT from std (4 epochs)" in out
    # --finetune_epochs wins over the epochs of --override, which set only the runs from scratch then
    rc, out, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--amat_init", "std",
                            "--finetune_epochs", "4", "--override", '{"epochs": 3}')
    assert rc == 0, err
    assert arg(commands(out)["amat"], "--epochs") == "4" and arg(commands(out)["std"], "--epochs") == "3"
    # a model file, for VAT; the epochs default to the profile's (no --epochs)
    weights = tmp_path / "zoo" / "model.pt"
    weights.parent.mkdir()
    weights.write_text("w")
    rc, out, _ = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--vat_init", weights)
    cmds = commands(out)
    assert config_files(cmds["vat_eps3"])[-2] == "configs/finetune.json"
    assert arg(cmds["vat_eps3"], "--init_from") == str(weights) and "--epochs" not in cmds["vat_eps3"]
    assert "configs/finetune.json" not in config_files(cmds["amat"])
    # the profile's defaults, overridden by the option
    rc, out, _ = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--override",
                          '{"experiment": {"amat_init": "std", "teat_init": "std", "finetune_epochs": 2}}')
    assert "configs/finetune.json" in config_files(commands(out)["amat"])
    assert "fine-tuned: AMAT from std (2 epochs)" in out  # TEAT has no run in this profile
    rc, out, _ = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--amat_init", "scratch",
                          "--override", '{"experiment": {"amat_init": "std"}}')
    assert "configs/finetune.json" not in config_files(commands(out)["amat"]) and "fine-tuned" not in out
    # errors
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--amat_init", "nope.pt")
    assert rc == 1 and "--amat_init 'nope.pt'" in err and "does not exist" in err
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--amat_init", "std",
                          "--finetune_epochs", "0")
    assert rc == 1 and "--finetune_epochs" in err
    (bundle / "configs" / "finetune.json").unlink()
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--amat_init", "std")
    assert rc == 1 and "needs configs/finetune.json" in err


def test_method_overrides_of_the_profile(bundle, capsys):
    """experiment.amat_override: config overrides of the AMAT runs only, under --override and the stage's own args."""
    train = json.loads((bundle / "configs" / "train.json").read_text())
    _write(bundle / "configs" / "train.json", {**train, "attack_steps": 3})  # a key every training run has
    override = '{"experiment": {"amat_override": {"attack_steps": 5, "amat_beta": 0.7}}}'
    rc, out, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--override", override)
    assert rc == 0, err
    cmds = commands(out)
    assert arg(cmds["amat"], "--attack_steps") == "5" and arg(cmds["amat"], "--amat_beta") == "0.7"
    assert "--attack_steps" not in cmds["vat_eps3"] and "--attack_steps" not in cmds["std"]
    assert "--attack_steps" not in cmds["robustness_amat"]  # training runs only
    # a key of --override wins (a smoke test shrinks every run)
    rc, out, _ = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--override",
                          override[:-1] + ', "attack_steps": 1}')
    assert arg(commands(out)["amat"], "--attack_steps") == "1" and arg(commands(out)["vat_eps3"], "--attack_steps") == "1"
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--override",
                          '{"experiment": {"vat_override": {"epochs": 3}}}')
    assert rc == 1 and "experiment.vat_override cannot set ['epochs']" in err
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--dry_run", "--override",
                          '{"experiment": {"teat_override": [1]}}')
    assert rc == 1 and "experiment.teat_override must be a dict" in err


def test_bad_options_are_clear_errors(bundle, capsys):
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "nope", "--dry_run")
    assert rc == 1 and "No profile 'nope'" in err and "tiny" in err
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--stages", "[std,bogus]", "--dry_run")
    assert rc == 1 and "unknown stage 'bogus'" in err and "vat_eps3" in err
    rc, _, err = run_tool(capsys, "--bundle", bundle.parent, "--dry_run")
    assert rc == 1 and "not a complete bundle" in err
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--override", '{"run_name": "x"}')
    assert rc == 1 and "--override cannot set" in err
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--override", '{"epoch": 3}', "--dry_run")
    assert rc == 1 and "unknown config key" in err and "--epoch:" in err and "did you mean --epochs" in err
    # a stage whose input is neither there nor made by a selected stage
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--stages", "[amat]", "--dry_run")
    assert rc == 1 and "thresholds.json" in err and "'thresholds'" in err


# ------------------------------------------------------------------------------------------------- skip and force
def _touch(path: Path, text: str = "x", age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def _logs(root: Path) -> str:
    """The stages' log files of an output root, one after the other."""
    return "".join(p.read_text() for p in sorted((root / "logs").glob("*.log")))


def _plan(out: str) -> dict[str, str]:
    """Stage -> status (done, run, resume) from the printed plan."""
    res = {}
    for line in out.splitlines():
        parts = line.split()
        is_plan_line = line.startswith(" ") and len(parts) >= 3 and parts[0].startswith("[") and "/" in parts[0]
        if is_plan_line and parts[2] in ("done", "run", "resume"):
            res[parts[1]] = parts[2]
    return res


def test_skip_existing_outputs_and_force(bundle, capsys, tmp_path):
    root = tmp_path / "out"
    _touch(root / "models" / "std" / "model.pt", age=100)
    _touch(root / "models" / "std" / "thresholds.json", age=50)
    base = ["--bundle", bundle, "--profile", "tiny", "--output_root", root]
    rc, out, _ = run_tool(capsys, *base, "--stages", "[std,thresholds]")  # runs nothing: both done
    assert rc == 0, out
    assert "skip std: models/std/model.pt exists" in out and "skip thresholds:" in out
    assert not (root / "logs").exists()
    rc, out, _ = run_tool(capsys, *base, "--dry_run")
    plan = _plan(out)
    assert plan["std"] == "done" and plan["thresholds"] == "done"
    assert plan["vat_eps3"] == "run" and plan["amat"] == "run" and plan["report"] == "run"
    # --force with a list: the named stages and what reads their output; --force alone: everything
    rc, out, _ = run_tool(capsys, *base, "--dry_run", "--force", "[thresholds]")
    plan = _plan(out)
    assert plan["std"] == "done" and plan["thresholds"] == "run" and "forced" in out
    rc, out, _ = run_tool(capsys, *base, "--dry_run", "--force", "[std]")
    assert _plan(out)["thresholds"] == "run" and "its input models/std/model.pt is remade" in out
    rc, out, _ = run_tool(capsys, *base, "--dry_run", "--force")
    assert set(_plan(out).values()) == {"run"}
    # an output older than its input is outdated
    _touch(root / "models" / "std" / "model.pt")
    rc, out, _ = run_tool(capsys, *base, "--dry_run")
    assert _plan(out)["thresholds"] == "run" and "outdated: models/std/model.pt is newer" in out


def test_interrupted_training_resumes(bundle, capsys, tmp_path):
    root = tmp_path / "out"
    _touch(root / "models" / "vat_eps3" / "checkpoint.pt")
    rc, out, _ = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--output_root", root, "--dry_run")
    assert _plan(out)["vat_eps3"] == "resume" and "interrupted: checkpoint.pt but no model.pt" in out
    cmds = commands(out)
    assert arg(cmds["vat_eps3"], "--resume") == "True" and "--resume" not in cmds["std"]


def test_a_stage_made_meanwhile_by_another_process_is_kept_not_rerun(bundle, capsys, tmp_path, monkeypatch):
    """Two processes on one output root (one per core): a stage planned as missing that the other process finished in
    the meantime is skipped; running it would first delete the other process's model."""
    root = tmp_path / "out"
    base = ["--bundle", bundle, "--profile", "tiny", "--output_root", root, "--stages", "[std,vat_eps3]"]
    from robust_bundles.engine.runner import Runner

    real = Runner.run_stage

    def run_stage(self, stage, resume):
        real(self, stage, resume)
        if stage.name == "std":  # meanwhile, "the other process" trains vat_eps3 with the same settings
            other = next(s for s in self.reports.stages if s.name == "vat_eps3")  # the runner's experiment
            real(self, other, False)
            (self.root.path(other.output).parent / "made_by_other.txt").write_text("x")

    monkeypatch.setattr(Runner, "run_stage", run_stage)
    rc, out, err = run_tool(capsys, *base)
    assert rc == 0, err
    assert "Plan: 2 stages, 0 done, 2 to run" in out
    assert "skip vat_eps3: models/vat_eps3/model.pt was made meanwhile (by another process)" in out
    assert (root / "models" / "vat_eps3" / "model.pt").is_file()
    assert (root / "models" / "vat_eps3" / "made_by_other.txt").is_file()


# ----------------------------------------------------------------------------------- whole runs on the stand-in
def test_failing_stage_stops_with_stage_command_and_log(bundle, capsys, tmp_path, monkeypatch):
    root = tmp_path / "out"
    monkeypatch.setenv("FAIL_RUN", "std")
    rc, out, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--output_root", root)
    assert rc == 1
    log = root / "logs" / "std.log"
    assert "Stage 'std' failed (exit code 1)" in err and str(log) in err
    assert "monai.bundle run --config_file" in err and "configs/profiles/tiny.json" in err
    assert "ZeroDivisionError" in log.read_text() and "ZeroDivisionError" in out  # streamed and saved
    assert "[1/8] std ..." in out and "thresholds ..." not in out
    assert json.loads((root / "logs" / "std.json").read_text())["status"] == "running"


@pytest.mark.slow
def test_full_run_resume_rerun_and_failure(bundle, capsys, tmp_path, monkeypatch):
    root = tmp_path / "out"
    base = ["--bundle", bundle, "--profile", "tiny", "--output_root", root, "--dataset_dir", tmp_path / "data"]
    # 1. a failing stage stops the tool: the message names the stage, the command and the log
    monkeypatch.setenv("FAIL_RUN", "amat")
    rc, out, err = run_tool(capsys, *base)
    assert rc == 1
    assert "Stage 'amat' failed" in err and "monai.bundle run" in err and str(root / "logs" / "amat.log") in err
    assert "ZeroDivisionError" in (root / "logs" / "amat.log").read_text()
    logs = _logs(root)  # the stages' output goes to their logs (the console has one line per start and end)
    assert f"STAGE std train_eps 0 resume False data {tmp_path / 'data'}" in logs and "STAGE std" not in out
    assert "STAGE vat_eps3 train_eps 3 resume False" in logs
    assert "[3/8] vat_eps3 done in" in out and "] robustness_std done" not in out
    assert (root / "models" / "vat_eps3" / "model.pt").is_file() and not (root / "eval").exists()

    # 2. the same command again: the finished stages are skipped, the failed one and the rest run
    monkeypatch.delenv("FAIL_RUN")
    rc, out, err = run_tool(capsys, *base)
    assert rc == 0, err
    assert "Plan: 8 stages, 3 done, 5 to run" in out and _plan(out)["amat"] == "run"
    assert "skip std: models/std/model.pt exists" in out and "skip vat_eps3:" in out
    for stage in ("amat", "robustness_std", "robustness_vat_eps3", "robustness_amat", "report"):
        assert f"] {stage} done in" in out
    report_dir = root / "report"
    for name in ("results.md", "results.csv", "results.json"):
        assert (report_dir / name).is_file()
    for name in ("metric_vs_eps.png", "margins.png"):
        assert (report_dir / name).read_bytes()[:8] == PNG_MAGIC
    md = (report_dir / "results.md").read_text()
    assert "| STD | **0.800** |" in md and "| VAT (eps 3) |" in md and "| AMAT |" in md and "tiny caption" in md
    assert md in out and str(report_dir) in out and "Total time" in out
    record = json.loads((root / "logs" / "std.json").read_text())
    assert record["status"] == "done" and "monai.bundle run" in record["command"]

    # 3. nothing to do the second time
    rc, out, _ = run_tool(capsys, *base)
    assert rc == 0 and "Plan: 8 stages, 8 done, 0 to run" in out and "skip report:" in out

    # 4. an interrupted training (checkpoint, no model.pt) resumes with --resume True; the stages after it re-run
    (root / "models" / "vat_eps3" / "model.pt").unlink()
    _touch(root / "models" / "vat_eps3" / "checkpoint.pt")
    rc, out, _ = run_tool(capsys, *base)
    assert rc == 0
    assert "STAGE vat_eps3 train_eps 3 resume True" in _logs(root)
    assert "] robustness_vat_eps3 done in" in out and "] report done in" in out and "skip amat:" in out

    # 5. --force on a training stage starts it afresh (old checkpoints removed, no --resume)
    _touch(root / "models" / "amat" / "checkpoint_epoch=3.pt")
    rc, out, _ = run_tool(capsys, *base, "--force", "[amat]", "--stages", "[amat,robustness_amat,report]")
    last_run = (root / "logs" / "amat.log").read_text().split("===== cwd:")[-1]  # the log of this run of amat
    assert rc == 0 and "STAGE amat train_eps 0 resume False" in last_run
    assert not (root / "models" / "amat" / "checkpoint_epoch=3.pt").exists()
    assert "] robustness_amat done in" in out and "] report done in" in out

    # 6. other settings re-run the stages whose command changed
    rc, out, _ = run_tool(capsys, *base, "--override", '{"epochs": 5}', "--dry_run")
    assert "Plan: 8 stages, 0 done, 8 to run" in out and "settings changed since the last run" in out

    # 7. a stage that failed after an earlier success (its old output still there) is not taken as done
    monkeypatch.setenv("FAIL_RUN", "std")
    rc, out, err = run_tool(capsys, *base, "--stages", "[robustness_std]", "--force", "[robustness_std]")
    assert rc == 1 and "Stage 'robustness_std' failed" in err
    monkeypatch.delenv("FAIL_RUN")
    rc, out, _ = run_tool(capsys, *base, "--dry_run")
    assert _plan(out)["robustness_std"] == "run" and "the last run did not finish" in out
    assert _plan(out)["std"] == "done" and _plan(out)["report"] == "run"


# ------------------------------------------------------------------------------------------ real end to end (slow)
TINY = {"max_cases": 1, "max_val_cases": 1, "max_test_cases": 1, "epochs": 1, "val_interval": 1, "batch_size": 64,
        "patch_size": [24, 32], "filters": [8, 16, 32, 64], "attack_steps": 1, "pgd_steps": 2,
        "ifgsm_steps": 1, "robustness_eps": [2, 6]}


@pytest.mark.slow
def test_end_to_end_hippocampus_quick(tmp_path):
    """The whole tool on the hippocampus bundle (synthetic data), tiny settings, every registered method (one noise
    level, 2, for each method with eps)."""
    from robust_bundles import methods

    root = tmp_path / "runs"
    with_eps = [m for m in methods.with_overlay() if m.takes_eps]
    cmd = [sys.executable, str(SCRIPT), "--bundle", str(HIPPOCAMPUS), "--profile", "quick", "--output_root",
           str(root), *(a for m in with_eps for a in (f"--{m.key}_eps", "[2]")), "--finetune_epochs", "1",
           "--override", json.dumps(TINY)]
    p = forkserver.run(cmd, ROOT, timeout=900, stderr_apart=True)
    assert p.returncode == 0, f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    report_dir = root / "report"
    for name in ("results.md", "results.csv", "results.json"):
        assert (report_dir / name).is_file(), name
    for name in ("metric_vs_eps.png", "margins.png"):
        assert (report_dir / name).read_bytes()[:8] == PNG_MAGIC, name
    table = json.loads((report_dir / "results.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["STD", *(f"{m.name} (eps 2)" if m.takes_eps else
                                                          f"{m.name} (fine-tuned)" for m in methods.with_overlay())]
    assert table["columns"] == ["clean", "PGD 2", "PGD 6", "PGD Avg.", "IFGSM 2", "IFGSM 6", "IFGSM Avg.", "noise 2",
                                "noise 6", "noise Avg."]  # the quick suite
    for run in ("std", *(m.run_name(2 if m.takes_eps else None) for m in methods.with_overlay())):
        assert (root / "models" / run / "model.pt").is_file()
        assert (root / "eval" / run / "robustness.json").is_file()
        assert (root / "logs" / f"{run}.log").is_file()
    n = 2 * (1 + len(list(methods.with_overlay()))) + 2  # training and evaluation of each run, thresholds, report
    assert f"[{n}/{n}] report done" in p.stdout and "| AMAT (fine-tuned) |" in p.stdout
    assert json.loads((root / "models" / "amat" / "init_from.json").read_text())["max_epochs"] == 1
    # the caption states the data the runs used, read from the stage logs (the profile says 32 / 4 / 8 cases)
    used = re.search(r"Data used \(from the stage logs\): train (\d+) cases? \((\d+) slices\); validation (\d+) "
                     r"cases? \(\d+ slices\); test (\d+) cases? \(\d+ slices\)\.", table["caption"])
    assert used and int(used.group(1)) < 32 and int(used.group(2)) > 0, table["caption"]
    # a second run finds everything done
    p = forkserver.run(cmd, ROOT, timeout=300, stderr_apart=True)
    assert p.returncode == 0 and f"Plan: {n} stages, {n} done, 0 to run" in p.stdout, p.stdout[-3000:]


def test_extra_runs_of_a_profile(bundle, capsys, tmp_path):
    extra = {"std_bce": {"override": {"heatmap_loss": "bce", "epochs": 2}, "label": "STD (BCE)"}}
    rc, out, _ = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--output_root", tmp_path / "o",
                          "--override", json.dumps({"experiment": {"extra_runs": extra}}), "--dry_run")
    assert rc == 0, out
    cmds = commands(out)
    assert list(cmds)[:3] == ["std", "thresholds", "std_bce"] and "robustness_std_bce" in cmds
    cmd = cmds["std_bce"]
    assert config_files(cmd)[0] == "configs/train.json" and arg(cmd, "--heatmap_loss") == "bce"
    assert arg(cmd, "--epochs") == "2" and arg(cmd, "--run_name") == "std_bce"
    assert 'extra runs: std_bce {"heatmap_loss": "bce", "epochs": 2}' in out
    rc, _, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--override",
                          json.dumps({"experiment": {"extra_runs": {"vat_eps2": {}}}}), "--dry_run")
    assert rc == 1 and "'vat_eps2' is not a free run name" in err


# ------------------------------------------------------------------------------------------- a new method (registry)
DUMMY_MODULE = '''
from robust_bundles.adversarial import VATIteration


class DummyIteration(VATIteration):
    """A stand-in method: VAT under another name."""
'''


@pytest.fixture
def dummy_method(bundle):
    """DUMMY, a method with eps: its iteration class (a module in the bundle folder, importable by the bundle run,
    whose working directory is the bundle), its overlay dummy.json and its registry entry; unregistered afterwards."""
    from robust_bundles import methods

    (bundle / "dummy_method.py").write_text(DUMMY_MODULE)
    sys.path.insert(0, str(bundle))
    import dummy_method as module

    _write(bundle / "configs" / "dummy.json", {
        "dummy_iteration": {"_target_": "dummy_method.DummyIteration", "eps": "@train_eps"},
        "+run": ["$print('ITERATION', type(@dummy_iteration).__name__, @dummy_iteration.eps)"]})
    method = methods.register(methods.Method("DUMMY", overlay="dummy.json", iteration=module.DummyIteration,
                                             takes_eps=True, styles={"scratch": ("C5", "h", "DUMMY")}))
    yield method
    methods.unregister("DUMMY")
    sys.path.remove(str(bundle))
    sys.modules.pop("dummy_method", None)


def test_a_registry_entry_makes_a_method_known_to_the_tool_the_report_and_the_study(bundle, dummy_method, capsys,
                                                                                   tmp_path):
    from robust_bundles import methods, report, study_grid, study_report

    root = tmp_path / "out"
    rc, out, err = run_tool(capsys, "--bundle", bundle, "--profile", "tiny", "--output_root", root, "--vat_eps", "[]",
                            "--override", '{"experiment": {"dummy_eps": [2]}}', "--verbose")  # every stage's lines
    assert rc == 0, err
    # the experiment tool: a training stage with the overlay (the iteration class built), its evaluation, the group
    assert "STAGE dummy_eps2 train_eps 2 resume False" in out and "ITERATION DummyIteration 2.0" in out
    assert "] robustness_dummy_eps2 done in" in out and "DUMMY eps: 2" in out
    assert "dummy" in experiment.groups() and "dummy.json" in experiment.bundle_configs()
    # the report: run names, the row (after the built-in methods), the method column
    assert report.run_name("dummy", 2) == "dummy_eps2" and report.parse_run("dummy_eps2") == ("DUMMY", 2.0,
                                                                                            "DUMMY (eps 2)")
    md = (root / "report" / "results.md").read_text()
    assert md.index("| AMAT |") < md.index("| DUMMY (eps 2) |")
    assert "DUMMY" in report.METHODS
    # the study: its baselines, its rows' setting and its plot style
    assert study_grid.Baseline("DUMMY", 2, "std").run == "dummy_eps2_ft"
    assert study_report.point_style("DUMMY", "scratch") == ("C5", "h", "DUMMY")
    assert study_report.point_style("DUMMY", "std") == ("C5", "h", "DUMMY fine-tuned")
    assert study_report._setting({"method": "DUMMY", "eps": 2.0}) == "DUMMY eps 2"
    # without the entry the method is unknown again: a bundle without dummy.json is complete
    methods.unregister("DUMMY")
    assert "dummy.json" not in experiment.bundle_configs() and "DUMMY" not in report.METHODS
    assert report.parse_run("dummy_eps2") == ("dummy_eps2", None, "dummy_eps2")
    methods.register(dummy_method)  # for the fixture's clean-up


def test_a_method_without_a_list_runs_at_its_overlays_eps_and_a_bundle_without_its_overlay_has_no_runs(bundle):
    """The profile gives no teat_eps: TEAT runs at the train_eps of the bundle's teat.json (the task's value); a
    bundle without teat.json trains no TEAT, and asking for TEAT runs there names the missing file."""
    _write(bundle / "configs" / "profiles" / "tiny.json", {"experiment": {"vat_eps": [3]}, "epochs": 1})
    runs = experiment.Experiment(bundle, "tiny").runs()
    assert "teat_eps9" in runs and "vat_eps3" in runs and "vat_eps9" not in runs
    (bundle / "configs" / "teat.json").unlink()
    exp = experiment.Experiment(bundle, "tiny")
    assert not any(r.startswith("teat") for r in exp.runs()) and "TEAT" not in exp.eps
    with pytest.raises(experiment.ExperimentError, match="no configs/teat.json"):
        experiment.Experiment(bundle, "tiny", eps={"TEAT": [2]})
    with pytest.raises(experiment.ExperimentError, match=r"Unknown option\(s\) --teat_ep: .*--teat_eps"):
        experiment.method_options(teat_ep=[2])
