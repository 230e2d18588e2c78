"""The experiment report's attack-suite table (robust_bundles.suite_report)."""

from __future__ import annotations

from robust_bundles.suite_report import suite_table


def _result(label, pgd, worst, found=None, cost=None, suite="standard"):
    summary = {"attacks": {"PGD": {**pgd, "avg": 0.0}, "noise": {"2": 0.9}}, "worst": worst}
    if found is not None:
        summary["worst_found_by"] = found
    if cost is not None:
        summary["cost"] = {"relative_to_PGD": cost}
    return {"label": label, "run": label.lower(), "settings": {"suite": suite}, "summary": summary}


def test_suite_table_rows_and_markdown():
    results = [
        _result("STD", {"0": 0.8, "2": 0.5, "6": 0.2}, {"0": 0.8, "2": 0.4, "6": 0.1},
                found={"2": {"PGD": 3, "APGD": 5}, "6": {"PGD": 2, "APGD_dice": 7}}, cost=5.25),
        _result("AMAT", {"2": 0.6}, {"2": 0.6}, suite=None),
        {"label": "X", "run": "x", "settings": {}, "summary": {"attacks": {"IFGSM": {"2": 0.1}}, "worst": {"2": 0.1}}},
    ]
    md, rows = suite_table(results)
    assert [r["run"] for r in rows] == ["std", "amat"]  # no PGD column: left out
    assert rows[0]["pgd"] == {"2": 0.5, "6": 0.2} and rows[0]["worst"] == {"2": 0.4, "6": 0.1}  # eps 0 left out
    assert rows[0]["most_found_by"] == {"attack": "APGD_dice", "samples": 7, "eps": "6"}
    assert rows[1]["most_found_by"] is None and rows[1]["suite"] == "-"
    assert "| STD | standard | 0.500 / 0.400 | 0.200 / 0.100 | APGD_dice (7) | 5.2 |" in md
    assert "| AMAT | - | 0.600 / 0.600 | n/a | - | - |" in md
    assert suite_table([results[2]]) == ("", [])
