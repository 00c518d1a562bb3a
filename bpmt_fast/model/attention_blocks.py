"""Attention blocks of BPMT: self-attention inside every part and cross-attention between part pairs.

Both pack their groups into ONE attention call: `(B, P, N, d)` becomes `B*P` sequences (self-attention) or
`B*Q` (query part, key part) sequences (cross-attention), through the backend chosen at construction.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from bpmt_fast.attention import get_backend

from .layers import GroupedLayerNorm, GroupedLinear, GroupedMLP


def _expand_lengths(lengths: torch.Tensor | None, groups: int) -> torch.Tensor | None:
    """Per-sequence lengths `(B,)` -> per (sequence, group) `(B*G,)`, matching `(b g)` flattening."""
    return None if lengths is None else lengths.repeat_interleave(groups)


class PartSelfAttention(nn.Module):
    """Multi-head self-attention within each of G groups (parts), per-group weights, one attention call."""

    def __init__(self, groups: int, dim: int, heads: int, backend: str | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = GroupedLinear(groups, dim, 3 * dim)
        self.proj = GroupedLinear(groups, dim, dim)
        self.backend = get_backend(backend)  # resolved once; an unknown or unavailable name fails here

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x `(B, G, N, d)`, lengths `(B,)` valid frames -> `(B, G, N, d)`."""
        groups = x.shape[1]
        q, k, v = rearrange(self.qkv(x), "b g n (three h e) -> three (b g) n h e", three=3, h=self.heads)
        lengths = _expand_lengths(lengths, groups)
        out = self.backend.padded(q, k, v, lengths, lengths)  # (B*G, N, H, E)
        return self.proj(rearrange(out, "(b g) n h e -> b g n (h e)", g=groups))


class CrossPartAttention(nn.Module):
    """Cross-attention for a list of ordered part pairs (a, b): part a's tokens query part b's tokens.

    Per-pair weights are stacked `(Q, ...)`; all Q pairs of a batch run in one attention call.
    """

    def __init__(self, pairs: list[tuple[int, int]], dim: int, heads: int, backend: str | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.register_buffer("query_parts", torch.tensor([a for a, _ in pairs]), persistent=False)
        self.register_buffer("key_parts", torch.tensor([b for _, b in pairs]), persistent=False)
        self.q = GroupedLinear(len(pairs), dim, dim)
        self.kv = GroupedLinear(len(pairs), dim, 2 * dim)
        self.proj = GroupedLinear(len(pairs), dim, dim)
        self.backend = get_backend(backend)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor | None = None):
        """queries `(B, Q, N, d)` (already gathered per pair), keys `(B, Q, N, d)` -> `(B, Q, N, d)`."""
        pairs = queries.shape[1]
        q = rearrange(self.q(queries), "b q n (h e) -> (b q) n h e", h=self.heads)
        k, v = rearrange(self.kv(keys), "b q n (two h e) -> two (b q) n h e", two=2, h=self.heads)
        lengths = _expand_lengths(lengths, pairs)
        out = self.backend.padded(q, k, v, lengths, lengths)  # (B*Q, N, H, E)
        return self.proj(rearrange(out, "(b q) n h e -> b q n (h e)", q=pairs))


class PartTransformerBlock(nn.Module):
    """Pre-norm transformer block applied to G groups at once."""

    def __init__(self, groups: int, dim: int, heads: int, mlp_ratio: float, dropout: float, backend=None):
        super().__init__()
        self.norm1 = GroupedLayerNorm(groups, dim)
        self.attn = PartSelfAttention(groups, dim, heads, backend)
        self.norm2 = GroupedLayerNorm(groups, dim)
        self.mlp = GroupedMLP(groups, dim, int(dim * mlp_ratio), dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, lengths=None):
        x = x + self.dropout(self.attn(self.norm1(x), lengths))
        return x + self.mlp(self.norm2(x))


class CrossPartBlock(nn.Module):
    """Pre-norm cross-attention block per ordered part pair; the residual stream is the query part's."""

    def __init__(self, pairs, dim: int, heads: int, mlp_ratio: float, dropout: float, backend=None):
        super().__init__()
        self.norm_q = GroupedLayerNorm(len(pairs), dim)
        self.norm_kv = GroupedLayerNorm(len(pairs), dim)
        self.attn = CrossPartAttention(pairs, dim, heads, backend)
        self.norm2 = GroupedLayerNorm(len(pairs), dim)
        self.mlp = GroupedMLP(len(pairs), dim, int(dim * mlp_ratio), dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, keys, lengths=None):
        x = queries + self.dropout(self.attn(self.norm_q(queries), self.norm_kv(keys), lengths))
        return x + self.mlp(self.norm2(x))
