"""scripts/amat_study.py: grid, cost, frontier and choice with hand-computed numbers; the plan; one whole study on
tiny synthetic data (slow)."""

from __future__ import annotations

import ast
import json
import shlex
import sys
from pathlib import Path

import forkserver
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "amat_study.py"
HIPPOCAMPUS = ROOT / "bundles" / "hippocampus_mri_segmentation"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

from robust_bundles import study as study  # noqa: E402  (the study's plan; scripts/ holds its thin command line)
from robust_bundles import study_analysis, study_grid  # noqa: E402  (its analysis; what it compares)
from robust_bundles.engine.cli import json_override_argv  # noqa: E402


# ------------------------------------------------------------------------------------------------- pure functions
def test_cost_units():
    # VAT of the quick profile: 12 epochs x (3 steps + 1 training pass) = 48; AMAT adds the clean pass of beta 0.5
    assert study_analysis.cost_units(12, 3, 0.0) == 48
    assert study_analysis.cost_units(6, 3, 0.5) == 30  # fine-tuned AMAT, 6 epochs: 0.625 of a VAT run
    assert study_analysis.cost_units(6, 10, 0.5) == 72  # T = 10: 1.5 VAT runs
    assert study_analysis.cost_units(12, 0, 0.0) == 12  # STD


def test_frontier_keeps_the_runs_nothing_beats():
    # STD (0.72, 0.19), VAT 1 (0.70, 0.33), VAT 2 (0.68, 0.40), VAT 4 (0.66, 0.50), VAT 8 (0.65, 0.49: dominated
    # by VAT 4, less clean and less robust), a duplicate of VAT 2
    pts = [(0.72, 0.19), (0.70, 0.33), (0.68, 0.40), (0.66, 0.50), (0.65, 0.49), (0.68, 0.40)]
    front = study_analysis.frontier(pts)
    assert front == [(0.66, 0.50), (0.68, 0.40), (0.70, 0.33), (0.72, 0.19)]
    # linear between points: at clean 0.71, halfway between (0.70, 0.33) and (0.72, 0.19) -> 0.26
    assert study_analysis.frontier_at(front, 0.71) == pytest.approx(0.26)
    assert study_analysis.frontier_at(front, 0.67) == pytest.approx(0.45)
    assert study_analysis.frontier_at(front, 0.68) == pytest.approx(0.40)
    # flat beyond the ends: less clean than the most robust VAT -> 0.50; cleaner than STD -> STD's 0.19
    assert study_analysis.frontier_at(front, 0.60) == 0.50 and study_analysis.frontier_at(front, 0.75) == 0.19
    assert study_analysis.frontier_at([], 0.7) is None


def _row(run, method, clean, pgd_avg, cost=1.0, init="scratch"):
    return {"run": run, "method": method, "clean": clean, "pgd_avg": pgd_avg, "cost": cost, "init": init,
            "pgd": {}, "config": {"name": run}}


def test_choice_follows_the_criterion():
    rows = [
        _row("std", "STD", 0.72, 0.19, cost=0.25),
        _row("vat_eps2", "VAT", 0.68, 0.40),
        _row("vat_eps6", "VAT", 0.66, 0.50),
        _row("teat_eps6", "TEAT", 0.65, 0.49, cost=1.05),
        _row("amat_a", "AMAT", 0.70, 0.42, cost=0.625),   # eligible; frontier at 0.70: 0.19 + 0.21 * 0.5 = 0.295
        _row("amat_b", "AMAT", 0.695, 0.45, cost=0.875),  # eligible (0.72 - 0.03 = 0.69 <= 0.695), more robust
        _row("amat_c", "AMAT", 0.68, 0.48, cost=0.5),     # clean too low
        _row("amat_d", "AMAT", 0.71, 0.47, cost=1.5),     # too expensive
    ]
    a = study_analysis.analyse(rows, 0.03)
    assert a["frontier"] == [(0.66, 0.50), (0.68, 0.40), (0.72, 0.19)]
    by = {r["run"]: r for r in rows}
    assert by["amat_a"]["frontier"] == pytest.approx(0.295) and by["amat_a"]["height"] == pytest.approx(0.125)
    assert [r["run"] for r in rows if r["eligible"]] == ["amat_a", "amat_b"]
    assert not by["amat_c"]["clean_ok"] and by["amat_c"]["cost_ok"] and not by["amat_d"]["cost_ok"]
    c = a["choice"]
    assert c["run"] == "amat_b" and c["why"] == "best PGD average among the eligible"
    assert c["best_baseline"] == {"run": "vat_eps6", "clean": 0.66, "pgd_avg": 0.50}
    assert not c["beats_best_baseline"] and c["above_frontier"]
    # nothing eligible: the most robust of those meeting the most conditions (here: the clean one), flagged
    a = study_analysis.analyse([r for r in rows if r["run"] not in ("amat_a", "amat_b")], 0.03)
    assert a["choice"]["run"] == "amat_d" and a["choice"]["why"].startswith("no configuration met both")
    # the test split never chooses: the choice is given
    assert study_analysis.analyse(rows, 0.03, chosen="amat_a")["choice"]["run"] == "amat_a"


