"""The training methods of the project, registered once: STD, VAT, TEAT, AMAT and TRADES.

A method is one iteration class (``robust_bundles.adversarial``), one config overlay stacked on a bundle's
``train.json`` and one :class:`Method` entry here. Everything above the core reads this registry instead of keeping
its own table: the experiment tool (its stages, options and groups), the report (run names, row order), the AMAT study
(plot styles, settings) and the Python dispatchers (``robust_bundles.toy``, ``scripts/benchmark*.py``) through
:meth:`Method.training`.

    from robust_bundles import methods
    methods.get("VAT").run_name(6)        # "vat_eps6"
    methods.parse_run("teat_eps0.5")      # (TEAT's entry, 0.5)
    methods.get("AMAT").training(128, attack=L2PGD(steps=3), thresholds=xi, expansion_step=1.0)

A new method is four files (TRADES was added so, in one commit): its iteration class (``adversarial.py``), its
entry here (``register(Method("NAME", overlay="<key>.json", iteration=..., params=..., task_values=..., reads=...,
role=...))``), its base overlay ``common/configs/<family>/<key>.json`` (setting ``train#trainer#iteration_update``
and, for state such as a margin book, ``train#save_dict#<name>`` and ``train#method_handlers``) and its test; then
``python scripts/bundles.py render`` writes every bundle's overlay (the entry's ``params`` first, the task's
``method_values`` replacing their defaults). From the entry, the experiment tool trains and evaluates it
(``--<key>_eps``, ``--<key>_init``; a method with eps and no list in the profile runs at its overlay's ``train_eps``),
the report names its rows, the study runs it as a baseline (``--<key>_eps``, ``--<key>_ft_eps``) and plots it, the
contract (``robust_bundles.contract``) checks what it ``reads`` and the bundle test suite trains it in every bundle. Fine-tuning is no method: ``finetune.json`` (:data:`FINETUNE_OVERLAY`) stacks after any method's
overlay and makes the run start from trained weights (the study plots such runs with the method's ``fine-tuned``
style).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

__all__ = [
    "Method",
    "Training",
    "register",
    "unregister",
    "get",
    "all_methods",
    "names",
    "with_overlay",
    "parse_run",
    "FINETUNE_OVERLAY",
    "THRESHOLDS_OVERLAY",
    "SCRATCH",
    "FINE_TUNED",
    "ROLES",
    "with_role",
    "reference",
    "candidate",
    "overlay_params",
]

FINETUNE_OVERLAY = "finetune.json"
"""The overlay that makes a method's run start from trained weights (after the method's own overlay)."""
THRESHOLDS_OVERLAY = "thresholds.json"
"""The overlay that estimates the thresholds xi on the STD model (for methods with ``needs_thresholds``)."""
SCRATCH = "scratch"
"""A run that starts from a random initialisation."""
FINE_TUNED = "std"
"""A run fine-tuned from this experiment's STD model (the init value of the experiment tool and the study)."""
ROLES = ("reference", "frontier", "baseline", "candidate")
"""A method's role in the study and its plots: the ``reference`` (clean training, the clean metric to keep), the
``frontier`` (fixed-eps runs whose clean/robust trade-off curve the candidates must rise above), the other
``baseline`` methods (compared with the candidate's choice) and the ``candidate`` (the studied method, its grid)."""


@dataclass
class Training:
    """What a method adds to a plain ``monai.engines.SupervisedTrainer``.

    Attributes:
        update: the trainer's ``iteration_update`` (None: MONAI's default step, i.e. STD).
        handlers: train handlers the method needs (e.g. AMAT's MarginHandler).
        margins: AMAT's margin book (None for the others).
    """

    update: Any = None
    handlers: list = field(default_factory=list)
    margins: Any = None

    def trainer(self, network: Any, optimizer: Any, loss: Any, loader: Any, max_epochs: int, device: Any = "cpu",
                handlers: Any = (), **kwargs: Any) -> Any:
        """A ``monai.engines.SupervisedTrainer`` that trains with this method: its ``iteration_update``, and its
        handlers after ``handlers``; ``kwargs`` go to the trainer (e.g. ``prepare_batch``)."""
        import torch
        from monai.engines import SupervisedTrainer

        return SupervisedTrainer(device=torch.device(device), max_epochs=max_epochs, train_data_loader=loader,
                                 network=network, optimizer=optimizer, loss_function=loss, iteration_update=self.update,
                                 train_handlers=[*handlers, *self.handlers], **kwargs)


