"""Packaging and downloading bundles: which library modules a zip carries, reproducible zips, the index, checksums,
unsafe archives and hosted weights (all from local files and file:// URLs)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from robust_bundles import distribution as dist

REPO = Path(__file__).resolve().parents[1]


def _fake_bundle(root: Path, name: str = "toy_bundle", extra_config: str = "") -> Path:
    b = root / name
    (b / "configs").mkdir(parents=True)
    (b / "docs").mkdir()
    (b / "configs" / "metadata.json").write_text(json.dumps({
        "name": name, "version": "0.2.0", "task": "a toy", "required_packages_version": {"nibabel": "5"},
        "network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": [8, 8]}}},
    }))
    (b / "configs" / "train.json").write_text(json.dumps({
        "imports": ["$import robust_bundles"],
        "margins": {"_target_": "robust_bundles.margins.MarginBook", "num_samples": 2},
        "x": "$robust_bundles.io.atomic_write_text" + extra_config,
    }))
    (b / "docs" / "README.md").write_text("# toy\n")
    (b / "LICENSE").write_text("Apache-2.0\n")
    for skipped in ("runs", "data", "eval", "logs", "__pycache__"):
        (b / skipped).mkdir()
        (b / skipped / "junk.txt").write_text("not shipped")
    return b


def test_library_modules_follow_config_references_and_imports():
    texts = ['{"a": {"_target_": "robust_bundles.adversarial.AMATIteration"}}', '"$robust_bundles.io.x(1)"']
    modules = dist.library_modules(texts)
    # adversarial imports attacks, distributed, losses, margins and perturbation_memory; attacks imports thresholds
    # (AMAT's test on the iterates); margins and thresholds import io; the package __init__ comes along
    assert modules == ["", "adversarial", "attacks", "distributed", "io", "losses", "margins", "perturbation_memory",
                       "thresholds"]
    handlers = dist.library_modules(['"robust_bundles.handlers.MarginHandler"'])
    assert "handlers" in handlers and "handlers.margin_handler" in handlers and "margins" in handlers
    assert dist.third_party_imports(["adversarial", "attacks"]) == {"torch", "monai"}


def test_package_bundle_vendors_the_library_and_is_reproducible(tmp_path):
    bundle = _fake_bundle(tmp_path / "src")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not really a model")
    first = dist.package_bundle(bundle, tmp_path / "out1", weights=weights, export_torchscript=False)
    second = dist.package_bundle(bundle, tmp_path / "out2", weights=weights, export_torchscript=False)
    assert first.sha256 == second.sha256 and first.size == second.size  # same input, same bytes
    zip_path = tmp_path / "out1" / "toy_bundle.zip"
    assert first.sha256 == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert first.url == (tmp_path / "out1").resolve().as_uri() + "/toy_bundle.zip"
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {"toy_bundle/configs/train.json", "toy_bundle/models/model.pt", "toy_bundle/LICENSE",
            "toy_bundle/robust_bundles/__init__.py", "toy_bundle/robust_bundles/margins.py",
            "toy_bundle/robust_bundles/io.py"} <= names
    assert "toy_bundle/robust_bundles/adversarial.py" not in names  # only what the configs need
    assert not any(part in n for n in names for part in ("/runs/", "/data/", "/eval/", "/logs/", "__pycache__"))


def test_package_ships_the_confidence_reference_beside_the_weights(tmp_path):
    bundle = _fake_bundle(tmp_path / "src")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.pt").write_bytes(b"not really a model")
    (tmp_path / "w" / "confidence_reference.json").write_text('{"version": 1}')
    dist.package_bundle(bundle, tmp_path / "out", weights=tmp_path / "w" / "model.pt", export_torchscript=False)
    with zipfile.ZipFile(tmp_path / "out" / "toy_bundle.zip") as z:
        assert z.read("toy_bundle/models/confidence_reference.json") == b'{"version": 1}'


def test_package_refuses_undeclared_third_party_imports(tmp_path):
    bundle = _fake_bundle(tmp_path / "src", extra_config=" + str(robust_bundles.report)")  # report needs matplotlib
    with pytest.raises(ValueError, match=r"import \[.*'matplotlib'.*\].*required_packages_version"):
        dist.package_bundle(bundle, tmp_path / "out", export_torchscript=False)


def test_index_download_and_checksum(tmp_path):
    bundle = _fake_bundle(tmp_path / "src")
    entry = dist.package_bundle(bundle, tmp_path / "out", export_torchscript=False)
    index = dist.write_index([entry], tmp_path / "out" / "index.json")
    data = json.loads(index.read_text())
    assert data["format"] == 1 and data["bundles"][0]["name"] == "toy_bundle"
    assert set(data["bundles"][0]) >= {"name", "version", "sha256", "size", "url"}

    got = dist.download_bundle("toy_bundle", tmp_path / "dl", index=index.as_uri())
    assert got == tmp_path / "dl" / "toy_bundle"
    assert (got / "robust_bundles" / "margins.py").is_file() and (got / "configs" / "train.json").is_file()
    with pytest.raises(FileExistsError):
        dist.download_bundle("toy_bundle", tmp_path / "dl", index=str(index))
    with pytest.raises(KeyError, match=r"No bundle 'other'.*\['toy_bundle'\]"):
        dist.download_bundle("other", tmp_path / "dl2", index=str(index))

    # a relative url in the index is read relative to the index
    data["bundles"][0]["url"] = "toy_bundle.zip"
    (tmp_path / "out" / "relative.json").write_text(json.dumps(data))
    assert dist.download_bundle("toy_bundle", tmp_path / "dl3", index=str(tmp_path / "out" / "relative.json")).is_dir()

    # a damaged zip (or a stale index) is refused and nothing is extracted
    zip_path = tmp_path / "out" / "toy_bundle.zip"
    raw = bytearray(zip_path.read_bytes())
    raw[100] ^= 0xFF
    zip_path.write_bytes(bytes(raw))
    with pytest.raises(dist.IntegrityError, match="sha256 .* was expected"):
        dist.download_bundle("toy_bundle", tmp_path / "dl4", index=str(index))
    zip_path.write_bytes(bytes(raw[:-10]))
    with pytest.raises(dist.IntegrityError, match="bytes, but the index says"):
        dist.download_bundle("toy_bundle", tmp_path / "dl4", index=str(index))
    assert not (tmp_path / "dl4" / "toy_bundle").exists()
    with pytest.raises(dist.IntegrityError):
        dist.download_bundle(None, tmp_path / "dl5", url=zip_path.as_uri(), sha256="0" * 64)


def _fake_export(staged: Path, python: str | None = None) -> bool:
    (staged / "models" / "model.ts").write_bytes(b"torchscript of " + (staged / "models" / "model.pt").read_bytes())
    return True


def test_hosted_weights_are_listed_fetched_and_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "_export_torchscript", _fake_export)  # the zip would hold models/model.ts
    bundle = _fake_bundle(tmp_path / "src")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"weights" * 1000)
    out = tmp_path / "out"
    entry = dist.package_bundle(bundle, out, weights=weights, host_weights=True)
    assert entry.weights.startswith("hosted")
    names = zipfile.ZipFile(out / "toy_bundle.zip").namelist()
    assert "toy_bundle/large_files.yml" in names
    assert not any("/models/" in n for n in names), names  # model.pt and model.ts are both hosted
    hosted = out / "toy_bundle" / "models"
    assert (hosted / "model.pt").read_bytes() == weights.read_bytes()
    assert (hosted / "model.ts").read_bytes() == b"torchscript of " + weights.read_bytes()

    got = dist.download_bundle(None, tmp_path / "dl", url=str(out / "toy_bundle.zip"), sha256=entry.sha256)
    files = dist.read_large_files(got)
    assert files == [{"path": f"models/model.{s}", "url": (hosted / f"model.{s}").as_uri(),
                      "hash_val": hashlib.sha256((hosted / f"model.{s}").read_bytes()).hexdigest(),
                      "hash_type": "sha256"} for s in ("pt", "ts")]
    assert (got / "models" / "model.pt").read_bytes() == weights.read_bytes()
    assert (got / "models" / "model.ts").read_bytes() == (hosted / "model.ts").read_bytes()
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["toy_bundle"]  # no temporary folder left

    (out / "toy_bundle" / "models" / "model.pt").write_bytes(b"tampered")  # the hosted file was replaced
    (got / "models" / "model.pt").unlink()
    with pytest.raises(dist.IntegrityError, match="sha256"):
        dist.download_large_files(got)
    assert not (got / "models" / "model.pt").exists()  # a bad file is never left in place


def _zip_with(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777) << 16
            z.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("members,symlink,message", [
    ({"b/configs/x.json": b"{}", "../evil.txt": b"x"}, None, "outside"),
    ({"b/configs/x.json": b"{}", "/abs/evil.txt": b"x"}, None, "outside"),
    ({"b/configs/x.json": b"{}", "b/../../evil.txt": b"x"}, None, "outside"),
    ({"b/configs/x.json": b"{}"}, "b/link", "symbolic link"),
    ({"b/configs/x.json": b"{}", "c/x": b"x"}, None, "one folder"),
])
def test_safe_extract_refuses_unsafe_members(tmp_path, members, symlink, message):
    z = _zip_with(tmp_path / "bad.zip", members, symlink)
    with pytest.raises(dist.IntegrityError, match=message):
        dist.safe_extract(z, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_large_files_paths_cannot_escape(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    (b / "large_files.yml").write_text('large_files:\n  - path: "../../evil.pt"\n    url: "file:///x"\n')
    with pytest.raises(dist.IntegrityError, match="outside"):
        dist.download_large_files(b)


def test_repository_bundles_declare_every_package_their_library_copy_imports():
    for meta in sorted((REPO / "bundles").glob("*/configs/metadata.json")):
        texts = [p.read_text() for p in meta.parent.rglob("*.json")]
        modules = dist.library_modules(texts)
        declared = dist._declared_imports(json.loads(meta.read_text()))
        assert dist.third_party_imports(modules) <= declared, meta


@pytest.mark.parametrize("damaged", ["model.pt", "model.ts"])
def test_a_hosted_file_failing_its_checksum_leaves_nothing(tmp_path, monkeypatch, damaged):
    monkeypatch.setattr(dist, "_export_torchscript", _fake_export)
    bundle = _fake_bundle(tmp_path / "src")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"weights" * 1000)
    out = tmp_path / "out"
    entry = dist.package_bundle(bundle, out, weights=weights, host_weights=True)
    index = dist.write_index([entry], out / "index.json")
    (out / "toy_bundle" / "models" / damaged).write_bytes(b"replaced on the server")
    with pytest.raises(dist.IntegrityError, match=f"model.{damaged[-2:]}: sha256"):
        dist.download_bundle("toy_bundle", tmp_path / "dl", index=str(index))
    assert list((tmp_path / "dl").iterdir()) == []  # no configs without weights, no temporary folder

    (out / "toy_bundle" / "models" / damaged).unlink()  # a hosted file that is missing: the same
    with pytest.raises(FileNotFoundError):
        dist.download_bundle("toy_bundle", tmp_path / "dl", index=str(index))
    assert list((tmp_path / "dl").iterdir()) == []


def test_download_by_url_without_sha256_warns_that_nothing_was_verified(tmp_path, caplog):
    entry = dist.package_bundle(_fake_bundle(tmp_path / "src"), tmp_path / "out", export_torchscript=False)
    zip_url = (tmp_path / "out" / "toy_bundle.zip").as_uri()
    with caplog.at_level("WARNING", logger="robust_bundles.distribution"):
        dist.download_bundle(None, tmp_path / "dl", url=zip_url)
    assert any("is not verified" in r.getMessage() and "--sha256" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="robust_bundles.distribution"):
        dist.download_bundle(None, tmp_path / "dl2", url=zip_url, sha256=entry.sha256)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_download_script_prints_the_unverified_warning(tmp_path):
    import subprocess
    import sys

    dist.package_bundle(_fake_bundle(tmp_path / "src"), tmp_path / "out", export_torchscript=False)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bundles.py"), "download", "--url",
                           (tmp_path / "out" / "toy_bundle.zip").as_uri(), "--bundle_dir", str(tmp_path / "dl")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "is not verified" in proc.stderr and (tmp_path / "dl" / "toy_bundle" / "configs").is_dir()


def test_zip_ships_the_metadata_schema(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / dist.SCHEMA_FILE).write_text('{"type": "object"}')
    dist.package_bundle(_fake_bundle(tmp_path / "src"), tmp_path / "out", export_torchscript=False)
    with zipfile.ZipFile(tmp_path / "out" / "toy_bundle.zip") as z:
        assert z.read("toy_bundle/docs/meta_schema.json") == b'{"type": "object"}'
