"""One registry of attention backends, `auto` selection and the process default (env BPMT_ATTN_BACKEND)."""
from __future__ import annotations

import os

from .base import AttentionBackend, AttentionInputs, BackendError
from .flash_attn import FlashAttnBackend
from .flex import FlexBackend
from .flow import FlowBackend
from .flow_triton import FlowTritonBackend
from .math import MathBackend
from .sdpa import SdpaBackend, SdpaCudnnBackend, SdpaEfficientBackend, SdpaFlashBackend, SdpaMathBackend
from .triton import TritonBackend
from .xformers import XformersBackend

ENV_VAR = "BPMT_ATTN_BACKEND"
AUTO = "auto"

BACKENDS: dict[str, type[AttentionBackend]] = {
    cls.NAME: cls
    for cls in (MathBackend, SdpaBackend, SdpaFlashBackend, SdpaEfficientBackend, SdpaCudnnBackend,
                SdpaMathBackend, FlexBackend, FlashAttnBackend, XformersBackend, TritonBackend, FlowBackend,
                FlowTritonBackend)
}

# `auto` tries these in order and takes the first that supports the call. Only exact backends: auto must
# never change what the model computes. Fastest measured first (../shared/GPU.md: packed varlen kernels beat
# padded+mask sdpa by ~10x at real gait lengths); math last as the always-works fallback.
AUTO_PRIORITY: dict[str, tuple[str, ...]] = {
    "cuda": ("flash-attn", "xformers", "sdpa", "math"),
    "cpu": ("sdpa", "math"),
}


def backend_names() -> list[str]:
    return [AUTO, *BACKENDS]


def register(cls: type[AttentionBackend], *, auto_priority: dict[str, int] | None = None) -> None:
    """Add a backend (our Triton kernels register themselves here); optionally insert it into auto's order."""
    BACKENDS[cls.NAME] = cls
    for device, position in (auto_priority or {}).items():
        order = [name for name in AUTO_PRIORITY.get(device, ()) if name != cls.NAME]
        order.insert(position, cls.NAME)
        AUTO_PRIORITY[device] = tuple(order)


def default_backend_name() -> str:
    """The process-wide choice: env BPMT_ATTN_BACKEND (set by the CLI's --attn-backend), else auto."""
    return os.environ.get(ENV_VAR, AUTO).strip() or AUTO


def check_backend_name(name: str) -> str:
    if name not in BACKENDS and name != AUTO:
        raise BackendError(f"unknown attention backend {name!r}; valid names: {', '.join(backend_names())}")
    return name


class AutoBackend:
    """Picks, per kind of call, the first backend of AUTO_PRIORITY that supports it (cached per description)."""

    NAME = AUTO
    IS_EXACT = True

    def __init__(self):
        self._chosen: dict[AttentionInputs, AttentionBackend] = {}

    def choose(self, inputs: AttentionInputs) -> AttentionBackend:
        if inputs not in self._chosen:
            for name in AUTO_PRIORITY.get(inputs.device_type, ("math",)):
                if BACKENDS[name].supports(inputs):
                    self._chosen[inputs] = BACKENDS[name]()
                    break
            else:
                raise BackendError(f"no attention backend supports inputs ({inputs})")
        return self._chosen[inputs]

    def check(self, inputs: AttentionInputs) -> None:
        self.choose(inputs)

    def padded(self, q, k, v, q_lengths=None, kv_lengths=None, scale=None, causal=False):
        inputs = AttentionInputs.describe(q, k, v, masked=q_lengths is not None or kv_lengths is not None,
                                          causal=causal, scale=scale)
        return self.choose(inputs).padded(q, k, v, q_lengths, kv_lengths, scale, causal)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=None, causal=False):
        inputs = AttentionInputs.describe(q, k, v, masked=True, causal=causal, scale=scale)
        return self.choose(inputs).varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                          scale, causal)

    def __repr__(self) -> str:
        return "<attention backend auto>"


def get_backend(name: str | None = None) -> AttentionBackend | AutoBackend:
    """Resolve a name (None: the process default) to a backend object, failing loudly if it cannot run here."""
    name = check_backend_name(default_backend_name() if name is None else name)
    if name == AUTO:
        return AutoBackend()
    cls = BACKENDS[name]
    reason = cls.why_unavailable()
    if reason:
        raise BackendError(f"attention backend {name!r} is not available here: {reason}")
    return cls()