@dataclass(frozen=True)
class Method:
    """One training method.

    Args:
        name: upper-case name, the report's method column (``"VAT"``).
        overlay: the config file stacked on ``train.json`` for its runs (``"vat.json"``); None: ``train.json`` alone.
        iteration: the ``iteration_update`` class its overlay builds (None: MONAI's default step).
        takes_eps: its runs have a training noise level eps (run ``<key>_eps<g>``, config ``train_eps``).
        needs_thresholds: its runs read the thresholds xi estimated on the STD model (the thresholds stage first).
        styles: plot style ``(color, marker, label)`` by init (:data:`SCRATCH` and :data:`FINE_TUNED`).
        build: ``build(num_samples, attack=..., **settings) -> Training`` for the Python dispatchers (toy,
            benchmarks); None for a method only known to bundles.
        description: one line for help texts.
        params: config ids its overlay sets, with their defaults (``{"train_eps": 6.0}``): ``render`` writes them at
            the top of every bundle's rendered overlay (the base overlay does not repeat them).
        task_values: those of ``params`` a task sets once for every method, in its ``task.json``'s
            ``"method_values"`` (``train_eps`` in the task's input units, ``output_activation`` of its outputs).
        reads: the contract ids its overlay reads from ``train.json`` (names of ``robust_bundles.contract``'s
            properties): the contract check and the properties derive from them.
        role: its role in the study and the plots (:data:`ROLES`).
        study_ft_eps: the study's default noise levels of its runs fine-tuned from STD (methods with eps).
    """

    name: str
    overlay: str | None = None
    iteration: Any = None
    takes_eps: bool = False
    needs_thresholds: bool = False
    styles: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)
    build: Callable[..., Training] | None = None
    description: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    task_values: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    role: str = "baseline"
    study_ft_eps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z][A-Z0-9]*", self.name):
            raise ValueError(f"Method name {self.name!r}: upper-case letters and digits, starting with a letter.")
        if self.overlay is not None and not self.overlay.endswith(".json"):
            raise ValueError(f"Method {self.name}: overlay must be a .json config file name, not {self.overlay!r}.")
        if self.role not in ROLES:
            raise ValueError(f"Method {self.name}: role {self.role!r} is not one of {', '.join(ROLES)}.")
        unknown = [v for v in self.task_values if v not in self.params]
        if unknown:
            raise ValueError(f"Method {self.name}: task_values {unknown} are not among its params {list(self.params)}.")

    @property
    def key(self) -> str:
        """The lower-case name: run names, option names (``--<key>_eps``, ``<key>_init``, ``<key>_override``)."""
        return self.name.lower()

    @property
    def run_pattern(self) -> re.Pattern:
        """The pattern of its run names: ``vat_eps(?P<eps>...)`` for a method with eps, else its key alone."""
        return re.compile(rf"^{self.key}_eps(?P<eps>.+)$" if self.takes_eps else rf"^{self.key}$")

    def run_name(self, eps: float | None = None) -> str:
        """``VAT.run_name(6) -> "vat_eps6"``, ``AMAT.run_name() -> "amat"`` (eps ``format(eps, 'g')``)."""
        if self.takes_eps:
            if eps is None:
                raise ValueError(f"{self.name} needs its training noise level eps.")
            return f"{self.key}_eps{format(float(eps), 'g')}"
        return self.key

    def style(self, init: str = SCRATCH) -> tuple[str, str, str]:
        """``(color, marker, label)`` of its points in a plot, for runs from scratch or fine-tuned."""
        if init in self.styles:
            return self.styles[init]
        base = self.styles.get(SCRATCH, ("C7", "x", self.name))
        return (base[0], base[1], base[2] if init == SCRATCH else f"{self.name} fine-tuned")

    def training(self, num_samples: int, attack: Any = None, **settings: Any) -> Training:
        """Build the method for a Python ``SupervisedTrainer`` (what its overlay does in a bundle).

        Args:
            num_samples: the size of the training set (sample ids 0..N-1; AMAT's book, TEAT's ensemble).
            attack: the training attack (None: the iteration class's default).
            settings: the method's settings (``eps``, ``beta``, ``thresholds``, margin settings, ``memory=True`` for a
                perturbation memory, ...).
        """
        if self.build is None:
            raise ValueError(f"Method {self.name} has no Python builder; it runs through its overlay "
                             f"{self.overlay} only.")
        return self.build(num_samples, attack=attack, **settings)


