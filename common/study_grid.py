"""What the AMAT calibration study compares (:mod:`robust_bundles.study`): the AMAT configurations of its grid
(:class:`AmatConfig`, :data:`DEFAULT_GRID`), the baseline runs of the registered methods with eps (:class:`Baseline`),
and the study's settings with their defaults (command line, else the profile's ``experiment.study``, else
:func:`study_defaults`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import methods
from .engine.cli import ExperimentError
from .margins import MARGIN_RULES, MarginBook

XI_RULES = {"mean_std": "models/std/thresholds.json", "quantile": "models/std/thresholds_quantile.json"}
"""xi rule -> thresholds file (relative to the output root). mean_std is the profile's own thresholds stage."""
SPLITS = ("validation", "test")


# ------------------------------------------------------------------------------------------------------------ grid
@dataclass
class AmatConfig:
    """One AMAT configuration of the study.

    Args:
        name: short name; the run is ``amat_<name>``.
        init: "scratch" (random initialisation) or "std" (fine-tuned from the STD model, fresh optimizer).
        epochs: training epochs of the run; None for the profile's.
        margin_rule: "fixed" (Delta = expansion_step, the paper's rule) or "target" (schedule-aware: Delta from
            target_margin, the epochs and reach_fraction).
        expansion_step: Delta of the fixed rule (L2, input intensity units).
        target_margin: M of the target rule (same units); the cap.
        reach_fraction: rho of the target rule.
        attack_steps: T, PGD steps of the training attack.
        xi: threshold rule, a key of :data:`XI_RULES`.
        beta: weight of the clean loss (AMAT's 0.5).
        perturbation_memory: warm-start the training attack from each sample's last perturbation (True), cold start
            (False), or None for the study's setting (--override, the profile); e.g. a T = 5 cold-start entry in a
            study of T = 1 with the memory.
        reference: the profile's AMAT settings before the study (also evaluated on the test split).
    """

    name: str
    init: str = methods.FINE_TUNED
    epochs: int | None = None
    margin_rule: str = "target"
    expansion_step: float | None = None
    target_margin: float | None = None
    reach_fraction: float = 0.5
    attack_steps: int = 3
    xi: str = "mean_std"
    beta: float = 0.5
    perturbation_memory: bool | None = None
    reference: bool = False

    def __post_init__(self) -> None:
        where = f"grid entry {self.name!r}"
        if not self.name or not all(c.isalnum() or c in "_-." for c in self.name):
            raise ExperimentError(f"{where}: the name must be a non-empty word (letters, digits, _ - .).")
        if self.init not in (methods.SCRATCH, methods.FINE_TUNED):
            raise ExperimentError(f"{where}: init must be 'scratch' or 'std', not {self.init!r}.")
        if self.margin_rule == "fixed" and not (self.expansion_step and self.expansion_step > 0):
            raise ExperimentError(f"{where}: the fixed rule needs expansion_step > 0.")
        if self.margin_rule == "target" and not (self.target_margin and self.target_margin > 0):
            raise ExperimentError(f"{where}: the target rule needs target_margin > 0.")
        if self.margin_rule not in MARGIN_RULES:
            raise ExperimentError(f"{where}: margin_rule must be 'fixed' or 'target', not {self.margin_rule!r}.")
        if self.xi not in XI_RULES:
            raise ExperimentError(f"{where}: xi must be one of {sorted(XI_RULES)}, not {self.xi!r}.")
        if int(self.attack_steps) != self.attack_steps or self.attack_steps < 1:
            raise ExperimentError(f"{where}: attack_steps must be a whole number >= 1.")
        if self.perturbation_memory not in (None, True, False):
            raise ExperimentError(f"{where}: perturbation_memory must be true, false or left out (the study's "
                                  f"setting), not {self.perturbation_memory!r}.")

    @property
    def run(self) -> str:
        return f"{methods.candidate().key}_{self.name}"

    def delta(self, epochs: int) -> float:
        """The expansion step this configuration trains with (target rule: from its epochs)."""
        return MarginBook(1, rule=self.margin_rule, expansion_step=self.expansion_step,
                          target_margin=self.target_margin, epochs=epochs,
                          reach_fraction=self.reach_fraction).expansion_step

    def margin_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"margin_rule": self.margin_rule, "attack_steps": int(self.attack_steps),
                                "amat_beta": float(self.beta)}
        if self.perturbation_memory is not None:
            args["perturbation_memory"] = self.perturbation_memory
        if self.margin_rule == "fixed":
            args["expansion_step"] = float(self.expansion_step)
        else:
            args.update(target_margin=float(self.target_margin), reach_fraction=float(self.reach_fraction))
        return args


