"""What a tool reads before it plans: the bundle folder (complete?), its profile and the profile's "experiment" dict,
the ``--override`` dict, the data and output folders."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import methods
from .cli import ExperimentError

BASE_CONFIGS = ("train.json", "thresholds.json", "evaluate.json", "robustness.json")
"""The configs every bundle of the experiment has besides the method overlays (:mod:`robust_bundles.methods`)."""

#: config keys the tools set themselves; neither --override nor a profile's method override may set them
TOOL_KEYS = frozenset({"output_root", "dataset_dir", "run_name", "train_eps", "resume"})


@dataclass
class Inputs:
    """A tool's inputs (see :func:`load`).

    Args:
        bundle: the bundle folder (absolute).
        present: the registered methods whose overlay the bundle has.
        profile: the profile's name (None: no profile).
        profile_file: ``configs/profiles/<profile>.json`` (relative to the bundle), appended last to every stage.
        experiment: the profile's "experiment" dict, updated by the "experiment" key of ``--override``.
        overrides: the config overrides of every stage (``--override`` without its "experiment" key).
        dataset_dir: the data (absolute); None: the bundle's default.
        output_root: where the tool writes (absolute).
    """

    bundle: Path
    present: list[str]
    profile: str | None
    profile_file: str | None
    experiment: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    dataset_dir: Path | None = None
    output_root: Path = Path(".")

    @property
    def configs(self) -> Path:
        return self.bundle / "configs"

    def caption(self) -> str:
        """The profile's caption, plus the overrides (they may contradict the caption)."""
        own = str(self.experiment.get("caption", "") or "")
        parts = [own.strip() or (f"Profile {self.profile}" if self.profile else "")]
        if self.overrides:
            parts.append(f"Overrides of this experiment (they take precedence over the profile): "
                         f"{json.dumps(self.overrides)}")
        return " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts if p)


def parse_override(override: dict | str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--override`` (a dict or its JSON) as ``(config overrides, experiment overrides)``; the tool's own keys
    (:data:`TOOL_KEYS`) are refused."""
    if isinstance(override, str):
        try:
            override = json.loads(override)
        except ValueError as e:
            raise ExperimentError(f"--override is not a JSON dict ({e}): {override!r}") from None
    override = dict(override or {})
    if not all(isinstance(k, str) for k in override):
        raise ExperimentError(f"--override keys must be config ids (strings); got {list(override)}.")
    extra = override.pop("experiment", None) or {}
    if not isinstance(extra, dict):
        raise ExperimentError("--override: 'experiment' must be a dict such as {\"vat_eps\": [2]}.")
    reserved = TOOL_KEYS & set(override)
    if reserved:
        raise ExperimentError(f"--override cannot set {sorted(reserved)}: use the tool's own options "
                              f"(--output_root, --dataset_dir, --<method>_eps).")
    return override, extra


def load(bundle: str | Path, profile: str | None, override: dict | str | None, dataset_dir: str | Path | None,
         output_root: str | Path | None, default_root: str) -> Inputs:
    """Check the bundle and the profile, parse ``--override`` and resolve the folders.

    Args:
        bundle: the bundle folder; it must hold the :data:`BASE_CONFIGS`.
        profile: the profile's name (``configs/profiles/<profile>.json`` must exist); None or "": none.
        override: ``--override`` (:func:`parse_override`).
        dataset_dir: the data; None: the bundle's default.
        output_root: the output root; None: ``<bundle>/runs/<default_root>``.
        default_root: the folder name of the default output root.
    """
    folder = Path(bundle).expanduser().resolve()
    cfg = folder / "configs"
    missing = [c for c in BASE_CONFIGS if not (cfg / c).is_file()]
    present = [m.name for m in methods.with_overlay() if (cfg / m.overlay).is_file()]
    if missing:
        raise ExperimentError(f"{folder} is not a complete bundle: configs/{', configs/'.join(missing)} "
                              f"missing (give --bundle the bundle folder, e.g. bundles/<name>).")
    experiment: dict[str, Any] = {}
    profile_file = None
    if profile:
        path = cfg / "profiles" / f"{profile}.json"
        if not path.is_file():
            have = sorted(p.stem for p in (cfg / "profiles").glob("*.json"))
            raise ExperimentError(f"No profile {profile!r}: {path} does not exist (profiles: "
                                  f"{', '.join(have) or 'none'}).")
        profile_file = f"configs/profiles/{profile}.json"
        experiment = dict(json.loads(path.read_text()).get("experiment", {}))
    overrides, extra = parse_override(override)
    experiment.update(extra)
    return Inputs(
        bundle=folder, present=present, profile=profile or None, profile_file=profile_file, experiment=experiment,
        overrides=overrides, dataset_dir=Path(dataset_dir).expanduser().resolve() if dataset_dir else None,
        output_root=Path(output_root).expanduser().resolve() if output_root else folder / "runs" / default_root)