_REGISTRY: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Add a method (after the registered ones: report rows and experiment stages follow this order).

    Raises:
        ValueError: a method of that name (or its run names) is registered already and ``replace`` is False.
    """
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"Method {method.name} is registered already (replace=True to replace it).")
    clash = [m.name for m in _REGISTRY.values() if m.name != method.name and m.overlay and m.overlay == method.overlay]
    if clash:
        raise ValueError(f"Method {method.name}: overlay {method.overlay} is {clash[0]}'s already.")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register a stand-in)."""
    _REGISTRY.pop(name.upper(), None)


def get(name: str) -> Method:
    """The method of that name (any case).

    Raises:
        KeyError: no such method; the message lists the registered ones.
    """
    try:
        return _REGISTRY[str(name).upper()]
    except KeyError:
        raise KeyError(f"Unknown method {name!r}; registered: {', '.join(_REGISTRY)}.") from None


def all_methods() -> list[Method]:
    """The registered methods in order (STD, VAT, TEAT, AMAT, then any registered later)."""
    return list(_REGISTRY.values())


def names() -> tuple[str, ...]:
    """The names of the registered methods, in order."""
    return tuple(_REGISTRY)


def with_overlay() -> Iterator[Method]:
    """The methods trained through an overlay on train.json (all but STD)."""
    return (m for m in _REGISTRY.values() if m.overlay)


def with_role(role: str) -> list[Method]:
    """The registered methods of a study role (:data:`ROLES`), in order."""
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}: one of {', '.join(ROLES)}.")
    return [m for m in _REGISTRY.values() if m.role == role]


def reference() -> Method:
    """The study's reference method (clean training)."""
    return with_role("reference")[0]


def candidate() -> Method:
    """The studied method (the study's grid trains it)."""
    return with_role("candidate")[0]


