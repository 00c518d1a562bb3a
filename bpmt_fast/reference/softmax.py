"""Naive softmax attention: the reference every exact backend is tested against.

Layout `(B, N, H, D)`; computes in float32 (float64 for float64 inputs) and returns the input dtype.
Lengths mark the valid tokens of each sequence: padding content is ignored (even NaN), padded keys get no
weight and padded queries get an all-zero output. It builds the full `(B, H, Nq, Nk)` score matrix on purpose:
it is the definition, not a fast path.
"""
from __future__ import annotations

import torch


def valid_mask(lengths: torch.Tensor | None, batch: int, n: int, device: torch.device) -> torch.Tensor:
    """`(B, N)` bool, True where a token is valid; all True when lengths is None."""
    positions = torch.arange(n, device=device)
    if lengths is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    return positions[None, :] < lengths.to(device)[:, None]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def softmax_attention_reference(q, k, v, *, q_lengths=None, kv_lengths=None, scale=None, causal=False):
    """softmax(q k^T * scale) v per sequence and head, over valid keys only. Returns `(B, Nq, H, Dv)`.

    causal: query i sees keys j <= i (self-attention: queries and keys share positions).
    """
    batch, n_q, _, head_dim = q.shape
    n_k = k.shape[1]
    scale = head_dim**-0.5 if scale is None else scale
    work = compute_dtype(q.dtype)
    q_valid = valid_mask(q_lengths, batch, n_q, q.device)  # (B, Nq)
    kv_valid = valid_mask(kv_lengths, batch, n_k, q.device)  # (B, Nk)
    # where(), not multiplication: NaN in padding must not leak into valid outputs.
    q = torch.where(q_valid[:, :, None, None], q.to(work), 0.0)
    k = torch.where(kv_valid[:, :, None, None], k.to(work), 0.0)
    v = torch.where(kv_valid[:, :, None, None], v.to(work), 0.0)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, H, Nq, Nk)
    allowed = kv_valid[:, None, None, :]  # (B, 1, 1, Nk)
    if causal:
        allowed = allowed & torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", weights, v)  # (B, Nq, H, Dv)
    out = torch.where(q_valid[:, :, None, None], out, 0.0)
    return out.to(q.dtype)
