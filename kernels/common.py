"""What our Triton kernel modules share: where they run, their dtype / head-dim limits, matmul precision and
the checks of packed `(total, H, D)` inputs (ValueErrors naming the bad value; free, no host sync)."""
from __future__ import annotations

import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read at import, as triton.jit does
MAX_HEAD_DIM = 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# fp32 inputs: IEEE products so fp32 results match the fp32 reference (TF32 would not); halves ignore it.
# Both triton 3.6 and 3.9 take `input_precision` (`allow_tf32` is deprecated).
DOT_PRECISION = "ieee"


def head_block(dim: int) -> int:
    """Tile width for a head dim: a power of two >= 16 (tl.dot needs sides >= 16); lanes past `dim` are masked."""
    return max(16, triton.next_power_of_2(dim))


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def check_packed_qkv(q, k, v) -> None:
    """q `(Tq, H, D)`, k `(Tk, H, D)`, v `(Tk, H, Dv)`: tensors of one supported dtype on one device the kernels
    can run on, matching heads and head dims within [1, MAX_HEAD_DIM]."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{name} must have rank 3 (total, H, D), got shape {tuple(x.shape)}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} has dtype {x.dtype}; supported: float16, bfloat16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.shape[1] == k.shape[1] == v.shape[1]):
        raise ValueError(f"head counts differ: q {q.shape[1]}, k {k.shape[1]}, v {v.shape[1]}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k head dims differ: {q.shape[2]} and {k.shape[2]}")
    for name, dim in (("head_dim", q.shape[2]), ("head_dim_v", v.shape[2])):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must lie in [1, {MAX_HEAD_DIM}], got {dim}")
    if k.shape[0] != v.shape[0]:
        raise ValueError(f"k and v must have the same number of tokens, got {k.shape[0]} and {v.shape[0]}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"tensors on {q.device} need a CUDA device, or TRITON_INTERPRET=1 (set before import) "
                         f"to run in the Triton interpreter")
