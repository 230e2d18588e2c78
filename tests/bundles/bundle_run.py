"""Running a bundle's configs in their own process, for the end-to-end tests of every bundle.

Each run is ``python -m monai.bundle run ...`` (forked from the tests' fork server, tests/forkserver.py: its own
process, without the 5 s of importing MONAI again) with one OpenMP thread (on a shared two-core machine PyTorch's default
of one thread per core made adversarial epochs 20-40 times slower) and the repository root as working directory,
unless a test says otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import pytest
import torch

import robust_bundles.thresholds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fork server of the bundle runs
import forkserver  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def run(cmd: list[str], expect_ok: bool = True, timeout: int = 600, cwd: Path | str = REPO,
        python_env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``; fail the test (with the end of its output) when its exit status is not as expected."""
    proc = forkserver.run(cmd, cwd, dict(python_env) if python_env is not None else env(), timeout=timeout)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    if not expect_ok and proc.returncode == 0:
        pytest.fail(f"{' '.join(map(str, cmd))} should have failed:\n{proc.stdout[-3000:]}")
    return proc


def last_error(proc: subprocess.CompletedProcess) -> str:
    """The ``ERROR (cause): ...`` line that robust_bundles.errors.explain_errors prints last."""
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("ERROR (cause): "), proc.stdout[-3000:]
    return lines[-1]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def epoch_of(checkpoint: dict) -> int:
    """The epoch of a trainer checkpoint (ignite stores the iteration and the epoch length)."""
    state = checkpoint["trainer"]
    return int(state["iteration"]) // int(state["epoch_length"])


class Bundle:
    """One bundle's configs, run as ``python -m monai.bundle run`` with shrinking overrides.

    Args:
        folder: the bundle folder relative to the repository root (``bundles/<name>``).
        tiny: the overrides that make every config run in seconds (tiny network, few samples, one epoch).
    """

    def __init__(self, folder: str, tiny: Mapping[str, str]) -> None:
        self.folder = folder
        self.configs = f"{folder}/configs"
        self.meta = f"{self.configs}/metadata.json"
        self.tiny_overrides = dict(tiny)

    def config_list(self, *names: str, configs_dir: str | None = None) -> str:
        d = configs_dir or self.configs
        return "[" + ",".join(f"'{d}/{n}.json'" for n in names) + "]"

    def tiny(self, **changes: str) -> list[str]:
        """The tiny overrides with some changed, as command-line arguments."""
        return [a for k, v in {**self.tiny_overrides, **changes}.items() for a in (f"--{k}", v)]

    def run(self, configs: tuple[str, ...], *args: str, expect_ok: bool = True, timeout: int = 600,
            cwd: Path | str = REPO, configs_dir: str | None = None, python: str = sys.executable,
            python_env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [python, "-m", "monai.bundle", "run", "--config_file",
               self.config_list(*configs, configs_dir=configs_dir), *args]
        return run(cmd, expect_ok=expect_ok, timeout=timeout, cwd=cwd, python_env=python_env)

    def check_finetuned_amat(self, root: Path, target_margin: float, *args: str) -> subprocess.CompletedProcess:
        """Train AMAT with finetune.json after amat.json and the schedule-aware margin over the one epoch of a tiny
        run (Delta = A = cap = ``target_margin``); check that it started from root's STD weights (provenance
        recorded and logged) and that every margin equals the target. Returns the training process."""
        proc = self.run(("train", "amat", "finetune"), *self.tiny(), *args, "--margin_rule", "target",
                        "--target_margin", str(target_margin), "--run_name", "amat_ft", "--output_root", str(root))
        run_dir, std_model = root / "models" / "amat_ft", root / "models" / "std" / "model.pt"
        record = json.loads((run_dir / "init_from.json").read_text())
        assert record["init_from"] == str(std_model.resolve()) and record["max_epochs"] == 1
        assert record["sha256"] == robust_bundles.thresholds.sha256_file(std_model) and record["skipped"] == []
        assert f"Fine-tuning from {std_model.resolve()}" in proc.stdout
        margins = load(run_dir / "checkpoint.pt")["margins"]
        assert margins["version"] == 2 and margins["config"]["epochs"] == 1
        assert margins["config"]["target_margin"] == margins["config"]["expansion_step"] == target_margin
        assert margins["config"]["max_margin"] == target_margin
        assert torch.all(margins["margins"] == torch.tensor(target_margin, dtype=margins["margins"].dtype))
        return proc
