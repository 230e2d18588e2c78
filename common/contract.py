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

__all__ = ["OVERLAYS", "PROPERTIES", "check", "require", "ContractError"]

OVERLAYS = ("thresholds", "vat", "teat", "amat", "finetune", "multi_gpu_train")
"""The method overlays of the project, by name (the file is ``<name>.json``)."""

_ALL = OVERLAYS
PROPERTIES: dict[str, dict[str, Any]] = {
    # MONAI's own ids (TrainProperties names where MONAI has them)
    "device": {"id": "device", "overlays": ("thresholds", "finetune"), "description": "the torch.device of the run",
               "supply": "\"device\": \"$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')\""},
    "network_def": {"id": "network_def", "overlays": ("multi_gpu_train",),
                    "description": "the network module before .to(device) (wrapped in DistributedDataParallel)",
                    "supply": "move the network's definition to \"network_def\" and set "
                              "\"network\": \"$@network_def.to(@device)\""},
    "network": {"id": "network", "overlays": ("thresholds", "finetune"), "description": "the network on its device",
                "supply": "\"network\": \"$@network_def.to(@device)\""},
    "loss": {"id": "loss", "overlays": ("thresholds", "amat"),
             "description": "the training loss (the robustness test and the thresholds xi are computed with it)",
             "supply": "name the trainer's loss function \"loss\" and set \"train#trainer#loss_function\": \"@loss\""},
    "epochs": {"id": "epochs", "overlays": ("teat", "amat"),
               "description": "the number of epochs of the run (TEAT's ramp, AMAT's schedule-aware margin)",
               "supply": "\"epochs\": N and \"train#trainer#max_epochs\": \"@epochs\""},
    "trainer": {"id": "train#trainer", "overlays": ("vat", "teat", "amat"),
                "description": "the SupervisedTrainer; the method overlays set its iteration_update",
                "supply": "a monai.engines.SupervisedTrainer under \"train\": {\"trainer\": {...}}"},
    "train_dataset": {"id": "train#dataset", "overlays": ("multi_gpu_train",), "description": "the training dataset",
                      "supply": "\"train\": {\"dataset\": {\"_target_\": \"Dataset\", \"data\": \"@train#datalist\", "
                                "...}}"},
    "train_dataloader": {"id": "train#dataloader", "overlays": ("multi_gpu_train",),
                         "description": "the training DataLoader (its sampler is set for data-parallel training)",
                         "supply": "\"train\": {\"dataloader\": {\"_target_\": \"DataLoader\", ...}}"},
    "train_handlers": {"id": "train#handlers", "overlays": ("finetune",), "referenced": True,
                       "description": "the list of the trainer's handlers (fine-tuning appends one)",
                       "supply": "\"train#handlers\": [...] and \"train#trainer#train_handlers\": "
                                 "\"@train#handlers\""},
    "val_dataset": {"id": "validate#dataset", "overlays": ("multi_gpu_train",), "description": "the validation dataset",
                    "supply": "\"validate\": {\"dataset\": {...}}"},
    "val_dataloader": {"id": "validate#dataloader", "overlays": ("multi_gpu_train",),
                       "description": "the validation DataLoader", "supply": "\"validate\": {\"dataloader\": {...}}"},
    "val_inferer": {"id": "validate#inferer", "overlays": ("thresholds",),
                    "description": "the inferer of the evaluator (the thresholds pass runs the STD model with it)",
                    "supply": "\"validate\": {\"inferer\": {\"_target_\": \"SimpleInferer\"}}"},
    "val_preprocessing": {"id": "validate#preprocessing", "overlays": ("thresholds",),
                          "description": "the deterministic preprocessing (the thresholds pass reads the training "
                                         "data with it)",
                          "supply": "\"validate\": {\"preprocessing\": {\"_target_\": \"Compose\", ...}}"},
    # the few ids of our own
    "datalist": {"id": "train#datalist", "overlays": ("thresholds", "teat", "amat"),
                 "description": "the list of training samples (dicts), each with its sample_id 0..N-1 (TEAT's "
                                "ensemble and AMAT's margins have N entries)",
                 "supply": "\"train#datalist\": \"$[dict(d, sample_id=i) for i, d in enumerate(<your list>)]\" and "
                           "\"train#dataset#data\": \"@train#datalist\""},
    "save_dict": {"id": "train#save_dict", "overlays": ("teat", "amat"), "referenced": True,
                  "description": "the checkpoint's save_dict (TEAT's ensemble and AMAT's margins are added to it so "
                                 "that a resumed run continues exactly)",
                  "supply": "\"train#save_dict\": {\"network\": \"@network\", \"optimizer\": \"@optimizer\", "
                            "\"trainer\": \"@train#trainer\"} used by the CheckpointSaver and CheckpointLoader"},
    "method_handlers": {"id": "train#method_handlers", "overlays": ("amat",), "referenced": True,
                        "description": "the handlers a method adds (AMAT's MarginHandler); the trainer must run them",
                        "supply": "\"train#method_handlers\": [] and \"train#trainer#train_handlers\": "
                                  "\"$@train#method_handlers + @train#handlers\""},
    "training_attack": {"id": "training_attack", "overlays": ("vat", "teat", "amat"),
                        "description": "the attack of adversarial training",
                        "supply": "\"training_attack\": {\"_target_\": \"robust_bundles.attacks.L2PGD\", "
                                  "\"steps\": 3, \"alpha\": 4.0}"},
    "thresholds_file": {"id": "thresholds_file", "overlays": ("thresholds", "amat"),
                        "description": "where the thresholds xi are written and read",
                        "supply": "\"thresholds_file\": \"$robust_bundles.layout.thresholds_file(@output_root)\""},
    "output_root": {"id": "output_root", "overlays": ("thresholds", "finetune"),
                    "description": "the folder of models/, eval/ and logs/ (the STD model is models/std/model.pt)",
                    "supply": "\"output_root\": \"$@bundle_root\""},
    "ckpt_dir": {"id": "ckpt_dir", "overlays": ("amat", "finetune"),
                 "description": "the run's model folder (margins.csv, init_from.json)",
                 "supply": "\"ckpt_dir\": \"$robust_bundles.layout.run_dir(@output_root, @run_name)\""},
    "resume": {"id": "resume", "overlays": ("finetune",),
               "description": "true when the run continues from its own checkpoint (fine-tuning then loads nothing)",
               "supply": "\"resume\": false"},
    "network_hint": {"id": "network_hint", "overlays": ("thresholds", "finetune"),
                     "description": "one sentence on the settings that size the network, shown when a model file "
                                    "does not fit",
                     "supply": "\"network_hint\": \"\""},
    "batch_size": {"id": "batch_size", "overlays": ("thresholds",), "description": "the batch size",
                   "supply": "\"batch_size\": 2 and use it in the dataloaders"},
    "num_workers": {"id": "num_workers", "overlays": ("thresholds",), "description": "DataLoader workers",
                    "supply": "\"num_workers\": 0"},
    "amp": {"id": "amp", "overlays": ("thresholds",), "description": "mixed precision of the engines",
            "supply": "\"amp\": false"},
    "setup": {"id": "setup", "overlays": ("thresholds", "multi_gpu_train"),
              "description": "a list of expressions run first (the thresholds run and data-parallel set-up use it)",
              "supply": "\"setup\": [\"$monai.utils.set_determinism(seed=0)\"] and \"run\": [\"@setup\", ...]"},
}
"""The contract: name -> ``id`` (``#``-separated config id), ``overlays`` (which read it), ``description``,
``supply`` (how to add it to a bundle) and ``referenced`` (the bundle must also read it: an id an overlay adds to but
nothing uses would be a silent no-op)."""


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


