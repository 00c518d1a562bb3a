"""Backend contract: declarative capabilities, reasons a call cannot run, and the padded / packed entry points.

A backend implements one native layout (`_padded` on `(B, N, H, D)` + lengths, or `_varlen` on packed
`(total, H, D)` + cu_seqlens); the base class converts the other one. Capabilities are class attributes so that
`not_supported_reasons` can answer from a cheap description of the call (`AttentionInputs`) without touching
tensor values, which keeps it free of device syncs and usable inside `torch.compile`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import layout

ALL_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
HALF_DTYPES = frozenset({torch.float16, torch.bfloat16})


class BackendError(ValueError):
    """A named backend cannot run the given inputs (or cannot run here at all)."""


@dataclass(frozen=True)
class AttentionInputs:
    """What a backend needs to know about a call to say whether it can run it."""

    device_type: str
    dtype: torch.dtype
    head_dim: int
    head_dim_v: int
    num_heads: int
    masked: bool  # lengths or packing: some keys must be excluded
    causal: bool = False
    custom_scale: bool = False
    requires_grad: bool = False

    @classmethod
    def describe(cls, q, k, v, *, masked, causal=False, scale=None) -> "AttentionInputs":
        requires_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        return cls(q.device.type, q.dtype, q.shape[-1], v.shape[-1], q.shape[-2], masked, causal, scale is not None,
                   requires_grad)

    def __str__(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (f"device={self.device_type}, dtype={dtype}, heads={self.num_heads}, head_dim={self.head_dim}, "
                f"head_dim_v={self.head_dim_v}, masked={self.masked}, causal={self.causal}, "
                f"custom_scale={self.custom_scale}, requires_grad={self.requires_grad}")


class AttentionBackend:
    NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str]  # one line for `bpmt-fast backends` and the README
    SUPPORTED_DEVICES: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})
    SUPPORTED_DTYPES: ClassVar[frozenset[torch.dtype]] = ALL_FLOAT_DTYPES
    MAX_HEAD_DIM: ClassVar[int | None] = None
    SUPPORTS_VARLEN: ClassVar[bool] = True  # can exclude padded keys (lengths / packed segments)
    SUPPORTS_CAUSAL: ClassVar[bool] = False
    SUPPORTS_CUSTOM_SCALE: ClassVar[bool] = True
    IS_EXACT: ClassVar[bool] = True  # computes softmax attention (flow attention does not)

    # ---- availability (import / driver probe), cached per process ----
    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the backend can run on this machine, else why not."""
        return None

    @classmethod
    def why_unavailable(cls) -> str | None:
        """Cached `unavailable_reason`: probing imports and drivers once per process is enough."""
        return _cached_unavailable_reason(cls)

    @classmethod
    def is_available(cls) -> bool:
        return cls.why_unavailable() is None

    @classmethod
    def version(cls) -> str | None:
        return None

    # ---- per-call capability check ----
    @classmethod
    def not_supported_reasons(cls, inputs: AttentionInputs) -> list[str]:
        reasons = []
        unavailable = cls.why_unavailable()
        if unavailable:
            reasons.append(unavailable)
        if inputs.device_type not in cls.SUPPORTED_DEVICES:
            reasons.append(f"device '{inputs.device_type}' not in {sorted(cls.SUPPORTED_DEVICES)}")
        if inputs.dtype not in cls.SUPPORTED_DTYPES:
            names = sorted(str(d).replace("torch.", "") for d in cls.SUPPORTED_DTYPES)
            reasons.append(f"dtype {str(inputs.dtype).replace('torch.', '')} not in {names}")
        if cls.MAX_HEAD_DIM is not None and max(inputs.head_dim, inputs.head_dim_v) > cls.MAX_HEAD_DIM:
            reasons.append(f"head_dim {max(inputs.head_dim, inputs.head_dim_v)} > {cls.MAX_HEAD_DIM}")
        if inputs.masked and not cls.SUPPORTS_VARLEN:
            reasons.append("cannot mask padded keys (no lengths / varlen support)")
        if inputs.causal and not cls.SUPPORTS_CAUSAL:
            reasons.append("causal attention is not supported")
        if inputs.custom_scale and not cls.SUPPORTS_CUSTOM_SCALE:
            reasons.append("a custom softmax scale is not supported")
        return reasons + cls.extra_reasons(inputs)

    @classmethod
    def extra_reasons(cls, inputs: AttentionInputs) -> list[str]:
        """Backend-specific limits beyond the declarative ones."""
        return []

    @classmethod
    def supports(cls, inputs: AttentionInputs) -> bool:
        return not cls.not_supported_reasons(inputs)

    @classmethod
    def check(cls, inputs: AttentionInputs) -> None:
        reasons = cls.not_supported_reasons(inputs)
        if reasons:
            raise BackendError(f"attention backend '{cls.NAME}' cannot run inputs ({inputs}):\n  - "
                               + "\n  - ".join(reasons))

    # ---- entry points: padding content is ignored and padded outputs are zero ----
    def padded(self, q, k, v, q_lengths=None, kv_lengths=None, scale=None, causal=False):
        """q `(B, Nq, H, D)`, k/v `(B, Nk, H, D)` -> `(B, Nq, H, Dv)`."""
        q = layout.zero_padding(q, q_lengths)
        k, v = layout.zero_padding(k, kv_lengths), layout.zero_padding(v, kv_lengths)
        out = self._padded(q, k, v, q_lengths, kv_lengths, scale, causal)
        return layout.zero_padding(out, q_lengths)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=None, causal=False):
        """Packed q `(Tq, H, D)`, k/v `(Tk, H, D)`; segment i of q attends to segment i of k/v."""
        return self._varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal)

    # ---- the model's entry point: one layout per forward, fused projections ----
    @classmethod
    def packs_natively(cls) -> bool:
        """True when the native layout is packed varlen (`_varlen` overridden, `_padded` not)."""
        return cls._varlen is not AttentionBackend._varlen and cls._padded is AttentionBackend._padded

    @classmethod
    def wants_packed_layout(cls, device_type: str) -> bool:
        """Whether the model should build packing offsets / indices for calls on `device_type`."""
        return cls.packs_natively()

    def attend(self, q, kv, layout_: layout.PackedLayout, scale=None):
        """Attention over the padded sequences described by `layout_` (built once per forward).

        q `(S, N, H, D)` with kv `(S, N, 2, H, D)` (keys, values), or q None with kv `(S, N, 3, H, D)` (queries,
        keys, values): fused projections, so a packing backend gathers each projection once. Padding content is
        ignored. -> `(S, N, H, Dv)`, zero in the padding. No host sync when the layout was built with host ints.
        """
        if self.packs_natively():
            return self._attend_packed(q, kv, layout_, scale)
        return self._attend_padded(q, kv, layout_, scale)

    def _attend_packed(self, q, kv, layout_, scale):
        if not layout_.packed:  # built for padded backends: pack here (one host sync)
            layout_ = _repacked(layout_)
        fused = layout_.pack(kv)  # (total, F, H, D): one gather (or a view) for all fused projections
        if q is None:
            q, k, v = fused.unbind(1)  # (total, H, D) views
        else:
            q, (k, v) = layout_.pack(q), fused.unbind(1)
        cu, longest = layout_.cu_seqlens, layout_.max_seqlen
        return layout_.unpack(self._varlen(q, k, v, cu, cu, longest, longest, scale, False))  # (S, N, H, Dv)

    def _attend_padded(self, q, kv, layout_, scale):
        q, k, v = kv.unbind(2) if q is None else (q, *kv.unbind(2))  # (S, N, H, D) views
        q, k, v = (layout_.zero_padding(x) for x in (q, k, v))
        out = self._padded(q, k, v, layout_.lengths, layout_.lengths, scale, False)  # (S, N, H, Dv)
        return layout_.zero_padding(out)

    # ---- native implementations: override at least one ----
    def _padded(self, q, k, v, q_lengths, kv_lengths, scale, causal):
        if q_lengths is None and kv_lengths is None and type(self)._varlen is AttentionBackend._varlen:
            raise NotImplementedError(f"{self.NAME} implements neither _padded nor _varlen")
        batch, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
        q_lengths = layout.full_lengths(batch, n_q, q.device) if q_lengths is None else q_lengths
        kv_lengths = layout.full_lengths(batch, n_k, q.device) if kv_lengths is None else kv_lengths
        out = self._varlen(layout.pack(q, q_lengths), layout.pack(k, kv_lengths), layout.pack(v, kv_lengths),
                           layout.cu_seqlens_from_lengths(q_lengths), layout.cu_seqlens_from_lengths(kv_lengths),
                           n_q, n_k, scale, causal)
        return layout.unpack(out, q_lengths, n_q)

    def _varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
        q_lengths = layout.lengths_from_cu_seqlens(cu_seqlens_q)
        kv_lengths = layout.lengths_from_cu_seqlens(cu_seqlens_k)
        out = self._padded(layout.unpack(q, q_lengths, max_seqlen_q), layout.unpack(k, kv_lengths, max_seqlen_k),
                           layout.unpack(v, kv_lengths, max_seqlen_k), q_lengths, kv_lengths, scale, causal)
        return layout.pack(out, q_lengths)

    def __repr__(self) -> str:
        return f"<attention backend {self.NAME}>"


def _repacked(padded: layout.PackedLayout) -> layout.PackedLayout:
    """A padded-only layout with packing added: its per-sequence lengths, one group each."""
    return layout.PackedLayout.from_lengths(padded.lengths, 1, padded.n)


@functools.cache
def _cached_unavailable_reason(cls) -> str | None:
    try:
        reason = cls.unavailable_reason()
    except Exception as error:  # a broken install is a reason, not a crash
        return f"probe failed: {type(error).__name__}: {error}"
    if reason is None and "cpu" not in cls.SUPPORTED_DEVICES and not torch.cuda.is_available():
        reason = "needs a CUDA GPU (torch.cuda.is_available() is False here)"
    return reason
