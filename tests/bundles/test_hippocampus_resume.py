"""Resuming the hippocampus bundle's training: a checkpoint restores margins, optimizer, scheduler, epoch and pass
counts, and a run killed after its first checkpoint and resumed equals the uninterrupted run bit for bit (AMAT from
scratch, fine-tuned, and with the perturbation memory).

A file of its own (pytest-xdist's ``--dist loadfile`` runs a file on one worker): these runs are the longest of the
bundle's tests, and here they run beside test_hippocampus_bundle.py instead of after it. The module fixtures (STD and
its thresholds, trained once for this file) are the contract's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import contract_checks
import pytest
import torch
from bundle_run import REPO, epoch_of, load
from test_hippocampus_bundle import CONTRACT, HIPPOCAMPUS  # noqa: F401 (CONTRACT: read by the contract fixture)

pytestmark = pytest.mark.slow

# the module fixtures these tests use (STD and its thresholds trained once for this file), not the contract's tests
contract, root, std, thresholds = (contract_checks.contract, contract_checks.root, contract_checks.std,
                                   contract_checks.thresholds)

tiny = HIPPOCAMPUS.tiny
run_bundle = HIPPOCAMPUS.run


def test_resume_restores_margins_optimizer_scheduler_and_epoch(root, thresholds):
    # a 2-epoch run interrupted after epoch 1 (its poly schedule spans 2 epochs), then resumed
    first = run_bundle(
        ("train", "amat"), *tiny(), "--train#lr_scheduler#total_iters", "2", "--run_name", "amat_resume",
        "--output_root", str(root),
    )
    run_dir = root / "models" / "amat_resume"
    before = load(run_dir / "checkpoint.pt")
    assert "Restored" not in first.stdout
    lr0 = 0.01
    assert before["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr0 * 0.5**0.9)

    second = run_bundle(
        ("train", "amat"), *tiny(epochs="2"),
        "--run_name", "amat_resume", "--resume", "true", "--output_root", str(root),
    )
    assert f"Restored all variables from {run_dir / 'checkpoint.pt'}" in second.stdout
    assert "Epoch: 2/2" in second.stdout and "Epoch: 1/2" not in second.stdout  # continues at epoch 2
    after = load(run_dir / "checkpoint.pt")
    assert epoch_of(after) == 2 and after["trainer"]["max_epochs"] == 2
    assert after["trainer"]["iteration"] == 2 * before["trainer"]["iteration"]
    assert after["lr_scheduler"]["last_epoch"] == 2
    assert after["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # end of the 2-epoch schedule
    assert after["margins"]["epochs_completed"] == 2  # the margin book went on from the checkpoint's
    # the pass counts went on too: cost.json covers both epochs, the one before the resume included
    cost = json.loads((run_dir / "cost.json").read_text())
    assert before["pass_counter"]["samples"] == 72 and cost["samples"] == 2 * 72
    assert cost["forward"] == 2 * before["pass_counter"]["forward"] and [e["epoch"] for e in cost["epochs"]] == [1, 2]
    assert cost["wall_time_s"] > before["pass_counter"]["wall_time"]

    # --resume false (the word, as typed on a command line) starts afresh
    third = run_bundle(
        ("train",), *tiny(), "--run_name", "amat_resume", "--resume", "false", "--output_root", str(root)
    )
    assert "Restored" not in third.stdout
    assert epoch_of(load(run_dir / "checkpoint.pt")) == 1


def _kill_after_first_checkpoint(cmd: list[str], ckpt_dir: Path, timeout: float = 300) -> None:
    """Start a training run and SIGKILL it as soon as its first epoch checkpoint exists (as a crash would)."""
    import time

    from bundle_run import env

    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = ckpt_dir / "checkpoint_checkpoint_epoch=1.pt"
    t0 = time.time()
    try:
        while not first.is_file():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before its first checkpoint: {cmd}")
            if time.time() - t0 > timeout:
                pytest.fail("no checkpoint within the timeout")
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("overlays", [("train", "amat"), ("train", "amat", "finetune")], ids=["scratch", "finetuned"])
def test_kill_and_resume_equals_the_uninterrupted_run(root, thresholds, overlays):
    """AMAT, 3 epochs, validation every epoch: killed after the first checkpoint and resumed, the run ends with
    bit-identical weights, optimizer state, margins and best model, and keeps one epoch checkpoint only. Fine-tuned
    (finetune.json): the resumed run continues from its checkpoint and never reloads the initial weights."""
    finetuned = "finetune" in overlays
    tag = "_ft" if finetuned else ""
    args = [*tiny(epochs="3"), "--output_root", str(root)]
    straight_run = run_bundle(overlays, *args, "--run_name", f"amat_straight{tag}")
    killed = root / "models" / f"amat_killed{tag}"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", HIPPOCAMPUS.config_list(*overlays),
           *args, "--run_name", f"amat_killed{tag}"]
    _kill_after_first_checkpoint(cmd, killed)
    resumed = run_bundle(overlays, *args, "--run_name", f"amat_killed{tag}", "--resume", "true")
    assert "Restored all variables from" in resumed.stdout and "Epoch: 1/3" not in resumed.stdout
    assert "Fine-tuning from" not in resumed.stdout
    if finetuned:
        assert "Fine-tuning from" in straight_run.stdout
        record = json.loads((killed / "init_from.json").read_text())  # written by the first start, kept
        std_model = (root / "models" / "std" / "model.pt").resolve()
        assert record["max_epochs"] == 3 and record["init_from"] == str(std_model)

    straight = root / "models" / f"amat_straight{tag}"
    a, b = load(straight / "checkpoint.pt"), load(killed / "checkpoint.pt")
    for name, wa in a["model"].items():
        assert torch.equal(wa, b["model"][name]), name
    assert torch.equal(a["margins"]["margins"], b["margins"]["margins"])
    for (pa, sa), (_pb, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa), pa
    assert a["validation"]["best_metric"] == b["validation"]["best_metric"]
    assert a["validation"]["best_metric_epoch"] == b["validation"]["best_metric_epoch"]
    best_a, best_b = load(straight / "model_best_val.pt"), load(killed / "model_best_val.pt")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert sorted(p.name for p in killed.glob("*epoch=*.pt")) == ["checkpoint_checkpoint_epoch=3.pt"]
    assert (killed / "margins.csv").read_text() == (straight / "margins.csv").read_text()


def test_kill_and_resume_with_the_perturbation_memory_is_bit_exact(root, thresholds):
    """Fast AMAT (T = 1, --perturbation_memory true), 3 epochs: killed after the first checkpoint and resumed, the run
    ends with bit-identical weights, margins and perturbation memory; the checkpoint holds the memory (float16, one
    perturbation per training slice) and cost.json counts (1 + 2) forward and (1 + 2) backward passes per sample.
    Without the switch the checkpoint has no memory entry (older checkpoints still resume)."""
    fast = ["--perturbation_memory", "true", "--attack_steps", "1"]
    args = [*tiny(epochs="3"), *fast, "--output_root", str(root)]
    run_bundle(("train", "amat"), *args, "--run_name", "fast_straight")
    killed = root / "models" / "fast_killed"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", HIPPOCAMPUS.config_list("train", "amat"),
           *args, "--run_name", "fast_killed"]
    _kill_after_first_checkpoint(cmd, killed)
    resumed = run_bundle(("train", "amat"), *args, "--run_name", "fast_killed", "--resume", "true")
    assert "Restored all variables from" in resumed.stdout
    a, b = load(root / "models" / "fast_straight" / "checkpoint.pt"), load(killed / "checkpoint.pt")
    for name, wa in a["model"].items():
        assert torch.equal(wa, b["model"][name]), name
    assert torch.equal(a["margins"]["margins"], b["margins"]["margins"])
    ma, mb = a["perturbation_memory"], b["perturbation_memory"]
    assert ma["values"].dtype == torch.float16 and bool(ma["filled"].all())
    assert ma["values"].shape[0] == a["margins"]["margins"].shape[0]
    for key in ("values", "scale", "radius", "geometry", "filled"):
        assert torch.equal(ma[key], mb[key]), key
    cost = json.loads((root / "models" / "fast_straight" / "cost.json").read_text())
    assert cost["forward_per_sample"] == 3.0 and cost["backward_per_sample"] == 3.0 and len(cost["epochs"]) == 3
    assert "perturbation_memory" not in load(root / "models" / "amat" / "checkpoint.pt") if \
        (root / "models" / "amat" / "checkpoint.pt").is_file() else True
    std_cost = json.loads((root / "models" / "std" / "cost.json").read_text())
    assert std_cost["forward_per_sample"] == 1.0 and std_cost["backward_per_sample"] == 1.0
    assert "perturbation_memory" not in load(root / "models" / "std" / "checkpoint.pt")
