"""`xformers`: xformers.ops.memory_efficient_attention with a BlockDiagonalMask over packed tokens.

All sequences (parts, part pairs) go back to back into one batch-1 call; the block-diagonal mask keeps
segment i of the queries on segment i of the keys. CUDA only (xformers ships no CPU kernels).
"""
from __future__ import annotations

import importlib

import torch

from . import layout
from .base import AttentionBackend


def _xformers_ops():
    return importlib.import_module("xformers.ops")


class XformersBackend(AttentionBackend):
    NAME = "xformers"
    DESCRIPTION = "xformers memory_efficient_attention + BlockDiagonalMask (pip install bpmt-fast[xformers])"
    SUPPORTED_DEVICES = frozenset({"cuda"})
    SUPPORTED_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})

    @classmethod
    def unavailable_reason(cls):
        try:
            _xformers_ops()
        except ImportError as error:
            return f"package xformers is not installed ({error})"
        return None

    @classmethod
    def version(cls):
        return importlib.import_module("xformers").__version__ if cls.is_available() else None

    def _varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
        ops = _xformers_ops()
        # BlockDiagonalMask wants host lists: one read-back per call, shared when q and kv use one set of offsets
        # (the model's calls: PackedLayout passes the same tensor for both).
        q_lengths = layout.lengths_from_cu_seqlens(cu_seqlens_q).tolist()
        same = cu_seqlens_k is cu_seqlens_q
        kv_lengths = q_lengths if same else layout.lengths_from_cu_seqlens(cu_seqlens_k).tolist()
        bias = ops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(q_lengths, kv_lengths)
        out = ops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, scale=scale)
        return out[0]
