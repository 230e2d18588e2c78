"""robust_bundles.report: the paper's table and figures from hand-made robustness.json files (no training)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from robust_bundles import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# run -> (clean, PGD at 2/6/10, IFGSM at 2/6/10), made so that each column has a known best
VALUES = {
    "std": (0.759, (0.522, 0.038, 0.0015), (0.60, 0.10, 0.01)),
    "vat_eps6": (0.709, (0.68, 0.62, 0.53), (0.70, 0.64, 0.56)),
    "vat_eps2": (0.74, (0.66, 0.40, 0.20), (0.69, 0.45, 0.25)),
    "teat_eps6": (0.70, (0.67, 0.61, 0.52), (0.69, 0.63, 0.55)),
    "amat": (0.731, (0.68, 0.54, 0.37), (0.71, 0.58, 0.41)),
}


def write_run(root: Path, run: str, clean: float, pgd, ifgsm, eps=(2, 6, 10), counted=40, samples=50, warnings=()):
    """A robustness.json as RobustnessEvaluationHandler writes it (eps 0 included, as the handler allows)."""
    keys = [format(float(e), "g") for e in eps]
    attacks = {}
    for name, vals in (("PGD", pgd), ("IFGSM", ifgsm)):
        by = {"0": clean, **dict(zip(keys, vals))}
        by["avg"] = sum(by.values()) / len(by)
        attacks[name] = by
    data = {
        "settings": {
            "eps": [0.0] + [float(e) for e in eps],
            "attacks": {
                "PGD": {"type": "L2PGD", "norm": "l2", "steps": 100, "alpha": 4.0, "random_start": True, "clamp": None},
                "IFGSM": {"type": "L2IFGSM", "norm": "l2", "steps": 10, "alpha": 4.0, "random_start": False,
                          "clamp": None},
            },
            "restarts": 1, "seed": 0, "higher_is_better": True,
        },
        "summary": {"metric": "dice", "clean": clean, "num_samples": samples, "num_counted": counted,
                    "attacks": attacks, "worst": {}, "quantiles": {}, "warnings": list(warnings)},
    }
    path = root / "eval" / run / "robustness.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return data


@pytest.fixture
def root(tmp_path):
    for run, (clean, pgd, ifgsm) in VALUES.items():
        write_run(tmp_path, run, clean, pgd, ifgsm)
    return tmp_path


def test_run_names():
    assert report.run_name("VAT", 6) == "vat_eps6" and report.run_name("teat", 0.5) == "teat_eps0.5"
    assert report.run_name("STD") == "std" and report.run_name("AMAT") == "amat"
    assert report.parse_run("vat_eps6") == ("VAT", 6.0, "VAT (eps 6)")
    assert report.parse_run("teat_eps0.5") == ("TEAT", 0.5, "TEAT (eps 0.5)")
    assert report.parse_run("amat") == ("AMAT", None, "AMAT")
    assert report.parse_run("my_run") == ("my_run", None, "my_run")
    with pytest.raises(ValueError, match="noise level"):
        report.run_name("VAT")


def _md_rows(md: str) -> list[list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_table_rows_columns_values_and_bold(root):
    results = report.collect(root, ["amat", "std", "teat_eps6", "vat_eps6", "vat_eps2"])
    md, csv_text, table = report.paper_table(results, caption="quick profile, 10 epochs")
    rows = _md_rows(md)
    assert rows[0] == ["method", "clean", "PGD 2", "PGD 6", "PGD 10", "PGD Avg.", "IFGSM 2", "IFGSM 6", "IFGSM 10",
                       "IFGSM Avg."]
    # paper order: STD, VAT by eps, TEAT, AMAT, whatever the order given
    assert [r[0] for r in rows[1:]] == ["STD", "VAT (eps 2)", "VAT (eps 6)", "TEAT (eps 6)", "AMAT"]
    std = rows[1]
    assert std[1] == "**0.759**"  # best clean
    assert std[2:5] == ["0.522", "0.038", "0.002"]  # 3 decimals (0.0015 rounds to 0.002 on the float)
    # Avg. is the mean over eps > 0 (eps 0 excluded), and equal best values at 3 decimals are all bold
    vat6, amat = rows[3], rows[5]
    assert vat6[2] == "**0.680**" and amat[2] == "**0.680**"
    assert vat6[5] == f"**{(0.68 + 0.62 + 0.53) / 3:.3f}**"
    assert vat6[6:10] == ["0.700", "**0.640**", "**0.560**", f"**{(0.70 + 0.64 + 0.56) / 3:.3f}**"]
    assert amat[6] == "**0.710**"
    bold = sum(c.startswith("**") for r in rows[1:] for c in r[1:])
    assert bold == 10  # one per column, two ties (PGD 2: VAT eps 6 and AMAT)
    # caption: metric, attacks, eps units, samples, profile text
    cap = table["caption"]
    for text in ("dice", "PGD L2 100 steps, random start", "IFGSM L2 10 steps, no random start",
                 "input intensity units", "40 of 50 test samples", "quick profile, 10 epochs"):
        assert text in cap and text in md
    assert table["columns"] == rows[0][1:]
    assert table["rows"][0]["values"]["PGD 10"] == pytest.approx(0.0015)
    assert table["rows"][1]["train_eps"] == 2.0 and table["rows"][1]["run"] == "vat_eps2"


def test_csv_parses_and_json_round_trip(root):
    results = report.collect(root, list(VALUES))
    _, csv_text, table = report.paper_table(results)
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["method"] for r in rows] == ["STD", "VAT (eps 2)", "VAT (eps 6)", "TEAT (eps 6)", "AMAT"]
    assert float(rows[0]["clean"]) == pytest.approx(0.759) and float(rows[0]["PGD 10"]) == pytest.approx(0.0015)
    assert rows[2]["train_eps"] == "6" and rows[0]["train_eps"] == "" and rows[4]["num_counted"] == "40"
    assert json.loads(json.dumps(table, allow_nan=False)) == table

    files = report.write_report(root, list(VALUES), caption="test")
    assert {p.name for p in (root / "report").iterdir()} == {
        "results.md", "results.csv", "results.json", "metric_vs_eps.png"}  # no margins.csv, no temp files left
    written = json.loads(files["json"].read_text())
    assert written == {**table, "caption": written["caption"], "synthetic_data": False}
    assert written["caption"].endswith("test")
    assert files["markdown"].read_text().startswith("| method | clean |")
    assert list(csv.DictReader(files["csv"].open())) == list(csv.DictReader(io.StringIO(
        report.paper_table(results, caption="test")[1])))


def test_synthetic_data_is_flagged_at_the_top_of_the_report(root):
    path = root / "eval" / "amat" / "robustness.json"
    data = json.loads(path.read_text())
    data["settings"]["dataset"] = {"dir": "/x/data/synthetic_msd", "synthetic": True}
    path.write_text(json.dumps(data))
    files = report.write_report(root, list(VALUES))
    assert files["markdown"].read_text().startswith("**SYNTHETIC DATA** (runs amat)")
    assert json.loads(files["json"].read_text())["synthetic_data"] is True


def test_lower_is_better_and_nan(tmp_path):
    for run, clean, pgd in (("std", 3.0, (5.0, float("nan"))), ("amat", 3.5, (4.0, 6.0))):
        data = write_run(tmp_path, run, clean, pgd, pgd, eps=(1, 2))
        data["settings"]["higher_is_better"] = False
        data["summary"]["metric"] = "mre_mm"
        (tmp_path / "eval" / run / "robustness.json").write_text(json.dumps(data))
    md, csv_text, table = report.paper_table(report.collect(tmp_path, ["std", "amat"]))
    rows = _md_rows(md)
    assert rows[1][1] == "**3.000**" and rows[2][1] == "3.500"  # lower is better
    assert rows[1][2] == "5.000" and rows[2][2] == "**4.000**"
    assert rows[1][3] == "n/a" and rows[2][3] == "**6.000**"  # NaN is never best
    assert "mre_mm (lower is better" in md
    assert table["rows"][0]["values"]["PGD 2"] is None
    assert next(csv.DictReader(io.StringIO(csv_text)))["PGD 2"] == ""
    json.dumps(table, allow_nan=False)


def test_warnings_and_differing_sample_counts(tmp_path):
    write_run(tmp_path, "std", 0.7, (0.5, 0.2, 0.1), (0.6, 0.3, 0.2), warnings=["PGD eps 2: zero gradients"])
    write_run(tmp_path, "amat", 0.7, (0.6, 0.4, 0.3), (0.6, 0.5, 0.4), counted=39)
    md, _, table = report.paper_table(report.collect(tmp_path, ["std", "amat"]))
    assert "STD: PGD eps 2: zero gradients" in md and table["warnings"] == ["STD: PGD eps 2: zero gradients"]
    assert "STD 40/50" in md and "AMAT 39/50" in md


def test_missing_file_names_the_file_and_the_stage(root):
    with pytest.raises(FileNotFoundError) as e:
        report.collect(root, ["std", "teat_eps10"])
    msg = str(e.value)
    assert str(root / "eval" / "teat_eps10" / "robustness.json") in msg
    assert "robustness_teat_eps10" in msg and "training stage 'teat_eps10'" in msg
    # a model that exists: only the robustness stage is missing
    (root / "models" / "teat_eps10").mkdir(parents=True)
    (root / "models" / "teat_eps10" / "model.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as e:
        report.collect(root, ["teat_eps10"])
    assert "robustness_teat_eps10" in str(e.value) and "training stage" not in str(e.value)
    (root / "eval" / "amat" / "robustness.json").write_text('{"settings": {}}')
    with pytest.raises(ValueError, match="no robustness summary"):
        report.collect(root, ["amat"])


def _margins_csv(path: Path, values) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sample_id,margin\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    return path


def test_margin_summary(tmp_path):
    p = _margins_csv(tmp_path / "margins.csv", [1.0, 2.0, 3.0, 4.0, 10.0])
    s = report.margin_summary(p)
    assert s["num_samples"] == 5 and s["mean"] == pytest.approx(4.0) and s["median"] == 3.0 and s["max"] == 10.0
    assert s["q95"] == pytest.approx(4.0 + 0.8 * 6.0)  # linear interpolation, as numpy's default
    with pytest.raises(FileNotFoundError, match="AMAT training stage"):
        report.margin_summary(tmp_path / "nope.csv")


def test_pngs_are_valid_and_written_whole(root):
    results = report.collect(root, list(VALUES))
    out = root / "figs"
    p = report.plot_metric_vs_eps(results, out / "metric_vs_eps.png")
    m = _margins_csv(root / "models" / "amat" / "margins.csv", [1.0 + 0.1 * i for i in range(50)])
    h = report.plot_margin_histogram(m, out / "margins.png", eval_eps=[0, 2, 6, 10])
    for f in (p, h):
        assert f.is_file() and f.read_bytes()[:8] == PNG_MAGIC and f.stat().st_size > 1000
    assert sorted(x.name for x in out.iterdir()) == ["margins.png", "metric_vs_eps.png"]

    files = report.write_report(root, list(VALUES), caption="quick")
    assert files["margins"].read_bytes()[:8] == PNG_MAGIC
    md = files["markdown"].read_text()
    assert "AMAT final margins over 50 training samples" in md and "median 3.45" in md
    assert json.loads(files["json"].read_text())["margins"]["num_samples"] == 50
    assert not [x for x in (root / "report").iterdir() if x.name.startswith(".")]


def test_nan_summary_values_do_not_break_plot(tmp_path):
    write_run(tmp_path, "std", float("nan"), (float("nan"),) * 3, (0.1, 0.2, 0.3))
    results = report.collect(tmp_path, ["std"])
    assert math.isnan(results[0]["summary"]["clean"])
    p = report.plot_metric_vs_eps(results, tmp_path / "x.png")
    assert p.read_bytes()[:8] == PNG_MAGIC


def _landmark_run(root: Path, run: str, mre: tuple, sdr: tuple) -> None:
    """A robustness.json with two metrics as the handler writes them: MRE (mm, lower is better, the headline) and
    SDR_2mm (%, higher is better); values (clean, PGD 0.5, PGD 1)."""
    def view(vals):
        by = {"0.5": vals[1], "1": vals[2]}
        return {"clean": vals[0], "attacks": {"PGD": {**by, "avg": (vals[1] + vals[2]) / 2}}, "worst": by}

    data = {
        "settings": {"eps": [0.5, 1.0], "attacks": {"PGD": {"norm": "l2", "steps": 20, "random_start": True}},
                     "higher_is_better": False, "input_shape": [1, 200, 160],
                     "metrics": [{"name": "MRE", "unit": "mm", "higher_is_better": False, "description": ""},
                                 {"name": "SDR_2mm", "unit": "%", "higher_is_better": True, "description": ""}]},
        "summary": {"metric": "MRE", **view(mre), "num_samples": 100, "num_counted": 100, "warnings": [],
                    "metrics": {"MRE": view(mre), "SDR_2mm": view(sdr)}},
    }
    path = root / "eval" / run / "robustness.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_several_metrics_with_units_and_directions(tmp_path):
    _landmark_run(tmp_path, "std", (1.5, 4.3, 14.3), (80.0, 30.0, 5.0))
    _landmark_run(tmp_path, "amat", (1.8, 1.9, 2.0), (70.0, 65.0, 60.0))
    results = report.collect(tmp_path, ["std", "amat"])
    assert report.metric_names(results) == ["MRE", "SDR_2mm"]
    md, _, table = report.paper_table(results)
    assert table["metric"] == "MRE" and table["unit"] == "mm" and table["higher_is_better"] is False
    assert "| STD | **1.500** | 4.300 | 14.300 | 9.300 |" in md  # lower is better: the smallest is bold
    assert "MRE (mm, lower is better" in md
    md2, _, table2 = report.paper_table(results, metric="SDR_2mm")
    assert "| STD | **80.000** | 30.000 | 5.000 | 17.500 |" in md2 and table2["higher_is_better"] is True
    assert "SDR_2mm (%, higher is better" in md2

    files = report.write_report(tmp_path, ["std", "amat"])
    text = files["markdown"].read_text()
    assert text.index("MRE (mm, lower is better") < text.index("SDR_2mm (%, higher is better):")
    assert "network input 200 x 160 pixels" in text
    js = json.loads(files["json"].read_text())
    assert js["metric"] == "MRE" and js["other_metrics"]["SDR_2mm"]["rows"][1]["values"]["clean"] == 70.0
    assert files["metric_vs_eps"].read_bytes().startswith(PNG_MAGIC)


def test_method_variants_sort_with_their_method_and_take_labels(root):
    assert report.parse_run("std_bce") == ("STD", None, "STD (bce)")
    write_run(root, "std_bce", 0.74, (0.5, 0.03, 0.001), (0.58, 0.09, 0.01))
    results = report.collect(root, ["amat", "std_bce", "std"], labels={"std_bce": "STD (BCE)"})
    md, _, table = report.paper_table(results)
    assert [r["label"] for r in table["rows"]] == ["STD", "STD (BCE)", "AMAT"]
    assert "| STD (BCE) | 0.740 |" in md
