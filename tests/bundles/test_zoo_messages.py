"""Refusals a zoo user meets, each ending with one ``ERROR (cause): ... fix`` line: an image PIL refuses as a
decompression bomb names the file, a nested override typo gets a "did you mean" before any data is written, an
unsafe pickle is refused on one line, an installed package older than the bundle's pin is named, and the landmark
README names the folder inference really writes to."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from bundle_run import REPO, Bundle, env, last_error, run

from robust_bundles import command_line, errors
from robust_bundles.handlers.model_loader import read_weights

SEG = Bundle("bundles/hippocampus_mri_segmentation", {})
CEPH = Bundle("bundles/cephalometric_xray_landmarks", {})


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture
def evil_weights(tmp_path) -> Path:
    path = tmp_path / "evil.pt"
    torch.save({"weight": _Evil()}, path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# unit level
# ----------------------------------------------------------------------------------------------------------------------
def test_error_line_is_one_line_and_names_version_problems(monkeypatch):
    monkeypatch.setattr(errors, "_VERSION_PROBLEMS", [])
    assert errors.error_line(ValueError("first\n\n  second\tthird")) == "ValueError: first second third"
    monkeypatch.setattr(errors, "_VERSION_PROBLEMS", ["torch 2.13.0 is installed, older ..."])
    assert errors.error_line(ImportError("x")) == "ImportError: x (and: torch 2.13.0 is installed, older ...)"


def test_check_versions_names_older_and_missing_packages(monkeypatch, caplog):
    installed = {"torch": "2.13.0+cpu", "monai": "1.6.1", "numpy": "2.0.0", "fire": None, "nibabel": "5.5.0"}
    monkeypatch.setattr(command_line, "_installed_version", installed.get)
    monkeypatch.setattr(errors, "_VERSION_PROBLEMS", [])
    meta = {"pytorch_version": "2.14.1", "monai_version": "1.6.1", "numpy_version": "2.0.0",
            "required_packages_version": {"fire": "0.7.1", "nibabel": "5.4.2"}}
    with caplog.at_level("WARNING"):
        problems = command_line.check_versions(meta)
    assert problems == [
        "torch 2.13.0+cpu is installed, older than the 2.14.1 this bundle was made and tested with "
        "(configs/metadata.json): pip install torch==2.14.1",
        "fire is not installed but this bundle needs fire==0.7.1: pip install fire==0.7.1",
    ]  # monai equal, nibabel newer: fine
    assert "torch 2.13.0+cpu is installed" in caplog.text
    assert errors._VERSION_PROBLEMS == problems


def test_nested_override_typo_names_the_component_argument():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles/hippocampus_mri_segmentation/configs/train.json")])
    problems = command_line.unknown_override_errors(parser.get(), ["train#trainer#max_epoch", "train#trainer#max_epochs",
                                                         "train#trainer#amp"])
    assert len(problems) == 1
    assert problems[0].startswith("--train#trainer#max_epoch: SupervisedTrainer ('train#trainer') takes no argument "
                                  "'max_epoch'")
    assert "did you mean --train#trainer#max_epochs or " in problems[0]  # the nearest first
    # a component whose target takes **kwargs, or cannot be located, keeps the benefit of the doubt
    config = {"a": {"_target_": "builtins.dict"}, "b": {"_target_": "no.such.Thing"}}
    assert command_line.unknown_override_errors(config, ["a#anything", "b#anything"]) == []


def test_unsafe_pickle_is_refused_with_a_one_line_cause(evil_weights):
    with pytest.raises(ValueError) as info:
        read_weights(evil_weights)
    message = str(info.value)
    assert "\n" not in message and str(evil_weights) in message
    assert "posix.system" in message and "weights_only=True" in message and "torch.save(model.state_dict()" in message
    assert isinstance(info.value.__context__, pickle.UnpicklingError)


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    from PIL import Image

    from robust_bundles.data.ceph import read_xray

    path = tmp_path / "huge.png"
    Image.new("L", (100, 80)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 8000 pixels > 2 x 1000: PIL refuses to decode
    with pytest.raises(ValueError, match=re.escape(f"The image {path} is refused by PIL as a possible decompression "
                                                   f"bomb")) as info:
        read_xray(path, (20, 16))
    assert "2,000 pixels" in str(info.value) and "downscale it" in str(info.value)


def test_landmark_readme_names_the_inference_output_folder():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles/cephalometric_xray_landmarks/configs/inference.json")])
    parser["output_root"] = "/ROOT"
    default = Path(parser.get_parsed_content("output_dir")).relative_to("/ROOT").as_posix()
    readme = (REPO / "bundles/cephalometric_xray_landmarks/docs/README.md").read_text()
    stated = re.search(r"written to `--output_dir` \(default `([^`]+)`", readme)
    assert stated and stated.group(1) == default == "eval/inference"


# ----------------------------------------------------------------------------------------------------------------------
# the last line of a real run
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nested_override_typo_fails_before_any_data_is_written(tmp_path):
    proc = SEG.run(("train",), "--output_root", str(tmp_path), "--train#trainer#max_epoch", "2", expect_ok=False)
    assert "did you mean --train#trainer#max_epochs" in last_error(proc)
    assert list(tmp_path.iterdir()) == []  # no synthetic data, no run folder


@pytest.mark.slow
def test_unsafe_pickle_refusal_is_the_last_line(tmp_path, evil_weights):
    proc = CEPH.run(("inference",), "--output_root", str(tmp_path), "--model_path", str(evil_weights),
                    expect_ok=False)
    line = last_error(proc)
    assert line.startswith(f"ERROR (cause): ValueError: Refusing the model {evil_weights}: it holds pickled Python")
    assert line.endswith("torch.save(model.state_dict(), path).") and "pwned" not in proc.stdout


@pytest.mark.slow
def test_an_older_torch_is_named_first_and_on_the_last_line(tmp_path):
    fake = tmp_path / "fake_site" / "torch-2.13.0.dist-info"  # what importlib.metadata finds first on the path
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n")
    proc = run([os.sys.executable, "-m", "monai.bundle", "run", "--config_file",
                CEPH.config_list("inference"), "--output_root", str(tmp_path / "out"), "--model_path",
                str(tmp_path / "missing.pt")], expect_ok=False,
               python_env=env(PYTHONPATH=str(fake.parent)))
    warning = "torch 2.13.0 is installed, older than the 2.14.1 this bundle was made and tested with"
    assert f"WARNING: {warning}" in proc.stdout
    line = last_error(proc)
    assert "missing.pt does not exist" in line and line.endswith(f"(and: {warning} (configs/metadata.json): "
                                                                 f"pip install torch==2.14.1)")


def test_tracking_settings_may_be_overridden_only_with_tracking():
    train = str(REPO / "bundles/hippocampus_mri_segmentation/configs/train.json")
    command_line.check_command_line(["run", "--config_file", train, "--tracking", "mlflow", "--tracking_uri", "sqlite:///x.db",
                           "--experiment_name", "e"])  # MONAI's tracking adds these keys
    with pytest.raises(ValueError, match="--tracking_uri: the config has no key"):
        command_line.check_command_line(["run", "--config_file", train, "--tracking_uri", "sqlite:///x.db"])
