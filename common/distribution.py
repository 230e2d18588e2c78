"""Bundles as model-zoo zips: packaging with the library inside, a collection index, and safe, verified downloads.

A bundle of this repository uses the shared library ``robust_bundles`` (source: ``common/``). A zip made here runs
alone: it carries the library modules its configs need as ``<bundle>/robust_bundles/`` (``monai.bundle run`` puts
the bundle folder on ``sys.path`` before it runs a config, so ``$import robust_bundles`` finds that copy first), so
only the packages listed in its ``configs/metadata.json`` must be installed.

- :func:`package_bundle` stages a bundle folder (configs, docs with the metadata schema ``docs/meta_schema.json``,
  LICENSE, the library copy, trained weights at ``models/model.pt`` and, where export works, ``models/model.ts``) and
  writes ``<name>.zip`` deterministically (same input, same bytes, same sha256). The model files can be hosted
  instead of zipped (all of them: ``model.pt`` and ``model.ts``): ``large_files.yml`` then lists their URL and sha256
  (the model-zoo format; ``python -m monai.bundle download_large_files`` reads it too, with PyYAML).
- :func:`write_index` writes the collection index: JSON, one entry per bundle with name, version, sha256, size, url.
- :func:`download_bundle` fetches a bundle by name from an index (or a zip by URL), verifies size and sha256,
  extracts it without letting any member escape the target folder, then fetches and verifies hosted weights, all in
  a temporary folder next to the target that is renamed into place only when everything is verified (a failure
  leaves nothing); a zip by URL without a sha256 is installed with a warning that nothing was verified.

URLs may be ``https://``, ``http://``, ``file://`` or plain paths, so everything works from local files too.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .io import atomic_write, atomic_write_json, atomic_write_text, sha256_file

__all__ = [
    "LIBRARY",
    "SCHEMA_FILE",
    "hosted_dir",
    "IntegrityError",
    "library_modules",
    "third_party_imports",
    "stage_bundle",
    "write_zip",
    "package_bundle",
    "write_index",
    "read_index",
    "fetch",
    "safe_extract",
    "download_bundle",
    "read_large_files",
    "download_large_files",
    "sha256_of",
    "path_to_url",
    "describe",
]

logger = logging.getLogger("robust_bundles.distribution")

LIBRARY = "robust_bundles"
"""The import name of the shared library, inside a bundle zip too."""

SCHEMA_FILE = "meta_schema.json"
"""The metadata schema next to the bundle folders (``bundles/meta_schema.json``); each zip ships it in ``docs/``."""

INDEX_FORMAT = 1
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)  # fixed member timestamps: the same bundle gives the same zip bytes
_SKIP_DIRS = {"__pycache__", "runs", "data", "eval", "logs", "models", ".ipynb_checkpoints", LIBRARY}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".tmp"}


class IntegrityError(ValueError):
    """A downloaded file does not match its recorded size or checksum, or an archive member is unsafe."""


# ----------------------------------------------------------------------------------------------------------------------
# which library modules a bundle needs
# ----------------------------------------------------------------------------------------------------------------------
def _library_root() -> Path:
    return Path(__file__).resolve().parent


def _module_file(root: Path, module: str) -> Path | None:
    """The file of ``robust_bundles.<module>`` (dotted, relative to the package) under ``root``, or None."""
    base = root.joinpath(*module.split(".")) if module else root
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _relative_imports(path: Path, module: str, root: Path) -> set[str]:
    """Library modules (dotted, relative to the package) that ``path`` imports, relative or by full name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(p for p in parts + ([node.module] if node.module else []) if p)
            elif node.module and (node.module == LIBRARY or node.module.startswith(LIBRARY + ".")):
                base = node.module[len(LIBRARY) + 1 :]
            else:
                continue
            names = [base] + [f"{base}.{a.name}" if base else a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name[len(LIBRARY) + 1 :] for a in node.names if a.name.startswith(LIBRARY + ".")]
        found |= {n for n in names if _module_file(root, n) is not None}
    return found