def test_grid_parsing_and_errors(tmp_path):
    grid = study_grid.parse_grid(None)
    assert [c.name for c in grid][:2] == ["ft6_m10", "scratch_d1"] and sum(c.reference for c in grid) == 1
    base = next(c for c in grid if c.name == "ft6_m10")
    assert (base.init, base.epochs, base.margin_rule, base.target_margin, base.attack_steps, base.xi) == \
        ("std", 6, "target", 10.0, 3, "mean_std")
    assert base.delta(6) == pytest.approx(10 / 3) and next(c for c in grid if c.name == "ft6_d2").delta(6) == 2.0
    assert base.margin_args() == {"margin_rule": "target", "attack_steps": 3, "amat_beta": 0.5,
                                  "target_margin": 10.0, "reach_fraction": 0.5}
    # an entry may switch the perturbation memory against the study's setting (a T = 5 cold start among T = 1 runs)
    cold = study_grid.parse_grid('[{"name": "t5", "target_margin": 10, "attack_steps": 5, "perturbation_memory": false}]')
    assert cold[0].margin_args()["perturbation_memory"] is False and cold[0].margin_args()["attack_steps"] == 5
    # the same list given on the command line: its JSON false reaches the grid as the boolean (fire alone would make
    # the bare word a string)
    argv = json_override_argv(["--grid", '[{"name": "t5", "perturbation_memory": false}]'])
    assert argv == ["--grid", "[{'name': 't5', 'perturbation_memory': False}]"]
    assert json_override_argv(["--grid=[null]"]) == ["--grid=[None]"]
    path = tmp_path / "grid.json"
    path.write_text(json.dumps([{"name": "x", "init": "scratch", "margin_rule": "fixed", "expansion_step": 2}]))
    assert study_grid.parse_grid(str(path))[0].run == "amat_x"
    for bad, match in (
        ('[{"name": "x", "speed": 3}]', "unknown key"),
        ('[{"name": "x", "init": "imagenet", "target_margin": 5}]', "init must be"),
        ('[{"name": "x", "margin_rule": "fixed"}]', "expansion_step > 0"),
        ('[{"name": "x"}]', "target_margin > 0"),
        ('[{"name": "x", "target_margin": 5, "xi": "median"}]', "xi must be"),
        ('[{"name": "x", "target_margin": 5, "perturbation_memory": "yes"}]', "perturbation_memory must be"),
        ('[{"name": "x", "target_margin": 5}, {"name": "x", "target_margin": 6}]', "unique"),
        ('{"name": "x"}', "list of dicts"),
    ):
        with pytest.raises(study.ExperimentError, match=match):
            study_grid.parse_grid(bad)


