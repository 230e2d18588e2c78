"""The measured tables of the docs, generated from the result files of the runs, never typed.

A run's figures are kept as a small record, ``docs/figures/<name>.json``: the table of its ``report/results.json`` and
what the run actually used, read from its files (cases and slices of each split from the stage logs, the epochs of
each model from its ``cost.json``, fine-tuning from ``init_from.json``, the attacks and the data from
``robustness.json``, the date from the report stage's record). Any Markdown file shows it between two markers::

    <!-- figures:main_job -->
    ... (written by this script)
    <!-- /figures:main_job -->

Commands (from the repository root)::

    python scripts/readme_figures.py write --run bundles/hippocampus_mri_segmentation/runs/quick --name main_job
    python scripts/readme_figures.py write            # re-render every marked section from its record
    python scripts/readme_figures.py check            # exit 1 naming each section that differs from its record
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import fire

from robust_bundles.metrics import MetricSpec
from robust_bundles.results import data_used, splits_used

REPO = Path(__file__).resolve().parents[1]
FIGURES = "docs/figures"
#: the Markdown files that may hold marked sections
DOCS = ("README.md", "docs/*.md", "bundles/*/docs/README.md")
_SECTION = re.compile(r"(<!-- figures:([\w-]+) -->\n)(.*?)(<!-- /figures:\2 -->)", re.S)


class FiguresError(ValueError):
    """A run folder or a doc that cannot give its figures; the message names the file and the fix."""


def _json(path: Path) -> Any:
    if not path.is_file():
        raise FiguresError(f"{path} is missing: run the job to the end (its report stage writes it), or give --run "
                           "the output root of a finished run.")
    return json.loads(path.read_text())


def record(run: str | Path, command: str = "") -> dict:
    """The figures of the finished run in output root ``run`` and what it used, read from its files."""
    root = Path(run).resolve()
    table = _json(root / "report" / "results.json")
    report_stage = _json(root / "logs" / "report.json")
    splits = splits_used(root)
    models = {}
    for row in table["rows"]:
        cost = _json(root / "models" / row["run"] / "cost.json")
        init = root / "models" / row["run"] / "init_from.json"
        models[row["label"]] = {"epochs": len(cost["epochs"]),
                                "fine_tuned_from": Path(_json(init)["init_from"]).parent.name if init.is_file() else None}
    settings = _json(root / "eval" / table["rows"][0]["run"] / "robustness.json")["settings"]
    dataset = settings.get("dataset") or {}
    return {
        "date": report_stage.get("finished", "")[:10],
        "command": command,
        "data": "synthetic (the bundle's default: no --dataset_dir)" if dataset.get("synthetic")
        else Path(str(dataset.get("dir", "?"))).name,
        "splits": splits,
        "models": models,
        "attacks": {name: a["steps"] for name, a in settings["attacks"].items()},
        "counted": sorted({f"{r['num_counted']} of {r['num_samples']}" for r in table["rows"]}),
        "metric": table["metric"],
        "higher_is_better": table["higher_is_better"],
        "columns": table["columns"],
        "rows": [{"label": r["label"], "values": r["values"]} for r in table["rows"]],
    }


def render(rec: dict) -> str:
    """The Markdown of a record: the table (3 decimals, best of each column in bold) and a caption of what ran."""
    cols = rec["columns"]
    best = {}
    for c in cols:
        vals = [round(r["values"][c], 3) for r in rec["rows"] if r["values"].get(c) is not None]
        best[c] = (max(vals) if rec["higher_is_better"] else min(vals)) if vals else None
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rec["rows"]:
        cells = []
        for c in cols:
            v = r["values"].get(c)
            s = "n/a" if v is None else f"{v:.3f}"
            cells.append(f"**{s}**" if v is not None and round(v, 3) == best[c] else s)
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    split = data_used(rec["splits"])
    epochs = ", ".join(f"{label} {m['epochs']}" + (f" (fine-tuned from {m['fine_tuned_from']})"
                                                   if m["fine_tuned_from"] else "")
                       for label, m in rec["models"].items())
    attacks = ", ".join(f"{name} {steps} steps" for name, steps in rec["attacks"].items())
    label = MetricSpec(rec["metric"], higher_is_better=rec["higher_is_better"]).label()  # "dice (higher is better)"
    caption = (f"{label[:-1]}, best of each column in bold) on {' / '.join(rec['counted'])} test "
               f"slices; run on {rec['date']}, data: {rec['data']}; {split}; epochs: {epochs}; attacks: {attacks}.")
    if rec.get("command"):
        caption += f" Command: `{rec['command']}`."
    if rec.get("spread"):
        caption += " " + rec["spread"]
    return "\n".join(lines) + "\n\n" + caption + "\n" + render_spread(rec)


def render_spread(rec: dict) -> str:
    """The seed spread of a record (``spread`` command): per method, the lowest and highest value over the seeds of
    the clean column and of each ``Avg.`` column; empty without seed runs."""
    seeds = rec.get("seeds")
    if not seeds:
        return ""
    runs = [{"seed": seed, "rows": {r["label"]: r["values"] for r in rows}}
            for seed, rows in [(rec.get("seed", 0), rec["rows"]), *((s["seed"], s["rows"]) for s in seeds)]]
    cols = [c for c in rec["columns"] if c == "clean" or c.endswith("Avg.")]
    lines = ["", f"Spread over {len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}): lowest - highest "
             "(max - min)", "", "| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rec["rows"]:
        cells = []
        for c in cols:
            vals = [run["rows"].get(r["label"], {}).get(c) for run in runs]
            vals = [v for v in vals if v is not None]
            cells.append(f"{min(vals):.3f} - {max(vals):.3f} ({max(vals) - min(vals):.3f})" if vals else "n/a")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _docs(repo: Path) -> list[Path]:
    return sorted({p for pattern in DOCS for p in repo.glob(pattern)})


def _updated(text: str, repo: Path, source: Path) -> str:
    def section(m: re.Match) -> str:
        rec_file = repo / FIGURES / f"{m.group(2)}.json"
        if not rec_file.is_file():
            raise FiguresError(f"{source}: the section figures:{m.group(2)} has no record {rec_file}; make it with "
                               f"python scripts/readme_figures.py write --run <output root> --name {m.group(2)}")
        return m.group(1) + render(json.loads(rec_file.read_text())) + m.group(4)

    return _SECTION.sub(section, text)


def write(run: str | None = None, name: str | None = None, command: str = "", repo: str | Path = REPO) -> list[str]:
    """Record the run ``run`` as ``docs/figures/<name>.json`` (when given), then re-render every marked section.

    Args:
        run: the output root of a finished run (holds report/, logs/, models/, eval/).
        name: the record's name, the marker's: ``<!-- figures:NAME -->``.
        command: the command that made the run, stated in the caption.
        repo: the repository root.
    """
    repo = Path(repo)
    if run is not None:
        if not name:
            raise FiguresError("--run needs --name: the record's name (the marker <!-- figures:NAME --> in the docs)")
        path = repo / FIGURES / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record(run, command), indent=2) + "\n")
        tmp.replace(path)
    changed = []
    for doc in _docs(repo):
        text = doc.read_text()
        new = _updated(text, repo, doc)
        if new != text:
            tmp = doc.with_suffix(doc.suffix + ".tmp")
            tmp.write_text(new)
            tmp.replace(doc)
            changed.append(str(doc.relative_to(repo)))
    return changed


def spread(runs: Any, name: str, seeds: Any = None, repo: str | Path = REPO) -> list[str]:
    """Add seed runs of the record's command to the record ``name`` (rendered as a spread table below its table),
    then re-render every marked section.

    Args:
        runs: the output roots of the same command run with other seeds (``--override '{"seed": N}'``), a list
            or ``"a,b"``.
        name: the record's name (made by ``write --run``); the record's own run counts as seed 0.
        seeds: the seed of each run, in order; default 1, 2, ...
        repo: the repository root.

    Raises:
        FiguresError: no record ``name``, or a seed run whose methods or columns differ from the record's.
    """
    repo = Path(repo)
    if isinstance(runs, str):  # "a,b" or "[a, b]" from the command line
        runs = [r.strip().strip("'\"") for r in runs.strip("[]").split(",") if r.strip()]
    runs = [runs] if isinstance(runs, Path) else list(runs)
    seeds = list(seeds) if seeds is not None else list(range(1, len(runs) + 1))
    if len(seeds) != len(runs):
        raise FiguresError(f"{len(runs)} runs but {len(seeds)} seeds: give one seed per run.")
    path = repo / FIGURES / f"{name}.json"
    if not path.is_file():
        raise FiguresError(f"There is no record {path}: make it with python scripts/readme_figures.py write --run "
                           f"<output root> --name {name}")
    rec = json.loads(path.read_text())
    out = []
    for run, seed in zip(runs, seeds):
        other = record(run)
        if [r["label"] for r in other["rows"]] != [r["label"] for r in rec["rows"]] or \
                other["columns"] != rec["columns"]:
            raise FiguresError(f"{run}: its methods or columns differ from the record {name}'s: a seed run must be "
                               "the same command with another seed.")
        out.append({"seed": int(seed), "run": Path(run).name,
                    "rows": [{"label": r["label"], "values": r["values"]} for r in other["rows"]]})
    rec["seeds"] = out
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    tmp.replace(path)
    return write(repo=repo)


def check(repo: str | Path = REPO) -> list[str]:
    """The marked sections that differ from their records (empty: all are what the runs printed).

    Raises:
        FiguresError: a section differs; the message names the files and the command that rewrites them.
    """
    repo = Path(repo)
    stale = []
    for doc in _docs(repo):
        text = doc.read_text()
        if _updated(text, repo, doc) != text:
            stale.append(str(doc.relative_to(repo)))
    if stale:
        raise FiguresError(f"figures differ from their records in {', '.join(stale)}: run "
                           "python scripts/readme_figures.py write (never edit a marked section by hand)")
    return stale


def main(argv: list[str] | None = None) -> int:
    try:
        fire.Fire({"write": write, "spread": spread, "check": check}, command=argv, serialize=lambda x: None)
    except FiguresError as e:
        print(f"readme_figures: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
