"""Attention blocks of BPMT: self-attention inside every part and cross-attention between part pairs.

Both pack their groups into ONE attention call: `(B, P, N, d)` becomes `B*P` sequences (self-attention) or
`B*Q` (query part, key part) sequences (cross-attention), through the backend chosen at construction. Which
tokens are valid comes as a `PackedLayout` the model builds once per forward (one per group count), so no
attention call reads lengths back to the host or packs with a boolean mask.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from bpmt_fast.attention import AUTO_PRIORITY, BACKENDS, AttentionInputs, AutoBackend, get_backend
from bpmt_fast.attention.layout import PackedLayout

from .layers import GroupedLayerNorm, GroupedLinear, GroupedMLP


def wants_packed_layout(backend, device_type: str) -> bool:
    """Whether layouts for `backend` need packing offsets / indices. For `auto`, the first backend of its
    order that is available on the device decides (a call that ends up elsewhere still runs, see `attend`)."""
    if isinstance(backend, AutoBackend):
        for name in AUTO_PRIORITY.get(device_type, ("math",)):
            if BACKENDS[name].is_available():
                return BACKENDS[name].wants_packed_layout(device_type)
        return False
    return backend.wants_packed_layout(device_type)


def as_layout(layout_or_lengths, batch: int, groups: int, n: int, backend, device) -> PackedLayout:
    """A PackedLayout for B*G sequences: the one given, or one built for this call from `(B,)` lengths / None."""
    if isinstance(layout_or_lengths, PackedLayout):
        return layout_or_lengths
    if layout_or_lengths is None:
        return PackedLayout.full(batch * groups, n, device)
    return PackedLayout.from_lengths(layout_or_lengths.to(device), groups, n,
                                     pack=wants_packed_layout(backend, device.type))


def attend(backend, q, kv, layout: PackedLayout) -> torch.Tensor:
    """`backend.attend`, resolving `auto` per kind of call first (AutoBackend caches its choice)."""
    if isinstance(backend, AutoBackend):
        k, v = kv.unbind(2)[-2:]  # views, to describe the call
        inputs = AttentionInputs.describe(k if q is None else q, k, v, masked=layout.padded)
        backend = backend.choose(inputs)
    return backend.attend(q, kv, layout)


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

    def forward(self, x: torch.Tensor, layout: PackedLayout | torch.Tensor | None = None) -> torch.Tensor:
        """x `(B, G, N, d)`, layout: the forward's PackedLayout of the B*G sequences, or `(B,)` valid frames
        (a layout is then built for this call), or None (no padding) -> `(B, G, N, d)`."""
        batch, groups, n = x.shape[:3]
        layout = as_layout(layout, batch, groups, n, self.backend, x.device)
        qkv = rearrange(self.qkv(x), "b g n (three h e) -> (b g) n three h e", three=3, h=self.heads)  # view
        out = attend(self.backend, None, qkv, layout)  # (B*G, N, H, E)
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

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, layout: PackedLayout | torch.Tensor | None = None):
        """queries `(B, Q, N, d)` (already gathered per pair), keys `(B, Q, N, d)`, layout as in PartSelfAttention
        -> `(B, Q, N, d)`."""
        batch, pairs, n = queries.shape[:3]
        layout = as_layout(layout, batch, pairs, n, self.backend, queries.device)
        q = rearrange(self.q(queries), "b q n (h e) -> (b q) n h e", h=self.heads)  # view
        kv = rearrange(self.kv(keys), "b q n (two h e) -> (b q) n two h e", two=2, h=self.heads)  # view
        out = attend(self.backend, q, kv, layout)  # (B*Q, N, H, E)
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

    def forward(self, x, layout=None):
        """x `(B, G, N, d)`, layout: see PartSelfAttention."""
        x = x + self.dropout(self.attn(self.norm1(x), layout))
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

    def forward(self, queries, keys, layout=None):
        """queries, keys `(B, Q, N, d)`, layout: see PartSelfAttention."""
        x = queries + self.dropout(self.attn(self.norm_q(queries), self.norm_kv(keys), layout))
        return x + self.mlp(self.norm2(x))
