"""What the end-to-end bundle tests share: run a config stack in its own process, read its error and its files.

Each bundle test module sets its configs folder and calls these; every run is ``python -m monai.bundle run ...`` in the
repository root with one OpenMP thread (on a shared two-core machine PyTorch's default of one thread per core, spinning
while another process holds a core, made an adversarial epoch 20-40 times slower).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
#: ../shared/data beside the repository, or the folder named by ROBUST_BUNDLES_SHARED_DATA (e.g. for a git worktree)
SHARED = Path(os.environ.get("ROBUST_BUNDLES_SHARED_DATA", REPO / ".." / "shared" / "data"))


def run(cmd: list[str], expect_ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the repository root; fail the test (with the output's end) when it fails or should have."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    if not expect_ok and proc.returncode == 0:
        pytest.fail(f"{' '.join(cmd)} should have failed:\n{proc.stdout[-3000:]}")
    return proc


def run_bundle(configs_dir: str, configs: tuple[str, ...], *args: str, expect_ok: bool = True):
    """``python -m monai.bundle run`` of the config stack ``<configs_dir>/<name>.json`` for each name."""
    files = "[" + ",".join(f"'{configs_dir}/{n}.json'" for n in configs) + "]"
    return run([sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *args], expect_ok=expect_ok)


def last_error(proc) -> str:
    """The ``ERROR (cause): ...`` line robust_bundles.bundle.explain_errors prints last."""
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("ERROR (cause): "), proc.stdout[-3000:]
    return lines[-1]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def epoch_of(checkpoint: dict) -> int:
    """The epoch of a trainer checkpoint (ignite stores the iteration and the epoch length)."""
    state = checkpoint["trainer"]
    return int(state["iteration"]) // int(state["epoch_length"])


def metrics_csv(path: Path) -> dict[str, float]:
    """MONAI MetricsSaver's metrics.csv as a dict."""
    return {k: float(v) for k, v in (ln.split(",") for ln in path.read_text().splitlines() if ln.strip())}
