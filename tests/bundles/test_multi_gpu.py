"""configs/multi_gpu_train.json: two processes (torchrun, gloo on the CPU) end with the per-sample state one process
would hold. With the learning rate at 0 and attacks without random start, every sample's attack outcome depends on
the sample only, so AMAT's margins and TEAT's ensemble must equal those of a one-process run, although each process
saw only half of every epoch."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
from bundle_run import Bundle, load, run

pytestmark = pytest.mark.slow

HIPPOCAMPUS = Bundle("bundles/hippocampus_mri_segmentation", {
    "filters": "[8,16,32,64]", "batch_size": "16", "max_cases": "2", "max_val_cases": "1", "epochs": "2",
    "val_interval": "1", "attack_steps": "2",
})
LANDMARKS = Bundle("bundles/cephalometric_xray_landmarks", {
    "features": "[4,4,8,8,16,4]", "image_size": "[64,48]", "heatmap_radius": "3", "batch_size": "2",
    "max_cases": "6", "max_val_cases": "2", "epochs": "2", "val_interval": "1", "attack_steps": "2",
})
FROZEN = ["--learning_rate", "0", "--training_attack#random_start", "false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(configs: tuple[str, ...], *args: str, bundle: Bundle = HIPPOCAMPUS) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "monai.bundle", "run", "--config_file",
           bundle.config_list(*configs), *args]
    return run(cmd).stdout


def test_two_processes_hold_the_state_of_one(tmp_path):
    out = ["--output_root", str(tmp_path)]
    HIPPOCAMPUS.run(("train",), *HIPPOCAMPUS.tiny(), *out)
    HIPPOCAMPUS.run(("train", "thresholds"), *HIPPOCAMPUS.tiny(), *out)
    data = ["--dataset_dir", str(tmp_path / "data" / "synthetic_msd")]  # written once, read by both processes

    # a small initial margin: the frozen one-epoch STD model passes the xi test there, so margins do expand
    amat = [*HIPPOCAMPUS.tiny(), *FROZEN, *out, *data, "--initial_margin", "0.1"]
    HIPPOCAMPUS.run(("train", "amat"), *amat, "--run_name", "amat_one")
    _torchrun(("train", "amat", "multi_gpu_train"), *amat, "--run_name", "amat_two")
    one, two = load(tmp_path / "models" / "amat_one" / "checkpoint.pt"), load(tmp_path / "models" / "amat_two" /
                                                                               "checkpoint.pt")
    assert one["trainer"]["iteration"] == 2 * 5 and two["trainer"]["iteration"] == 2 * 3  # 72 slices: 16 per batch
    m1, m2 = one["margins"], two["margins"]
    assert int(m2["epochs_completed"]) == 2
    assert torch.allclose(m1["margins"], m2["margins"], atol=1e-4), (m1["margins"] - m2["margins"]).abs().max()
    assert float(m1["margins"].max()) > 0.1 + 1e-6  # some slices expanded: the comparison is not trivial
    assert set(two["model"]) == set(one["model"])  # process 0 saved the bare network, not the DDP wrapper

    args = [*HIPPOCAMPUS.tiny(), *FROZEN, *out, *data, "--train_eps", "2"]
    HIPPOCAMPUS.run(("train", "teat"), *args, "--run_name", "teat_one")
    _torchrun(("train", "teat", "multi_gpu_train"), *args, "--run_name", "teat_two")
    e1 = load(tmp_path / "models" / "teat_one" / "checkpoint.pt")["teat_ensemble"]
    e2 = load(tmp_path / "models" / "teat_two" / "checkpoint.pt")["teat_ensemble"]
    assert torch.equal(e1["count"], e2["count"]) and int(e2["count"].min()) == 1  # each slice once, in epoch 2
    assert torch.allclose(e1["ema"], e2["ema"], atol=1e-5)


def test_landmark_amat_two_processes_hold_the_margins_of_one(tmp_path):
    """The landmark bundle's overlay (its network is built by network_init): AMAT's margins of 6 images gathered from
    two processes equal those of one process."""
    out = ["--output_root", str(tmp_path)]
    LANDMARKS.run(("train",), *LANDMARKS.tiny(), *out)
    LANDMARKS.run(("train", "thresholds"), *LANDMARKS.tiny(), *out)
    data = ["--dataset_dir", str(tmp_path / "data" / "synthetic_ceph")]
    args = [*LANDMARKS.tiny(), *FROZEN, *out, *data]
    LANDMARKS.run(("train", "amat"), *args, "--run_name", "amat_one")
    _torchrun(("train", "amat", "multi_gpu_train"), *args, "--run_name", "amat_two", bundle=LANDMARKS)
    one, two = (load(tmp_path / "models" / r / "checkpoint.pt") for r in ("amat_one", "amat_two"))
    assert one["trainer"]["iteration"] == 2 * 3 and two["trainer"]["iteration"] == 2 * 2  # 6 images, batch 2
    m1, m2 = one["margins"], two["margins"]
    assert m1["margins"].numel() == 6 and int(m2["epochs_completed"]) == 2
    assert torch.allclose(m1["margins"], m2["margins"], atol=1e-4), (m1["margins"] - m2["margins"]).abs().max()
    assert set(two["model"]) == set(one["model"])  # process 0 saved the bare network, not the DDP wrapper


def test_first_visits_and_gather_without_a_process_group():
    from robust_bundles.distributed import FirstVisits, gather_first_visits, gather_records

    ids, flags = torch.tensor([3, 1]), torch.tensor([True, False])
    assert gather_records(ids, flags)[0] is ids  # one process: unchanged
    assert gather_first_visits(None, 1, ids, flags)[1] is flags
    visits = FirstVisits(5)
    assert visits.select(torch.tensor([0, 1, 2]), epoch=1).tolist() == [True, True, True]
    assert visits.select(torch.tensor([3, 0, 4]), epoch=1).tolist() == [True, False, True]  # 0 repeated: padding
    assert visits.select(torch.tensor([0, 0]), epoch=2).tolist() == [True, False]  # a new epoch starts afresh
