"""The end-to-end checks of a model-zoo bundle (the test files ``test_foreign_zoo_*.py`` parametrize them):
``robust_bundles audit`` writes a report on the bundle's own evaluation data, and ``robustify`` (AMAT) makes the
bundle more robust than its trained start, as a user runs them (``python -m robust_bundles ...`` in a subprocess,
``--dataset_dir`` and ``--model_path``, plus the size overrides of :mod:`foreign_zoo.zoo`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from .zoo import BUNDLES, Trained, run, trained


@dataclass(frozen=True)
class Budget:
    """What a check spends on one bundle: noise levels (per-value RMS of the network input, so that one scale fits
    inputs of any size), attack steps, cases, and AMAT's fine-tuning (its Delta in the same RMS unit, by default
    half the largest evaluated eps: four epochs can take a margin to twice that noise level)."""

    eps: tuple[float, ...] = (0.05, 0.1)
    cases: int = 2
    pgd_steps: int = 3
    ifgsm_steps: int = 2
    epochs: int = 4
    train_pgd_steps: int = 2
    expansion_step: float | None = None
    bn_passes: int = 0

    @property
    def delta(self) -> float:
        """AMAT's Delta as a per-value RMS (``robustify --eps_unit rms --expansion_step``)."""
        return self.expansion_step if self.expansion_step is not None else self.eps[-1] / 2


BUDGETS: dict[str, Budget] = {
    **{name: Budget() for name in BUNDLES},
    # inputs scaled to [0, 1] whose trained models break at a per-value RMS of 0.05: smaller noise levels
    "spleen_ct_segmentation": Budget(eps=(0.01, 0.02)),
    "classification_template": Budget(eps=(0.01, 0.02), cases=8),
    # the EfficientNet encoder's batch norms (momentum 0.01) move 15% of the way in the 16 iterations of the
    # fine-tuning: their statistics recomputed on the clean training data (robustify warns and says so)
    "endoscopic_tool_segmentation": Budget(bn_passes=2),
    # the bundle's own randomness does not repeat (RandLMShiftd draws from torch's global generator in the background
    # thread of its ThreadDataLoader, racing the training's draws): four epochs gained in 3 of 5 runs (2026-12-08),
    # eight in 4 of 4, each from its own fresh training (PGD-3 at rms 0.1: 30.1 -> 14.8, 25.7 -> 12.5, 24.0 -> 13.6,
    # 25.0 -> 11.9 px)
    "valve_landmarks": Budget(epochs=8),
}


# Known failures, with the measured error or figures: (check, bundle) -> (reason, strict). Strict where the failure
# was measured, so that a fix shows as XPASS and the mark goes; not strict where the last change was not measured.
XFAIL: dict[tuple[str, str], tuple[str, bool]] = {
    # robustify's gains on spleen, brats and valve came once Delta was given in the unit of the evaluated eps
    # (--eps_unit rms, Delta = half the largest eps; 2026-12-07): with Delta 1 as an L2 norm, four epochs kept the
    # margins below the evaluated noise (brats: an L2 norm of about 36 at eps 0.1 on 4 x 32^3 values).
    # Detection (lung_nodule_ct_detection) is refused with its reason: tests/test_foreign_zoo_other.py.
}


def params(check: str, names: list[str]) -> list:
    """``names`` as pytest parameters, the ones in :data:`XFAIL` for ``check`` marked xfail."""
    out = []
    for n in names:
        if (check, n) in XFAIL:
            reason, strict = XFAIL[(check, n)]
            out.append(pytest.param(n, marks=pytest.mark.xfail(strict=strict, reason=reason)))
        else:
            out.append(n)
    return out


def _ok(proc) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out.strip().splitlines()[-1:] + [out[-4000:]]


# Bundles whose brief training costs minutes of CPU even at their smallest input: run with ROBUST_BUNDLES_ZOO_FULL=1.
COSTLY = {"swin_unetr_btcv_segmentation": "SwinUNETR halves its input five times, so 64^3 is its smallest crop: "
                                          "the brief training takes minutes of CPU (over 10 at load 9 on 2 cores)"}


def skip_reason(name: str) -> str | None:
    spec = BUNDLES[name]
    if not spec.available():
        return f"the model-zoo bundle {name} is not at {spec.source} (../shared/foreign_bundles; or set " \
               "ROBUST_BUNDLES_FOREIGN_BUNDLES)"
    if name in COSTLY and not os.environ.get("ROBUST_BUNDLES_ZOO_FULL"):
        return f"{COSTLY[name]}; set ROBUST_BUNDLES_ZOO_FULL=1 to run it"
    return None


def bundle(name: str, cache_root: Path) -> Trained:
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)
    return trained(name, cache_root)


def audit_args(t: Trained, out: Path, model_path: Path | None = None, eps=None) -> list[str]:
    b = BUDGETS[t.spec.name]
    args = ["-m", "robust_bundles", "audit", str(t.bundle), "--dataset_dir", t.dataset_arg(),
            "--model_path", str(model_path or t.weights), "--output_dir", str(out),
            "--eps", repr(list(eps or b.eps)), "--eps_unit", "rms", "--pgd_steps", str(b.pgd_steps),
            "--ifgsm_steps", str(b.ifgsm_steps), "--max_cases", str(b.cases),
            # the quick suite (PGD, I-FGSM, noise): what the figures of docs/model_zoo.md were measured with, and a
            # fifth of the standard suite's cost (the audit's default; tests/test_foreign_bundles.py runs that one)
            "--attack_suite", "quick"]
    if t.spec.sizes:
        args += ["--override", repr(t.spec.sizes)]
    return args