def library_modules(config_texts: Iterable[str], root: Path | None = None) -> list[str]:
    """The library modules (dotted, relative to ``robust_bundles``) that configs use, with everything they import.

    A config names a module as ``robust_bundles.<module>...`` in ``_target_`` paths and ``$`` expressions; the
    closure follows relative and absolute library imports (the package ``__init__`` files included).
    """
    root = root or _library_root()
    wanted: set[str] = {""}
    for text in config_texts:
        for dotted in re.findall(rf"\b{LIBRARY}((?:\.[A-Za-z_]\w*)+)", text):
            parts = dotted.strip(".").split(".")
            for i in range(1, len(parts) + 1):  # the longest prefix that is a module, and its packages
                if _module_file(root, ".".join(parts[:i])) is not None:
                    wanted.add(".".join(parts[:i]))
    todo = list(wanted)
    while todo:
        module = todo.pop()
        path = _module_file(root, module)
        if path is None:
            continue
        parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for dep in _relative_imports(path, module, root) | parents:
            if dep not in wanted:
                wanted.add(dep)
                todo.append(dep)
    return sorted(wanted)


def third_party_imports(modules: Sequence[str], root: Path | None = None) -> set[str]:
    """Top-level names of the non-library, non-standard-library packages that ``modules`` import."""
    import sys

    root = root or _library_root()
    stdlib = set(getattr(sys, "stdlib_module_names", ())) | {"__future__"}
    found: set[str] = set()
    for module in modules:
        path = _module_file(root, module)
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return {n for n in found if n not in stdlib and n != LIBRARY}


# ----------------------------------------------------------------------------------------------------------------------
# packaging
# ----------------------------------------------------------------------------------------------------------------------
def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file."""
    return sha256_file(path)


def path_to_url(path: str | os.PathLike) -> str:
    """``file://`` URL of a local path."""
    return Path(path).resolve().as_uri()


def _copy_tree(src: Path, dst: Path) -> None:
    for item in sorted(src.iterdir()):
        if item.name in _SKIP_DIRS or item.suffix in _SKIP_SUFFIXES or item.name.startswith("."):
            continue
        if item.is_symlink():
            raise ValueError(f"{item} is a symbolic link: a bundle zip holds plain files only; copy the target in.")
        if item.is_dir():
            _copy_tree(item, dst / item.name)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, dst / item.name)


def _large_files_yaml(entries: Sequence[dict]) -> str:
    lines = ["# Files hosted outside the zip; python scripts/bundles.py download verifies them (sha256).",
             "# Also: pip install pyyaml && python -m monai.bundle download_large_files --bundle_path <bundle>",
             "large_files:"]
    for e in entries:
        lines += [f'  - path: "{e["path"]}"', f'    url: "{e["url"]}"', f'    hash_val: "{e["hash_val"]}"',
                  f'    hash_type: "{e["hash_type"]}"']
    return "\n".join(lines) + "\n"


def read_large_files(bundle_dir: str | os.PathLike) -> list[dict]:
    """The entries of ``<bundle>/large_files.yml`` (model-zoo format), without needing PyYAML.

    Raises:
        ValueError: the file is not in the format ``large_files: - {path, url, hash_val, hash_type}``.
    """
    path = Path(bundle_dir) / "large_files.yml"
    if not path.is_file():
        return []
    entries: list[dict] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#") or line.strip() == "large_files:":
            continue
        m = re.fullmatch(r"\s*(-\s+)?(\w+):\s*(.*)", line)
        if not m:
            raise ValueError(f"{path} line {n}: {raw!r} is not 'key: value' (model-zoo large_files format).")
        if m.group(1) or not entries:
            entries.append({})
        value = m.group(3).strip()
        entries[-1][m.group(2)] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value
    for e in entries:
        missing = [k for k in ("path", "url") if not e.get(k)]
        if missing:
            raise ValueError(f"{path}: an entry lacks {missing}: {e}")
    return entries


