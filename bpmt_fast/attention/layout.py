"""Conversions between the padded `(B, N, H, D)` + lengths layout and the packed `(total, H, D)` + cu_seqlens one."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cu_seqlens_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """`(B,)` lengths -> `(B + 1,)` int32 cumulative offsets starting at 0."""
    return F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))


def lengths_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    return (cu_seqlens[1:] - cu_seqlens[:-1]).long()


def full_lengths(batch: int, n: int, device) -> torch.Tensor:
    return torch.full((batch,), n, dtype=torch.long, device=device)


def padding_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """`(B, N)` bool, True at valid positions."""
    return torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]


def pack(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`(B, N, H, D)` -> `(sum(lengths), H, D)`, sequences back to back."""
    return x[padding_mask(lengths.to(x.device), x.shape[1])]


def unpack(packed: torch.Tensor, lengths: torch.Tensor, n: int) -> torch.Tensor:
    """`(total, H, D)` -> `(B, N, H, D)` with zeros in the padding."""
    lengths = lengths.to(packed.device)
    out = packed.new_zeros(lengths.shape[0], n, *packed.shape[1:])
    return out.index_put((padding_mask(lengths, n),), packed)


def zero_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded tokens of `(B, N, ...)` with where(), so NaN/inf in padding cannot leak."""
    if lengths is None:
        return x
    mask = padding_mask(lengths.to(x.device), x.shape[1])
    return torch.where(mask.view(*mask.shape, *([1] * (x.dim() - 2))), x, 0.0)