# ----------------------------------------------------------------------------------------------------------- plan
def _dry_run(tmp_path, *args):
    cmd = [sys.executable, str(SCRIPT), "--bundle", str(HIPPOCAMPUS), "--output_root", str(tmp_path / "out"),
           "--dry_run", *args]
    p = forkserver.run(cmd, ROOT, timeout=120, stderr_apart=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _commands(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    return {ln.split("] ", 1)[1].split(" ")[0].rstrip(":"): shlex.split(lines[i + 1])
            for i, ln in enumerate(lines) if ln.startswith("[") and ln.rstrip().endswith(":")}


def _arg(cmd, key):
    return cmd[cmd.index(key) + 1] if key in cmd else None


def test_dry_run_plan_and_commands(tmp_path):
    out = _dry_run(tmp_path)
    cmds = _commands(out)
    assert "Plan: 31 stages, 0 done, 31 to run" in out and not (tmp_path / "out").exists()
    # training then its validation evaluation, one run after the other; the study report last
    names = list(cmds)
    assert names[:4] == ["std", "robustness_std", "thresholds", "thresholds_quantile"]
    assert names[4:6] == ["amat_ft6_m10", "robustness_amat_ft6_m10"]  # the base first
    assert names.index("robustness_vat_eps2_ft") == names.index("vat_eps2_ft") + 1
    assert "[31/31] study" in out and "Phase test: evaluates the chosen configuration" in out
    base = cmds["amat_ft6_m10"]
    files = ast.literal_eval(base[base.index("--config_file") + 1])
    assert files == ["configs/train.json", "configs/amat.json", "configs/finetune.json", "configs/profiles/quick.json"]
    assert (_arg(base, "--margin_rule"), _arg(base, "--target_margin"), _arg(base, "--epochs"),
            _arg(base, "--attack_steps")) == ("target", "10", "6", "3")
    assert _arg(base, "--thresholds_file") == str(tmp_path / "out" / "models" / "std" / "thresholds.json")
    q90 = cmds["amat_ft6_m10_q90"]
    assert _arg(q90, "--thresholds_file").endswith("thresholds_quantile.json")
    assert _arg(cmds["thresholds_quantile"], "--threshold_rule") == "quantile"
    assert _arg(cmds["thresholds"], "--threshold_rule") == "mean_std"
    ref = cmds["amat_scratch_d1"]
    assert "configs/finetune.json" not in ref[ref.index("--config_file") + 1] and "--epochs" not in ref
    assert (_arg(ref, "--margin_rule"), _arg(ref, "--expansion_step")) == ("fixed", "1")
    ev = cmds["robustness_amat_ft6_m10"]
    assert (_arg(ev, "--eval_split"), _arg(ev, "--max_test_cases"), _arg(ev, "--run_name")) == \
        ("validation", "8", "amat_ft6_m10")
    assert _arg(ev, "--ifgsm_steps") == "0"  # the choice reads PGD only
    assert _arg(ev, "--output_dir") == str(tmp_path / "out" / "validation" / "eval" / "amat_ft6_m10")
    vat = cmds["vat_eps4_ft"]
    assert _arg(vat, "--init_from") is None and "configs/finetune.json" in vat[vat.index("--config_file") + 1]
    assert (_arg(vat, "--train_eps"), _arg(vat, "--epochs"), _arg(vat, "--attack_steps")) == ("4", "6", "3")
    # the default baselines: VAT fine-tuned at 2, 4, 6, 8 and TEAT 6 fine-tuned, none from scratch
    assert [n for n in names if n.startswith(("vat", "teat"))] == [
        "vat_eps2_ft", "vat_eps4_ft", "vat_eps6_ft", "vat_eps8_ft", "teat_eps6_ft"]
    teat = cmds["teat_eps6_ft"]
    assert (_arg(teat, "--train_eps"), _arg(teat, "--epochs")) == ("6", "6") and "configs/teat.json" in teat[teat.index("--config_file") + 1]


def test_test_phase_runs_best_or_all_baselines(tmp_path):
    """--test_baselines best: STD, the VAT/TEAT run with the best validation PGD average, the choice; all: every
    baseline and the reference AMAT too. The TEAT fine-tuned runs are named like the VAT ones."""
    grid = [{"name": "scratch", "init": "scratch", "margin_rule": "fixed", "expansion_step": 1.0, "reference": True},
            {"name": "ft", "epochs": 1, "target_margin": 4.0}]
    args = (str(HIPPOCAMPUS), None, str(tmp_path))
    best = study.Study(*args, grid=grid, vat_eps=[2], vat_ft_eps=[], teat_eps=[], teat_ft_eps=[6])
    assert [b.run for b in best.baselines] == ["vat_eps2", "teat_eps6_ft"]
    with pytest.raises(study.ExperimentError, match="No validation study in .*study.json: run the validation"):
        best.test_runs("amat_ft")
    rows = [{"run": "std", "pgd_avg": 0.2}, {"run": "vat_eps2", "pgd_avg": 0.40},
            {"run": "teat_eps6_ft", "pgd_avg": 0.45}, {"run": "amat_ft", "pgd_avg": 0.5}]
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text(json.dumps({"rows": rows}))
    assert best.test_runs("amat_ft") == ["std", "teat_eps6_ft", "amat_ft"]
    # on a lower-is-better metric (an MRE in mm) the best baseline is the one with the lowest PGD average
    (tmp_path / "study" / "study.json").write_text(json.dumps({"rows": rows, "analysis": {"higher_is_better": False}}))
    assert best.test_runs("amat_ft") == ["std", "vat_eps2", "amat_ft"]
    every = study.Study(*args, grid=grid, vat_eps=[2], vat_ft_eps=[], teat_eps=[], teat_ft_eps=[6],
                        test_baselines="all")
    assert every.test_runs("amat_ft") == ["std", "vat_eps2", "teat_eps6_ft", "amat_scratch", "amat_ft"]
    with pytest.raises(study.ExperimentError, match="--test_baselines must be 'best' or 'all'"):
        study.Study(*args, grid=grid, test_baselines="some")


# ------------------------------------------------------------------------------------------ real end to end (slow)
TINY = {"max_cases": 1, "max_val_cases": 1, "max_test_cases": 1, "epochs": 1, "val_interval": 1, "batch_size": 64,
        "patch_size": [24, 32], "filters": [8, 16, 32, 64], "attack_steps": 1, "pgd_steps": 2,
        "ifgsm_steps": 1, "robustness_eps": [2, 6]}
GRID = [{"name": "scratch", "init": "scratch", "margin_rule": "fixed", "expansion_step": 1.0, "reference": True},
        {"name": "ft", "epochs": 1, "target_margin": 4.0, "xi": "quantile"}]


def _run_study(bundle: Path, root: Path, *args: str, timeout: int = 1200) -> list[str]:
    """Run the whole study (both phases) into ``root``; check that its files exist; return the command."""
    cmd = [sys.executable, str(SCRIPT), "--bundle", str(bundle), "--output_root", str(root), *args]
    p = forkserver.run(cmd, ROOT, timeout=timeout, stderr_apart=True)  # its stages forked too
    assert p.returncode == 0, f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    s = root / "study"
    for name in ("study.md", "study.csv", "study.json", "choice.json", "test.md", "test.json"):
        assert (s / name).is_file(), name
    for name in ("frontier.png", "test_frontier.png"):
        assert (s / name).read_bytes()[:8] == PNG_MAGIC, name
    return cmd


@pytest.mark.slow
def test_whole_study_on_tiny_synthetic_data(tmp_path):
    root = tmp_path / "study"
    cmd = _run_study(HIPPOCAMPUS, root, "--vat_eps", "[2]", "--vat_ft_eps", "[]", "--teat_eps", "[]", "--teat_ft_eps",
                     "[]", "--val_cases", "1", "--finetune_epochs", "1", "--grid", json.dumps(GRID), "--override",
                     json.dumps(TINY))
    s = root / "study"
    data = json.loads((s / "study.json").read_text())
    assert [r["run"] for r in data["rows"]] == ["std", "vat_eps2", "amat_scratch", "amat_ft"]
    ft = data["rows"][-1]
    assert ft["init"] == "std" and ft["delta"] == pytest.approx(4.0) and ft["xi"] == "quantile"
    assert ft["margins"]["max"] <= 4.0 + 1e-6 and ft["train_seconds"] is not None
    choice = json.loads((s / "choice.json").read_text())
    assert choice["run"] in ("amat_scratch", "amat_ft") and choice["std_clean"] == data["rows"][0]["clean"]
    # the test phase (--test_baselines best, the default): STD, the best validation VAT/TEAT run and the choice
    test_runs = [r["run"] for r in json.loads((s / "test.json").read_text())["rows"]]
    assert test_runs == ["std", "vat_eps2", choice["run"]]
    for run in test_runs:
        record = json.loads((root / "logs" / f"test_{run}.json").read_text())
        assert "--eval_split test" in record["command"] and record["status"] == "done"
        assert (root / "test" / "eval" / run / "robustness.json").is_file()
    table = (root / "test" / "report" / "results.md").read_text()
    assert "| AMAT (ft) (fine-tuned) |" in table or choice["run"] == "amat_scratch"
    md = (s / "study.md").read_text()
    assert "Choice (" in md and "| **" + choice["run"] + "** |" in md
    # the same command again: nothing to do
    p = forkserver.run(cmd, ROOT, timeout=300, stderr_apart=True)
    assert p.returncode == 0 and "Plan: 11 stages, 11 done, 0 to run" in p.stdout, p.stdout[-3000:]
    assert "Plan: 4 stages, 4 done, 0 to run" in p.stdout.split("=== Phase test ===")[1]  # 3 evaluations + report


CEPH = ROOT / "bundles" / "cephalometric_xray_landmarks"


def test_study_settings_come_from_the_command_line_the_profile_or_the_defaults(tmp_path):
    # the landmark quick profile states its own (eps of grey levels in [0, 1], tolerance in mm)
    ceph = study.Study(str(CEPH), None, str(tmp_path))
    assert [b.run for b in ceph.baselines] == ["vat_eps1_ft", "vat_eps2_ft", "vat_eps3_ft", "vat_eps4_ft",
                                               "teat_eps3_ft"]
    assert [c.name for c in ceph.grid][:2] == ["ft10_m2", "ft10_m3"] and ceph.grid[0].reference
    assert (ceph.val_cases, ceph.finetune_epochs, ceph.clean_tolerance) == (50, 10, 0.3)
    # the command line wins; the hippocampus profile has none: the module's defaults
    given = study.Study(str(CEPH), None, str(tmp_path), vat_ft_eps=[], clean_tolerance=1.5)
    assert [b.run for b in given.baselines] == ["teat_eps3_ft"] and given.clean_tolerance == 1.5
    # the BCCD quick profile: mAP, eps of RGB values, fast AMAT at the VAT runs' counted cost
    bccd = study.Study(str(ROOT / "bundles" / "bccd_blood_cell_detection"), None, str(tmp_path))
    assert [b.run for b in bccd.baselines] == ["vat_eps5_ft", "vat_eps10_ft", "vat_eps15_ft", "teat_eps10_ft"]
    (amat,) = bccd.grid
    assert amat.perturbation_memory and amat.attack_steps == 1 and amat.reference
    assert study_analysis.cost_units(amat.epochs, 1, amat.beta) == study_analysis.cost_units(bccd.finetune_epochs, 1, 0.0)  # 30 = 30
    assert (bccd.val_cases, bccd.clean_tolerance) == (20, 0.03)
    hippo = study.Study(str(HIPPOCAMPUS), None, str(tmp_path))
    assert [b.run for b in hippo.baselines] == ["vat_eps2_ft", "vat_eps4_ft", "vat_eps6_ft", "vat_eps8_ft",
                                                "teat_eps6_ft"]
    assert [c.name for c in hippo.grid] == [e["name"] for e in study_grid.DEFAULT_GRID] and hippo.clean_tolerance == 0.03
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"experiment": {"study": {"vat_ft_eps": [1], "clean_tol": 1}}}))
    with pytest.raises(study.ExperimentError, match=r"experiment.study has unknown key\(s\) \['clean_tol'\]"):
        study_grid.study_settings(profile, {})
    profile.write_text(json.dumps({"experiment": {"study": {"vat_ft_eps": [1], "_desc_": "x"}}}))
    assert study_grid.study_settings(profile, {"val_cases": 2})["vat_ft_eps"] == [1]
    assert study_grid.study_settings(profile, {"val_cases": 2})["val_cases"] == 2
