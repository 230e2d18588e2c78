"""Test-wide settings.

The networks in the tests are tiny: on a 2-core CPU one thread is several times faster than PyTorch's default of one
per core (and far faster when anything else runs), so tests and the bundle subprocesses they start use one thread.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def toy_std(tmp_path_factory):
    """The STD model of the generated toy problem (robust_bundles.toy: 20 epochs, fixed seed), trained once per
    session for every method's robustness test: its network, the state dict saved as a file, its xi (mean + 2 std),
    the training data and 64 test samples."""
    from robust_bundles.toy import make_toy_segmentation, run_toy, toy_thresholds

    torch.set_num_threads(1)
    train = make_toy_segmentation(128, seed=0)
    std, _ = run_toy("std", train, epochs=20, seed=0)
    path = tmp_path_factory.mktemp("toy_std") / "model.pt"
    torch.save(std.state_dict(), path)
    xi = toy_thresholds(std, train, rule="mean_std")
    return {"train": train, "test": make_toy_segmentation(64, seed=1000), "net": std, "path": path, "xi": xi.xi}


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory):
    """The cache of the briefly trained model-zoo bundles (tests/foreign_zoo/zoo.py): one folder for the whole
    session, shared by the xdist workers (the parent of a worker's temp root is the session's), or the folder
    ROBUST_BUNDLES_ZOO_CACHE names (kept across sessions; entries are keyed by what they were trained from)."""
    if os.environ.get("ROBUST_BUNDLES_ZOO_CACHE"):
        return Path(os.environ["ROBUST_BUNDLES_ZOO_CACHE"])
    base = tmp_path_factory.getbasetemp()
    root = base.parent if base.name.startswith("popen-gw") else base
    return root / "foreign_zoo"


# The costliest files first (measured in CI, 2026-12-07: the brats zoo file alone takes about 7 minutes): pytest-xdist
# (--dist loadfile --no-loadscope-reorder, pyproject.toml) hands out whole files in collection order; by default it
# reorders them by their number of tests, which put the two-test brats file last: one worker ran it alone for
# minutes at the end while the other idled. Moving whole files keeps each file's tests together and in order.
HEAVY_FIRST = ("test_foreign_zoo_brats.py", "test_foreign_zoo_segmentation.py", "test_foreign_zoo_other.py",
               "bundles/test_standalone.py", "test_foreign_bundles.py", "bundles/test_multi_gpu.py",
               "test_detection.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, name in enumerate(HEAVY_FIRST) if path.endswith(name)), len(HEAVY_FIRST))

    items.sort(key=rank)  # stable: the other files keep their order
