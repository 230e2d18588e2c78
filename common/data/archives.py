"""An MSD task folder from a folder, an archive (.tar, .tar.gz, .zip ...) or a URL, extracted safely.

Archive members are checked before anything is written: absolute paths, ``..``, links leaving the destination and
macOS ``._`` files are refused or skipped; extraction goes to a temporary folder that is renamed when complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from .msd import _LAYOUT, ARCHIVE_SUFFIXES, _dataset_json_path, _is_appledouble

__all__ = ["fetch_msd"]

logger = logging.getLogger("robust_bundles.data.msd")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _check_member(name: str, dest: str, archive: Path, link: str | None = None, hardlink: bool = False) -> None:
    """Refuse an archive member (or link target) that would land outside ``dest``."""
    unsafe = f"refusing to extract {archive}: the archive is unsafe or damaged; re-download it from its source."
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"archive member {name!r} has an absolute path: {unsafe}")
    target = os.path.realpath(os.path.join(dest, name))
    if not _inside(target, dest):
        raise ValueError(f"archive member {name!r} would be written outside {dest}: {unsafe}")
    if link is not None:
        base = dest if hardlink else os.path.dirname(target)
        if os.path.isabs(link) or not _inside(os.path.realpath(os.path.join(base, link)), dest):
            raise ValueError(f"archive member {name!r} links to {link!r} outside {dest}: {unsafe}")


def _archive_names(archive: Path, dest: str) -> list[str]:
    """Check every member of a tar or zip archive and return the names of the regular files (no ``._`` files)."""
    names = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member(name, dest, archive)
                if not name.endswith("/") and not _is_appledouble(name):
                    names.append(name)
        return names
    with tarfile.open(archive, "r:*") as tf:
        for member in tf.getmembers():
            link = member.linkname if (member.issym() or member.islnk()) else None
            _check_member(member.name, dest, archive, link, hardlink=member.islnk())
            if member.isdev() or member.isfifo():
                raise ValueError(
                    f"archive member {member.name!r} is a device or pipe: refusing to extract {archive}; "
                    f"re-download it from its source."
                )
            if member.isfile() and not _is_appledouble(member.name):
                names.append(member.name)
    return names


def _extract_all(archive: Path, dest: Path) -> None:
    """Extract the (already checked) archive into ``dest``, skipping macOS ``._`` files."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest, members=[n for n in zf.namelist() if not _is_appledouble(n)])
        return
    with tarfile.open(archive, "r:*") as tf:
        members = [m for m in tf.getmembers() if not _is_appledouble(m.name)]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and security backports: a second line of defence
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - old Pythons; members were checked by _archive_names
            tf.extractall(dest, members=members)


def _archive_stem(archive: Path) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if archive.name.endswith(suffix):
            return archive.name[: -len(suffix)]
    return archive.stem


def _extract_msd_archive(archive: Path, root: Path) -> Path:
    """Safely extract an MSD task archive into ``root`` and return the folder holding dataset.json."""
    if not (tarfile.is_tarfile(archive) or zipfile.is_zipfile(archive)):
        raise ValueError(
            f"{archive} is not a tar or zip archive: give an MSD task folder, a .tar/.tar.gz/.zip archive of one "
            f"(e.g. Task04_Hippocampus.tar), or its http(s) URL."
        )
    root.mkdir(parents=True, exist_ok=True)
    dest = os.path.realpath(root)
    names = _archive_names(archive, dest)
    jsons = sorted((n for n in names if Path(n).name == "dataset.json"), key=lambda n: (len(Path(n).parts), n))
    if not jsons:
        raise ValueError(f"{archive} holds no dataset.json: it is not an MSD task archive ({_LAYOUT}).")
    rel = Path(jsons[0]).parent  # e.g. Task04_Hippocampus, or "." for an archive of the folder's contents
    top = rel.parts[0] if rel.parts else _archive_stem(archive)
    dataset_dir = root / top / Path(*rel.parts[1:]) if rel.parts else root / top
    if (dataset_dir / "dataset.json").is_file():
        logger.info("%s already extracted to %s", archive.name, dataset_dir)
        return dataset_dir
    if (root / top).exists():
        raise FileExistsError(
            f"{root / top} exists but holds no complete extraction of {archive.name} (no dataset.json): remove it "
            f"and run again."
        )
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".extract-{top}-"))
    try:
        _extract_all(archive, tmp)
        os.replace(tmp / top if rel.parts else tmp, root / top)  # appears whole, or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("extracted %s to %s", archive.name, dataset_dir)
    return dataset_dir


def fetch_msd(
    source: str | os.PathLike, root: str | os.PathLike, hash_val: str | None = None, hash_type: str = "md5"
) -> Path:
    """Return an MSD task folder from a folder, an archive or a URL.

    Args:
        source: one of

            - an existing MSD task folder (holding dataset.json): returned as is;
            - a path or ``file://`` URL of a ``.tar``/``.tar.gz``/``.zip`` archive such as ``Task04_Hippocampus.tar``:
              extracted into ``root`` (members that would land outside ``root``, absolute paths, links out of
              ``root`` and device files are refused; macOS ``._`` files are skipped; an existing complete
              extraction is reused);
            - an ``http(s)://`` URL of such an archive: downloaded into ``root`` with ``monai.apps.download_url``
              (needs network access; MSD archives are listed at http://medicaldecathlon.com), then extracted as
              above.
        root: the folder that archives are downloaded and extracted into (created).
        hash_val: optional checksum of a downloaded archive (checked by MONAI).
        hash_type: the checksum's algorithm ("md5", "sha1", "sha256", "sha512").

    Returns:
        The folder that holds dataset.json.

    Raises:
        FileNotFoundError: a local source does not exist, or a folder is not an MSD task folder.
        ValueError: the archive is unsafe, not an archive, or holds no dataset.json.
    """
    root = Path(root).expanduser()
    text = os.fspath(source)
    parsed = urlparse(text) if isinstance(text, str) else None
    if parsed is not None and parsed.scheme in ("http", "https"):
        from monai.apps import download_url  # imported here: MONAI's download machinery is only needed for URLs

        file_name = Path(parsed.path).name or "msd_task.tar"
        root.mkdir(parents=True, exist_ok=True)
        archive = root / file_name
        download_url(text, filepath=archive, hash_val=hash_val, hash_type=hash_type)
        return _extract_msd_archive(archive, root)
    if parsed is not None and parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: only local file:// URLs are supported (file:///path/to/Task04_Hippocampus.tar).")
        path = Path(url2pathname(parsed.path))
    else:
        path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"MSD source {path} does not exist: give an MSD task folder (with dataset.json), a .tar/.tar.gz/.zip "
            f"archive of one, or an http(s) URL (e.g. the Task04_Hippocampus.tar link of medicaldecathlon.com)."
        )
    if path.is_dir():
        return _dataset_json_path(path).parent
    return _extract_msd_archive(path, root)