#: a tiny landmark run: 64 x 48 inputs, a 4-16 network, 2 training images, 1 validation and 1 test image, 1 epoch
CEPH_TINY = {"features": [4, 4, 8, 8, 16, 4], "image_size": [64, 48], "heatmap_radius": 3, "batch_size": 4,
             "max_cases": 2, "max_val_cases": 1, "max_test_cases": 1, "epochs": 1, "val_interval": 1,
             "attack_steps": 1, "pgd_steps": 2, "ifgsm_steps": 1, "robustness_eps": [0.5, 1]}


@pytest.mark.slow
def test_whole_study_on_the_landmark_bundle(tmp_path):
    # STD, VAT eps 1 fine-tuned, one AMAT configuration fine-tuned; the choice on the validation split, then the
    # test split; the metric is MRE in mm, lower is better, and every output says so
    root = tmp_path / "study"
    _run_study(CEPH, root, "--vat_ft_eps", "[1]", "--teat_ft_eps", "[]", "--val_cases", "1", "--finetune_epochs", "1",
               "--clean_tolerance", "50", "--grid", json.dumps([{"name": "ft", "epochs": 1, "target_margin": 1.0,
                                                                 "attack_steps": 1}]),
               "--override", json.dumps(CEPH_TINY), timeout=900)
    s = root / "study"
    data = json.loads((s / "study.json").read_text())
    assert [r["run"] for r in data["rows"]] == ["std", "vat_eps1_ft", "amat_ft"]
    metric = data["analysis"]["metric"]
    assert (metric["name"], metric["unit"], metric["higher_is_better"]) == ("MRE", "mm", False)
    assert data["analysis"]["higher_is_better"] is False
    for r in data["rows"]:
        assert r["clean"] > 0 and r["pgd_avg"] > 0  # errors in mm
    # the choice and the frontier follow the direction: recomputed from the rows, lower is better
    std, vat, amat = data["rows"]
    assert amat["clean_ok"] is (amat["clean"] <= std["clean"] + 50)
    front = study_analysis.frontier([(-std["clean"], -std["pgd_avg"]), (-vat["clean"], -vat["pgd_avg"])])
    expected = study_analysis.frontier_at(front, -amat["clean"])
    assert amat["height"] == pytest.approx(-amat["pgd_avg"] - expected)
    choice = json.loads((s / "choice.json").read_text())
    assert choice["run"] == "amat_ft" and choice["metric"]["name"] == "MRE"
    assert choice["beats_best_baseline"] is (amat["pgd_avg"] <= vat["pgd_avg"])
    md = (s / "study.md").read_text()
    assert "MRE (mm, lower is better) under white-box L2 PGD" in md
    assert f"clean <= STD {std['clean']:.3f} + 50" in md and "clean Dice" not in md
    assert "MRE (mm, lower is better)" in (s / "test.md").read_text()
    # the validation phase evaluated the validation split, the test phase the test split, each once
    for run in ("std", "vat_eps1_ft", "amat_ft"):
        val = json.loads((root / "logs" / f"robustness_{run}.json").read_text())
        test = json.loads((root / "logs" / f"test_{run}.json").read_text())
        assert "--eval_split validation" in val["command"] and "--max_test_cases 1" in val["command"]
        assert "--eval_split test" in test["command"] and test["status"] == "done"
    table = (root / "test" / "report" / "results.md").read_text()
    assert "MRE (mm, lower is better" in table


