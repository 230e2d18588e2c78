"""scripts/readme_figures.py: a doc's marked table is rendered from the run's result files (what the run used, read
from its files), ``check`` finds a section edited by hand or a record changed, and the repository's docs pass it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script

figures = load_script("readme_figures")

ROWS = [("std", "STD", 0.5, 0.2, None), ("amat", "AMAT (fine-tuned)", 0.6, 0.25, "std")]


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.fixture
def run(tmp_path) -> Path:
    """The files a finished two-run experiment leaves (a log with two runs: the last one counts)."""
    root = tmp_path / "runs" / "quick"
    _write(root / "report" / "results.json", {
        "metric": "dice", "higher_is_better": True, "columns": ["clean", "PGD 2"],
        "rows": [{"label": label, "run": r, "values": {"clean": c, "PGD 2": p}, "num_counted": 27, "num_samples": 72}
                 for r, label, c, p, _ in ROWS]})
    _write(root / "logs" / "report.json", {"status": "done", "finished": "2026-12-07 20:01:02"})
    _write(root / "logs" / "std.log", "===== cwd: x\ntrain split: 1 cases, 36 slices\n===== cwd: x\n"
                                      "... - train split: 9 cases, 324 slices (ids 0..323)\n"
                                      "... - validation split: 1 cases, 36 slices (ids 0..35)\n")
    _write(root / "logs" / "robustness_std.log", "===== cwd: x\n... - test split: 2 cases, 72 slices (ids 0..71)\n")
    for r, _, _, _, init in ROWS:
        _write(root / "models" / r / "cost.json", {"epochs": [{"epoch": e} for e in range(12 if init is None else 6)]})
        if init:
            _write(root / "models" / r / "init_from.json", {"init_from": str(root / "models" / init / "model.pt")})
        _write(root / "eval" / r / "robustness.json", {"settings": {
            "dataset": {"dir": str(root / "data"), "synthetic": True},
            "attacks": {"PGD": {"steps": 20}, "IFGSM": {"steps": 10}}}})
    return root


def test_write_renders_the_run_and_check_finds_hand_edits(run, tmp_path):
    repo = tmp_path / "repo"
    doc = repo / "docs" / "results.md"
    _write(doc, "# Results\n\n<!-- figures:main_job -->\nold numbers\n<!-- /figures:main_job -->\nafter\n")
    assert figures.write(str(run), "main_job", "python scripts/experiment.py --profile quick", repo=repo) == [
        "docs/results.md"]
    assert doc.read_text() == (
        "# Results\n\n<!-- figures:main_job -->\n"
        "| method | clean | PGD 2 |\n|---|---:|---:|\n"
        "| STD | 0.500 | 0.200 |\n| AMAT (fine-tuned) | **0.600** | **0.250** |\n\n"
        "dice (higher is better, best of each column in bold) on 27 of 72 test slices; run on 2026-12-07, data: "
        "synthetic (the bundle's default: no --dataset_dir); train 9 cases (324 slices); validation 1 case (36 slices); "
        "test 2 cases (72 slices); epochs: STD 12, AMAT (fine-tuned) 6 (fine-tuned from std); attacks: PGD 20 steps, "
        "IFGSM 10 steps. Command: `python scripts/experiment.py --profile quick`.\n"
        "<!-- /figures:main_job -->\nafter\n")
    assert figures.check(repo=repo) == []
    doc.write_text(doc.read_text().replace("0.500", "0.544"))  # a number typed by hand
    with pytest.raises(figures.FiguresError, match=r"figures differ from their records in docs/results.md: run "
                                                   r"python scripts/readme_figures.py write"):
        figures.check(repo=repo)
    assert figures.write(repo=repo) == ["docs/results.md"] and figures.check(repo=repo) == []
    # a section without its record names the command that makes it
    _write(repo / "README.md", "<!-- figures:seeds -->\n<!-- /figures:seeds -->\n")
    with pytest.raises(figures.FiguresError, match=r"README.md: the section figures:seeds has no record .*"
                                                   r"--name seeds"):
        figures.check(repo=repo)


def test_a_run_without_its_report_names_the_missing_file(run, tmp_path):
    (run / "report" / "results.json").unlink()
    with pytest.raises(figures.FiguresError, match=r"report/results.json is missing: run the job to the end"):
        figures.record(run)


def test_the_repository_docs_show_their_records():
    assert figures.check() == []


def test_spread_adds_the_seed_runs_below_the_table(run, tmp_path):
    """Two seed runs of the same command: per method the lowest - highest over the three seeds (hand-checked: STD
    clean 0.5 / 0.4 / 0.7 -> 0.400 - 0.700 (0.300)); a run of another command is refused."""
    import shutil

    repo = tmp_path / "repo"
    _write(repo / "docs" / "results.md", "<!-- figures:main_job -->\n<!-- /figures:main_job -->\n")
    figures.write(str(run), "main_job", repo=repo)
    seeds = []
    for seed, (clean, pgd) in ((1, (0.4, 0.3)), (2, (0.7, 0.1))):
        other = tmp_path / f"seed{seed}"
        shutil.copytree(run, other)
        res = json.loads((other / "report" / "results.json").read_text())
        res["rows"][0]["values"] = {"clean": clean, "PGD 2": pgd}
        _write(other / "report" / "results.json", res)
        seeds.append(str(other))
    assert figures.spread(seeds, "main_job", repo=repo) == ["docs/results.md"]
    text = (repo / "docs" / "results.md").read_text()
    assert "Spread over 3 seeds (0, 1, 2): lowest - highest (max - min)\n\n| method | clean |\n|---|---:|\n" \
           "| STD | 0.400 - 0.700 (0.300) |\n| AMAT (fine-tuned) | 0.600 - 0.600 (0.000) |\n" in text
    assert figures.check(repo=repo) == []
    res = json.loads((Path(seeds[0]) / "report" / "results.json").read_text())
    res["rows"] = res["rows"][:1]
    _write(Path(seeds[0]) / "report" / "results.json", res)
    with pytest.raises(figures.FiguresError, match="methods or columns differ"):
        figures.spread(seeds, "main_job", repo=repo)
