"""Data-parallel training (``torchrun``, one process per GPU): what the method's per-sample state needs.

With a ``DistributedSampler`` every process sees its own part of each epoch, but AMAT's margins, the robustness flags
and TEAT's ensemble are per-sample state that must not depend on which process saw a sample: each process gathers
the records of every process (:func:`gather_records`) and applies all of them, so every process holds the state one
process would hold after the same epoch (up to data order), and the checkpoint written by process 0 is complete.

``DistributedSampler`` pads the last part of an epoch by repeating samples so that every process gets the same
number; :class:`FirstVisits` drops such repeats, so that a sample counts once per epoch, as in one process.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "rank", "world_size", "is_main_process", "unwrap", "gather_records", "FirstVisits",
           "gather_first_visits", "quiet_other_processes",
           "init_process_group"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process writes files and logs (process 0, or the only one)."""
    return rank() == 0


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (itself otherwise).

    Attack passes use the bare network: they take gradients with respect to the input only, and a wrapped forward
    would prepare a gradient reduction that never comes.
    """
    return module.module if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) \
        else module


def init_process_group(backend: str | None = None) -> bool:
    """Start the process group of a ``torchrun`` launch (nccl with GPUs, gloo on the CPU); False when not launched
    by torchrun (then nothing happens)."""
    import os

    if not dist.is_available() or "WORLD_SIZE" not in os.environ:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return True


def gather_records(ids: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The ``(ids, *values)`` of a batch from every process, concatenated in process order (as they are in one
    process); batches of different sizes are allowed. Without a process group the inputs come back unchanged.

    Args:
        ids: sample ids (B,) of this process's batch.
        values: per-sample tensors (B, ...), any dtype (bool is carried as uint8).
    """
    if not is_distributed():
        return (ids, *values)
    device = ids.device
    backend_device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    n = torch.tensor([ids.shape[0]], device=backend_device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes_int = [int(s.item()) for s in sizes]
    longest = max(sizes_int)
    out = []
    for t in (ids, *values):
        is_bool = t.dtype == torch.bool
        x = t.detach().to(backend_device)
        x = x.to(torch.uint8) if is_bool else x
        pad = torch.zeros((longest - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=backend_device)
        parts = [torch.empty((longest, *x.shape[1:]), dtype=x.dtype, device=backend_device) for _ in sizes_int]
        dist.all_gather(parts, torch.cat([x, pad]))
        cat = torch.cat([p[:s] for p, s in zip(parts, sizes_int)])
        out.append((cat.bool() if is_bool else cat).to(device))
    return tuple(out)


class FirstVisits:
    """Keep only the first visit of every sample in an epoch (``DistributedSampler`` repeats a few to pad).

    Args:
        num_samples: N, the number of training samples.
    """

    def __init__(self, num_samples: int) -> None:
        self.seen = torch.zeros(int(num_samples), dtype=torch.bool)
        self.epoch: int | None = None

    def select(self, ids: torch.Tensor, epoch: int) -> torch.Tensor:
        """A bool mask (B,) of the entries of ``ids`` that are the first visit of their sample in ``epoch``."""
        if epoch != self.epoch:
            self.seen.zero_()
            self.epoch = epoch
        keep = torch.zeros(ids.shape[0], dtype=torch.bool)
        for i, sample in enumerate(ids.detach().cpu().tolist()):
            if not self.seen[sample]:
                self.seen[sample] = True
                keep[i] = True
        return keep.to(ids.device)


def gather_first_visits(visits: FirstVisits | None, epoch: int, ids: torch.Tensor,
                        *values: torch.Tensor) -> Sequence[torch.Tensor]:
    """:func:`gather_records`, then the first visits only (in a data-parallel run; unchanged otherwise)."""
    if not is_distributed():
        return (ids, *values)
    gathered = gather_records(ids, *values)
    if visits is None:
        return gathered
    keep = visits.select(gathered[0], epoch)
    return tuple(t[keep] for t in gathered)


def quiet_other_processes(level: int | str = "WARNING") -> None:
    """In a data-parallel run, show only warnings and errors of processes other than process 0 (their progress
    and metrics logs would repeat process 0's)."""
    import logging

    if rank() != 0:
        logging.getLogger().setLevel(level)
        for name in list(logging.root.manager.loggerDict):
            logging.getLogger(name).setLevel(level)
