"""CPU (or CUDA) cost of STD, VAT, TEAT and AMAT training iterations at an equal number of attack steps.

    python scripts/benchmark.py                                  # batch 32, T = 5, 5 timed iterations, 2 threads
    python scripts/benchmark.py --steps 20 --iters 10 --out results.json
    python scripts/benchmark.py --tiny --batch 2 --steps 1 --iters 1 --warmup 0    # smoke test, a few seconds
    python scripts/benchmark.py --fast --threads 1 --out fast.json   # fast AMAT: counted passes vs wall time

``--fast`` runs the configurations of fast adversarial training instead (see ``FAST_CONFIGS``): STD, AMAT with T = 5
from a cold start, AMAT with T = 1 and 2 warm-started from the perturbation memory (beta 0.5, and T = 1 with beta 0),
and VAT with T = 1 and the memory. Every run counts its network passes (robust_bundles.handlers.PassCounter) and
times its iterations; the table gives the passes per training sample relative to STD (machine-independent) and the
measured time against the count's prediction: the counted training pass pairs times STD's time per pair plus the
counted attack pass pairs (an attack's backward takes the input gradient only) times the measured forward +
input-backward time of the attack-step job. The memory warms up during the
untimed iterations (every epoch is one iteration here, so from the second iteration on every sample is a hit).

What runs: a real ``monai.engines.SupervisedTrainer`` per method over an in-memory list of dicts ("image", "label",
"sample_id"), with the project's ``iteration_update`` callables (``robust_bundles.adversarial``) plugged in exactly as a bundle
overlay does. The network is the 2D DynUNet of the hippocampus bundle, configured the nnU-Net way for a 56 x 40 patch
(kernels and strides derived from the patch size by the bundles' own planner, ``robust_bundles.tasks.segmentation.nnunet_plan``; the bundle's 40 x 56 patch gives
the same network), deep supervision with 2 extra heads as in the bundle, the Dice + CE loss of :mod:`robust_bundles.losses` and
SGD (momentum 0.99, Nesterov, lr 0.01, weight decay 3e-5). Inputs are random z-scores, labels random in {0, 1, 2}.
A fifth row, VAT with beta 0.5 (clean + adversarial loss, like AMAT), is a control: AMAT minus it is the cost of AMAT's
own machinery (margin book, per-sample eps, robustness test), AMAT minus VAT adds the clean training pass of beta 0.5.

Every method runs in a fresh Python process (the internal ``--only METHOD`` flag), so that its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which only ever grows) is its own; torch's CPU allocations are not seen
by tracemalloc. On CUDA the peak is ``torch.cuda.max_memory_allocated``. A training iteration is timed from ignite's
ITERATION_STARTED to ITERATION_COMPLETED (prepare_batch, attack, forward, backward, optimizer step, bookkeeping; the
data loader's fetch is outside) for ``--iters`` iterations after ``--warmup`` untimed ones.

One attack step is measured as ``(t(perturb, T steps) - t(perturb, 0 steps)) / T`` (the random start and the
bookkeeping outside the loop cancel) and compared with one forward pass plus an input-gradient backward pass with all
parameters frozen (``requires_grad=False``), same network mode (train) and batch.

Goals checked: AMAT / VAT <= 1.05 s/iter at equal T; one attack step <= 1.1 x forward + input-backward.

Note: on a 2-core machine small convolutions get slow with many threads; ``--threads 2`` is what CI and most users
have, any value may be given. Run it on an idle machine: a single busy core elsewhere can slow a 2-thread run several
fold (threads wait for each other at every parallel region). The script measures how much CPU other processes used
during each run (from /proc/stat) and says so when the timings are disturbed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import fire
import torch

from robust_bundles.methods import AMAT, STD, TEAT, VAT

METHODS = (STD.name, VAT.name, TEAT.name, AMAT.name, "VAT_B05")
#: --fast: name -> (method, attack steps T, perturbation memory, AMAT's beta)
FAST_CONFIGS = {
    STD.name: (STD.name, 0, False, 0.5),
    "AMAT_T5_COLD": (AMAT.name, 5, False, 0.5),
    "AMAT_T2_MEM": (AMAT.name, 2, True, 0.5),
    "AMAT_T1_MEM": (AMAT.name, 1, True, 0.5),
    "AMAT_T1_MEM_B0": (AMAT.name, 1, True, 0.0),
    "VAT_T1_MEM": (VAT.name, 1, True, 0.0),
}
GOAL_FAST_PASSES_OVER_STD = 2.0
GOAL_TIME_OVER_PREDICTION = 0.10
LABELS = {"VAT_B05": "VAT beta 0.5 (control)", "ATTACK_STEP": "attack-step"}
ATTACK = "ATTACK_STEP"
GOAL_AMAT_OVER_VAT = 1.05
GOAL_STEP_OVER_FWD_BWD = 1.1

# The hippocampus bundle's 2D patch (pixels; isotropic in-plane), planned the nnU-Net way by the bundles' planner.
PATCH = (56, 40)
FILTERS = (32, 64, 128, 256, 320)
TINY_PATCH = (16, 16)
TINY_FILTERS = (4, 8, 16)

VAT_EPS = 2.0  # L2 norm of the perturbation of the whole z-scored input
AMAT_INITIAL_MARGIN = 2.0  # AMAT starts at VAT's noise level, so both attacks work on equal radii
AMAT_EXPANSION_STEP = 1.0
AMAT_THRESHOLDS = (0.5, 0.5)  # xi for the ("dice", "ce") terms; the value does not change the cost


# ---------------------------------------------------------------------------------------------------- configuration
def network_config(tiny: bool = False, deep_supr_num: int = 2) -> dict:
    """The DynUNet arguments of the benchmark (the hippocampus bundle's network, or a tiny one for tests).

    Args:
        tiny: a 16 x 16 patch and 4/8/16 filters instead of 56 x 40 and 32/64/128/256.
        deep_supr_num: number of deep-supervision heads besides the main output; 0 disables deep supervision. 2 is
            the hippocampus bundle's value (all three decoder levels above the bottleneck; nnU-Net would give the
            lowest of them weight 0, which costs the same).
    """
    from robust_bundles.tasks.segmentation import nnunet_plan

    patch = TINY_PATCH if tiny else PATCH
    kernels, strides = nnunet_plan(patch)
    filters = list((TINY_FILTERS if tiny else FILTERS)[: len(strides)])
    if len(filters) < len(strides):
        raise ValueError(f"{len(strides)} levels need {len(strides)} filter counts; have {filters}.")
    return {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 3,
        "kernel_size": kernels,
        "strides": strides,
        "upsample_kernel_size": strides[1:],
        "filters": filters,
        "norm_name": "instance",
        "deep_supervision": deep_supr_num > 0,
        # DynUNet allows 1 <= deep_supr_num < number of upsamplings; the tiny network has only two
        "deep_supr_num": min(max(deep_supr_num, 1), len(strides) - 2),
        "res_block": False,
        "patch": list(patch),
    }


def build_network(cfg: dict) -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    args = {k: v for k, v in cfg.items() if k != "patch"}
    return DynUNet(**args)


def build_loss(cfg: dict):
    from robust_bundles.tasks.segmentation import DiceCELoss

    return DiceCELoss(deep_supervision=cfg["deep_supervision"], spatial_dims=cfg["spatial_dims"])


def make_data(batch: int, patch: Sequence[int], seed: int = 0) -> list[dict]:
    """``batch`` samples: random z-scored images (1, *patch) float32, random labels (1, *patch) in {0, 1, 2}, ids."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn((1, *patch), generator=g),
            "label": torch.randint(0, 3, (1, *patch), generator=g),
            "sample_id": i,
        }
        for i in range(batch)
    ]


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _summary(times: Sequence[float]) -> tuple[float, float]:
    if not times:
        return float("nan"), float("nan")
    return statistics.fmean(times), (statistics.stdev(times) if len(times) > 1 else 0.0)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- one method