def test_analysis_follows_a_lower_is_better_metric():
    # A landmark MRE (mm, lower is better). STD clean 2.0 / PGD avg 10; VAT 2.2 / 6 and 2.5 / 6.5 (dominated: worse on
    # both). Frontier (2.0, 10) - (2.2, 6). AMAT a: 2.1 / 7, the frontier at 2.1 is 8, so 1 mm better (height +1),
    # clean within 0.3 of STD (2.1 <= 2.3). AMAT b: 2.4 / 5, beyond the frontier's end: 6, height +1, but 2.4 > 2.3.
    rows = [{"run": "std", "method": "STD", "clean": 2.0, "pgd_avg": 10.0, "cost": 0.25},
            {"run": "vat_eps2", "method": "VAT", "clean": 2.2, "pgd_avg": 6.0, "cost": 1.0},
            {"run": "vat_eps4", "method": "VAT", "clean": 2.5, "pgd_avg": 6.5, "cost": 1.0},
            {"run": "amat_a", "method": "AMAT", "clean": 2.1, "pgd_avg": 7.0, "cost": 0.5},
            {"run": "amat_b", "method": "AMAT", "clean": 2.4, "pgd_avg": 5.0, "cost": 0.5}]
    a = study_analysis.analyse(rows, 0.3, higher_is_better=False)
    assert a["frontier"] == [(2.0, 10.0), (2.2, 6.0)] and a["higher_is_better"] is False
    by = {r["run"]: r for r in rows}
    assert by["amat_a"]["frontier"] == pytest.approx(8.0) and by["amat_a"]["height"] == pytest.approx(1.0)
    assert by["amat_b"]["frontier"] == pytest.approx(6.0) and by["amat_b"]["height"] == pytest.approx(1.0)
    assert (by["amat_a"]["clean_ok"], by["amat_b"]["clean_ok"]) == (True, False)
    c = a["choice"]
    assert c["run"] == "amat_a" and c["above_frontier"] and c["best_baseline"]["run"] == "vat_eps2"
    assert c["beats_best_baseline"] is False  # 7 mm is worse than VAT's 6
    # read as higher-is-better the same numbers choose otherwise (b is ineligible there too, a is below the frontier)
    assert study_analysis.analyse([dict(r) for r in rows], 0.3)["choice"]["above_frontier"] is False
