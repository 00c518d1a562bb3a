"""`sdpa*`: torch.nn.functional.scaled_dot_product_attention, torch's choice or one pinned kernel.

Padding is a boolean key mask `(B, 1, 1, Nk)`. Torch's FlashAttention kernel on CUDA takes no mask, so
`sdpa-flash` on CUDA runs full-length sequences only; on CPU torch's flash kernel takes the mask.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import layout
from .base import HALF_DTYPES, AttentionBackend


class SdpaBackend(AttentionBackend):
    NAME = "sdpa"
    DESCRIPTION = "torch SDPA, torch picks the kernel (flash / efficient / cudnn / math)"
    PINNED: SDPBackend | None = None

    @classmethod
    def version(cls):
        return torch.__version__

    def _padded(self, q, k, v, q_lengths, kv_lengths, scale, causal):
        mask = None
        if kv_lengths is not None:
            mask = layout.padding_mask(kv_lengths.to(q.device), k.shape[1])[:, None, None, :]  # (B, 1, 1, Nk)
        pinned = sdpa_kernel(self.PINNED) if self.PINNED is not None else contextlib.nullcontext()
        with pinned:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask, scale=scale)  # (B, H, Nq, Dv)
        return out.transpose(1, 2)


class SdpaFlashBackend(SdpaBackend):
    NAME = "sdpa-flash"
    DESCRIPTION = "torch SDPA pinned to FlashAttention-2 (CUDA: fp16/bf16, no mask; CPU: flash kernel)"
    PINNED = SDPBackend.FLASH_ATTENTION

    @classmethod
    def extra_reasons(cls, inputs):
        reasons = []
        if inputs.device_type == "cuda":
            if inputs.dtype not in HALF_DTYPES:
                reasons.append("on CUDA needs float16 or bfloat16")
            if max(inputs.head_dim, inputs.head_dim_v) > 256:
                reasons.append("on CUDA needs head_dim <= 256")
            if inputs.masked:
                reasons.append("on CUDA takes no attention mask: needs full-length sequences (no padding)")
        return reasons


class SdpaEfficientBackend(SdpaBackend):
    NAME = "sdpa-efficient"
    DESCRIPTION = "torch SDPA pinned to the memory-efficient (xformers-derived) kernel, CUDA only"
    PINNED = SDPBackend.EFFICIENT_ATTENTION
    SUPPORTED_DEVICES = frozenset({"cuda"})
    SUPPORTED_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})


class SdpaCudnnBackend(SdpaBackend):
    NAME = "sdpa-cudnn"
    DESCRIPTION = "torch SDPA pinned to cuDNN attention, CUDA only, fp16/bf16"
    PINNED = SDPBackend.CUDNN_ATTENTION
    SUPPORTED_DEVICES = frozenset({"cuda"})
    SUPPORTED_DTYPES = HALF_DTYPES
    MAX_HEAD_DIM = 128

    @classmethod
    def unavailable_reason(cls):
        if torch.cuda.is_available() and not torch.backends.cudnn.is_available():
            return "cuDNN is not available in this torch build"
        return None


class SdpaMathBackend(SdpaBackend):
    NAME = "sdpa-math"
    DESCRIPTION = "torch SDPA pinned to its math (unfused) kernel"
    PINNED = SDPBackend.MATH
