"""The console of the experiment and the study (robust_bundles.console): stage lines with the job's ETA and the
stage's key figure, warnings once, the last lines of a failed stage, everything with verbose."""

from __future__ import annotations

import io

import pytest

from robust_bundles.console import Console, fmt_time

STAMP = "2026-12-07 19:03:52,698"
BANNER = [f"{STAMP} - robust_bundles.data - WARNING - ", "!!!!", "SYNTHETIC DATA: no --dataset_dir was given.", "!!!!"]
TRAIN = [
    "/x/monai/bundle/scripts.py:1019: UserWarning: parsing config_file ['configs/train.json']: any value is resolved",
    "  workflow = create_workflow(",
    *BANNER,
    f"{STAMP} - robust_bundles.data.msd - INFO - train split: 9 cases, 324 slices (ids 0..323)",
    f"{STAMP} - INFO - Epoch: 1/2, Iter: 3/4 -- train_loss: 2.0044 ",
    f"{STAMP} - INFO - Key metric: val_mean_dice best value: 0.41234 at epoch: 1",
    f"{STAMP} - INFO - Key metric: val_mean_dice best value: 0.53 at epoch: 2",
    f"{STAMP} - robust_bundles.margins - INFO - Epoch 2: margins mean 3.25 median 3 q05 1 q95 6 max 7, expanded 50%",
]
ROBUSTNESS = [
    "/x/monai/bundle/scripts.py:1019: UserWarning: parsing config_file ['configs/evaluate.json']: any value is resolved",
    *BANNER,
    f"{STAMP} - robust_bundles.robustness - INFO - robustness: batch 1/4, 16 samples, 1s elapsed, ETA 3s",
    f"{STAMP} - INFO - Key metric: test_mean_dice best value: 0.5 at epoch: 1",
    f"{STAMP} - robust_bundles.robustness - INFO - ",
    "| metric | clean | PGD 2 | PGD avg | IFGSM 2 | IFGSM avg |",
    "|---|---|---|---|---|---|",
    "| dice (higher is better) | 0.5000 | 0.3000 | 0.3000 | 0.3500 | 0.3500 |",
    "| hd95 (lower is better) | 3.0 | 5.0 | 5.0 | 4.0 | 4.0 |",
]


def _console(kinds, **kw) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(kinds, out=out, bar=False, **kw), out


def test_stage_lines_key_figures_and_warnings_once():
    c, out = _console(["train", "robustness"])
    c.start("[1/2]", "amat", "run: missing; log amat.log")
    for line in TRAIN:
        c.line(line + "\n")
    c.end("[1/2]", "amat", "train", 10.0)
    c.start("[2/2]", "robustness_amat", "run: missing")
    for line in ROBUSTNESS:
        c.line(line)
    assert c.fraction == 0.25  # batch 1 of 4
    c.end("[2/2]", "robustness_amat", "robustness", 5.0)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[1/2] amat ... (run: missing; log amat.log) started ")
    assert "ETA" not in lines[0]  # nothing finished yet
    # each warning once: MONAI's config warning (other file list) and the synthetic-data banner with its lines
    assert [t for t in lines if "warning:" in t] == [
        "  warning: UserWarning: parsing config_file ['configs/train.json']: any value is resolved",
        "  warning: !!!!"]
    assert "  SYNTHETIC DATA: no --dataset_dir was given." in lines and lines.count("  !!!!") == 1
    assert "train split" not in out.getvalue() and "Epoch: 1/2" not in out.getvalue()  # in the log only
    assert "[1/2] amat done in 10s: best val_mean_dice 0.530 (epoch 2), margin mean 3.25 (total " in out.getvalue()
    assert lines[-2].endswith(", job ETA 10s")  # its kind unseen: the mean of all
    assert lines[-1].startswith("[2/2] robustness_amat done in 5s: dice clean 0.5000, PGD avg 0.3000 (total ")
    assert "job ETA" not in lines[-1]  # nothing left


def test_eta_counts_the_kinds_and_the_progress_of_the_running_stage():
    c, _ = _console(["train", "train", "robustness"])
    assert c.eta() != c.eta()  # NaN before any stage finished
    c.start("[1/3]", "std", "")
    c.end("[1/3]", "std", "train", 10.0)
    assert c.eta() == 20.0  # one more training (10 s), a robustness at the mean of all (10 s)
    c.start("[2/3]", "vat", "")
    c.line("Epoch: 1/2, Iter: 3/4 -- train_loss: 1.0")  # 3 of 8 iterations
    assert c.fraction == 3 / 8 and c.eta() == pytest.approx(10 * 5 / 8 + 10)
    c.end("[2/3]", "vat", "train", 30.0)
    assert c.eta() == 20.0  # the robustness stage at the mean of the two trainings


def test_a_failed_stage_shows_its_last_lines_and_verbose_shows_everything():
    c, out = _console(["train"], tail=2)
    c.start("[1/1]", "std", "")
    for line in ("Traceback ...", "ZeroDivisionError: division by zero", "", "The above exception was the direct cause",
                 "  File x", "RuntimeError: Failed to evaluate ConfigExpression:", '"$1 / 0"'):
        c.line(line)
    c.failed()
    assert out.getvalue().splitlines()[-5:] == [
        "  exceptions in its output:", "    ZeroDivisionError: division by zero",  # the root cause, above the tail
        "  last lines of its output:", "    RuntimeError: Failed to evaluate ConfigExpression:", '    "$1 / 0"']
    c, out = _console(["train"], verbose=True)
    c.start("[1/1]", "std", "")
    for line in TRAIN:
        c.line(line)
    assert all(line in out.getvalue() for line in TRAIN)


def test_the_bar_rewrites_one_line_and_is_cleared():
    out = io.StringIO()
    c = Console(["train"], out=out, bar=True)
    c.start("[1/1]", "std", "")
    c.line("Epoch: 2/2, Iter: 2/4 -- train_loss: 1.0")
    assert "\r  [######################........]  75% 0s" in out.getvalue()
    c.end("[1/1]", "std", "train", 1.0)
    assert out.getvalue().endswith("\r" + " " * 72 + "\r[1/1] std done in 1s (total 0s)\n")


def test_fmt_time():
    assert [fmt_time(s) for s in (4.4, 187, 3725, float("nan"))] == ["4s", "3m07s", "1h02m05s", "?"]
