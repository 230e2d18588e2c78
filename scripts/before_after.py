"""Show that a refactoring changed no number: a tiny STD + thresholds + AMAT run of every bundle, from an earlier
commit and from this working tree, with the weights, the thresholds and the margins compared bit for bit.

    python scripts/before_after.py --before cb491a5                  # every bundle
    python scripts/before_after.py --before HEAD~3 --bundles "[hippocampus_mri_segmentation]"

The earlier commit is checked out into a temporary git worktree; its library is imported from there (PYTHONPATH),
this tree's from the installed package. Each run is ``python -m monai.bundle run`` with one thread on the bundle's
synthetic default data (1 epoch, a tiny network, one-step attacks). Prints a Markdown table; exits 1 when anything
differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import fire
import torch

from robust_bundles import methods

REPO = Path(__file__).resolve().parents[1]

#: tiny runs of each bundle (the tests' shrinking overrides)
TINY: dict[str, list[str]] = {
    "hippocampus_mri_segmentation": ["--filters", "[8,16,32,64]", "--batch_size", "16", "--max_cases", "2",
                                     "--max_val_cases", "1"],
    "heart_mri_segmentation": ["--filters", "[8,16,32,64]", "--patch_size", "[32,32]", "--batch_size", "16",
                               "--max_cases", "2", "--max_val_cases", "1"],
    "prostate_mri_segmentation": ["--filters", "[8,16,32,64]", "--patch_size", "[32,32]", "--batch_size", "16",
                                  "--max_cases", "2", "--max_val_cases", "1"],
    "cephalometric_xray_landmarks": ["--features", "[4,4,8,8,16,4]", "--image_size", "[64,48]", "--heatmap_radius",
                                     "3", "--batch_size", "4", "--max_cases", "4", "--max_val_cases", "2"],
    "bccd_blood_cell_detection": ["--width", "8", "--fpn_channels", "16", "--returned_layers", "[1,2]",
                                  "--anchor_shapes", "[[4,4],[6,6],[8,8]]", "--image_size", "[64,64]",
                                  "--batch_size", "8"],
}
COMMON = ["--epochs", "1", "--val_interval", "1", "--attack_steps", "1", "--tensorboard", "false"]
STD, AMAT = methods.reference(), methods.candidate()
STAGES = (("train",), ("train", Path(methods.THRESHOLDS_OVERLAY).stem), ("train", Path(AMAT.overlay).stem))


def _run_stages(tree: Path, bundle: str, out: Path, pythonpath: str | None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    for configs in STAGES:
        files = "[" + ",".join(f"'bundles/{bundle}/configs/{c}.json'" for c in configs) + "]"
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *TINY[bundle], *COMMON,
               "--output_root", str(out)]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{' '.join(configs)} of {bundle} failed in {tree}:\n{proc.stdout[-2000:]}"
                             f"{proc.stderr[-2000:]}")


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _load(a), _load(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def compare(before_root: Path, after_root: Path) -> dict[str, Any]:
    """Weights of STD and AMAT, thresholds and margins of two output roots: ``{what: equal?}`` and the sample count."""
    models_a, models_b = before_root / "models", after_root / "models"
    std, amat = STD.run_name(), AMAT.run_name()
    margins_a = _load(models_a / amat / "checkpoint.pt")["margins"]["margins"]
    margins_b = _load(models_b / amat / "checkpoint.pt")["margins"]["margins"]
    xi = [json.loads((m / std / "thresholds.json").read_text())["xi"] for m in (models_a, models_b)]
    return {f"{STD.name} weights": _same_weights(models_a / std / "model.pt", models_b / std / "model.pt"),
            "thresholds": xi[0] == xi[1],
            f"{AMAT.name} weights": _same_weights(models_a / amat / "model.pt", models_b / amat / "model.pt"),
            "margins": torch.equal(margins_a, margins_b), "samples": len(margins_b)}


def main(before: str, bundles: Any = None, work_dir: str | None = None) -> None:
    """Run and compare (module docstring).

    Args:
        before: the earlier commit (any git revision).
        bundles: bundle names (default: all five).
        work_dir: where the worktree and the runs go (default: a temporary folder, removed afterwards).
    """
    names = list(TINY) if bundles is None else [bundles] if isinstance(bundles, str) else list(bundles)
    unknown = sorted(set(names) - set(TINY))
    if unknown:
        raise SystemExit(f"unknown bundle(s) {unknown}; use some of {list(TINY)}")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp_path = Path(tmp)
        tree = tmp_path / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), before], cwd=REPO, check=True,
                       capture_output=True)
        try:
            (tmp_path / "pkg").mkdir()
            (tmp_path / "pkg" / "robust_bundles").symlink_to(tree / "common")
            rows = []
            for i, bundle in enumerate(names, 1):
                print(f"[{i}/{len(names)}] {bundle}: before ({before}) ...", flush=True)
                _run_stages(tree, bundle, tmp_path / "out" / "before" / bundle, str(tmp_path / "pkg"))
                print(f"[{i}/{len(names)}] {bundle}: after (this tree) ...", flush=True)
                _run_stages(REPO, bundle, tmp_path / "out" / "after" / bundle, None)
                rows.append((bundle, compare(tmp_path / "out" / "before" / bundle, tmp_path / "out" / "after" / bundle)))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    keys = [f"{STD.name} weights", "thresholds", f"{AMAT.name} weights", "margins"]
    print(f"\n| bundle | {' | '.join(keys)} |\n|---|" + "---|" * len(keys))
    for bundle, eq in rows:
        cells = ["equal" if eq[k] else "DIFFER" for k in keys]
        cells[-1] += f" ({eq['samples']} samples)"
        print(f"| {bundle} | {' | '.join(cells)} |")
    if not all(eq[k] for _, eq in rows for k in keys):
        raise SystemExit(1)


if __name__ == "__main__":
    fire.Fire(main)