def check(config: Any, overlays: Iterable[str] = OVERLAYS) -> list[str]:
    """The problems of a bundle config with respect to the contract of ``overlays`` (empty when it keeps it).

    Args:
        config: the bundle's ``train.json`` (a path or a list of paths, merged as ``monai.bundle run`` merges them),
            a config dict or a ``monai.bundle.ConfigParser``.
        overlays: the overlays to stack (names of :data:`OVERLAYS`, with or without ``.json``).

    Returns:
        One line per missing (or unread) id: the id, the overlays that need it, what it is, and how to supply it.
    """
    wanted = [str(o).removesuffix(".json") for o in overlays]
    unknown = [o for o in wanted if o not in OVERLAYS]
    if unknown:
        raise ContractError(f"Unknown overlay(s) {unknown}: the contract covers {', '.join(OVERLAYS)}.")
    parser, where, text = _load(config)
    problems = []
    for prop in PROPERTIES.values():
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


def require(config: Any, overlays: Iterable[str] = OVERLAYS) -> None:
    """:func:`check`, raising :class:`ContractError` with every problem (one per line) when there is one."""
    problems = check(config, overlays)
    if problems:
        raise ContractError(f"The bundle does not keep the contract of the method overlays "
                            f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))


def overlays_of(configs: Sequence[str]) -> list[str]:
    """The method overlays among config file names (``["configs/train.json", "configs/amat.json"] -> ["amat"]``)."""
    names = [Path(c).stem for c in configs]
    return [n for n in names if n in OVERLAYS]


def main(*configs: str, overlays: Any = OVERLAYS) -> None:
    """Check bundle config files (merged in the order given) against the contract of ``overlays``; prints OK or
    the problems and ``ERROR (contract): ...`` as the last line."""
    if isinstance(overlays, str):
        overlays = [o.strip() for o in overlays.strip("[]()").split(",") if o.strip()]
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
