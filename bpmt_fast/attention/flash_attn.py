"""`flash-attn`: the flash-attn package (Tri Dao), `flash_attn_varlen_func` on packed tokens.

A thin wrapper: padded inputs are packed by the base class, and flash-attn's own varlen layout
`(total, H, D)` + int32 cu_seqlens is exactly ours. CUDA, fp16/bf16, head_dim <= 256 and a multiple of 8.
"""
from __future__ import annotations

import importlib

import torch

from .base import HALF_DTYPES, AttentionBackend


def _flash_attn_module():
    return importlib.import_module("flash_attn")


class FlashAttnBackend(AttentionBackend):
    NAME = "flash-attn"
    DESCRIPTION = "flash-attn package, flash_attn_varlen_func on packed parts (pip install bpmt-fast[flash])"
    SUPPORTED_DEVICES = frozenset({"cuda"})
    SUPPORTED_DTYPES = HALF_DTYPES
    MAX_HEAD_DIM = 256

    @classmethod
    def unavailable_reason(cls):
        try:
            _flash_attn_module()
        except ImportError as error:
            return f"package flash-attn is not installed ({error})"
        return None

    @classmethod
    def version(cls):
        return getattr(_flash_attn_module(), "__version__", "unknown") if cls.is_available() else None

    @classmethod
    def extra_reasons(cls, inputs):
        if inputs.head_dim % 8 or inputs.head_dim_v % 8:
            return ["head_dim must be a multiple of 8"]
        return []

    def _varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
        return _flash_attn_module().flash_attn_varlen_func(
            q, k, v, cu_seqlens_q.to(q.device, torch.int32), cu_seqlens_k.to(q.device, torch.int32),
            int(max_seqlen_q), int(max_seqlen_k), softmax_scale=scale, causal=False)