def audit_summary(t: Trained, out: Path, model_path: Path | None = None, eps=None) -> tuple[dict, bool]:
    """Run the audit; return ``robustness.json``'s summary (the report's figures) and whether its headline metric
    is better higher (Dice, accuracy) or lower (a distance)."""
    _ok(run(audit_args(t, out, model_path, eps), cwd=out.parent))
    for f in ("audit.md", "audit.json", "robustness.json", "robustness.csv"):
        assert (out / f).is_file(), f
    report = json.loads((out / "robustness.json").read_text())
    return report["summary"], report["settings"].get("higher_is_better", True) is not False


def _code_digest() -> str:
    """A digest of the library's source (a cached audit is only reused by the code that made it)."""
    import hashlib

    import robust_bundles

    h = hashlib.sha256()
    for f in sorted(Path(robust_bundles.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def start_audit(t: Trained, out: Path, fresh: bool = False) -> tuple[dict, bool]:
    """The trained start's audit, run once per trained bundle and kept beside it in the cache (``check_audit`` and
    ``check_robustify`` ask the same question of the same model); reused only for the same arguments and code, and
    never when ``fresh`` (the audit's own check reads the report's files in ``out``)."""
    from filelock import FileLock

    cached = t.bundle.parent / "audit_start.json"
    key = {"args": audit_args(t, Path("OUT")), "code": _code_digest()}
    with FileLock(str(cached) + ".lock"):
        if cached.is_file() and not fresh:
            kept = json.loads(cached.read_text())
            if kept["key"] == key:
                return kept["summary"], kept["higher"]
        summary, higher = audit_summary(t, out)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "summary": summary, "higher": higher}))
        tmp.replace(cached)
    return summary, higher


def better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def check_audit(name: str, cache_root: Path, tmp_path: Path) -> dict:
    """The audit's report: a clean figure, every attack at every eps, PGD at the largest eps worse than clean."""
    t = bundle(name, cache_root)
    summary, higher = start_audit(t, tmp_path / "audit", fresh=True)
    eps = BUDGETS[name].eps
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["synthetic"] is True
    for attack in ("PGD", "IFGSM"):
        assert {str(e) for e in eps} <= set(summary["attacks"][attack])
    worst = summary["attacks"]["PGD"][str(eps[-1])]
    assert better(summary["clean"], worst, higher), summary
    print(f"{name}: clean {summary['clean']:.4g}, PGD {json.dumps(summary['attacks']['PGD'])}")
    return summary


NOT_FOR_ROBUSTIFY = {"run", "epochs", "num_epochs", "train#trainer#max_epochs", "val_interval", "output_dir",
                     "network_def#_requires_"}


def check_robustify(name: str, cache_root: Path, tmp_path: Path) -> tuple[dict, dict]:
    """``robustify`` (AMAT) from the bundle's trained weights; the fine-tuned model's PGD figure at the largest eps
    beats the trained start's, each audited on the same cases."""
    t = bundle(name, cache_root)
    b = BUDGETS[name]
    out = tmp_path / "amat"
    args = ["-m", "robust_bundles", "robustify", str(t.bundle), "--dataset_dir", t.dataset_arg(), "--model_path",
            str(t.weights), "--output_dir", str(out), "--epochs", str(b.epochs), "--pgd_steps", str(b.train_pgd_steps),
            "--eps_unit", "rms", "--expansion_step", repr(b.delta), "--threshold_rule", "mean_std",
            "--bn_passes", str(b.bn_passes)]
    # the sizes and the brief training's data settings (workers, batch, iterations), not its epochs or output
    override = {**t.spec.sizes, **{k: v for k, v in t.spec.train.items() if k not in NOT_FOR_ROBUSTIFY}}
    if override:
        args += ["--override", repr(override)]
    _ok(run(args, cwd=tmp_path))
    start, higher = start_audit(t, tmp_path / "audit_start")
    amat, _ = audit_summary(t, tmp_path / "audit_amat", model_path=out / "checkpoint.pt")
    e = str(b.eps[-1])
    print(f"{name}: start clean {start['clean']:.4g} PGD@{e} {start['attacks']['PGD'][e]:.4g}; "
          f"AMAT clean {amat['clean']:.4g} PGD@{e} {amat['attacks']['PGD'][e]:.4g}")
    assert better(amat["attacks"]["PGD"][e], start["attacks"]["PGD"][e], higher), (start, amat)
    return start, amat


def zoo_tests(audited: list[str], robustified: list[str] | None = None) -> tuple:
    """The two parametrized tests of a zoo test file: ``test_audit`` over ``audited`` and
    ``test_robustify_gains_robustness`` over ``robustified`` (default: the same bundles), each marked slow and
    xfail where :data:`XFAIL` says; a file assigns them to those names for pytest to collect."""

    @pytest.mark.slow
    @pytest.mark.parametrize("name", params("audit", audited))
    def test_audit(name, zoo_cache, tmp_path):
        check_audit(name, zoo_cache, tmp_path)

    @pytest.mark.slow
    @pytest.mark.parametrize("name", params("robustify", audited if robustified is None else robustified))
    def test_robustify_gains_robustness(name, zoo_cache, tmp_path):
        check_robustify(name, zoo_cache, tmp_path)

    return test_audit, test_robustify_gains_robustness

