"""Demo: STD versus AMAT (and optionally VAT) on a small generated 2D segmentation problem, on the CPU.

    python scripts/demo.py                      # about a minute on 2 CPU cores
    python scripts/demo.py --vat_eps 2          # add a VAT(2) row
    python scripts/demo.py --epochs 40 --eps "[2,4,6]"

Every step uses the project's real components: a MONAI SupervisedTrainer (STD), the threshold estimation handler on
the STD model, AMAT as an ``iteration_update`` with a margin book, and the robustness evaluation handler (clean slice
Dice, L2 PGD and L2 IFGSM). eps is the L2 norm of the perturbation of a whole 32 x 32 z-scored image.
"""

from __future__ import annotations

import logging
import time

import fire
import torch

from robust_bundles import methods  # noqa: E402
from robust_bundles.toy import make_toy_segmentation, run_toy, toy_robustness, toy_thresholds  # noqa: E402


def main(
    epochs: int = 20,
    num_train: int = 128,
    num_test: int = 64,
    eps: tuple = (2.0, 4.0),
    expansion_step: float = 1.0,
    rule: str = "mean_std",
    attack_steps: int = 5,
    pgd_steps: int = 20,
    vat_eps: float | None = None,
    seed: int = 0,
    threads: int = 1,
) -> None:
    """Train STD and AMAT (and VAT when ``vat_eps`` is set) and print the robustness table.

    Args:
        epochs: training epochs of every model.
        num_train: generated training images (32 x 32).
        num_test: generated test images.
        eps: evaluation noise levels (L2 norm of the whole z-scored image).
        expansion_step: AMAT's Delta (and initial margin A).
        rule: threshold rule for xi ("mean", "mean_std", "median_mad", "huber", "quantile").
        attack_steps: PGD steps during adversarial training.
        pgd_steps: PGD steps in the evaluation (IFGSM uses 10).
        vat_eps: also train VAT at this noise level.
        seed: random seed.
        threads: torch CPU threads (1 is fastest for this small network on a CPU).
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(threads)
    eps = tuple(float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps]))
    train = make_toy_segmentation(num_train, seed=seed)
    test = make_toy_segmentation(num_test, seed=seed + 1000)
    t0 = time.time()
    rows = []

    def report(name: str, net, extra: str = "") -> None:
        s = toy_robustness(net, test, eps=eps, pgd_steps=pgd_steps, ifgsm_steps=10)
        rows.append((name, s, extra))
        print(f"  evaluated {name}: clean Dice {s['clean']:.3f} ({time.time() - t0:.0f}s)", flush=True)

    print(f"[1/3] STD: {epochs} epochs on {num_train} generated images", flush=True)
    std, _ = run_toy(methods.STD.name, train, epochs=epochs, seed=seed)
    report(methods.STD.name, std)
    xi = toy_thresholds(std, train, rule=rule)
    print(f"  thresholds xi ({rule}): " + ", ".join(f"{n} {v:.4f}" for n, v in zip(xi.term_names, xi.xi)), flush=True)
    if vat_eps is not None:
        print(f"[+] VAT({vat_eps:g})", flush=True)
        vat, _ = run_toy(methods.VAT.name, train, epochs=epochs, eps=vat_eps, attack_steps=attack_steps, seed=seed)
        report(f"{methods.VAT.name}({vat_eps:g})", vat)
    print(f"[2/3] AMAT: Delta {expansion_step:g}, PGD {attack_steps} steps", flush=True)
    amat, margins = run_toy(
        methods.AMAT.name, train, epochs=epochs, thresholds=xi.xi, expansion_step=expansion_step, attack_steps=attack_steps,
        seed=seed,
    )
    m = margins.summary()
    report(methods.AMAT.name, amat, f"margins median {m['median']:.2f}, q95 {m['q95']:.2f}, max {m['max']:.2f}")
    print("[3/3] results", flush=True)
    heads = ["method", "clean"] + [f"PGD {e:g}" for e in eps] + ["PGD avg"] + [f"IFGSM {e:g}" for e in eps] + ["IFGSM avg"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, s, _ in rows:
        cells = [name, f"{s['clean']:.3f}"]
        for att in ("PGD", "IFGSM"):
            cells += [f"{s['attacks'][att][f'{e:g}']:.3f}" for e in eps] + [f"{s['attacks'][att]['avg']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    caption = (
        f"Slice Dice on {num_test} generated 32x32 test images; L2 PGD ({pgd_steps} steps) and IFGSM (10 steps); "
        f"eps = L2 norm of the whole z-scored image. {epochs} epochs per model; AMAT {rows[-1][2]}. "
        f"Total {time.time() - t0:.0f}s."
    )
    print("\n" + table + "\n\n" + caption)


if __name__ == "__main__":
    fire.Fire(main)
