"""Autograd-aware collectives shared by the model (global-batch BatchNorm) and the training losses."""
from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_world() -> int:
    """Number of ranks of the default process group (1 when torch.distributed is not running)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `(B_r, ...)` slice into the global batch, keeping the autograd graph.

    The backward sums the gradients of all ranks' copies, so a loss computed identically on every rank from the
    gathered batch gets, after DDP's average over ranks, exactly its single-process gradient. Every rank's slice
    must have the same shape. Without a process group this returns `tensor` itself.
    """
    if distributed_world() == 1:
        return tensor
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(tensor))