def overlay_params(overlay: str, task_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config ids the method of ``overlay`` (a file name, ``"vat.json"``) sets in a bundle's rendered overlay:
    its params, a task's value (``task_values``, the ``"method_values"`` of a ``task.json``) replacing the default
    where the method takes it from the task. {} for a file that is no method's overlay."""
    values = dict(task_values or {})
    for m in _REGISTRY.values():
        if m.overlay == overlay:
            return {k: values.get(k, v) if k in m.task_values else v for k, v in m.params.items()}
    return {}


def parse_run(run: str) -> tuple[Method, float | None] | None:
    """The method and training eps of a run name (``"vat_eps6" -> (VAT, 6.0)``, ``"amat" -> (AMAT, None)``); None
    for other names, and for an eps that is not a number."""
    for m in _REGISTRY.values():
        match = m.run_pattern.match(run)
        if match:
            if not m.takes_eps:
                return m, None
            try:
                return m, float(match.group("eps"))
            except ValueError:
                return None
    return None


# ------------------------------------------------------------------------------------------------------ builders
def _build_std(num_samples: int, attack: Any = None, **_: Any) -> Training:
    return Training()


def _memory(num_samples: int, memory: Any) -> Any:
    """``memory=True`` gives a fresh perturbation memory of ``num_samples``; a memory object is used as given."""
    if memory is True:
        from .perturbation_memory import PerturbationMemory

        return PerturbationMemory(num_samples)
    return memory or None


def _build_vat(num_samples: int, attack: Any = None, eps: float = 2.0, beta: float = 0.0, memory: Any = None,
               **_: Any) -> Training:
    from .adversarial import VATIteration

    return Training(VATIteration(eps=eps, attack=attack, beta=beta, memory=_memory(num_samples, memory)))


def _build_teat(num_samples: int, attack: Any = None, eps: float = 2.0, max_epochs: int = 1, momentum: float = 0.9,
                memory: Any = None, **options: Any) -> Training:
    from .adversarial import TEATIteration, TemporalEnsemble

    keep = {k: options[k] for k in ("beta", "w_max", "start", "ramp", "activation") if k in options}
    ensemble = TemporalEnsemble(num_samples=num_samples, momentum=momentum)
    return Training(TEATIteration(eps, ensemble, max_epochs=max_epochs, attack=attack,
                                  memory=_memory(num_samples, memory), **keep))


def _build_amat(num_samples: int, attack: Any = None, thresholds: Any = None, beta: float = 0.5,
                check: str = "path", margin_rule: str | None = None, expansion_step: float | None = None,
                target_margin: float | None = None, epochs: int | None = None, reach_fraction: float = 0.5,
                initial_margin: float | None = None, max_margin: float | None = None, memory: Any = None,
                **_: Any) -> Training:
    from .adversarial import AMATIteration
    from .handlers import MarginHandler
    from .margins import MarginBook

    if thresholds is None:
        raise ValueError("AMAT needs thresholds: estimate them on the STD model first.")
    book = MarginBook(num_samples, expansion_step=expansion_step, initial_margin=initial_margin,
                      max_margin=max_margin, target_margin=target_margin, epochs=epochs,
                      reach_fraction=reach_fraction, rule=margin_rule)
    update = AMATIteration(book, thresholds, attack=attack, beta=beta, check=check,
                           memory=_memory(num_samples, memory))
    return Training(update, [MarginHandler(book)], book)


def _build_trades(num_samples: int, attack: Any = None, eps: float = 2.0, beta: float = 6.0,
                  activation: Any = "softmax", memory: Any = None, **_: Any) -> Training:
    from .adversarial import TRADESIteration

    return Training(TRADESIteration(eps, attack=attack, beta=beta, activation=activation,
                                    memory=_memory(num_samples, memory)))


_EPS = {"train_eps": 6.0}  # the training noise level of a method with eps; a task gives its own (its input units)
_OUTPUTS = {"output_activation": "softmax"}  # how the task's outputs are distributions (robust_bundles.adversarial)
_ATTACKED = ("trainer", "training_attack")  # the contract ids every adversarial overlay reads

STD = register(Method("STD", description="standard training (MONAI's default step)", role="reference",
                      styles={SCRATCH: ("k", "*", "STD")}, build=_build_std))
VAT = register(Method("VAT", overlay="vat.json", iteration="robust_bundles.adversarial.VATIteration", takes_eps=True,
                      styles={SCRATCH: ("C0", "o", "VAT"), FINE_TUNED: ("C9", "v", "VAT fine-tuned")},
                      build=_build_vat, description="vanilla adversarial training at one noise level eps",
                      params=_EPS, task_values=("train_eps",), reads=_ATTACKED, role="frontier",
                      study_ft_eps=(2, 4, 6, 8)))
TEAT = register(Method("TEAT", overlay="teat.json", iteration="robust_bundles.adversarial.TEATIteration",
                       takes_eps=True, styles={SCRATCH: ("C2", "s", "TEAT"), FINE_TUNED: ("C2", "P", "TEAT fine-tuned")},
                       build=_build_teat, description="VAT plus a temporal-ensemble consistency term",
                       params={**_EPS, **_OUTPUTS}, task_values=("train_eps", "output_activation"),
                       reads=(*_ATTACKED, "epochs", "datalist", "save_dict"), study_ft_eps=(6,)))
AMAT = register(Method("AMAT", overlay="amat.json", iteration="robust_bundles.adversarial.AMATIteration",
                       needs_thresholds=True,
                       styles={SCRATCH: ("C3", "^", "AMAT from scratch"), FINE_TUNED: ("C1", "D", "AMAT fine-tuned")},
                       build=_build_amat, description="adaptive-margin adversarial training (per-sample margins)",
                       reads=(*_ATTACKED, "loss", "epochs", "datalist", "save_dict", "method_handlers",
                              "thresholds_file", "ckpt_dir"), role="candidate"))
TRADES = register(Method("TRADES", overlay="trades.json", iteration="robust_bundles.adversarial.TRADESIteration",
                         takes_eps=True, build=_build_trades,
                         styles={SCRATCH: ("C4", "p", "TRADES"), FINE_TUNED: ("C6", "h", "TRADES fine-tuned")},
                         description="clean loss + beta x the divergence of the outputs under the attack that "
                                     "maximises it (Zhang et al., ICML 2019)",
                         params={**_EPS, "trades_beta": 6.0, **_OUTPUTS}, task_values=("train_eps", "output_activation"),
                         reads=_ATTACKED))
