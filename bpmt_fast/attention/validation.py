"""Input checks for the public attention functions: every problem is a ValueError that names the bad value.

Shape, dtype and device checks are free; value checks (length ranges, NaN/inf in valid tokens) read tensors
back and are skipped while torch.compile traces.
"""
from __future__ import annotations

import torch

from . import layout


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _check_tensors(names, tensors, rank: int, layout_text: str) -> None:
    for name, x in zip(names, tensors):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != rank:
            raise ValueError(f"{name} must have rank {rank} {layout_text}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    q, k, v = tensors
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def check_padded(q, k, v, q_lengths, kv_lengths, causal: bool) -> None:
    _check_tensors(("q", "k", "v"), (q, k, v), 4, "(B, N, H, D)")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same length, got {k.shape[1]} and {v.shape[1]}")
    _check_heads(q, k, v, head_axis=2)
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"causal attention needs Nq == Nk, got {q.shape[1]} and {k.shape[1]}")
    for name, lengths, n in (("q_lengths", q_lengths, q.shape[1]), ("kv_lengths", kv_lengths, k.shape[1])):
        _check_lengths(name, lengths, q.shape[0], n, q.device)
    if causal and (q_lengths is not None or kv_lengths is not None) and not _is_compiling():
        full = layout.full_lengths(q.shape[0], q.shape[1], q.device)
        q_len = full if q_lengths is None else q_lengths.to(q.device).long()
        kv_len = full if kv_lengths is None else kv_lengths.to(q.device).long()
        if not torch.equal(q_len, kv_len):
            raise ValueError("causal attention needs q_lengths == kv_lengths")
    if not _is_compiling():
        for name, x, lengths in (("q", q, q_lengths), ("k", k, kv_lengths), ("v", v, kv_lengths)):
            _check_finite(name, layout.zero_padding(x, lengths))


def check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal: bool) -> None:
    _check_tensors(("q", "k", "v"), (q, k, v), 3, "(total, H, D)")
    if k.shape[0] != v.shape[0]:
        raise ValueError(f"k and v must have the same number of tokens, got {k.shape[0]} and {v.shape[0]}")
    _check_heads(q, k, v, head_axis=1)
    for name, cu, total, max_len in (("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q),
                                     ("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)):
        _check_cu_seqlens(name, cu, total, max_len)
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same number of segments, got "
                         f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}")
    if causal and not _is_compiling() and not torch.equal(cu_seqlens_q.cpu(), cu_seqlens_k.cpu()):
        raise ValueError("causal attention needs cu_seqlens_q == cu_seqlens_k")
    if not _is_compiling():
        for name, x in (("q", q), ("k", k), ("v", v)):
            _check_finite(name, x)


def _check_heads(q, k, v, head_axis: int) -> None:
    if not (q.shape[head_axis] == k.shape[head_axis] == v.shape[head_axis]):
        raise ValueError(f"head counts differ: q {q.shape[head_axis]}, k {k.shape[head_axis]}, "
                         f"v {v.shape[head_axis]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k head dims differ: {q.shape[-1]} and {k.shape[-1]}")
    if q.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError("head_dim must be positive")


def _check_lengths(name, lengths, batch: int, n: int, device) -> None:
    if lengths is None:
        return
    if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of shape ({batch},)")
    if lengths.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(lengths.shape)}")
    if lengths.device.type != device.type and lengths.device.type != "cpu":
        raise ValueError(f"{name} is on {lengths.device}, inputs on {device}")
    if not _is_compiling() and batch:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > n:
            raise ValueError(f"{name} must lie in [1, {n}], got values from {low} to {high}")


def _check_cu_seqlens(name, cu, total: int, max_len) -> None:
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.dtype.is_floating_point or cu.numel() < 2:
        raise ValueError(f"{name} must be a 1-D integer tensor [0, ..., total] with at least 2 entries")
    if _is_compiling():
        return
    values = cu.cpu().long()
    if int(values[0]) != 0 or int(values[-1]) != total:
        raise ValueError(f"{name} must start at 0 and end at the token count {total}, got "
                         f"{int(values[0])} ... {int(values[-1])}")
    seg = values[1:] - values[:-1]
    if int(seg.min()) < 1:
        raise ValueError(f"{name} must be strictly increasing (every segment at least 1 token), got {values.tolist()[:16]}")
    if max_len is not None and int(seg.max()) > int(max_len):
        raise ValueError(f"max_seqlen {int(max_len)} is smaller than the longest segment {int(seg.max())} in {name}")


def _check_finite(name: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} contains NaN or inf in valid tokens (first at index {where}); a masking or "
                         f"normalising backend could hide it, so it is rejected here")
