"""Test-wide settings.

The networks in the tests are tiny: on a 2-core CPU one thread is several times faster than PyTorch's default of one
per core (and far faster when anything else runs), so tests and the bundle subprocesses they start use one thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
