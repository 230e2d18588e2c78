"""The bundle contract of the method overlays: the config ids a bundle's ``train.json`` must define so that the
project's overlays (``thresholds.json``, ``vat.json``, ``teat.json``, ``amat.json``, ``finetune.json``,
``multi_gpu_train.json``) stack on it.

The properties are written the way MONAI writes the required properties of a training workflow
(``monai.bundle.properties.TrainProperties``: a description, whether it is required and its config ``id``), and
:func:`check` checks a bundle the way ``ConfigWorkflow.check_properties`` does, with a message that names each missing
id, the overlays that read it and how to supply it. They are chosen for a bundle we did not write: MONAI's own names
where MONAI has one (``device``, ``network_def``, ``network``, ``loss``, ``train#trainer``, ``train#dataset``,
``train#handlers``, ``validate#dataset``...), and few ids of our own, each with a default a foreign bundle can add in a
line or two (``training_attack``, ``train#datalist``, ``train#method_handlers``, ...).

Besides the ids, the training batches must carry a ``sample_id`` in ``0 .. N-1`` (N = ``len(train#datalist)``) for
TEAT's ensemble and AMAT's margins: the iterations refuse a batch without it (this is not visible in the config).

    python -m robust_bundles.contract bundles/hippocampus_mri_segmentation/configs/train.json --overlays "[vat,amat]"
    from robust_bundles import contract
    contract.check("path/to/configs/train.json", overlays=["vat", "amat"])   # [] or the problems
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["overlays", "properties", "check", "require", "ContractError"]  # OVERLAYS, PROPERTIES: __getattr__

_TOOL_READS: dict[str, tuple[str, ...]] = {
    "thresholds": ("device", "network", "loss", "val_inferer", "val_preprocessing", "datalist", "thresholds_file",
                   "output_root", "network_hint", "batch_size", "num_workers", "amp", "setup"),
    "finetune": ("device", "network", "train_handlers", "output_root", "ckpt_dir", "resume", "network_hint"),
    "multi_gpu_train": ("network_def", "train_dataset", "train_dataloader", "val_dataset", "val_dataloader", "setup"),
}
"""What the overlays that are no method read (a method's reads are its registry entry's, ``Method.reads``)."""

_PROPERTIES: dict[str, dict[str, Any]] = {
    # MONAI's own ids (TrainProperties names where MONAI has them)
    "device": {"id": "device", "description": "the torch.device of the run",
               "supply": "\"device\": \"$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')\""},
    "network_def": {"id": "network_def", "description": "the network module before .to(device) (wrapped in DistributedDataParallel)",
                    "supply": "move the network's definition to \"network_def\" and set "
                              "\"network\": \"$@network_def.to(@device)\""},
    "network": {"id": "network", "description": "the network on its device",
                "supply": "\"network\": \"$@network_def.to(@device)\""},
    "loss": {"id": "loss", "description": "the training loss (the robustness test and the thresholds xi are computed with it)",
             "supply": "name the trainer's loss function \"loss\" and set \"train#trainer#loss_function\": \"@loss\""},
    "epochs": {"id": "epochs", "description": "the number of epochs of the run (TEAT's ramp, AMAT's schedule-aware margin)",
               "supply": "\"epochs\": N and \"train#trainer#max_epochs\": \"@epochs\""},
    "trainer": {"id": "train#trainer", "description": "the SupervisedTrainer; the method overlays set its iteration_update",
                "supply": "a monai.engines.SupervisedTrainer under \"train\": {\"trainer\": {...}}"},
    "train_dataset": {"id": "train#dataset", "description": "the training dataset",
                      "supply": "\"train\": {\"dataset\": {\"_target_\": \"Dataset\", \"data\": \"@train#datalist\", "
                                "...}}"},
    "train_dataloader": {"id": "train#dataloader", "description": "the training DataLoader (its sampler is set for data-parallel training)",
                         "supply": "\"train\": {\"dataloader\": {\"_target_\": \"DataLoader\", ...}}"},
    "train_handlers": {"id": "train#handlers", "referenced": True,
                       "description": "the list of the trainer's handlers (fine-tuning appends one)",
                       "supply": "\"train#handlers\": [...] and \"train#trainer#train_handlers\": "
                                 "\"@train#handlers\""},
    "val_dataset": {"id": "validate#dataset", "description": "the validation dataset",
                    "supply": "\"validate\": {\"dataset\": {...}}"},
    "val_dataloader": {"id": "validate#dataloader", "description": "the validation DataLoader", "supply": "\"validate\": {\"dataloader\": {...}}"},
    "val_inferer": {"id": "validate#inferer", "description": "the inferer of the evaluator (the thresholds pass runs the STD model with it)",
                    "supply": "\"validate\": {\"inferer\": {\"_target_\": \"SimpleInferer\"}}"},
    "val_preprocessing": {"id": "validate#preprocessing", "description": "the deterministic preprocessing (the thresholds pass reads the training "
                                         "data with it)",
                          "supply": "\"validate\": {\"preprocessing\": {\"_target_\": \"Compose\", ...}}"},
    # the few ids of our own
    "datalist": {"id": "train#datalist", "description": "the list of training samples (dicts), each with its sample_id 0..N-1 (TEAT's "
                                "ensemble and AMAT's margins have N entries)",
                 "supply": "\"train#datalist\": \"$[dict(d, sample_id=i) for i, d in enumerate(<your list>)]\" and "
                           "\"train#dataset#data\": \"@train#datalist\""},
    "save_dict": {"id": "train#save_dict", "referenced": True,
                  "description": "the checkpoint's save_dict (TEAT's ensemble and AMAT's margins are added to it so "
                                 "that a resumed run continues exactly)",
                  "supply": "\"train#save_dict\": {\"network\": \"@network\", \"optimizer\": \"@optimizer\", "
                            "\"trainer\": \"@train#trainer\"} used by the CheckpointSaver and CheckpointLoader"},
    "method_handlers": {"id": "train#method_handlers", "referenced": True,
                        "description": "the handlers a method adds (AMAT's MarginHandler); the trainer must run them",
                        "supply": "\"train#method_handlers\": [] and \"train#trainer#train_handlers\": "
                                  "\"$@train#method_handlers + @train#handlers\""},
    "training_attack": {"id": "training_attack", "description": "the attack of adversarial training",
                        "supply": "\"training_attack\": {\"_target_\": \"robust_bundles.attacks.L2PGD\", "
                                  "\"steps\": 3, \"alpha\": 4.0}"},
    "thresholds_file": {"id": "thresholds_file", "description": "where the thresholds xi are written and read",
                        "supply": "\"thresholds_file\": \"$robust_bundles.layout.thresholds_file(@output_root)\""},
    "output_root": {"id": "output_root", "description": "the folder of models/, eval/ and logs/ (the STD model is models/std/model.pt)",
                    "supply": "\"output_root\": \"$@bundle_root\""},
    "ckpt_dir": {"id": "ckpt_dir", "description": "the run's model folder (margins.csv, init_from.json)",
                 "supply": "\"ckpt_dir\": \"$robust_bundles.layout.run_dir(@output_root, @run_name)\""},
    "resume": {"id": "resume", "description": "true when the run continues from its own checkpoint (fine-tuning then loads nothing)",
               "supply": "\"resume\": false"},
    "network_hint": {"id": "network_hint", "description": "one sentence on the settings that size the network, shown when a model file "
                                    "does not fit",
                     "supply": "\"network_hint\": \"\""},
    "batch_size": {"id": "batch_size", "description": "the batch size",
                   "supply": "\"batch_size\": 2 and use it in the dataloaders"},
    "num_workers": {"id": "num_workers", "description": "DataLoader workers",
                    "supply": "\"num_workers\": 0"},
    "amp": {"id": "amp", "description": "mixed precision of the engines",
            "supply": "\"amp\": false"},
    "setup": {"id": "setup", "description": "a list of expressions run first (the thresholds run and data-parallel set-up use it)",
              "supply": "\"setup\": [\"$monai.utils.set_determinism(seed=0)\"] and \"run\": [\"@setup\", ...]"},
}


def overlays() -> tuple[str, ...]:
    """The overlays of the project, by name (the file is ``<name>.json``): the thresholds, every registered
    method's (:mod:`robust_bundles.methods`), fine-tuning and multi-GPU training."""
    from . import methods

    first, *rest = _TOOL_READS
    return (first, *(Path(m.overlay).stem for m in methods.with_overlay()), *rest)