def _export_torchscript(staged: Path, python: str | None = None) -> bool:
    """``models/model.ts`` by MONAI's ``ckpt_export`` (traced, with the input shape of metadata.json); False and a
    logged reason when the network cannot be exported."""
    import subprocess
    import sys

    meta = json.loads((staged / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    shape = [1, int(image["num_channels"]), *[int(s) for s in image["spatial_shape"]]]
    cmd = [python or sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
           "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json",
           "--config_file", "configs/inference.json", "--use_trace", "True", "--input_shape", json.dumps(shape)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=staged, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not (staged / "models" / "model.ts").is_file():
        logger.warning("TorchScript export of %s failed; the zip has models/model.pt only:\n%s", staged.name,
                       proc.stdout[-2000:])
        return False
    return True


def stage_bundle(
    bundle_dir: str | os.PathLike,
    stage_root: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    weights_url: str | None = None,
    export_torchscript: bool = True,
) -> Path:
    """Assemble the folder that goes into the zip: ``<stage_root>/<name>/``.

    Args:
        bundle_dir: the bundle in the repository (``bundles/<name>``).
        stage_root: an empty working folder.
        weights: the trained weights (a state dict ``.pt``) to ship as ``models/model.pt``; default
            ``<bundle>/models/model.pt`` when it exists, else none.
        weights_url: host the weights at this URL instead of zipping them: ``large_files.yml`` gets the URL and the
            sha256 of ``models/model.pt`` and of every other model file (``model.ts`` next to it, same folder URL);
            the files are moved to :func:`hosted_dir` and the caller puts them at those URLs.
        export_torchscript: also ship ``models/model.ts`` where MONAI's traced export works.

    Returns:
        The staged bundle folder.
    """
    src = Path(bundle_dir).resolve()
    meta_file = src / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{src} is not a bundle: {meta_file} is missing.")
    meta = json.loads(meta_file.read_text())
    name = meta.get("name") or src.name
    staged = Path(stage_root) / name
    if staged.exists():
        raise FileExistsError(f"{staged} exists: give an empty stage_root.")
    _copy_tree(src, staged)
    (staged / "task.json").unlink(missing_ok=True)  # the source of rendered configs (bundle_configs), not needed

    texts = [p.read_text(encoding="utf-8") for p in sorted((staged / "configs").rglob("*.json"))]
    modules = library_modules(texts)
    root = _library_root()
    for module in modules:
        path = _module_file(root, module)
        assert path is not None
        target = staged / LIBRARY / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    missing = sorted(third_party_imports(modules) - _declared_imports(meta))
    if missing:
        raise ValueError(
            f"The library modules that {name} needs import {missing}, which {meta_file} does not declare: add them "
            f"to required_packages_version (a bundle zip must run with only its declared packages)."
        )

    schema = src.parent / SCHEMA_FILE
    if schema.is_file():  # verify_metadata --filepath <bundle>/docs/meta_schema.json works offline
        (staged / "docs").mkdir(exist_ok=True)
        shutil.copyfile(schema, staged / "docs" / SCHEMA_FILE)

    weights = Path(weights) if weights is not None else (src / "models" / "model.pt")
    if weights.is_file():
        (staged / "models").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, staged / "models" / "model.pt")
        reference = weights.parent / "confidence_reference.json"  # what inference compares each image with
        if reference.is_file():
            shutil.copyfile(reference, staged / "models" / reference.name)
        if export_torchscript:
            _export_torchscript(staged)
        if weights_url:  # every model file is hosted: the zip holds configs and code only
            hosted = hosted_dir(stage_root, name)
            entries = []
            for f in sorted((staged / "models").iterdir()):
                url = weights_url if f.name == "model.pt" else f"{weights_url.rsplit('/', 1)[0]}/{f.name}"
                entries.append({"path": f"models/{f.name}", "url": url, "hash_val": sha256_of(f),
                                "hash_type": "sha256"})
                hosted.mkdir(parents=True, exist_ok=True)
                shutil.move(str(f), str(hosted / f.name))
            atomic_write_text(staged / "large_files.yml", _large_files_yaml(entries))
            (staged / "models").rmdir()
    elif weights_url:
        raise FileNotFoundError(f"weights_url was given but there are no weights to host: {weights} does not exist.")
    return staged


def hosted_dir(stage_root: str | os.PathLike, name: str) -> Path:
    """Where :func:`stage_bundle` puts the model files it hosts instead of zipping (``models/`` of the bundle)."""
    return Path(stage_root) / ".hosted" / name / "models"


#: import names of the packages that metadata.json may declare (distribution name -> import name)
_IMPORT_NAMES = {"pytorch-ignite": "ignite", "pyyaml": "yaml", "scikit-image": "skimage", "pillow": "PIL",
                 "opencv-python": "cv2", "scikit-learn": "sklearn"}


def _declared_imports(meta: dict) -> set[str]:
    names = {"torch", "monai", "numpy"}
    names |= {_IMPORT_NAMES.get(k.lower(), k.lower().replace("-", "_")) for k in meta.get("required_packages_version", {})}
    return names


def write_zip(folder: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip ``folder`` as ``<folder name>/...`` with sorted members and fixed timestamps (reproducible bytes),
    written whole."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for p in files:
                info = zipfile.ZipInfo(f"{folder.name}/{p.relative_to(folder).as_posix()}", date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                z.writestr(info, p.read_bytes())

    return atomic_write(zip_path, write)


@dataclass
class IndexEntry:
    name: str
    version: str
    sha256: str
    size: int
    url: str
    description: str = ""
    weights: str = "none"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def package_bundle(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_url: str | None = None,
    weights: str | os.PathLike | None = None,
    host_weights: bool = False,
    export_torchscript: bool = True,
) -> IndexEntry:
    """Write ``<out_dir>/<name>.zip`` (and, with ``host_weights``, ``<out_dir>/<name>/models/model.pt``) and return
    its index entry.

    Args:
        bundle_dir: the bundle folder.
        out_dir: where the zip (and hosted weights) go.
        base_url: the URL under which ``out_dir`` will be served (default: its ``file://`` URL).
        weights: the weights to ship (default ``<bundle>/models/model.pt`` if present).
        host_weights: keep the weights out of the zip, next to it, listed in ``large_files.yml`` with their sha256.
        export_torchscript: also ship ``models/model.ts`` where export works.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = (base_url or path_to_url(out)).rstrip("/")
    meta = json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())
    name = meta.get("name") or Path(bundle_dir).name
    src_weights = Path(weights) if weights is not None else Path(bundle_dir) / "models" / "model.pt"
    with tempfile.TemporaryDirectory(prefix=f"stage_{name}_") as tmp:
        weights_url = f"{base}/{name}/models/model.pt" if host_weights and src_weights.is_file() else None
        staged = stage_bundle(bundle_dir, tmp, src_weights, weights_url, export_torchscript)
        if weights_url:
            for f in sorted(hosted_dir(tmp, name).iterdir()):
                hosted = out / name / "models" / f.name
                hosted.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(hosted, lambda t, f=f: shutil.copyfile(f, t))
        zip_path = write_zip(staged, out / f"{name}.zip")
    kind = "hosted (large_files.yml)" if weights_url else "in the zip" if src_weights.is_file() else "none"
    return IndexEntry(name=name, version=str(meta.get("version", "")), sha256=sha256_of(zip_path),
                      size=zip_path.stat().st_size, url=f"{base}/{name}.zip",
                      description=str(meta.get("task", "")), weights=kind)


def write_index(entries: Sequence[IndexEntry], path: str | os.PathLike) -> Path:
    """The collection index: ``{"format": 1, "bundles": [{name, version, sha256, size, url, ...}]}``."""
    data = {"format": INDEX_FORMAT, "bundles": [e.as_dict() for e in sorted(entries, key=lambda e: e.name)]}
    atomic_write_json(path, data)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------------
# downloading
# ----------------------------------------------------------------------------------------------------------------------
def _local_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(url).expanduser()
    return None


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, size: int | None = None) -> Path:
    """Copy or download ``url`` to ``dest`` (written whole) and check its size and sha256 when given.

    Raises:
        FileNotFoundError: a local file or ``file://`` URL that does not exist.
        IntegrityError: size or sha256 differ (the file is not kept).
        OSError: the download failed (the message names the URL).
    """
    dest = Path(dest)
    local = _local_path(url)
    if local is not None and not local.is_file():
        raise FileNotFoundError(f"{url} does not exist ({local}).")
    allowed = ("http", "https", "file", "")
    if local is None and urllib.parse.urlparse(url).scheme not in allowed:
        raise ValueError(f"{url}: only https://, http://, file:// URLs and local paths are supported.")

    def write(tmp: str) -> None:
        if local is not None:
            shutil.copyfile(local, tmp)
        else:
            try:
                with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:  # noqa: S310 (scheme checked)
                    shutil.copyfileobj(r, f, 1 << 20)
            except OSError as e:
                raise OSError(f"Download of {url} failed: {e}") from e
        got_size = os.path.getsize(tmp)
        if size is not None and got_size != int(size):
            raise IntegrityError(f"{url}: {got_size} bytes, but the index says {int(size)}: the download is "
                                 f"incomplete or the index is stale; download again or update the index.")
        if sha256 is not None:
            got = sha256_of(tmp)
            if got != sha256.lower():
                raise IntegrityError(f"{url}: sha256 {got}, but {sha256.lower()} was expected: the file is damaged "
                                     f"or was replaced; download again, or check where the index points.")

    return atomic_write(dest, write)


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike, root: str | None = None) -> Path:
    """Extract a bundle zip into ``dest``; every member must lie under one top folder (``root`` when given).

    Raises:
        IntegrityError: an absolute path, ``..``, a link, a member outside the top folder, or several top folders;
            nothing is extracted then.
    """
    dest = Path(dest).resolve()
    with zipfile.ZipFile(zip_path) as z:
        infos = z.infolist()
        tops = set()
        for info in infos:
            name = info.filename
            parts = Path(name).parts
            mode = info.external_attr >> 16
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\\" in name:
                raise IntegrityError(f"{zip_path}: member {name!r} would be written outside {dest}; refusing it.")
            if stat.S_ISLNK(mode):
                raise IntegrityError(f"{zip_path}: member {name!r} is a symbolic link; refusing it.")
            tops.add(parts[0] if parts else "")
        if len(tops) != 1 or (root is not None and tops != {root}):
            raise IntegrityError(
                f"{zip_path}: a bundle zip holds one folder{f' named {root!r}' if root else ''}; it holds {sorted(tops)}."
            )
        top = dest / tops.pop()
        for info in infos:
            target = (dest / info.filename).resolve()
            if os.path.commonpath([dest, target]) != str(dest):
                raise IntegrityError(f"{zip_path}: member {info.filename!r} escapes {dest}; refusing it.")
        z.extractall(dest)
    return top


def _resolve(url: str, base: str) -> str:
    """``url`` as given when it is absolute (a scheme or an absolute path), else relative to the index ``base``."""
    if urllib.parse.urlparse(url).scheme or Path(url).is_absolute():
        return url
    local = _local_path(base)
    base_url = path_to_url(local) if local is not None else base
    return urllib.parse.urljoin(base_url, url)


def read_index(index: str) -> dict:
    """The collection index at a URL or path (see :func:`write_index`)."""
    local = _local_path(index)
    try:
        if local is not None:
            text = local.read_text(encoding="utf-8")
        else:
            with urllib.request.urlopen(index, timeout=60) as r:  # noqa: S310
                text = r.read().decode("utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"The bundle index {index} does not exist.") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read the bundle index {index}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("bundles"), list):
        raise ValueError(f"{index} is not a bundle index (a JSON object with a 'bundles' list).")
    return data


def download_large_files(bundle_dir: str | os.PathLike) -> list[Path]:
    """Fetch and verify the files that ``<bundle>/large_files.yml`` lists (skipping ones already there and intact)."""
    bundle_dir = Path(bundle_dir).resolve()
    done = []
    for e in read_large_files(bundle_dir):
        target = (bundle_dir / e["path"]).resolve()
        if os.path.commonpath([bundle_dir, target]) != str(bundle_dir):
            raise IntegrityError(f"large_files.yml path {e['path']!r} lies outside {bundle_dir}; refusing it.")
        want = e.get("hash_val") or None
        if e.get("hash_type", "sha256").lower() != "sha256" and want:
            raise ValueError(f"large_files.yml: hash_type {e['hash_type']!r} is not supported; use sha256.")
        if target.is_file() and want and sha256_of(target) == want.lower():
            done.append(target)
            continue
        logger.info("fetching %s -> %s", e["url"], target)
        done.append(fetch(e["url"], target, sha256=want))
    return done


def download_bundle(
    name: str | None = None,
    bundle_dir: str | os.PathLike = ".",
    index: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    version: str | None = None,
) -> Path:
    """Download, verify and extract a bundle and fetch its hosted weights; the bundle folder appears only when all
    of it is verified (nothing is left behind by a failure).

    Args:
        name: the bundle name (needed with ``index``).
        bundle_dir: the folder to extract into (the bundle lands in ``<bundle_dir>/<name>``).
        index: the collection index URL or path: the zip's URL, size and sha256 come from it.
        url: a zip URL or path instead of an index (then ``sha256`` is checked when given).
        sha256: the expected sha256 of the zip (with ``url``).
        version: a version from the index (default: the highest).

    Returns:
        The extracted bundle folder.
    """
    size = None
    if index is not None:
        if not name:
            raise ValueError("Give --name with --index.")
        entries = [e for e in read_index(index)["bundles"] if e.get("name") == name]
        if version is not None:
            entries = [e for e in entries if str(e.get("version")) == str(version)]
        if not entries:
            have = sorted({e.get("name") for e in read_index(index)["bundles"]})
            raise KeyError(f"No bundle {name!r}{f' version {version}' if version else ''} in {index}; it has {have}.")
        entry = max(entries, key=lambda e: tuple(int(p) if p.isdigit() else 0 for p in str(e.get("version")).split(".")))
        url, sha256, size = _resolve(entry["url"], index), entry["sha256"], entry.get("size")
    if url is None:
        raise ValueError("Give --index (with --name) or --url.")
    if sha256 is None:
        logger.warning("WARNING: %s is not verified (no --sha256 given and no index): a damaged or replaced zip "
                       "would be installed; give --sha256 <hex> or --index <index.json>.", url)
    out = Path(bundle_dir).expanduser()
    if name and (out / name).exists():
        raise FileExistsError(f"{out / name} exists: remove it or give another --bundle_dir.")
    out.mkdir(parents=True, exist_ok=True)
    # everything is assembled in a temporary folder inside bundle_dir (same filesystem) and renamed into place once
    # the zip and every hosted file are verified: a failed download leaves nothing behind
    with tempfile.TemporaryDirectory(dir=out, prefix=".download_") as tmp:
        zip_path = fetch(url, Path(tmp) / "bundle.zip", sha256=sha256, size=size)
        staging = Path(tmp) / "x"
        top = safe_extract(zip_path, staging, root=name)
        target = out / top.name
        if target.exists():
            raise FileExistsError(f"{target} exists: remove it or give another --bundle_dir.")
        download_large_files(top)
        os.replace(top, target)
    return target


def describe(entries: Iterable[IndexEntry | dict]) -> str:
    """A Markdown table of index entries."""
    rows = ["| bundle | version | size | sha256 | weights |", "|---|---|---:|---|---|"]
    for e in entries:
        d = e.as_dict() if isinstance(e, IndexEntry) else e
        rows.append(f"| {d['name']} | {d['version']} | {int(d['size']) / 1e6:.1f} MB | {d['sha256'][:16]}... | "
                    f"{d.get('weights', '')} |")
    return "\n".join(rows)
