"""Data-parallel training with torch.distributed (launched by torchrun), and the single-process no-op case.

Under `torchrun --nproc_per_node N [--nnodes M ...]` (WORLD_SIZE > 1) every rank holds a DDP replica. Each step's
global batch is the list of sequences a single process would draw; it is cut into WORLD_SIZE contiguous slices,
one per rank. The losses are written so that DDP's averaged gradient equals the single-process gradient of the
whole global batch (ReconstructionStage.train_epoch, `bpmt_fast.collectives.gather`), the identity head's
BatchNorm normalises with global-batch statistics (`GlobalBatchNorm1d` in model/layers.py), and augmentation is
keyed by the position in the global batch, not by the process that loads it (train/data.py). Only rank 0 writes
files and prints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Parallel:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
        size = len(items)
        return items[self.rank * size // self.world_size:(self.rank + 1) * size // self.world_size]

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DDP replica of `model` over its trainable parameters (call after freezing), or `model` itself."""
        if not self.enabled:
            return model
        device_ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, no gradient (counts, logged figures)."""
        if not self.enabled:
            return tensor
        tensor = tensor.detach().clone()
        dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _wire(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the device the process group communicates through (nccl: this rank's GPU)."""
        return tensor.cuda() if dist.get_backend() == "nccl" else tensor

    def gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D `row` (same length and dtype on all ranks) -> `(world_size, n)`, on the CPU."""
        if not self.enabled:
            return row[None].clone()
        rows = [self._wire(torch.empty_like(row)) for _ in range(self.world_size)]
        dist.all_gather(rows, self._wire(row.contiguous()))
        return torch.stack([r.cpu() for r in rows])

    def decide_on_main(self, values: list[int]) -> list[int]:
        """Rank 0's `values` on every rank: decisions (early stopping, a new best) that must not diverge, since a
        rank that stops while another trains on would hang the job."""
        if not self.enabled:
            return list(values)
        tensor = self._wire(torch.tensor(values, dtype=torch.int64))
        dist.broadcast(tensor, src=0)
        return tensor.cpu().tolist()

    def rng_states(self) -> dict:
        """Every rank's torch RNG states (CPU, and CUDA when used): `{"world_size", "cpu": (W, n), "cuda": ...}`.
        Saved with each checkpoint (by rank 0) so that a resumed run draws each rank's dropout as before."""
        states = {"world_size": self.world_size, "cpu": self.gather_rows(torch.get_rng_state())}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = self.gather_rows(torch.cuda.get_rng_state())
        return states

    def restore_rng(self, states: dict) -> str | None:
        """Restore this rank's RNG states saved by `rng_states`; returns a notice when that is impossible."""
        if states.get("world_size") != self.world_size:
            return (f"the checkpoint was written by {states.get('world_size')} ranks and this run has "
                    f"{self.world_size}: RNG states not restored, so dropout draws differ from the original run")
        torch.set_rng_state(states["cpu"][self.rank].clone())
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state(states["cuda"][self.rank].clone())
        return None


SINGLE = Parallel()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto | cpu | cuda -> this process's device (GPU `local_rank` under torchrun)."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_parallel(device_name: str) -> tuple[Parallel, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE, resolve_device(device_name)
    parallel = Parallel(rank=int(os.environ["RANK"]), world_size=world_size,
                        local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, parallel.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return parallel, device


def close_parallel(parallel: Parallel) -> None:
    if parallel.enabled and dist.is_initialized():
        dist.destroy_process_group()