def _reads() -> dict[str, tuple[str, ...]]:
    """Overlay name -> the properties it reads (the registry's ``Method.reads`` for a method's overlay)."""
    from . import methods

    reads = {**_TOOL_READS, **{Path(m.overlay).stem: tuple(m.reads) for m in methods.with_overlay()}}
    unknown = {o: [r for r in rs if r not in _PROPERTIES] for o, rs in reads.items()}
    unknown = {o: rs for o, rs in unknown.items() if rs}
    if unknown:
        raise ContractError(f"Overlays read properties the contract does not define: {unknown}; name properties of "
                            f"{', '.join(_PROPERTIES)} in the method's registry entry (reads=...).")
    return reads


def properties() -> dict[str, dict[str, Any]]:
    """The contract: name -> ``id`` (``#``-separated config id), ``overlays`` (which read it, from the registry),
    ``description``, ``supply`` (how to add it to a bundle) and ``referenced`` (the bundle must also read it: an id
    an overlay adds to but nothing uses would be a silent no-op)."""
    reads = _reads()
    return {name: {**prop, "overlays": tuple(o for o in overlays() if name in reads.get(o, ()))}
            for name, prop in _PROPERTIES.items()}


def __getattr__(name: str) -> Any:
    """``OVERLAYS`` and ``PROPERTIES``, computed from the method registry when read (a method registered later is
    in them)."""
    if name == "OVERLAYS":
        return overlays()
    if name == "PROPERTIES":
        return properties()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ContractError(ValueError):
    """A bundle does not define what the method overlays need."""


