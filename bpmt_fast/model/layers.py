"""Grouped layers: one weight slice per group (body part or part pair), applied to all groups at once.

Parts are a batch dimension, not a Python loop: a `(B, G, N, d)` activation goes through `(G, d_in, d_out)`
weights with one batched matmul, so the step stays one kernel per op however many parts there are.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bpmt_fast.collectives import distributed_world, gather


class GroupedLinear(nn.Module):
    """G independent linear maps: `(B, G, N, d_in)` -> `(B, G, N, d_out)`."""

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))  # (G, d_in, d_out)
        self.bias = nn.Parameter(torch.zeros(groups, out_features)) if bias else None  # (G, d_out)
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bgni,gio->bgno", x, self.weight)
        return y if self.bias is None else y + self.bias[None, :, None, :]

    def extra_repr(self) -> str:
        groups, d_in, d_out = self.weight.shape
        return f"groups={groups}, in_features={d_in}, out_features={d_out}, bias={self.bias is not None}"


class GroupedLayerNorm(nn.Module):
    """LayerNorm over the last dim with a separate affine per group: `(B, G, N, d)`."""

    def __init__(self, groups: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, dim))
        self.bias = nn.Parameter(torch.zeros(groups, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return x * self.weight[None, :, None, :] + self.bias[None, :, None, :]


class GroupedMLP(nn.Module):
    def __init__(self, groups: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = GroupedLinear(groups, dim, hidden)
        self.fc2 = GroupedLinear(groups, hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the global batch when torch.distributed runs.

    Under DDP each rank sees a slice of the batch; normalising the gathered `(B, E)` batch keeps the result (and
    the running statistics) equal to a single process's. torch's SyncBatchNorm does the same but refuses CPU
    tensors, and a 2-D embedding needs nothing more than this.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or distributed_world() == 1:
            return super().forward(x)
        rank, local = torch.distributed.get_rank(), x.shape[0]
        out = super().forward(gather(x))  # (B_global, E): same statistics on every rank
        return out[rank * local:(rank + 1) * local]


def sinusoidal_positions(n: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """`(N, dim)` fixed time encoding (any sequence length; real gait sequences run to ~500 frames)."""
    position = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.to(dtype)


def masked_temporal_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames: x `(B, G, N, d)`, valid `(B, N)` -> `(B, G, d)`."""
    count = valid.sum(1).clamp(min=1)[:, None, None].to(x.dtype)  # (B, 1, 1)
    return torch.where(valid[:, None, :, None], x, 0.0).sum(2) / count


def masked_temporal_pool(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean and max over valid frames: x `(B, G, N, d)`, valid `(B, N)` -> `(B, G, 2d)`."""
    peak = torch.where(valid[:, None, :, None], x, torch.finfo(x.dtype).min).amax(2)
    return torch.cat([masked_temporal_mean(x, valid), peak], dim=-1)
