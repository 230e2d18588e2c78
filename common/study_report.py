"""The AMAT calibration study's output: one row per run (its metrics on a split, settings, margins, time and cost),
the tables (``study/study.md``, ``study.csv``, ``study.json``, ``choice.json``; ``test.md`` and the test split's
paper-style report), and the clean-versus-robust frontier plots. The stages that call it are the study's report stages
(:mod:`robust_bundles.study`); the analysis is :mod:`robust_bundles.study_analysis`."""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from . import methods, report
from .console import fmt_time
from .engine.plan import OutputRoot, Stage, model_file
from .io import atomic_write_json, atomic_write_text
from .metrics import MetricSpec
from .report_figures import figure, save_png
from .study_analysis import analyse, cost_units, mean_or_nan

if TYPE_CHECKING:
    from .study import Study

STUDY_DIR = "study"


def cpu_time(root: OutputRoot, run: str) -> float | None:
    """CPU seconds of the run's training stage (user + system of its process), None when unknown."""
    rec = root.record(Stage(run, "train", model_file(run))) or {}
    return float(rec["cpu_seconds"]) if rec.get("status") == "done" and "cpu_seconds" in rec else None


def wall_time(root: OutputRoot, run: str) -> float | None:
    """Seconds of the run's training stage (from its log record), None when unknown."""
    rec = root.record(Stage(run, "train", model_file(run)))
    try:
        t0 = time.mktime(time.strptime(rec["started"], "%Y-%m-%d %H:%M:%S"))
        t1 = time.mktime(time.strptime(rec["finished"], "%Y-%m-%d %H:%M:%S"))
    except (TypeError, KeyError, ValueError):
        return None
    return t1 - t0 if rec.get("status") == "done" else None


def rows(study: Study, split: str, runs: Sequence[str]) -> tuple[list[dict], MetricSpec]:
    """One row per run: the metrics on ``split``, the settings, margins, time and cost; and the headline metric of
    the runs' results (its name and direction)."""
    root = study.runner.root
    results = {r["run"]: r for r in report.collect(root.path(split), runs, models_root=study.output_root)}
    metric = report.metric_spec(list(results.values()))
    vat_cost = cost_units(study.profile_epochs, study.profile_steps, 0.0)
    out = []
    for run in runs:
        res = results[run]
        s = res["summary"]
        pgd = {k: float(v) for k, v in s["attacks"].get("PGD", {}).items() if k != "avg" and float(k) > 0}
        ifgsm_run = res["settings"].get("attacks", {}).get("IFGSM", {}).get("steps", 1) > 0
        ifgsm = {k: float(v) for k, v in s["attacks"].get("IFGSM", {}).items()
                 if ifgsm_run and k != "avg" and float(k) > 0}
        row: dict[str, Any] = {
            "run": run, "clean": float(s["clean"]), "pgd": pgd, "pgd_avg": mean_or_nan(pgd.values()),
            "ifgsm_avg": mean_or_nan(ifgsm.values()), "num_counted": s.get("num_counted"),
            "train_seconds": wall_time(root, run), "train_cpu_seconds": cpu_time(root, run),
        }
        config = next((c for c in study.grid if c.run == run), None)
        base = next((b for b in study.baselines if b.run == run), None)
        if config is not None:
            epochs = study.epochs_of(config)
            row.update(method=methods.candidate().name, init=config.init, epochs=epochs,
                       steps=int(config.attack_steps), rule=config.margin_rule, delta=config.delta(epochs),
                       xi=config.xi, target=config.target_margin if config.margin_rule == "target" else None,
                       cost=cost_units(epochs, config.attack_steps, config.beta) / vat_cost,
                       reference=config.reference, config=asdict(config))
            margins_csv = root.path(f"models/{run}/margins.csv")
            row["margins"] = report.margin_summary(margins_csv) if margins_csv.is_file() else None
        elif base is not None:
            epochs = study.finetune_epochs if base.init != methods.SCRATCH and study.finetune_epochs else \
                study.profile_epochs
            row.update(method=base.method, init=base.init, epochs=epochs, steps=study.profile_steps,
                       eps=base.eps, cost=cost_units(epochs, study.profile_steps, 0.0) / vat_cost)
        else:
            row.update(method=methods.reference().name, init=methods.SCRATCH, epochs=study.profile_epochs, steps=0,
                       cost=cost_units(study.profile_epochs, 0, 0.0) / vat_cost)
        out.append(row)
    return out, metric


def write_study(study: Study) -> dict[str, Path]:
    """The validation phase's report: ``study/study.md``, ``.csv``, ``.json``, ``frontier.png`` and ``choice.json``."""
    found, metric = rows(study, "validation", study.study_runs())
    analysis = analyse(found, study.clean_tolerance, higher_is_better=metric.higher_is_better)
    analysis["metric"] = metric.to_dict()
    out = study.runner.root.path(STUDY_DIR)
    files = {"frontier": plot_frontier(found, analysis, out / "frontier.png",
                                       f"validation split ({study.val_cases} cases)", metric.label())}
    md = study_markdown(found, analysis, study.clean_tolerance, study.val_cases, study.inputs.caption(),
                        metric.label())
    files["markdown"] = atomic_write_text(out / "study.md", md)
    files["csv"] = atomic_write_text(out / "study.csv", study_csv(found, analysis))
    files["json"] = atomic_write_json(out / "study.json", report._finite({"rows": found, "analysis": analysis}))
    choice = analysis["choice"] and {**analysis["choice"], "metric": metric.to_dict()}
    files["choice"] = atomic_write_json(out / "choice.json", report._finite(choice))
    return files


def write_test_report(study: Study) -> dict[str, Path]:
    """The test phase's report: the paper-style table of ``test/report/`` and ``study/test.md``, ``test.json``,
    ``test_frontier.png``."""
    root = study.runner.root
    chosen = study.chosen()
    runs = study.test_runs(chosen)
    files = report.write_report(root.path("test"), runs, caption=study.inputs.caption()
                                + f" Test split, evaluated once after the choice of {chosen} on the validation "
                                  f"split.", out_dir=root.path("test/report"), margins_run=chosen,
                                models_root=study.output_root)
    found, metric = rows(study, "test", runs)
    analysis = analyse(found, study.clean_tolerance, chosen=chosen, higher_is_better=metric.higher_is_better)
    analysis["metric"] = metric.to_dict()
    out = root.path(STUDY_DIR)
    files["test_frontier"] = plot_frontier(found, analysis, out / "test_frontier.png", "test split", metric.label())
    md = test_markdown(found, analysis, chosen, study.clean_tolerance, metric.label())
    files["test_markdown"] = atomic_write_text(out / "test.md", md)
    atomic_write_json(out / "test.json", report._finite({"rows": found, "analysis": analysis}))
    return files


# --------------------------------------------------------------------------------------------------------- tables
def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _time(seconds: float | None) -> str:
    return "n/a" if seconds is None else fmt_time(seconds)


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
    fig = figure((7.0, 5.0))
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
    return save_png(fig, path)


def point_style(method: str, init: str) -> tuple[str, str, str]:
    """``(color, marker, label)`` of a run in the frontier plot: the registered method's style, grey x otherwise."""
    try:
        return methods.get(method).style(init)
    except KeyError:
        return ("C7", "x", method)
