"""Package the bundles as model-zoo zips that run alone, and download them safely.

    python scripts/bundles.py package                        # every bundle in bundles/ -> dist/bundles/
    python scripts/bundles.py package --bundles "[hippocampus_mri_segmentation]" --out_dir dist/bundles \\
        --base_url https://example.org/robust-bundles --host_weights
    python scripts/bundles.py download --name hippocampus_mri_segmentation --index dist/bundles/index.json \\
        --bundle_dir ~/bundles
    python scripts/bundles.py download --url file:///tmp/hippocampus_mri_segmentation.zip --sha256 <hex> \\
        --bundle_dir ~/bundles
    python scripts/bundles.py list --index dist/bundles/index.json
    python scripts/bundles.py render [--check]               # configs/ of bundles with a task.json, from the base
    python scripts/bundles.py derive BUNDLE                  # its task.json from its configs (a new task)

``render`` writes the configs of every bundle that has a ``task.json`` (a family's shared base configs in
``common/configs/<family>/`` with the bundle's overlays applied, see ``robust_bundles.bundle_configs``); ``--check``
writes nothing and fails when a committed config differs from its rendering.

``package`` writes ``<out_dir>/<name>.zip`` for each bundle (configs, docs, LICENSE, the ``robust_bundles`` modules
its configs need, ``models/model.pt`` and ``models/model.ts`` when the bundle folder has trained weights at
``models/model.pt`` or ``--weights`` names them) and ``<out_dir>/index.json`` (name, version, sha256, size, url).
Each zip also carries the metadata schema as ``docs/meta_schema.json`` (``verify_metadata --filepath`` works offline).
With ``--host_weights`` the model files (``model.pt`` and ``model.ts``) stay out of the zips, next to them under
``<out_dir>/<name>/models/``, and each zip's ``large_files.yml`` lists their URL and sha256.

``download`` verifies the zip's size and sha256 (from the index, or ``--sha256``; with ``--url`` and no ``--sha256``
it warns that nothing was verified), refuses archive members that would land outside the target folder, extracts,
and fetches and verifies hosted weights, in a temporary folder renamed into place only when all of it is verified
(a failed download leaves nothing behind). Then:

    python -m monai.bundle run --config_file ~/bundles/<name>/configs/inference.json --input_dir ... --output_dir ...

``python -m monai.bundle download --url ... --bundle_dir ...`` works on these zips too, but checks no checksum.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import fire

from robust_bundles import bundle_configs, distribution
from robust_bundles.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
    return [str(v) for v in value]


def package(
    bundles: Any = None,
    out_dir: str = str(REPO / "dist" / "bundles"),
    base_url: str | None = None,
    weights: dict | str | None = None,
    host_weights: bool = False,
    torchscript: bool = True,
) -> None:
    """Write ``<out_dir>/<name>.zip`` for the bundles and ``<out_dir>/index.json``.

    Args:
        bundles: bundle names or folders (default: every folder in bundles/ with configs/metadata.json).
        out_dir: output folder (created).
        base_url: the URL where out_dir will be served (default: its file:// URL); the index and large_files.yml
            point there.
        weights: the weights to ship, as a path (one bundle) or a JSON dict name -> path; default
            ``bundles/<name>/models/model.pt`` where it exists.
        host_weights: keep the weights out of the zips (next to them, listed in large_files.yml with sha256).
        torchscript: also ship models/model.ts where the traced export works.
    """
    folders = []
    for b in _names(bundles) or sorted(p.name for p in (REPO / "bundles").iterdir()
                                       if (p / "configs" / "metadata.json").is_file()):
        path = Path(b) if Path(b).is_dir() else REPO / "bundles" / b
        if not (path / "configs" / "metadata.json").is_file():
            raise SystemExit(f"bundles.py: {b} is not a bundle (no configs/metadata.json in {path}).")
        folders.append(path)
    if isinstance(weights, str) and weights.strip().startswith("{"):
        weights = json.loads(weights)
    if isinstance(weights, (str, Path)) and len(folders) != 1:
        raise SystemExit("bundles.py: --weights PATH needs exactly one bundle; give a dict name -> path for several.")
    entries = []
    for i, folder in enumerate(folders, 1):
        w = weights.get(folder.name) if isinstance(weights, dict) else weights
        print(f"[{i}/{len(folders)}] packaging {folder.name} ...", flush=True)
        entry = distribution.package_bundle(folder, out_dir, base_url, w, host_weights, torchscript)
        print(f"  {entry.url}  {entry.size / 1e6:.1f} MB  sha256 {entry.sha256}  weights: {entry.weights}",
              flush=True)
        entries.append(entry)
    index = Path(out_dir) / "index.json"
    old = {}
    if index.is_file():  # keep the entries of bundles not packaged this time
        old = {e["name"]: e for e in distribution.read_index(str(index))["bundles"]}
    merged = {**old, **{e.name: e.as_dict() for e in entries}}
    distribution.write_index([distribution.IndexEntry(**e) for e in merged.values()], index)
    print(f"\nindex: {index}\n\n{distribution.describe(sorted(merged.values(), key=lambda e: e['name']))}")


def download(
    name: str | None = None,
    bundle_dir: str = ".",
    index: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    version: str | None = None,
) -> None:
    """Download, verify (size, sha256) and extract a bundle, then fetch its hosted weights.

    Args:
        name: the bundle name (with --index).
        bundle_dir: where to put it (the bundle lands in <bundle_dir>/<name>).
        index: the collection index (URL or path).
        url: a zip URL or path instead of an index.
        sha256: expected sha256 of the zip with --url.
        version: a version listed in the index (default: the highest).
    """
    target = distribution.download_bundle(name, bundle_dir, index, url, sha256, version)
    print(f"{target}\nRun it: python -m monai.bundle run --config_file {target / 'configs' / 'inference.json'}")


def list_bundles(index: str = str(REPO / "dist" / "bundles" / "index.json")) -> None:
    """Print the bundles of an index."""
    print(distribution.describe(distribution.read_index(index)["bundles"]))


def render(bundles: Any = None, check: bool = False) -> None:
    """Render the configs of the bundles that have a task.json from their family's base configs.

    Args:
        bundles: bundle names or folders (default: every folder in bundles/ with a task.json).
        check: write nothing; exit with an error listing the configs that differ from their rendering.
    """
    folders = [Path(b) if Path(b).is_dir() else REPO / "bundles" / b for b in _names(bundles)] or sorted(
        p.parent for p in (REPO / "bundles").glob(f"*/{bundle_configs.TASK_FILE}"))
    stale = {f.name: bundle_configs.stale_configs(f) for f in folders}
    if check:
        bad = {name: files for name, files in stale.items() if files}
        if bad:
            raise ValueError(f"configs differ from their rendering: {bad}; run python scripts/bundles.py render "
                             f"(edit the base in common/configs/ or the bundle's task.json, not configs/*.json).")
        print(f"{len(folders)} bundle(s): configs match their rendering")
        return
    for folder in folders:
        written = bundle_configs.render_bundle(folder)
        print(f"{folder.name}: {len(written)} config(s) written" + "".join(f"\n  {w}" for w in written))


def derive(bundle: str, family: str = "base") -> None:
    """Write a bundle's task.json as the smallest overlay of the family's base that renders its current configs.

    For a new task: copy a bundle of the family, edit its configs/*.json until it runs, then derive its task.json
    (its top-level "_desc_" is kept); from then on edit the task.json and render.

    Args:
        bundle: a bundle name or folder.
        family: the config family its configs derive from.
    """
    folder = Path(bundle) if Path(bundle).is_dir() else REPO / "bundles" / bundle
    path = folder / bundle_configs.TASK_FILE
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    task = bundle_configs.derive_task(folder, family)
    kept = {k: old[k] for k in ("_desc_", "method_values") if k in old}  # what no config shows
    task = {"family": task.pop("family"), **kept, **task}
    text = bundle_configs.format_task(task)
    atomic_write_text(path, text)
    print(f"{path}: {len(text.splitlines())} lines; configs match their rendering: "
          f"{bundle_configs.stale_configs(folder) == []}")


def cli(argv: list[str] | None = None) -> int:
    try:
        fire.Fire({"package": package, "download": download, "list": list_bundles, "render": render,
                   "derive": derive},
                  command=sys.argv[1:] if argv is None else argv)
    except (distribution.IntegrityError, FileNotFoundError, FileExistsError, KeyError, ValueError, OSError) as e:
        print(f"bundles.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
