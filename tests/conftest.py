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
def zoo_cache(tmp_path_factory):
    """The cache of the briefly trained model-zoo bundles (tests/foreign_zoo/zoo.py): one folder for the whole
    session, shared by the xdist workers (the parent of a worker's temp root is the session's), or the folder
    ROBUST_BUNDLES_ZOO_CACHE names (kept across sessions; entries are keyed by what they were trained from)."""
    if os.environ.get("ROBUST_BUNDLES_ZOO_CACHE"):
        return Path(os.environ["ROBUST_BUNDLES_ZOO_CACHE"])
    base = tmp_path_factory.getbasetemp()
    root = base.parent if base.name.startswith("popen-gw") else base
    return root / "foreign_zoo"
