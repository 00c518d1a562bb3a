"""`flex`: torch FlexAttention with block masks.

Padded inputs use a key-length mask per sequence; packed (varlen) inputs, which is how the model passes all
parts or all part pairs of a batch at once, use a document mask on one long sequence so that only the blocks
inside each (query segment, key segment) pair are computed. On CUDA the kernel is compiled once per process
(eager FlexAttention is a slow reference there); on CPU it runs eagerly and forward only: torch has no
FlexAttention backward on CPU.
"""
from __future__ import annotations

import functools
import warnings

import torch

from . import layout
from .base import AttentionBackend


def _flex_modules():
    from torch.nn.attention import flex_attention as module  # torch >= 2.5

    return module


@functools.cache
def _compiled_flex_attention():
    return torch.compile(_flex_modules().flex_attention, dynamic=False)


def _segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """`(total,)` index of the segment each packed token belongs to."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].long(), positions, right=True)


class FlexBackend(AttentionBackend):
    NAME = "flex"
    DESCRIPTION = "torch FlexAttention, block masks for padding and packed parts / part pairs"
    SUPPORTED_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})

    @classmethod
    def unavailable_reason(cls):
        try:
            _flex_modules()
        except ImportError as error:
            return f"torch {torch.__version__} has no FlexAttention ({error})"
        return None

    @classmethod
    def extra_reasons(cls, inputs):
        if inputs.device_type == "cpu" and inputs.requires_grad:
            return ["FlexAttention has no backward on CPU (forward / inference only there)"]
        if inputs.device_type == "cuda" and (inputs.head_dim < 16 or inputs.head_dim & (inputs.head_dim - 1)):
            return ["compiled FlexAttention needs a power-of-two head_dim >= 16"]
        return []

    @classmethod
    def version(cls):
        return torch.__version__

    def _run(self, q, k, v, block_mask, scale):
        """q `(B, N, H, D)` layout in and out; FlexAttention wants `(B, H, N, D)`."""
        flex = _compiled_flex_attention() if q.is_cuda else _flex_modules().flex_attention
        if not torch.is_grad_enabled():  # views of grad-requiring leaves would trip the CPU no-backward guard
            q, k, v = q.detach(), k.detach(), v.detach()
        with warnings.catch_warnings():
            # Eager FlexAttention warns that it is unfused; on CPU that is the intended mode.
            warnings.filterwarnings("ignore", message=".*flex_attention.*", category=UserWarning)
            out = flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask, scale=scale)
        return out.transpose(1, 2)

    def _padded(self, q, k, v, q_lengths, kv_lengths, scale, causal):
        batch, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
        kv_len = layout.full_lengths(batch, n_k, q.device) if kv_lengths is None else kv_lengths.to(q.device)

        def key_in_range(b, h, q_idx, kv_idx):
            return kv_idx < kv_len[b]

        block_mask = _flex_modules().create_block_mask(key_in_range, batch, None, n_q, n_k, device=q.device)
        return self._run(q, k, v, block_mask, scale)

    def _varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
        total_q, total_k = q.shape[0], k.shape[0]
        q_segment = _segment_ids(cu_seqlens_q.to(q.device), total_q)  # (Tq,)
        k_segment = _segment_ids(cu_seqlens_k.to(q.device), total_k)  # (Tk,)

        def same_segment(b, h, q_idx, kv_idx):
            return q_segment[q_idx] == k_segment[kv_idx]

        block_mask = _flex_modules().create_block_mask(same_segment, 1, None, total_q, total_k, device=q.device)
        return self._run(q[None], k[None], v[None], block_mask, scale)[0]
