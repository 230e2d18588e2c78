"""Loss thresholds xi: estimation from per-sample loss values, and the xi file with its provenance.

AMAT calls a perturbed training sample robust when every loss term k stays at or below its threshold ``xi_k``. xi is
estimated once, before AMAT starts: the trained STD model is run in eval mode, without augmentation, over the training
set; the per-sample value of every loss term is collected (``V``, shape (N, K)) and reduced per term by one rule:

- ``"mean"``: ``mean(V_k)`` (the paper's choice for segmentation).
- ``"mean_std"``: ``mean(V_k) + k * std(V_k)`` (the paper's choice for landmarks and detection).
- ``"median_mad"``: ``median(V_k) + z * 1.4826 * MAD(V_k)``, a robust alternative.
- ``"huber"``: Huber M-estimate of location ``+ z * 1.4826 * MAD(V_k)``, a robust alternative.
- ``"quantile"``: the q-quantile of ``V_k``.

xi never changes during AMAT training. It is stored as JSON together with its provenance (rule and its parameters,
term names, number of samples, path and SHA-256 of the STD checkpoint, creation time, per-term summary statistics)::

    th = from_values(values, loss.term_names, rule="mean_std", k=2.0, checkpoint="models/std.pt")
    th.save("models/thresholds.json")
    xi = load_thresholds("models/thresholds.json", loss)  # Tensor (K,), term names checked against the loss

``robust_bundles.handlers.ThresholdEstimationHandler`` collects ``V`` on a MONAI evaluator and writes the file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Sequence

import torch

from .io import atomic_write_text, sha256_file  # noqa: F401 (sha256_file: part of this module's API)

__all__ = [
    "RULES",
    "MAD_TO_STD",
    "check_rule",
    "estimate_thresholds",
    "Thresholds",
    "from_values",
    "load_thresholds",
    "sha256_file",
]

#: The estimation rules and the parameters each one uses (stored as provenance with the thresholds).
RULES: dict[str, tuple[str, ...]] = {
    "mean": (),
    "mean_std": ("k",),
    "median_mad": ("z",),
    "huber": ("z", "huber_c"),
    "quantile": ("q",),
}

#: 1 / Phi^-1(3/4): ``MAD_TO_STD * MAD`` is a consistent estimate of the standard deviation for normal data.
MAD_TO_STD = 1.4826

_HUBER_TOL = 1e-7
_HUBER_MAX_ITER = 100

_FIX_MISSING = (
    "Train the STD model and run the threshold-estimation config first, e.g. "
    "python -m monai.bundle run --config_file \"['configs/train.json','configs/thresholds.json']\" "
    "(see the bundle README), or set thresholds_file to an existing xi file."
)


def check_rule(rule: str, k: float = 2.0, z: float = 2.0, q: float = 0.9, huber_c: float = 1.345) -> None:
    """Raise a clear ValueError when ``rule`` is unknown or one of its parameters is out of range.

    Args:
        rule: one of :data:`RULES`.
        k: number of standard deviations above the mean ("mean_std"); finite.
        z: number of robust standard deviations (1.4826 * MAD) above the location ("median_mad", "huber"); finite.
        q: quantile level in [0, 1] ("quantile").
        huber_c: Huber tuning constant, in units of the robust scale; > 0 ("huber").
    """
    if rule not in RULES:
        raise ValueError(f"Unknown threshold rule {rule!r}; valid rules are {sorted(RULES)}.")
    for name, value in (("k", k), ("z", z), ("q", q), ("huber_c", huber_c)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"Threshold parameter {name} must be a finite number, got {value!r}.")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"Threshold parameter q is a quantile level and must lie in [0, 1], got {q}.")
    if huber_c <= 0:
        raise ValueError(f"Huber tuning constant huber_c must be > 0, got {huber_c}.")


def _term_label(term_names: Sequence[str] | None, k: int) -> str:
    if term_names is not None and k < len(term_names):
        return f"{term_names[k]!r}"
    return f"#{k}"


def _as_values(values: Any, term_names: Sequence[str] | None = None) -> torch.Tensor:
    """Validate per-sample values and return them as a float64 (N, K) CPU tensor."""
    v = torch.as_tensor(values).detach().cpu()
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise ValueError(f"Loss values must have shape (N, K) (N samples, K terms); got shape {tuple(v.shape)}.")
    if v.shape[0] == 0:
        raise ValueError("No loss values were given (N = 0): thresholds need at least one sample.")
    if v.shape[1] == 0:
        raise ValueError("Loss values have no term (K = 0): thresholds need at least one loss term.")
    if term_names is not None and len(term_names) != v.shape[1]:
        raise ValueError(
            f"Loss values have {v.shape[1]} term(s) but {len(term_names)} term name(s) were given: {list(term_names)}."
        )
    v = v.to(torch.float64)
    bad = ~torch.isfinite(v)
    if bad.any():
        msgs = [
            f"term {_term_label(term_names, k)} has {int(bad[:, k].sum())} non-finite value(s) (NaN or inf)"
            for k in range(v.shape[1])
            if bad[:, k].any()
        ]
        raise ValueError(
            f"Cannot estimate thresholds from non-finite loss values: {'; '.join(msgs)} out of {v.shape[0]} samples. "
            "Check the STD checkpoint and the input intensities."
        )
    return v


def _median(v: torch.Tensor) -> torch.Tensor:
    """Per-column median of (N, K); for even N the average of the two middle values (not torch.median's lower one)."""
    s = v.sort(dim=0).values
    n = s.shape[0]
    return s[(n - 1) // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _mad(v: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Per-column median absolute deviation from ``center`` (same median convention as :func:`_median`)."""
    return _median((v - center).abs())


def _huber_location(v: torch.Tensor, med: torch.Tensor, scale: torch.Tensor, c: float) -> torch.Tensor:
    """Per-column Huber M-estimate of location by iteratively reweighted means, starting from the median.

    Weights ``w_i = min(1, c * scale / |v_i - mu|)``; ``mu <- sum(w v) / sum(w)`` until every column changes by less
    than 1e-7 or after 100 iterations. Columns with zero scale (more than half of the values equal) keep the median.
    """
    mu = med.clone()
    active = scale > 0
    if not active.any():
        return mu
    cs = c * scale[active]
    x = v[:, active]
    m = mu[active]
    for _ in range(_HUBER_MAX_ITER):
        r = (x - m).abs()
        w = torch.where(r > cs, cs / r.clamp_min(torch.finfo(r.dtype).tiny), torch.ones_like(r))
        new = (w * x).sum(0) / w.sum(0)
        done = bool(((new - m).abs() < _HUBER_TOL).all())
        m = new
        if done:
            break
    mu[active] = m
    return mu


def estimate_thresholds(
    values: Any,
    rule: str = "mean",
    k: float = 2.0,
    z: float = 2.0,
    q: float = 0.9,
    huber_c: float = 1.345,
    term_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Per-term thresholds xi from per-sample loss values.

    Rules (computed per column, over the N samples, in float64):

    - ``"mean"``: the mean.
    - ``"mean_std"``: ``mean + k * std`` with the population std (``unbiased=False``, divisor N).
    - ``"median_mad"``: ``median + z * 1.4826 * MAD`` with ``MAD = median(|v - median(v)|)``; the factor 1.4826 makes
      ``1.4826 * MAD`` a consistent estimate of the std for normal data. For even N the median is the average of the
      two middle values (both for the median and for the MAD).
    - ``"huber"``: Huber M-estimate of location ``mu`` + ``z * 1.4826 * MAD``. ``mu`` is found by iteratively
      reweighted means starting from the median, with robust scale ``s = 1.4826 * MAD`` held fixed and weights
      ``min(1, huber_c * s / |v - mu|)``, until the change is below 1e-7 or after 100 iterations. When MAD = 0 (more
      than half of the values are equal) ``mu`` is the median and the threshold is the median.
    - ``"quantile"``: the q-quantile (``torch.quantile``, linear interpolation between order statistics).

    Note that the robust rules give no margin above the median when more than half of the values of a term are equal
    (e.g. a Dice term that is 0 on most slices without foreground): prefer "mean"/"mean_std" there.

    Args:
        values: per-sample loss values, shape (N, K) (N samples, K terms); a 1-D (N,) input is one term.
        rule: one of ``"mean"``, ``"mean_std"``, ``"median_mad"``, ``"huber"``, ``"quantile"``.
        k: number of population standard deviations above the mean ("mean_std").
        z: number of robust standard deviations (1.4826 * MAD) above the location ("median_mad", "huber").
        q: quantile level in [0, 1] ("quantile").
        huber_c: Huber tuning constant in units of the robust scale ("huber"); 1.345 gives 95% efficiency at the normal.
        term_names: names of the K terms, used in error messages only.

    Returns:
        Tensor (K,), float64, in the units of the loss terms.

    Raises:
        ValueError: empty input, non-finite values (the message names the term and the count), an unknown rule or a
            parameter out of range.
    """
    check_rule(rule, k=k, z=z, q=q, huber_c=huber_c)
    v = _as_values(values, term_names)
    if rule == "mean":
        return v.mean(0)
    if rule == "mean_std":
        return v.mean(0) + k * v.std(0, unbiased=False)
    if rule == "quantile":
        return torch.quantile(v, q, dim=0, interpolation="linear")
    med = _median(v)
    scale = MAD_TO_STD * _mad(v, med)
    if rule == "median_mad":
        return med + z * scale
    return _huber_location(v, med, scale, huber_c) + z * scale  # "huber"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fmt_names(names: Sequence[str]) -> str:
    return "[" + ", ".join(str(n) for n in names) + "]"


@dataclass
class Thresholds:
    """The thresholds xi, one per loss term, with their provenance.

    Args:
        xi: one threshold per loss term (K floats, finite, >= 0), in the units of the loss terms.
        term_names: the K loss term names, in the order of ``loss.terms`` (``loss.term_names``).
        rule: the estimation rule (see :func:`estimate_thresholds`), or e.g. "manual" for a hand-written file.
        params: the parameters the rule used (k, z, q, huber_c).
        num_samples: number N of training samples the values were collected on.
        checkpoint: path of the STD checkpoint the values were computed with, or None.
        checkpoint_sha256: SHA-256 hex digest of that checkpoint, or None.
        created: creation time, ISO 8601 (UTC).
        stats: optional per-term summary of the collected values: {"mean", "std" (population), "median", "min",
            "max"} -> K floats each.
    """

    xi: list[float]
    term_names: list[str]
    rule: str
    params: dict[str, float] = field(default_factory=dict)
    num_samples: int = 0
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    created: str = field(default_factory=_now_iso)
    stats: dict[str, list[float]] = field(default_factory=dict)

    #: keys a saved xi file must have; the others default as above.
    REQUIRED_KEYS = ("xi", "term_names", "rule", "num_samples")

    def __post_init__(self) -> None:
        if not isinstance(self.term_names, (list, tuple)) or not all(
            isinstance(n, str) and n for n in self.term_names
        ):
            raise ValueError(f"term_names must be a list of non-empty strings, got {self.term_names!r}.")
        self.term_names = list(self.term_names)
        if len(set(self.term_names)) != len(self.term_names):
            raise ValueError(f"term_names must be unique, got {_fmt_names(self.term_names)}.")
        if isinstance(self.xi, torch.Tensor):
            self.xi = self.xi.detach().cpu().flatten().tolist()
        if not isinstance(self.xi, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in self.xi
        ):
            raise ValueError(f"xi must be a list of numbers, got {self.xi!r}.")
        self.xi = [float(x) for x in self.xi]
        if len(self.xi) != len(self.term_names):
            raise ValueError(
                f"xi has {len(self.xi)} value(s) but there are {len(self.term_names)} term name(s) "
                f"{_fmt_names(self.term_names)}."
            )
        if not self.xi:
            raise ValueError("xi is empty: there must be one threshold per loss term.")
        bad = [f"{n}={x}" for n, x in zip(self.term_names, self.xi) if not math.isfinite(x) or x < 0]
        if bad:
            raise ValueError(f"Thresholds must be finite and >= 0; got {', '.join(bad)}.")
        if not isinstance(self.rule, str) or not self.rule:
            raise ValueError(f"rule must be a non-empty string, got {self.rule!r}.")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 0:
            raise ValueError(f"num_samples must be an integer >= 0, got {self.num_samples!r}.")
        if not isinstance(self.params, dict):
            raise ValueError(f"params must be a dict, got {self.params!r}.")
        if not isinstance(self.stats, dict):
            raise ValueError(f"stats must be a dict of per-term lists, got {self.stats!r}.")

    @property
    def num_terms(self) -> int:
        return len(self.xi)

    def as_tensor(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """xi as a Tensor (K,) on ``device`` (default CPU), in the order of ``term_names``."""
        return torch.tensor(self.xi, dtype=dtype, device=device)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)

    def check_terms(self, expected_terms: Sequence[str] | int | None, source: str = "the thresholds") -> None:
        """Raise a ValueError when the terms differ from ``expected_terms`` (the loss's names, or its term count)."""
        if expected_terms is None:
            return
        if isinstance(expected_terms, int):
            if expected_terms != self.num_terms:
                raise ValueError(
                    f"Term-count mismatch in {source}: the file has {self.num_terms} term(s) "
                    f"{_fmt_names(self.term_names)} but the loss has {expected_terms}. Re-estimate the thresholds "
                    "with the loss used for AMAT training."
                )
            return
        expected = [str(n) for n in expected_terms]
        if expected != self.term_names:
            hint = " (same names, different order)" if sorted(expected) == sorted(self.term_names) else ""
            raise ValueError(
                f"Term mismatch in {source}: the file has terms {_fmt_names(self.term_names)} but the loss has "
                f"{_fmt_names(expected)}{hint}. Re-estimate the thresholds with the loss used for AMAT training."
            )

    def save(self, path: str | os.PathLike) -> str:
        """Write the thresholds as JSON (indent 2), atomically: a temp file in the same folder, then ``os.replace``.

        Parent folders are created. Returns the path written.
        """
        path = os.fspath(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_terms: Sequence[str] | int | None = None) -> Thresholds:
        """Read a thresholds file written by :meth:`save`.

        Args:
            path: the JSON file.
            expected_terms: the loss's term names (checked in order) or its number of terms; None skips the check.

        Raises:
            FileNotFoundError: the file does not exist (the message says how to make it).
            ValueError: corrupt JSON, missing keys, invalid values (non-finite or negative xi), or terms that differ
                from ``expected_terms``; the message names the file.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Thresholds file {path!r} not found. {_FIX_MISSING}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"Thresholds file {path!r} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). "
                "Re-run the threshold estimation or fix the file."
            ) from e
        if not isinstance(data, dict):
            raise ValueError(f"Thresholds file {path!r} must hold a JSON object, got {type(data).__name__}.")
        missing = [key for key in cls.REQUIRED_KEYS if key not in data]
        if missing:
            raise ValueError(
                f"Thresholds file {path!r} lacks the key(s) {missing}; "
                f"a thresholds file needs {list(cls.REQUIRED_KEYS)}."
            )
        known = {f.name for f in fields(cls)}
        try:
            th = cls(**{key: value for key, value in data.items() if key in known})
        except ValueError as e:
            raise ValueError(
                f"Invalid thresholds file {path!r}: {e} Re-estimate it (the file is written by the thresholds "
                f"config), or fix the file."
            ) from e
        th.check_terms(expected_terms, source=f"thresholds file {path!r}")
        return th


def from_values(
    values: Any,
    term_names: Sequence[str],
    rule: str = "mean",
    checkpoint: str | os.PathLike | None = None,
    **params: float,
) -> Thresholds:
    """Estimate :class:`Thresholds` from per-sample loss values, with provenance.

    Args:
        values: per-sample loss values, shape (N, K).
        term_names: the K term names (``loss.term_names``).
        rule: the estimation rule (see :func:`estimate_thresholds`).
        checkpoint: path of the STD checkpoint the values come from; its SHA-256 is stored (the file must exist).
        params: the rule's parameters ``k``, ``z``, ``q``, ``huber_c`` (defaults as :func:`estimate_thresholds`);
            only those the rule uses are stored.
    """
    unknown = sorted(set(params) - {"k", "z", "q", "huber_c"})
    if unknown:
        raise ValueError(f"Unknown threshold parameter(s) {unknown}; valid ones are ['huber_c', 'k', 'q', 'z'].")
    names = [str(n) for n in term_names]
    v = _as_values(values, names)
    xi = estimate_thresholds(v, rule=rule, term_names=names, **params)
    defaults = {"k": 2.0, "z": 2.0, "q": 0.9, "huber_c": 1.345}
    used = {name: float(params.get(name, defaults[name])) for name in RULES[rule]}
    digest = None
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"Checkpoint {checkpoint!r} not found: cannot record its SHA-256 with xi.")
        digest = sha256_file(checkpoint)
    stats = {
        "mean": v.mean(0).tolist(),
        "std": v.std(0, unbiased=False).tolist(),
        "median": _median(v).tolist(),
        "min": v.min(0).values.tolist(),
        "max": v.max(0).values.tolist(),
    }
    return Thresholds(
        xi=xi.tolist(),
        term_names=names,
        rule=rule,
        params=used,
        num_samples=int(v.shape[0]),
        checkpoint=checkpoint,
        checkpoint_sha256=digest,
        stats=stats,
    )


def load_thresholds(
    path: str | os.PathLike, loss: Any = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """xi as a Tensor (K,) read from ``path``, its term names checked against ``loss.term_names`` when given.

    Meant for bundle configs: ``"xi": "$robust_bundles.thresholds.load_thresholds(@thresholds_file, @loss)"``.
    A loss without ``term_names`` (a plain callable) is not checked.
    """
    names = getattr(loss, "term_names", None) if loss is not None else None
    return Thresholds.load(path, expected_terms=names).as_tensor(device=device)


class ThresholdTest:
    """AMAT's robustness test on the iterates an attack visits: a sample is robust while every loss term stays at or
    under its threshold xi_k (Ma & Liang, section 2.2). The attack (:func:`robust_bundles.attacks.perturb`) calls
    :meth:`observe` on each iterate it tests; :attr:`robust` is the (B, K) verdict so far, None before any.

    Args:
        thresholds: xi, (K,) per-term thresholds.
        test_fn: ``test_fn(output, y) -> (B, K)`` terms to test when they differ from the attack objective's (e.g. the
            main output of a deep-supervision network); None tests the objective's terms.
        term_names: the loss's term names, for the error of a count mismatch.
    """

    def __init__(self, thresholds: torch.Tensor | Sequence[float], test_fn: Any = None,
                 term_names: Sequence[str] = ()) -> None:
        self.xi = torch.as_tensor(thresholds, dtype=torch.float32).flatten()
        self.test_fn = test_fn
        self.term_names = tuple(term_names)
        self.robust: torch.Tensor | None = None

    def observe(self, output: Any, y: Any, terms: torch.Tensor) -> None:
        """Test one iterate: ``output`` of the network, label ``y``, the objective's (B, K) ``terms``."""
        if self.test_fn is not None:
            with torch.no_grad():
                terms = self.test_fn(output, y).float()
        xi = self.xi.to(terms.device)
        if terms.shape[1] != xi.numel():
            raise ValueError(
                f"The loss has {terms.shape[1]} term(s) {list(self.term_names)} but {xi.numel()} threshold(s) were "
                f"given."
            )
        ok = terms.detach() <= xi
        self.robust = ok if self.robust is None else self.robust & ok