# Base (first): fine-tuned from STD for 6 epochs, schedule-aware margin to 10 (the largest evaluated eps) at half of
# the run, T = 3, xi = mean + 2 std. Each other entry changes one factor of the base; the reference changes several: it
# is the quick profile's AMAT before this study. Cut to fit about 5 CPU hours on the real data (measured: one CPU
# thread of a shared 2-core machine): T = 10 (1.5 VAT runs), 12 fine-tuned epochs (1.25) and the schedule-aware
# margin from scratch (1.25); give them with --grid to run them.
DEFAULT_GRID: tuple[dict, ...] = (
    dict(name="ft6_m10", epochs=6),
    dict(name="scratch_d1", init="scratch", margin_rule="fixed", expansion_step=1.0, reference=True),
    dict(name="ft6_d1", epochs=6, margin_rule="fixed", expansion_step=1.0),
    dict(name="ft6_d2", epochs=6, margin_rule="fixed", expansion_step=2.0),
    dict(name="ft6_d3", epochs=6, margin_rule="fixed", expansion_step=3.0),
    dict(name="ft6_m10_t5", epochs=6, attack_steps=5),
    dict(name="ft6_m10_q90", epochs=6, xi="quantile"),
    dict(name="ft9_m10", epochs=9),
)
for _entry in DEFAULT_GRID:
    _entry.setdefault("target_margin", 10.0 if _entry.get("margin_rule", "target") == "target" else None)


def baseline_options() -> dict[str, tuple[str, str]]:
    """The study's options of the registered methods with eps (the frontier and the other baselines), by option
    name: ``"<key>_eps"`` (runs from scratch) and ``"<key>_ft_eps"`` (fine-tuned from STD) -> (method, init)."""
    out = {}
    for m in methods.all_methods():
        if m.takes_eps and m.role in ("frontier", "baseline"):
            out[f"{m.key}_eps"] = (m.name, methods.SCRATCH)
            out[f"{m.key}_ft_eps"] = (m.name, methods.FINE_TUNED)
    return out


def study_defaults() -> dict[str, Any]:
    """The study's settings when neither the command line nor the profile's ``experiment.study`` gives them: the
    hippocampus study (its eps in z-score units, its tolerance in Dice); each baseline's fine-tuned noise levels are
    its registry entry's ``study_ft_eps``, none from scratch. A bundle whose metric or noise levels have other scales
    (the landmark bundle: eps 0.5-2 of grey levels in [0, 1], MRE in mm) states its own in its profile."""
    eps = {option: tuple(methods.get(name).study_ft_eps) if init != methods.SCRATCH else ()
           for option, (name, init) in baseline_options().items()}
    return {"grid": None, **eps, "val_cases": 8, "finetune_epochs": 6, "clean_tolerance": 0.03}


def study_settings(profile_file: Path | None, given: dict[str, Any]) -> dict[str, Any]:
    """The study's settings: those given (not None), else the profile's ``experiment.study``, else
    :func:`study_defaults`.

    Args:
        profile_file: the profile (``configs/profiles/<profile>.json``), None without one.
        given: the command line's values by name (None: not given).
    """
    own: Any = {}
    if profile_file is not None and profile_file.is_file():
        own = json.loads(profile_file.read_text()).get("experiment", {}).get("study", {})
    if not isinstance(own, dict):
        raise ExperimentError(f"{profile_file}: experiment.study must be a dict of study settings such as "
                              f"{{\"vat_ft_eps\": [1, 2]}}; got {own!r}.")
    defaults = study_defaults()
    unknown = sorted(k for k in set(own) - set(defaults) if not k.startswith("_desc"))
    if unknown:
        raise ExperimentError(f"{profile_file}: experiment.study has unknown key(s) {unknown}; known: "
                              f"{sorted(defaults)}.")
    return {k: given[k] if given.get(k) is not None else own.get(k, default) for k, default in defaults.items()}


def parse_grid(grid: Any) -> list[AmatConfig]:
    """The grid from a list of dicts, a JSON text, a JSON file or None (:data:`DEFAULT_GRID`)."""
    if grid is None:
        entries = [dict(e) for e in DEFAULT_GRID]
    else:
        if isinstance(grid, (str, Path)) and Path(str(grid)).is_file():
            grid = Path(str(grid)).read_text()
        if isinstance(grid, str):
            try:
                grid = json.loads(grid)
            except ValueError as e:
                raise ExperimentError(f"--grid is neither a JSON list nor a JSON file ({e}).") from None
        if not isinstance(grid, (list, tuple)) or not all(isinstance(e, dict) for e in grid):
            raise ExperimentError("--grid must be a list of dicts such as [{\"name\": \"ft6\", \"epochs\": 6}].")
        entries = [dict(e) for e in grid]
    known = set(AmatConfig.__dataclass_fields__)
    configs = []
    for e in entries:
        unknown = set(e) - known
        if unknown:
            raise ExperimentError(f"grid entry {e.get('name')!r}: unknown key(s) {sorted(unknown)}; known: "
                                  f"{sorted(known)}.")
        configs.append(AmatConfig(**e))
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ExperimentError(f"--grid: names must be unique; got {names}.")
    return configs


@dataclass
class Baseline:
    """A run of a baseline method with eps (VAT, TEAT, ...) in the study."""

    method: str
    eps: float
    init: str = methods.SCRATCH

    @property
    def run(self) -> str:
        name = methods.get(self.method).run_name(self.eps)
        return name if self.init == methods.SCRATCH else f"{name}_ft"