class IterationTimer:
    """Times every training iteration (ignite ITERATION_STARTED -> ITERATION_COMPLETED) with time.perf_counter.

    Args:
        warmup: number of first iterations that are timed but not kept.
        device: the training device (CUDA is synchronised before reading the clock).
        label: name shown in the progress lines.
        total: number of iterations of the run, for the progress lines.
    """

    def __init__(self, warmup: int, device: torch.device, label: str, total: int) -> None:
        self.warmup = warmup
        self.device = device
        self.label = label
        self.total = total
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._start = self._cpu_start = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.completed)

    def started(self, engine) -> None:
        _sync(self.device)
        self._cpu_start = time.process_time()
        self._start = time.perf_counter()

    def completed(self, engine) -> None:
        _sync(self.device)
        dt = time.perf_counter() - self._start
        cpu = time.process_time() - self._cpu_start
        i = engine.state.iteration
        kept = i > self.warmup
        if kept:
            self.times.append(dt)
            self.cpu_times.append(cpu)
        tag = "" if kept else " (warm-up)"
        _log(f"    {self.label} iteration {i}/{self.total}: {dt:.3f} s (CPU time {cpu:.3f} s){tag}")


def run_method(
    method: str,
    batch: int = 32,
    steps: int = 5,
    iters: int = 5,
    warmup: int = 2,
    tiny: bool = False,
    deep_supr_num: int = 2,
    device: str = "auto",
    seed: int = 0,
    memory: bool = False,
    amat_beta: float = 0.5,
) -> dict:
    """Train ``warmup + iters`` iterations of one method with a SupervisedTrainer, time them and count their passes.

    ``memory`` warm-starts the attacks of VAT, TEAT and AMAT from the perturbation memory; ``amat_beta`` is AMAT's
    weight of the clean loss. The network passes of every iteration are counted (PassCounter).

    The data set has ``batch`` samples, so every epoch is one iteration (the margin book and the TEAT ensemble hold
    N = batch samples); AMAT's MarginHandler closes every epoch. TEAT runs with its ensemble active and its weight at
    w_max = 300 from the first iteration (start = ramp = 0), i.e. the cost of the second half of a TEAT training.

    Returns:
        {"method", "times" (s, the timed iterations), "s_per_iter_mean", "s_per_iter_std", "peak_rss_mb",
        "rss_growth_mb" (peak growth during the training run), "cuda_peak_mb" (None on CPU), "final_loss"}.
    """
    from monai.data import DataLoader, Dataset
    from monai.utils import set_determinism

    from robust_bundles import methods
    from robust_bundles.attacks import L2PGD
    from robust_bundles.handlers import PassCounter

    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {METHODS}.")
    dev = pick_device(device)
    set_determinism(seed)
    cfg = network_config(tiny, deep_supr_num)
    net = build_network(cfg).to(dev)
    loss = build_loss(cfg)
    data = make_data(batch, cfg["patch"], seed)
    loader = DataLoader(Dataset(data), batch_size=batch, shuffle=False, num_workers=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    attack = L2PGD(steps=steps, alpha=4.0)
    # every method from the registry; VAT_B05 is a control (VAT with AMAT's clean-loss weight, to isolate AMAT's own
    # bookkeeping cost); TEAT with its ensemble active at w_max from the first iteration (start = ramp = 0); the
    # perturbation memory (``memory``) for VAT and AMAT
    registered = methods.get(VAT.name if method == "VAT_B05" else method)
    beta = {"VAT_B05": 0.5, AMAT.name: amat_beta}.get(method, 0.0)
    training = registered.training(batch, attack=attack, eps=VAT_EPS, beta=beta, max_epochs=1, momentum=0.9,
                                   start=0.0, ramp=0.0, expansion_step=AMAT_EXPANSION_STEP,
                                   initial_margin=AMAT_INITIAL_MARGIN, thresholds=list(AMAT_THRESHOLDS), check="path",
                                   memory=memory and method in (VAT.name, AMAT.name))
    counter = PassCounter()
    total = warmup + iters
    trainer = training.trainer(net, opt, loss, loader, total, device=dev, handlers=[counter])
    timer = IterationTimer(warmup, dev, method, total)
    timer.attach(trainer)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _rss_mb()
    trainer.run()
    rss_after = _rss_mb()
    mean, std = _summary(timer.times)
    out = trainer.state.output
    final_loss = out.get("loss") if isinstance(out, dict) else None
    return {
        "method": method,
        "times": timer.times,
        "s_per_iter_mean": mean,
        "s_per_iter_std": std,
        "cpu_times": timer.cpu_times,
        "cpu_s_per_iter_mean": _summary(timer.cpu_times)[0],
        "peak_rss_mb": rss_after,
        "rss_growth_mb": rss_after - rss_before,
        "cuda_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "final_loss": float(final_loss) if final_loss is not None else None,
        "adversarial": dict(getattr(trainer.state, "adversarial", {}) or {}),
        "passes": counter.summary(),
    }


# ---------------------------------------------------------------------------------------------------- attack step
def _time(fn, n: int, warmup: int, device: torch.device) -> list[float]:
    out = []
    for i in range(warmup + n):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def run_attack_step(
    batch: int = 32,
    steps: int = 5,
    iters: int = 5,
    warmup: int = 2,
    tiny: bool = False,
    deep_supr_num: int = 2,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    """Time one attack step against one forward + input-gradient backward pass with frozen parameters.

    All in train mode (as during adversarial training), same batch. The attack step is
    ``(t(perturb, T) - t(perturb, 0)) / T`` with VAT's settings (L2, random start, no final check); the same for
    AMAT's settings (per-sample eps, start radius, thresholds, "path" robustness test on the main output).

    Returns:
        times in ms: "attack_step_ms" (+ "_std"), "amat_attack_step_ms" (+ "_std"), "fwd_bwd_ms" (+ "_std"),
        "fwd_bwd_params_ms" (the same pass when parameters require grad, as in the attack), "ratio",
        "amat_ratio".
    """
    from monai.utils import set_determinism

    from robust_bundles.attacks import perturb
    from robust_bundles.losses import per_sample_terms

    dev = pick_device(device)
    set_determinism(seed)
    cfg = network_config(tiny, deep_supr_num)
    net = build_network(cfg).to(dev).train()
    loss_fn = build_loss(cfg)
    data = make_data(batch, cfg["patch"], seed)
    x = torch.stack([d["image"] for d in data]).to(dev)
    y = torch.stack([d["label"] for d in data]).to(dev)
    n = max(iters, 1)

    def fwd_bwd() -> None:
        xa = x.clone().requires_grad_(True)
        total = loss_fn(net(xa), y).sum()
        torch.autograd.grad(total, xa)

    params = list(net.parameters())
    for p in params:
        p.requires_grad_(False)
    _log(f"    forward + input-backward, frozen parameters ({warmup} warm-up + {n})")
    frozen = _time(fwd_bwd, n, warmup, dev)
    for p in params:
        p.requires_grad_(True)
    _log(f"    forward + input-backward, parameters requiring grad ({warmup} warm-up + {n})")
    unfrozen = _time(fwd_bwd, n, warmup, dev)

    def vat_attack(t: int):
        return lambda: perturb(net, loss_fn, x, y, VAT_EPS, steps=t, alpha=4.0, random_start=True, final_check=False)

    eps = torch.full((batch,), AMAT_INITIAL_MARGIN, device=dev)
    start = torch.minimum(torch.clamp(eps - AMAT_EXPANSION_STEP, min=AMAT_EXPANSION_STEP), eps)
    xi = torch.tensor(AMAT_THRESHOLDS, device=dev)

    def amat_attack(t: int):
        return lambda: perturb(
            net, loss_fn, x, y, eps, steps=t, alpha=4.0, random_start=True, start_radius=start, thresholds=xi,
            test_fn=lambda out, yy: per_sample_terms(loss_fn, loss_fn.primary(out), yy), check="path",
            final_check=False,
        )

    res: dict[str, Any] = {"steps": steps}
    for name, make in (("", vat_attack), ("amat_", amat_attack)):
        _log(f"    {name or 'vat_'}attack with {steps} and 0 steps ({warmup} warm-up + {n} each)")
        t_full = _time(make(steps), n, warmup, dev)
        t_zero = _time(make(0), n, warmup, dev)
        (mf, sf), (mz, sz) = _summary(t_full), _summary(t_zero)
        res[f"{name}attack_step_ms"] = 1e3 * (mf - mz) / max(steps, 1)
        res[f"{name}attack_step_std_ms"] = 1e3 * math.sqrt(sf**2 + sz**2) / max(steps, 1)
        res[f"{name}attack_total_ms"] = 1e3 * mf
        res[f"{name}attack_zero_steps_ms"] = 1e3 * mz
    res["fwd_bwd_ms"], res["fwd_bwd_std_ms"] = (1e3 * v for v in _summary(frozen))
    res["fwd_bwd_params_ms"], res["fwd_bwd_params_std_ms"] = (1e3 * v for v in _summary(unfrozen))
    res["ratio"] = res["attack_step_ms"] / res["fwd_bwd_ms"]
    res["amat_ratio"] = res["amat_attack_step_ms"] / res["fwd_bwd_ms"]
    res["peak_rss_mb"] = _rss_mb()
    return res


# ---------------------------------------------------------------------------------------------------- orchestration
def _child(job: str, opts: dict) -> dict:
    """Run one job (a method or the attack-step timing) in a fresh Python process and return its result."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--only", job, "--child_out", path]
        cmd += [f"--{k}={v}" for k, v in opts.items()]
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"The {job} benchmark process failed with exit code {proc.returncode}: {' '.join(cmd)}")
        with open(path) as f:
            return json.load(f)


def _run_job(job: str, opts: dict) -> dict:
    torch.set_num_threads(opts["threads"])
    kw = {k: v for k, v in opts.items() if k != "threads"}
    if job == ATTACK:
        return run_attack_step(**kw)
    if job in FAST_CONFIGS:
        method, steps, memory, beta = FAST_CONFIGS[job]
        kw.update(steps=max(steps, 1), memory=memory, amat_beta=beta)
        return run_method(method, **kw)
    return run_method(job, **kw)


def _machine_cpu_s() -> float | None:
    """CPU seconds the whole machine spent busy (user, nice, system, irq, softirq; from /proc/stat), None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s(isolate: bool) -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN if isolate else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _fmt_ratio(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"


def report(results: dict) -> str:
    """The Markdown table, the attack-step line and the goals, as printed."""
    cfg = results["config"]
    net = cfg["network"]
    cuda = cfg["device"] == "cuda"
    mem_col = "peak CUDA MB" if cuda else "peak RSS MB"
    lines = [
        f"Benchmark: batch {cfg['batch']} x 1 x {net['patch'][0]} x {net['patch'][1]}, "
        f"T = {cfg['steps']} attack steps, "
        f"{cfg['iters']} timed iterations after {cfg['warmup']} warm-up, {cfg['threads']} thread(s), device "
        f"{cfg['device']}, memory {'per method in its own process' if cfg['isolated'] else 'of the whole process'}",
        f"Network: DynUNet 2D, kernel_size {net['kernel_size']}, strides {net['strides']} "
        "(nnU-Net rule for the patch), "
        f"filters {net['filters']}, instance norm, deep_supervision {net['deep_supervision']} (deep_supr_num "
        f"{net['deep_supr_num']}); {cfg['parameters'] / 1e6:.2f} M parameters; "
        f"DiceCELoss(deep_supervision={net['deep_supervision']}); "
        "SGD lr 0.01 momentum 0.99 Nesterov, weight decay 3e-5",
        f"Methods: STD; VAT eps {VAT_EPS} (beta 0); TEAT eps {VAT_EPS} (ensemble active, weight 300, beta 0); "
        f"AMAT (margins start at {AMAT_INITIAL_MARGIN}, Delta {AMAT_EXPANSION_STEP}, xi {list(AMAT_THRESHOLDS)}, "
        "beta 0.5, path check); L2 PGD alpha 4, random start",
        "",
        f"| method | s/iter (mean ± std) | ratio to STD | ratio to VAT | {mem_col} |",
        "|---|---|---|---|---|",
    ]
    for m, r in results["methods"].items():
        mem = r["cuda_peak_mb"] if cuda else r["peak_rss_mb"]
        lines.append(
            f"| {LABELS.get(m, m)} | {r['s_per_iter_mean']:.3f} ± {r['s_per_iter_std']:.3f} | "
            f"{_fmt_ratio(r.get('ratio_to_std'))} | {_fmt_ratio(r.get('ratio_to_vat'))} | {mem:.0f} |"
        )
    a = results.get("attack_step")
    lines.append("")
    if a:
        lines.append(
            f"one attack step: {a['attack_step_ms']:.1f} ms, forward+input-backward (frozen params): "
            f"{a['fwd_bwd_ms']:.1f} ms, ratio {a['ratio']:.2f}"
        )
        lines.append(
            f"  (AMAT's attack step with the path robustness test: {a['amat_attack_step_ms']:.1f} ms, ratio "
            f"{a['amat_ratio']:.2f}; forward+input-backward with parameters requiring grad: "
            f"{a['fwd_bwd_params_ms']:.1f} ms)"
        )
        lines.append("")
    return "\n".join(lines + _goal_lines(results))


def _publish(results: dict, text: str, out: str | None) -> dict:
    """Print the report text, keep it in the results and write them to ``out`` (JSON) when given."""
    print(text, flush=True)
    results["report"] = text
    if out:
        _write_json(out, results)
        _log(f"wrote {out}")
    return results


def _goal_lines(results: dict) -> list[str]:
    """The "Goals:" lines (value, limit, PASS/FAIL/n/a) and the notes."""
    lines = ["Goals:"]
    for g in results["goals"].values():
        verdict = "n/a" if g["pass"] is None else ("PASS" if g["pass"] else "FAIL")
        value = "n/a" if g["value"] is None else f"{g['value']:.3f}"
        lines.append(f"- {g['name']} <= {g['limit']}: {value} {verdict}")
    return lines + [f"  note: {note}" for note in results.get("notes", [])]


def _goal(name: str, value: float | None, limit: float) -> dict:
    ok = None if value is None or not math.isfinite(value) else bool(value <= limit)
    return {"name": name, "value": value, "limit": limit, "pass": ok}


def _notes(results: dict, steps: int) -> list[str]:
    """Explanations of the figures: what AMAT adds over VAT, the ratio at other T, other load on the machine."""
    notes = []
    ms, a = results["methods"], results["attack_step"]
    if AMAT.name in ms and VAT.name in ms:
        amat, vat = ms[AMAT.name]["s_per_iter_mean"], ms[VAT.name]["s_per_iter_mean"]
        text = (
            f"AMAT - VAT = {amat - vat:.3f} s/iter. AMAT's beta = 0.5 trains on the clean batch too: one more "
            "training forward pass and its backward per iteration, which VAT (beta = 0) does not do"
        )
        if STD.name in ms:
            text += f" (a whole STD iteration costs {ms[STD.name]['s_per_iter_mean']:.3f} s)"
        if "VAT_B05" in ms:
            ctl = ms["VAT_B05"]["s_per_iter_mean"]
            text += (
                f". Against VAT with the same beta 0.5, AMAT / VAT beta 0.5 = {amat / ctl:.3f}: AMAT's own cost "
                f"(margin book, per-sample eps, robustness test on every iterate) is {amat - ctl:.3f} s/iter"
            )
        notes.append(text + ".")
        if STD.name in ms and steps > 0:
            # VAT = STD + T attack steps (same training pass), so (VAT - STD) / T is one attack step inside the
            # trainer; AMAT's attack step costs the same (see the attack-step line). Extrapolate the ratio in T.
            s = (vat - ms[STD.name]["s_per_iter_mean"]) / steps

            def ratio(t: int) -> float:
                return (amat + (t - steps) * s) / (vat + (t - steps) * s)

            text = (
                f"extrapolated with one attack step = (VAT - STD) / T = {s:.3f} s: AMAT / VAT at T = 10: "
                f"{ratio(10):.3f}, at T = 20 (the paper's code): {ratio(20):.3f}"
            )
            limit = GOAL_AMAT_OVER_VAT
            if s > 0 and amat > limit * vat:
                text += f"; <= {limit} from T = {math.ceil(steps + (amat - limit * vat) / ((limit - 1) * s))} on"
            notes.append(text + ".")
    loads = {k: r.get("other_cpu_load") for k, r in list(ms.items()) + [(ATTACK, a or {})]}
    loads = {k: v for k, v in loads.items() if v is not None}
    if loads:
        worst = max(loads, key=loads.get)
        text = (
            f"other processes kept on average {100 * loads[worst]:.0f}% of the machine's {os.cpu_count()} CPUs busy "
            f"during the {LABELS.get(worst, worst)} run (mean over the runs "
            f"{100 * statistics.fmean(loads.values()):.0f}%)"
        )
        if loads[worst] > 0.1:
            text += ": the timings are disturbed, rerun on an idle machine"
        notes.append(text + ".")
    if not results["config"]["isolated"]:
        notes.append("peak RSS is process-wide (isolate=False): it only grows from method to method.")
    return notes


def _write_json(path: str, obj: dict) -> None:
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".benchmark-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def fast_report(results: dict) -> str:
    """The --fast table: counted passes per training sample, their ratio to STD, measured and predicted s/iter."""
    cfg = results["config"]
    lines = [
        f"Fast adversarial training: batch {cfg['batch']} x 1 x {cfg['network']['patch'][0]} x "
        f"{cfg['network']['patch'][1]}, {cfg['iters']} timed iterations after {cfg['warmup']} warm-up (memory warm), "
        f"{cfg['threads']} thread(s), device {cfg['device']}; L2 PGD alpha 4; AMAT xi {list(AMAT_THRESHOLDS)}, "
        f"margins from {AMAT_INITIAL_MARGIN}; VAT eps {VAT_EPS}",
        "",
        "| configuration | forward / sample | backward / sample | passes vs STD | s/iter (mean ± std) | time vs STD | "
        "predicted s/iter | measured / predicted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["fast"].items():
        p = r["passes"]
        lines.append(
            f"| {name} | {p['forward_per_sample']:.2f} | {p['backward_per_sample']:.2f} | "
            f"{_fmt_ratio(r.get('passes_vs_std'))} | {r['s_per_iter_mean']:.3f} ± {r['s_per_iter_std']:.3f} | "
            f"{_fmt_ratio(r.get('time_vs_std'))} | {r['predicted_s_per_iter']:.3f} | "
            f"{_fmt_ratio(r.get('time_over_prediction'))} |"
        )
    return "\n".join(lines + [""] + _goal_lines(results))


def run_fast(opts: dict, out: str | None, isolate: bool) -> dict:
    """Run ``FAST_CONFIGS`` (each in a fresh process unless ``isolate`` is False), compare counts and times."""
    dev = pick_device(opts["device"])
    cfg = network_config(opts["tiny"], opts["deep_supr_num"])
    torch.set_num_threads(opts["threads"])
    config = {**opts, "device": dev.type, "isolated": bool(isolate), "network": cfg, "configs": FAST_CONFIGS}
    results: dict[str, Any] = {"config": config, "fast": {}, "attack_step": None, "goals": {}, "notes": []}
    loads = {}
    jobs = [*FAST_CONFIGS, ATTACK]
    for k, job in enumerate(jobs, 1):
        _log(f"[{k}/{len(jobs)}] {job} ...")
        busy0, own0, t0 = _machine_cpu_s(), _own_cpu_s(isolate), time.perf_counter()
        res = _child(job, opts) if isolate else _run_job(job, opts)
        busy1, own1, wall = _machine_cpu_s(), _own_cpu_s(isolate), time.perf_counter() - t0
        if busy0 is not None and busy1 is not None and wall > 0:
            loads[job] = max(busy1 - busy0 - (own1 - own0), 0.0) / (wall * (os.cpu_count() or 1))
        if job == ATTACK:
            results["attack_step"] = res
            _log(f"[{k}/{len(jobs)}] forward + input-backward {res['fwd_bwd_params_ms']:.1f} ms ({wall:.0f} s)")
            continue
        results["fast"][job] = res
        _log(f"[{k}/{len(jobs)}] {job}: {res['passes']['passes_per_sample']:.2f} passes/sample, "
             f"{res['s_per_iter_mean']:.3f} s/iter ({wall:.0f} s)")
    fs = results["fast"]
    std = fs[STD.name]
    # two unit costs, each measured once: a training pass pair (forward + backward with weight gradients) from
    # STD's iteration, an attack pass pair (forward + input-only backward) from the attack-step job
    train_pair = std["s_per_iter_mean"] / std["passes"]["backward_per_sample"]
    attack_pair = results["attack_step"]["fwd_bwd_params_ms"] / 1e3
    config["unit_costs_s"] = {"training_pass_pair": train_pair, "attack_pass_pair": attack_pair}
    for r in fs.values():
        p = r["passes"]
        r["passes_vs_std"] = p["passes_per_sample"] / std["passes"]["passes_per_sample"]
        r["time_vs_std"] = r["s_per_iter_mean"] / std["s_per_iter_mean"]
        r["predicted_s_per_iter"] = (train_pair * (p["backward_per_sample"] - p["attack_backward_per_sample"])
                                     + attack_pair * p["attack_backward_per_sample"])
        r["time_over_prediction"] = r["s_per_iter_mean"] / r["predicted_s_per_iter"]
    fast_ones = [n for n in fs if n.endswith("_MEM") or "_MEM_" in n]
    amat_fast = [n for n in fast_ones if n.startswith(AMAT.name)]
    best = min(amat_fast, key=lambda n: fs[n]["passes_vs_std"])
    results["goals"] = {
        "fast_amat_passes": _goal(f"fewest counted passes of fast AMAT ({best}) / STD", fs[best]["passes_vs_std"],
                                  GOAL_FAST_PASSES_OVER_STD),
        "amat_t1_passes": _goal("AMAT T = 1 with memory, beta 0.5: passes / STD", fs["AMAT_T1_MEM"]["passes_vs_std"],
                                GOAL_FAST_PASSES_OVER_STD),
        "time_vs_prediction": _goal("largest |measured / predicted - 1| over the configurations",
                                    max(abs(r["time_over_prediction"] - 1) for r in fs.values()),
                                    GOAL_TIME_OVER_PREDICTION),
    }
    results["notes"].append(
        "AMAT's beta 0.5 trains on the clean batch too (one more forward and backward per sample than VAT), so AMAT "
        "T = 1 costs 3 forward + 3 backward passes per sample, 3.0 x STD; beta 0 (adversarial loss only, as VAT) "
        "brings it to 2.0 x. An attack's backward pass takes the input gradient only (no weight gradients), so it "
        "costs less wall time than a training backward: the prediction weighs the counted training pass pairs by "
        "STD's time per pair and the counted attack pass pairs by the measured forward + input-backward time "
        f"({1e3 * attack_pair:.0f} ms against {1e3 * train_pair:.0f} ms per batch).")
    if loads:
        worst = max(loads, key=loads.get)
        text = f"other processes kept {100 * loads[worst]:.0f}% of the CPUs busy during {worst} (the worst run)"
        results["notes"].append(text + (": timings disturbed" if loads[worst] > 0.1 else "") + ".")
    return _publish(results, fast_report(results), out)


def main(
    batch: int = 32,
    steps: int = 5,
    iters: int = 5,
    warmup: int = 2,
    threads: int = 2,
    out: str | None = None,
    tiny: bool = False,
    deep_supr_num: int = 2,
    device: str = "auto",
    isolate: bool = True,
    methods: Sequence[str] = METHODS,
    only: str | None = None,
    child_out: str | None = None,
    seed: int = 0,
    fast: bool = False,
) -> dict:
    """Benchmark the training iterations, print the table and the goals, and optionally write JSON.

    Args:
        batch: batch size (also the number of training samples N of the margin book and the TEAT ensemble).
        steps: attack steps T of VAT, TEAT and AMAT.
        iters: timed iterations per method.
        warmup: untimed iterations before them.
        threads: torch CPU threads (torch.set_num_threads).
        out: path of a JSON file with every figure (written whole, via a temporary file).
        tiny: a tiny network and 16 x 16 inputs (smoke tests).
        deep_supr_num: deep-supervision heads besides the main output (0 disables deep supervision).
        device: "auto" (CUDA when available), "cpu" or "cuda".
        isolate: run every method in a fresh process (honest per-method peak memory); False runs everything here,
            and the memory column is then the process-wide peak so far.
        methods: subset of STD, VAT, TEAT, AMAT and VAT_B05 (VAT with beta 0.5, a control for AMAT) to run, e.g.
            ``--methods STD,AMAT``.
        only: internal: run one job (a method or "ATTACK_STEP") and write its result to ``child_out``.
        child_out: internal: where ``only`` writes its result.
        seed: random seed of the data and the network initialisation.
        fast: run the fast-training configurations (``FAST_CONFIGS``: counted passes and time against the count's
            prediction) instead of the methods; ``steps`` and ``methods`` are then ignored.

    Returns:
        The results dict (also written to ``out``).
    """
    opts = {
        "batch": int(batch),
        "steps": int(steps),
        "iters": int(iters),
        "warmup": int(warmup),
        "tiny": bool(tiny),
        "deep_supr_num": int(deep_supr_num),
        "device": device,
        "seed": int(seed),
        "threads": int(threads),
    }
    if opts["batch"] < 1 or opts["steps"] < 1 or opts["iters"] < 1 or opts["warmup"] < 0 or opts["threads"] < 1:
        raise ValueError("Need batch >= 1, steps >= 1, iters >= 1, warmup >= 0 and threads >= 1.")
    if only is not None:
        res = _run_job(str(only).upper(), opts)
        if child_out:
            _write_json(child_out, res)
        return res

    if fast:
        return run_fast(opts, out, isolate)
    if isinstance(methods, str):
        methods = methods.replace(",", " ").split()
    methods = [str(m).upper() for m in methods]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"Unknown method(s) {bad}; use a non-empty subset of {METHODS}.")
    dev = pick_device(device)
    cfg = network_config(opts["tiny"], opts["deep_supr_num"])
    torch.set_num_threads(opts["threads"])
    config: dict[str, Any] = dict(opts)
    config.update(
        device=dev.type,
        isolated=bool(isolate),
        network=cfg,
        parameters=sum(p.numel() for p in build_network(cfg).parameters()),
        methods=methods,
        optimizer={"name": "SGD", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
        attack={"name": "L2PGD", "steps": opts["steps"], "alpha": 4.0, "random_start": True},
        vat={"eps": VAT_EPS, "beta": 0.0},
        teat={"eps": VAT_EPS, "beta": 0.0, "w_max": 300.0, "start": 0.0, "ramp": 0.0, "momentum": 0.9},
        amat={
            "initial_margin": AMAT_INITIAL_MARGIN,
            "expansion_step": AMAT_EXPANSION_STEP,
            "thresholds": list(AMAT_THRESHOLDS),
            "beta": 0.5,
            "check": "path",
        },
        torch=torch.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        cpu_count=os.cpu_count(),
    )
    try:
        import monai

        config["monai"] = monai.__version__
    except ImportError:  # pragma: no cover
        pass
    results: dict[str, Any] = {"config": config, "methods": {}, "attack_step": None, "goals": {}, "notes": []}
    jobs = list(methods) + [ATTACK]
    t_start = time.perf_counter()
    for k, job in enumerate(jobs, 1):
        what = "one attack step vs forward+input-backward" if job == ATTACK else f"method {LABELS.get(job, job)}"
        _log(f"[{k}/{len(jobs)}] {what} ({'in a fresh process' if isolate else 'in this process'}) ...")
        busy0, own0, t0 = _machine_cpu_s(), _own_cpu_s(isolate), time.perf_counter()
        res = _child(job, opts) if isolate else _run_job(job, opts)
        busy1, own1, wall = _machine_cpu_s(), _own_cpu_s(isolate), time.perf_counter() - t0
        # CPU time the rest of the machine used meanwhile, as a fraction of all CPUs over the run
        other = None
        if busy0 is not None and busy1 is not None and wall > 0:
            other = max(busy1 - busy0 - (own1 - own0), 0.0) / (wall * (os.cpu_count() or 1))
        res["other_cpu_load"] = other
        load = "" if other is None else f", other processes {100 * other:.0f}% CPU"
        if job == ATTACK:
            results["attack_step"] = res
            _log(f"[{k}/{len(jobs)}] attack step {res['attack_step_ms']:.1f} ms, forward+input-backward "
                 f"{res['fwd_bwd_ms']:.1f} ms ({wall:.0f} s{load})")
        else:
            results["methods"][job] = res
            _log(f"[{k}/{len(jobs)}] {LABELS.get(job, job)}: {res['s_per_iter_mean']:.3f} ± "
                 f"{res['s_per_iter_std']:.3f} s/iter, peak RSS {res['peak_rss_mb']:.0f} MB ({wall:.0f} s{load})")
    config["wall_time_s"] = time.perf_counter() - t_start

    ms = results["methods"]
    std_t = ms[STD.name]["s_per_iter_mean"] if STD.name in ms else None
    vat_t = ms[VAT.name]["s_per_iter_mean"] if VAT.name in ms else None
    for r in ms.values():
        r["ratio_to_std"] = r["s_per_iter_mean"] / std_t if std_t else None
        r["ratio_to_vat"] = r["s_per_iter_mean"] / vat_t if vat_t else None
    a = results["attack_step"]
    results["goals"] = {
        "amat_over_vat": _goal(
            f"AMAT / VAT s/iter at equal T = {opts['steps']}", ms[AMAT.name]["ratio_to_vat"] if AMAT.name in ms else None,
            GOAL_AMAT_OVER_VAT,
        ),
        "attack_step_over_fwd_bwd": _goal(
            "one attack step / forward+input-backward (frozen params)", a["ratio"], GOAL_STEP_OVER_FWD_BWD
        ),
    }
    results["notes"] = _notes(results, opts["steps"])
    return _publish(results, report(results), out)


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)  # the report is printed; do not print the returned dict
