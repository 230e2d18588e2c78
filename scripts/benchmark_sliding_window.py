"""Cost of one attack step through a bundle's sliding-window inference path (``robust_bundles audit``'s attack).

    python scripts/benchmark_sliding_window.py                        # spleen UNet, 96^3 volume, roi 64^3
    python scripts/benchmark_sliding_window.py --bundle PATH/spleen_ct_segmentation --shape "[128,128,96]"
    python scripts/benchmark_sliding_window.py --tiny --iters 1 --warmup 0   # smoke test

The network is the spleen model-zoo bundle's (3D ``UNet`` 16-256 channels, 2 residual units, batch norm; from the
bundle's own ``network_def`` with ``--bundle``), in eval mode, behind a ``SlidingWindowInferer`` (``--roi``,
``sw_batch_size`` 4, overlap 0.5; the bundle's ``validate#inferer`` with ``--bundle``), attacked with the bundle's
``DiceCELoss(batch=True)`` made per-sample (:class:`robust_bundles.foreign.PerSampleWrapper`). Input: a random volume
of ``--shape`` voxels, labels a random ball.

One attack step is ``(t(perturb, T steps) - t(perturb, 0 steps)) / T`` (L2, random start, no final check; the random
start and bookkeeping cancel); the reference is one forward pass of the whole sliding-window path plus an
input-gradient backward pass with all parameters frozen (``requires_grad=False``). Goal: ratio <= 1.1. The same pass
with parameters requiring grad (as the audit runs it) is reported too.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import fire
import torch

GOAL = 1.1
SPLEEN_NET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": (16, 32, 64, 128, 256),
              "strides": (2, 2, 2, 2), "num_res_units": 2, "norm": "batch"}


def _time(fn, n: int, warmup: int) -> list[float]:
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def _mean_std(v: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def main(
    shape: Sequence[int] = (96, 96, 96),
    roi: Sequence[int] = (64, 64, 64),
    steps: int = 3,
    iters: int = 3,
    warmup: int = 1,
    threads: int = 1,
    bundle: str | None = None,
    tiny: bool = False,
    out: str | None = None,
    seed: int = 0,
) -> dict:
    """Measure and print the ratio (see the module docstring).

    Args:
        shape: the volume (voxels).
        roi: the sliding window (ignored with ``--bundle``: its ``validate#inferer`` is used).
        steps: attack steps T of the timed attack.
        iters: timed repetitions of each measurement.
        warmup: untimed repetitions first.
        threads: torch threads.
        bundle: a bundle folder whose ``network_def``, ``validate#inferer`` and ``loss`` are used.
        tiny: a small network and volume (smoke test).
        out: write the results as JSON there.
        seed: random seed.
    """
    from monai.inferers import SlidingWindowInferer
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from robust_bundles.attacks import perturb
    from robust_bundles.foreign import PerSampleWrapper

    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    shape = tuple(int(s) for s in shape)
    if bundle is not None:
        from robust_bundles.foreign.parts import find, load_parser

        parser = load_parser(bundle)
        _, net = find(parser, "network")
        _, inferer = find(parser, "inferer")
        _, loss = find(parser, "loss")
        what = f"bundle {os.path.basename(os.path.abspath(bundle))}"
    else:
        net_cfg = dict(SPLEEN_NET)
        if tiny:
            net_cfg.update(channels=(4, 8), strides=(2,), num_res_units=1)
            shape, roi = (16, 16, 12), (8, 8, 8)
        net = UNet(**net_cfg)
        inferer = SlidingWindowInferer(roi_size=tuple(roi), sw_batch_size=4, overlap=0.5)
        loss = DiceCELoss(include_background=True, to_onehot_y=True, softmax=True, squared_pred=True, batch=True,
                          lambda_dice=0.5, lambda_ce=0.5)
        what = "spleen UNet" + (" (tiny)" if tiny else "")
    net = net.eval()
    loss_fn = PerSampleWrapper(loss)
    x = torch.rand(1, 1, *shape)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    centre = torch.tensor([(s - 1) / 2 for s in shape]).view(-1, 1, 1, 1)
    y = (((grid - centre) / (0.25 * torch.tensor(shape, dtype=torch.float32).view(-1, 1, 1, 1))) ** 2).sum(0) <= 1
    y = y.float()[None, None]
    n = max(int(iters), 1)

    def forward(xa):
        return inferer(xa, net)

    def fwd_bwd() -> None:
        xa = x.clone().requires_grad_(True)
        torch.autograd.grad(loss_fn(forward(xa), y).sum(), xa)

    params = list(net.parameters())
    for p in params:
        p.requires_grad_(False)
    frozen = _time(fwd_bwd, n, warmup)
    for p in params:
        p.requires_grad_(True)
    unfrozen = _time(fwd_bwd, n, warmup)

    def attack(t: int):
        return lambda: perturb(net, loss_fn, x, y, 1.0, steps=t, alpha=4.0, random_start=True, final_check=False,
                               forward=forward, train=False)

    t_full = _time(attack(steps), n, warmup)
    t_zero = _time(attack(0), n, warmup)
    (mf, sf), (mz, sz) = _mean_std(t_full), _mean_std(t_zero)
    step_ms = 1e3 * (mf - mz) / max(steps, 1)
    res: dict[str, Any] = {
        "what": what, "shape": list(shape), "inferer": type(inferer).__name__,
        "roi": list(getattr(inferer, "roi_size", roi)), "steps": steps, "iters": n, "threads": threads,
        "attack_step_ms": step_ms, "attack_step_std_ms": 1e3 * math.sqrt(sf**2 + sz**2) / max(steps, 1),
        "fwd_bwd_frozen_ms": 1e3 * _mean_std(frozen)[0], "fwd_bwd_frozen_std_ms": 1e3 * _mean_std(frozen)[1],
        "fwd_bwd_params_ms": 1e3 * _mean_std(unfrozen)[0],
    }
    res["ratio"] = step_ms / res["fwd_bwd_frozen_ms"]
    res["goal"] = GOAL
    res["goal_met"] = bool(res["ratio"] <= GOAL)
    print(f"{what}, volume {tuple(shape)}, {res['inferer']} roi {tuple(res['roi'])}, {threads} thread(s):\n"
          f"  one attack step            {step_ms:9.1f} ms (+- {res['attack_step_std_ms']:.1f})\n"
          f"  forward + input-backward   {res['fwd_bwd_frozen_ms']:9.1f} ms (parameters frozen)\n"
          f"  forward + input-backward   {res['fwd_bwd_params_ms']:9.1f} ms (parameters requiring grad)\n"
          f"  ratio {res['ratio']:.3f} (goal <= {GOAL}: {'met' if res['goal_met'] else 'NOT met'})")
    if out:
        tmp = f"{out}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, out)
    return res


if __name__ == "__main__":
    sys.exit(fire.Fire(main, serialize=lambda _: None) and None)
