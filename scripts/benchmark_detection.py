"""CPU cost of RetinaNet training, adversarial training and evaluation steps, to size the detection bundle's profiles.

    python scripts/benchmark_detection.py time                     # every configuration of CONFIGS, batch 8, 1 thread
    python scripts/benchmark_detection.py time --only r18_L123_c256_320 --iters 2 --out timing.json
    python scripts/benchmark_detection.py time --tiny --iters 1 --warmup 0    # smoke test, a few seconds
    python scripts/benchmark_detection.py learn                    # tiny RetinaNet on synthetic rectangles: mAP vs time
    python scripts/benchmark_detection.py learn --config r18_L23_c64_224 --dataset_dir ../shared/data/bccd --iters 520

``time`` measures, per configuration (backbone, FPN levels and channels, input size), on one
batch of ``--batch`` images (real BCCD images with their boxes when ``--dataset_dir`` holds them, synthetic
rectangles otherwise):

- ``std_step``: one STD training iteration of a stock ``monai.engines.SupervisedTrainer`` (prepare_batch, forward,
  per-image loss, backward, Adam step), timed from ignite's ITERATION_STARTED to ITERATION_COMPLETED;
- ``vat_step`` / ``amat_step``: the same with ``robust_bundles.adversarial.VATIteration`` (beta 0) and
  ``AMATIteration`` (beta 0.5, path test) and an L2 PGD of ``--steps`` steps;
- ``eval_step``: eval-mode forward without gradients, box decoding (the detector's post-processing) and the COCO
  metric's matching, for the batch;
- ``attack_step``: one eval-mode attack step on the batch (forward + input-gradient backward, as the robustness
  evaluation runs it), ``(t(T steps) - t(0 steps)) / T`` with ``T = --steps``.

Every time is the median of ``--iters`` runs after ``--warmup`` untimed ones, in CPU seconds of the process
(``time.process_time``): with one thread that is the wall time on an idle core, whatever else runs on the machine
(the wall time is recorded too, as ``*_wall``). The ``budget`` section of the report
turns them into the time of a whole experiment (STD, thresholds, VAT, TEAT, AMAT, robustness at three eps with PGD and
IFGSM) for the numbers of images, epochs and steps given; it is arithmetic on the measured steps, not a run.

``learn`` trains a configuration with the plain STD loop (Adam) and prints held-out mAP against training CPU time;
by default the tiny RetinaNet (ResNet10, width 8, FPN 32, levels at strides 4, 8, 16) on 64 x 64 synthetic
rectangles.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import fire
import torch

from robust_bundles.methods import AMAT, STD, TEAT, VAT

ROOT = Path(__file__).resolve().parents[1]
REAL_BCCD = ROOT / ".." / "shared" / "data" / "bccd"

#: name -> (backbone, returned_layers, fpn_channels, input size, base anchor shapes at the finest level)
CONFIGS: dict[str, tuple[str, tuple[int, ...], int, int, tuple]] = {
    "r18_L123_c256_320": ("resnet18", (1, 2, 3), 256, 320, ((8, 8), (12, 12), (16, 16))),
    "r18_L23_c256_320": ("resnet18", (2, 3), 256, 320, ((16, 16), (24, 24), (32, 32))),
    "r18_L23_c128_320": ("resnet18", (2, 3), 128, 320, ((16, 16), (24, 24), (32, 32))),
    "r18_L23_c128_224": ("resnet18", (2, 3), 128, 224, ((12, 12), (18, 18), (24, 24))),
    "r18_L23_c64_224": ("resnet18", (2, 3), 64, 224, ((12, 12), (18, 18), (24, 24))),
    "r18_L23_c128_160": ("resnet18", (2, 3), 128, 160, ((8, 8), (12, 12), (16, 16))),
    "r10_L23_c64_160": ("resnet10", (2, 3), 64, 160, ((8, 8), (12, 12), (16, 16))),
}
TINY = ("resnet10", (1, 2), 16, 64, ((4, 4), (6, 6), (8, 8)))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_batch(size: int, batch: int, dataset_dir: str | None) -> tuple[dict, str]:
    """A collated batch of ``batch`` images at ``size`` x ``size`` (real BCCD when available) and its source."""
    from monai.transforms import Compose

    from robust_bundles.data import voc
    from robust_bundles.tasks import detection as D

    root = Path(dataset_dir) if dataset_dir else REAL_BCCD
    if root.is_dir():
        items, source = voc.load_voc(root, "train", max_cases=batch), f"BCCD ({root.resolve()})"
    else:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"benchmark_detection_voc_{size}"
        syn = voc.write_synthetic_voc(tmp, num_images=max(2 * batch, 8), image_size=(size, size), seed=0)
        items, source = voc.load_voc(syn, "train", max_cases=batch), "synthetic"
    tf = Compose(D.detection_preprocessing((size, size)))
    samples = [tf(it) for it in items]
    for i, s in enumerate(samples):
        s["sample_id"] = i
    while len(samples) < batch:
        samples.append(dict(samples[len(samples) % len(items)], sample_id=len(samples)))
    return D.collate_detection(samples), source


def _clock() -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds)."""
    return time.process_time(), time.perf_counter()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def _medians(times: Sequence[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def _median(fn, n: int, warmup: int) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of ``fn()`` over ``n`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        start = _clock()
        fn()
        times.append(_since(start))
    return _medians(times)


def _trainer_step_time(det, batch: dict, iteration, iters: int, warmup: int) -> tuple[float, float]:
    """Median (CPU, wall) seconds of one SupervisedTrainer iteration (ITERATION_STARTED -> COMPLETED) on ``batch``."""
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer

    from robust_bundles.tasks import detection as D

    times: list[tuple[float, float]] = []
    start: list[tuple[float, float]] = []
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=warmup + iters,
        train_data_loader=[batch] * (warmup + iters),
        network=det.network,
        optimizer=torch.optim.Adam(det.network.parameters(), 1e-4),
        loss_function=D.RetinaNetLoss(det, sampling_seed=0),
        prepare_batch=D.DetectionPrepareBatch(det),
        iteration_update=iteration,
        decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: start.append(_clock()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: times.append(_since(start[-1])))
    trainer.run()
    return _medians(times[warmup:] if len(times) > warmup else times)


def reference_seconds(repeats: int = 5) -> float:
    """Median CPU seconds of a fixed workload (a 3 x 3 convolution, 128 -> 128 channels, 4 x 40 x 40, forward +
    backward), measured after every configuration: the speed of one core as this process saw it (about 0.11 s on an
    idle core of the project's machines)."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(4, 128, 40, 40)

    def work() -> None:
        conv(x).sum().backward()

    return _median(work, repeats, 1)[0]


def time_config(
    name: str,
    cfg: tuple,
    batch_size: int,
    steps: int,
    iters: int,
    warmup: int,
    dataset_dir: str | None,
    width: int = 64,
    full: bool = True,
) -> dict:
    """Time the steps of one configuration (see the module docstring).

    With ``full=False`` only ``std_step``, ``eval_step`` and ``attack_step`` are measured and the adversarial
    iterations are estimated as ``vat_step = std_step + T * attack_step`` and ``amat_step = 2 * std_step + T *
    attack_step`` (``estimated`` lists them); the full runs of the small configurations check the estimate.
    """
    from robust_bundles import attacks, methods
    from robust_bundles.data import voc
    from robust_bundles.tasks import detection as D

    backbone, layers, channels, size, anchors = cfg
    torch.manual_seed(0)
    det = D.build_detector(
        3, backbone=backbone, returned_layers=layers, fpn_channels=channels, width=width, base_anchor_shapes=anchors
    )
    batch, source = make_batch(size, batch_size, dataset_dir)
    n_params = sum(p.numel() for p in det.network.parameters())
    _log(f"{name}: {n_params / 1e6:.2f} M parameters, {size} x {size}, batch {batch_size}, {source}")
    out: dict[str, Any] = {"name": name, "backbone": backbone, "returned_layers": list(layers), "fpn_channels": channels,
                           "input_size": size, "batch": batch_size, "parameters": n_params, "data": source}
    def put(key: str, cpu_wall: tuple[float, float]) -> None:
        out[key], out[f"{key}_wall"] = cpu_wall
        _log(f"  {key} {cpu_wall[0]:.2f} s CPU, {cpu_wall[1]:.2f} s wall")

    put("std_step", _trainer_step_time(det, batch, None, iters, warmup))
    if full:
        pgd = attacks.L2PGD(steps=steps, alpha=4.0, clamp=(0.0, 1.0))
        vat = methods.VAT.training(batch_size, attack=pgd, eps=10.0).update  # the registry's builders
        put("vat_step", _trainer_step_time(det, batch, vat, iters, warmup))
        amat = methods.AMAT.training(batch_size, attack=pgd, thresholds=[1.0, 1.0], expansion_step=5.0).update
        put("amat_step", _trainer_step_time(det, batch, amat, iters, warmup))
    metric = D.COCODetectionMetric(det, voc.BCCD_CLASSES)
    x, t = D.DetectionPrepareBatch(det)(batch, "cpu")
    net = det.network.eval()

    def eval_step() -> None:
        with torch.no_grad():
            metric.update(net(x), batch)

    put("eval_step", _median(eval_step, iters, warmup))
    loss = D.RetinaNetLoss(det, sampling_seed=0)

    def attack(k: int):
        return lambda: attacks.L2PGD(steps=k, clamp=(0.0, 1.0)).run(
            x, t, eps=10.0, model=net, loss_fn=loss, train=False, final_check=False
        )

    t_steps, t_zero = _median(attack(steps), iters, warmup), _median(attack(0), iters, warmup)
    put("attack_step", tuple(max(0.0, (a - b) / steps) for a, b in zip(t_steps, t_zero)))
    if not full:
        for suffix in ("", "_wall"):
            out[f"vat_step{suffix}"] = out[f"std_step{suffix}"] + steps * out[f"attack_step{suffix}"]
            out[f"amat_step{suffix}"] = 2 * out[f"std_step{suffix}"] + steps * out[f"attack_step{suffix}"]
        out["estimated"] = ["vat_step", "amat_step"]
    out["reference_seconds"] = reference_seconds()
    # other processes on the machine slow every step: record the 1-minute load average (cores busy) after the run
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    return out


def budget(
    t: dict,
    train_images: int = 205,
    val_images: int = 43,
    test_images: int = 44,
    batch: int = 8,
    epochs: int = 10,
    train_steps: int | None = None,
    measured_steps: int = 3,
    vat_models: int = 1,
    teat_models: int = 1,
    eps_levels: int = 3,
    pgd_steps: int = 100,
    ifgsm_steps: int = 10,
    val_every: int = 5,
) -> dict[str, float]:
    """Seconds of each stage of the experiment, from the step times ``t`` measured at ``measured_steps`` attack steps.

    Adversarial iterations at ``train_steps`` (default: the measured T) are extrapolated linearly in T: each further
    step costs one ``attack_step`` (measured in eval mode; the training attack runs in train mode, about the same
    cost). Robustness is ``eps_levels * (pgd_steps + ifgsm_steps)`` attack steps per test batch plus one metric pass
    for the clean input and per attack and level, for the STD, VAT, TEAT and AMAT models. TEAT adds one clean forward
    per iteration, bounded here by ``eval_step``. Validation runs every ``val_every`` epochs.
    """
    extra = ((train_steps if train_steps is not None else measured_steps) - measured_steps) * t["attack_step"]
    t = dict(t, vat_step=t["vat_step"] + extra, amat_step=t["amat_step"] + extra)
    it = -(-train_images // batch)  # iterations per epoch
    val = -(-val_images // batch) * t["eval_step"] * (epochs // max(val_every, 1))
    std = epochs * it * t["std_step"] + val
    thresholds = it * t["eval_step"]
    vat = epochs * it * t["vat_step"] + val
    teat = epochs * it * (t["vat_step"] + t["eval_step"]) + val  # + the ensemble's clean forward (bounded by eval_step)
    amat = epochs * it * t["amat_step"] + val
    models = 2 + vat_models + teat_models
    per_model = -(-test_images // batch) * (
        eps_levels * (pgd_steps + ifgsm_steps) * t["attack_step"] + (1 + 2 * eps_levels) * t["eval_step"]
    )
    stages = {
        STD.name: std, "thresholds": thresholds, VAT.name: vat_models * vat, TEAT.name: teat_models * teat, AMAT.name: amat,
        "robustness": models * per_model,
    }
    stages["total"] = sum(stages.values())
    return stages


def report(results: list[dict], steps: int, budget_opts: dict) -> str:
    lines = [
        f"| config | params (M) | input | STD step (s) | VAT step T={steps} (s) | AMAT step T={steps} (s) | eval step (s) | "
        "attack step (s) | wall / CPU | reference (s) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        est = "*" if r.get("estimated") else ""
        lines.append(
            f"| {r['name']} | {r['parameters'] / 1e6:.2f} | {r['input_size']} | {r['std_step']:.2f} | {r['vat_step']:.2f}{est} | "
            f"{r['amat_step']:.2f}{est} | {r['eval_step']:.2f} | {r['attack_step']:.2f} | {r['std_step_wall'] / max(r['std_step'], 1e-9):.1f} | "
            f"{r['reference_seconds']:.3f} | "
            f"{r.get('load_average_1min', '')} |"
        )
    if any(r.get("estimated") for r in results):
        lines += ["", "\\* estimated from the STD and attack steps (see time_config)"]
    lines += ["", "Times are CPU seconds of the benchmark process (one thread: the wall time on an idle core); wall / CPU "
              "shows how much other processes slowed the STD step.", "",
              f"Budget (minutes of one idle core) for {budget_opts}:", "",
              "| config | STD | thresholds | VAT | TEAT | AMAT | robustness | total |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        b = budget(r, **budget_opts)
        lines.append(f"| {r['name']} | " + " | ".join(f"{b[k] / 60:.1f}" for k in
                     (STD.name, "thresholds", VAT.name, TEAT.name, AMAT.name, "robustness", "total")) + " |")
    return "\n".join(lines)


def main(
    only: str | Sequence[str] | None = None,
    batch: int = 8,
    steps: int = 3,
    iters: int = 3,
    warmup: int = 1,
    threads: int = 1,
    tiny: bool = False,
    full: bool = True,
    dataset_dir: str | None = None,
    out: str | None = None,
    **budget_opts: Any,
) -> None:
    """Time the configurations and print a Markdown report (see the module docstring).

    Args:
        only: a configuration name (or several, comma-separated) of :data:`CONFIGS`; default all.
        batch: images per batch.
        steps: attack steps T of the adversarial training iterations and of the attack-step measurement.
        iters: timed repetitions (median reported).
        warmup: untimed repetitions first.
        threads: torch threads.
        tiny: a tiny network at 64 x 64 only (smoke test).
        full: time the VAT and AMAT iterations too; ``--nofull`` estimates them (see :func:`time_config`).
        dataset_dir: a VOC folder (default ../shared/data/bccd; synthetic rectangles when absent).
        out: also write the results (JSON) there.
        **budget_opts: arguments of :func:`budget` (epochs, test_images, pgd_steps, ...).
    """
    torch.set_num_threads(int(threads))
    if tiny:
        selected = {"tiny": TINY}
    else:
        names = only.split(",") if isinstance(only, str) else (list(only) if only else list(CONFIGS))
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise ValueError(f"Unknown configuration(s) {unknown}; choose from {list(CONFIGS)}.")
        selected = {n: CONFIGS[n] for n in names}
    results = [
        time_config(n, c, batch, steps, iters, warmup, dataset_dir, width=8 if tiny else 64, full=full)
        for n, c in selected.items()
    ]
    text = report(results, steps, dict(budget_opts, measured_steps=steps))
    if out:
        from robust_bundles.io import atomic_write_json

        atomic_write_json(out, {"threads": threads, "steps": steps, "iters": iters, "results": results,
                                "budget_opts": budget_opts})
    print(text)


def learn(
    config: str | None = None,
    dataset_dir: str | None = None,
    iters: int = 300,
    every: int = 50,
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int = 1,
    max_eval_images: int | None = None,
    out: str | None = None,
    save: str | None = None,
) -> None:
    """Train a RetinaNet (STD, Adam) and print held-out mAP against training time.

    Args:
        config: a name of :data:`CONFIGS` (with ``dataset_dir`` a VOC folder, e.g. ../shared/data/bccd); None: the tiny
            network on 64 x 64 synthetic rectangles (64 images).
        dataset_dir: the VOC folder for ``config``; held-out images are its validation split.
        iters: training iterations of ``batch`` images.
        every: evaluate every this many iterations.
        lr: Adam learning rate.
        max_eval_images: evaluate on the first n held-out images only.
        out: also write the rows (JSON) there.
        save: also save the trained network's state dict there.

    Prints one JSON row per evaluation: iteration, epoch, training CPU seconds, last batch loss, mAP, mAP50,
    per-class AP.
    """
    from monai.transforms import Compose

    from robust_bundles.data import voc
    from robust_bundles.tasks import detection as D

    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    if config is None:
        backbone, layers, channels, size, anchors = TINY
        width, channels = 8, 32
        root = voc.write_synthetic_voc(
            Path(os.environ.get("TMPDIR", "/tmp")) / f"benchmark_detection_learn_{size}", num_images=64,
            image_size=(size, size), seed=seed,
        )
        held_splits = ("validation", "test")
    else:
        backbone, layers, channels, size, anchors = CONFIGS[config]
        width = 64
        if dataset_dir is None:
            raise ValueError("Give dataset_dir (a VOC folder) with config.")
        root, held_splits = Path(dataset_dir), ("validation",)
    tf = Compose(D.detection_preprocessing((size, size)))
    train = [tf(i) for i in voc.load_voc(root, "train")]
    held_items = [i for s in held_splits for i in voc.load_voc(root, s)][:max_eval_images]
    held = D.collate_detection([tf(i) for i in held_items])
    det = D.build_detector(3, backbone=backbone, returned_layers=layers, fpn_channels=channels, width=width,
                           base_anchor_shapes=anchors)
    net, loss = det.network, D.RetinaNetLoss(det)
    opt = torch.optim.Adam(net.parameters(), lr)
    prep, metric = D.DetectionPrepareBatch(det), D.COCODetectionMetric(det, voc.BCCD_CLASSES)
    _log(f"learn: {config or 'tiny synthetic'}, {len(train)} training and {len(held_items)} held-out images, "
         f"{size} x {size}, batch {batch}, Adam {lr}")
    g = torch.Generator().manual_seed(seed)
    rows, trained, it = [], 0.0, 0
    while it < iters:
        for idx in torch.randperm(len(train), generator=g).split(batch):
            start = time.process_time()
            x, tg = prep(D.collate_detection([train[i] for i in idx.tolist()]), "cpu")
            net.train()
            value = loss(net(x), tg).mean()
            opt.zero_grad()
            value.backward()
            opt.step()
            trained += time.process_time() - start
            it += 1
            if it % every == 0 or it == iters:
                net.eval()
                metric.reset()
                with torch.no_grad():
                    for k in range(0, len(held_items), batch):
                        part = {key: v[k : k + batch] for key, v in held.items()}
                        metric.update(net(part["image"]), part)
                r = metric.aggregate()
                rows.append({"iteration": it, "epoch": round(it * batch / len(train), 2), "train_cpu_seconds":
                             round(trained, 1), "loss": round(value.item(), 4), **{k: round(v, 3) for k, v in r.items()}})
                print(json.dumps(rows[-1]), flush=True)
            if it >= iters:
                break
    if out:
        from robust_bundles.io import atomic_write_json

        atomic_write_json(out, {"config": config, "lr": lr, "batch": batch, "rows": rows})
    if save:
        from robust_bundles.io import atomic_write

        atomic_write(save, lambda tmp: torch.save(net.state_dict(), tmp))


if __name__ == "__main__":
    fire.Fire({"time": main, "learn": learn})
