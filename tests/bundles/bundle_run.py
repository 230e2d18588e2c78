"""Running a bundle's configs in their own process, for the end-to-end tests of every bundle.

Each run is ``python -m monai.bundle run ...`` with one OpenMP thread (on a shared two-core machine PyTorch's default
of one thread per core made adversarial epochs 20-40 times slower) and the repository root as working directory,
unless a test says otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def run(cmd: list[str], expect_ok: bool = True, timeout: int = 600, cwd: Path | str = REPO,
        python_env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``; fail the test (with the end of its output) when its exit status is not as expected."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=dict(python_env) if python_env is not None else env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    if not expect_ok and proc.returncode == 0:
        pytest.fail(f"{' '.join(map(str, cmd))} should have failed:\n{proc.stdout[-3000:]}")
    return proc


def last_error(proc: subprocess.CompletedProcess) -> str:
    """The ``ERROR (cause): ...`` line that robust_bundles.bundle.explain_errors prints last."""
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
