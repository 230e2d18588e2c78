"""The library's layers: no import runs up them.

1. core: math, data, task adapters and engine-independent helpers (attacks, margins, thresholds, metrics, tasks, ...);
2. handlers: Ignite/MONAI handlers built on the core;
3. drivers: the method registry, the stage engine, the experiment tool and the study, the report, the toy problem, packaging and the
   rendering of bundle configs, the tools for foreign bundles.

A module may import from its own layer and the layers below it, never from a layer above (checked on the source's
import statements, lazy imports inside functions included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "common"

HANDLERS = {"handlers"}
DRIVERS = {"methods", "toy", "report", "results", "report_figures", "engine", "experiment", "study", "study_grid",
           "study_analysis", "study_report", "distribution", "contract", "foreign", "__main__",
           "bundle_configs"}  # bundle_configs renders the method overlays from the registry


def _layer(top: str) -> int:
    return 2 if top in DRIVERS else 1 if top in HANDLERS else 0


def _imported_tops(path: Path, library: Path = LIBRARY) -> set[str]:
    """The top-level library modules (e.g. ``handlers``, ``margins``) that ``path`` imports."""
    package = list(path.relative_to(library).parent.parts)
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                names = base + (node.module.split(".") if node.module else [])
                if not names:  # "from . import x" at the top of the package
                    tops.update(a.name for a in node.names)
                    continue
            elif node.module and node.module.startswith("robust_bundles."):
                names = node.module.split(".")[1:]
            else:
                continue
            tops.add(names[0])
        elif isinstance(node, ast.Import):
            tops.update(a.name.split(".")[1] for a in node.names if a.name.startswith("robust_bundles."))
    return tops


MODULES = sorted(p for p in LIBRARY.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_parser_sees_relative_absolute_and_lazy_imports(tmp_path):
    fake = tmp_path / "common"
    (fake / "tasks").mkdir(parents=True)
    src = fake / "tasks" / "x.py"
    src.write_text("from ..handlers.task_metric import f\nfrom . import y\nimport robust_bundles.study\n"
                   "def g():\n    from ..methods import get\n")
    assert _imported_tops(src, fake) == {"handlers", "tasks", "study", "methods"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_no_import_runs_up_the_layers(path):
    own = path.relative_to(LIBRARY).parts[0].removesuffix(".py")
    up = sorted(t for t in _imported_tops(path) if _layer(t) > _layer(own))
    assert not up, (f"common/{path.relative_to(LIBRARY)} (layer {_layer(own)}) imports {up} from a layer above: move "
                    f"what it needs down (e.g. robust_bundles.weights, robust_bundles.engine_io) or the module up.")


def test_the_layout_names_the_reference_run_of_the_registry():
    from robust_bundles import layout, methods

    assert layout.STD_RUN == methods.reference().run_name()
