"""Issue 23, item 7: the slow AMAT iteration (54-79 s at batch 16 on a 2D 96 x 96 UNet with 2 torch threads on a
2-core machine at load 8; 7-8 s once OpenMP's waiting threads sleep instead of spinning).

No timing is asserted: the tests check the cause's fix (importing robust_bundles before torch sets OpenMP's passive
wait, and keeps a user's own setting) and that an AMAT iteration's network passes do not grow with the batch (a
per-sample network pass would make batch 16 cost sixteen times batch 1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer

from robust_bundles.adversarial import AMATIteration
from robust_bundles.attacks import L2PGD
from robust_bundles.margins import MarginBook
from robust_bundles.tasks.segmentation import DiceCELoss
from robust_bundles.toy import make_toy_segmentation, toy_network


def _openmp_spin_count(env: dict) -> str | None:
    """GNU OpenMP's spin count after ``import robust_bundles, torch`` in a fresh process (None: another runtime)."""
    code = "import robust_bundles, torch; torch.ones(1 << 16).sum()"
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_DISPLAY_ENV": "VERBOSE"},
                          capture_output=True, text=True, timeout=120, check=True)
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", proc.stderr + proc.stdout)
    return found.group(1) if found else None


def test_importing_robust_bundles_first_makes_openmp_threads_sleep():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    spin = _openmp_spin_count(env)
    if spin is None:
        pytest.skip("torch does not use GNU OpenMP here (no GOMP_SPINCOUNT in OMP_DISPLAY_ENV's output)")
    assert spin == "0"  # passive: no spinning (GNU OpenMP's default spins 300,000 times)


def test_a_users_own_openmp_wait_policy_is_kept():
    code = "import os, robust_bundles; print(os.environ.get('OMP_WAIT_POLICY'))"
    for env, expected in (({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"), ({"GOMP_SPINCOUNT": "1000"}, "None")):
        clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip()
        assert out == expected, env


class _CountingNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = toy_network(filters=(4, 8, 8))
        self.passes = 0

    def forward(self, x):
        self.passes += 1
        return self.net(x)


@pytest.mark.parametrize("batch", [2, 8])
def test_amat_iteration_network_passes_do_not_grow_with_the_batch(batch):
    torch.manual_seed(0)
    data = make_toy_segmentation(batch, size=16, seed=3)
    net = _CountingNet()
    steps = 3
    it = AMATIteration(MarginBook(batch, expansion_step=0.5), [1.0, 1.0], attack=L2PGD(steps=steps), beta=0.5)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, network=net,
                                train_data_loader=DataLoader(Dataset(data), batch_size=batch),
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.0), loss_function=DiceCELoss(),
                                iteration_update=it)
    trainer.run()
    assert trainer.state.iteration == 1
    # the attack's steps, the adversarial pass and the clean pass (beta > 0): the same for any batch size
    assert net.passes == steps + 2