def _load(config: Any) -> tuple[Any, str, str]:
    """A ConfigParser of ``config`` (files, a dict or a parser), its name for messages, and its text."""
    from monai.bundle import ConfigParser

    if isinstance(config, ConfigParser):
        return config, "the config", json.dumps(config.get())
    if isinstance(config, Mapping):
        parser = ConfigParser(dict(config))
        return parser, "the config", json.dumps(dict(config))
    files = [config] if isinstance(config, (str, Path)) else list(config)
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return parser, " + ".join(str(f) for f in files), json.dumps(parser.get())


def check(config: Any, overlays: Iterable[str] | None = None) -> list[str]:
    """The problems of a bundle config with respect to the contract of ``overlays`` (empty when it keeps it).

    Args:
        config: the bundle's ``train.json`` (a path or a list of paths, merged as ``monai.bundle run`` merges them),
            a config dict or a ``monai.bundle.ConfigParser``.
        overlays: the overlays to stack (names of :func:`overlays`, with or without ``.json``); None: all.

    Returns:
        One line per missing (or unread) id: the id, the overlays that need it, what it is, and how to supply it.
    """
    known = globals()["overlays"]()
    wanted = [str(o).removesuffix(".json") for o in (known if overlays is None else overlays)]
    unknown = [o for o in wanted if o not in known]
    if unknown:
        raise ContractError(f"Unknown overlay(s) {unknown}: the contract covers {', '.join(known)}.")
    parser, where, text = _load(config)
    problems = []
    for prop in properties().values():
        users = [o for o in wanted if o in prop["overlays"]]
        if not users:
            continue
        need = f"read by {', '.join(u + '.json' for u in users)}"
        if prop["id"] not in parser:
            problems.append(f"{where}: id {prop['id']!r} missing ({prop['description']}; {need}). Fix: add "
                            f"{prop['supply']}.")
        elif prop.get("referenced") and not re.search(rf"@{re.escape(prop['id'])}(?![\w#])", text):
            problems.append(f"{where}: id {prop['id']!r} is defined but nothing reads it, so what the overlays add to "
                            f"it would be ignored ({need}). Fix: {prop['supply']}.")
    return problems


def require(config: Any, overlays: Iterable[str] | None = None) -> None:
    """:func:`check`, raising :class:`ContractError` with every problem (one per line) when there is one."""
    problems = check(config, overlays)
    if problems:
        raise ContractError(f"The bundle does not keep the contract of the method overlays "
                            f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))


def overlays_of(configs: Sequence[str]) -> list[str]:
    """The method overlays among config file names (``["configs/train.json", "configs/amat.json"] -> ["amat"]``)."""
    names = [Path(c).stem for c in configs]
    known = overlays()
    return [n for n in names if n in known]


def main(*configs: str, overlays: Any = None) -> None:
    """Check bundle config files (merged in the order given) against the contract of ``overlays``; prints OK or
    the problems and ``ERROR (contract): ...`` as the last line."""
    if isinstance(overlays, str):
        overlays = [o.strip() for o in overlays.strip("[]()").split(",") if o.strip()]
    overlays = globals()["overlays"]() if overlays is None else overlays
    problems = check(list(configs), overlays)
    if not problems:
        print(f"OK: {' + '.join(configs)} keeps the contract of {', '.join(o + '.json' for o in overlays)}.")
        return
    print("\n".join(problems))
    raise SystemExit(f"ERROR (contract): {len(problems)} id(s) missing for the method overlays: add them as each "
                     f"line says (to train.json or an overlay listed before the method overlays).")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
