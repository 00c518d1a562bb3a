"""Mixed precision for training: which compute dtype, the autocast context, and the fp16 gradient scaler.

Weights, optimizer state and losses stay fp32; only the matmuls and attention inside `autocast` run in the compute
dtype. `train.precision`:

- `auto`: bf16 on CUDA GPUs that support it, fp32 elsewhere (on the CPU bf16 autocast is slower than fp32);
- `bf16`: bf16 autocast (CUDA, or CPU where torch supports it);
- `fp16`: fp16 autocast with a gradient scaler (CUDA only: fp16 needs loss scaling, which torch keeps for GPUs);
- `fp32`: no autocast.

Every attention backend of the model must run at the compute dtype: `check_backends` fails at start-up with the
backend's own reasons, never a silent fallback to another dtype or backend.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from bpmt_fast.attention import AttentionInputs
from bpmt_fast.attention.registry import AutoBackend

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Precision:
    name: str  # bf16 | fp16 | fp32 (resolved: never "auto")
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self):
        """The forward's context: autocast to the compute dtype, or nothing for fp32."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """fp16 needs a gradient scaler (small gradients underflow); for other precisions it is a no-op."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")


def resolve_precision(name: str, device: torch.device) -> Precision:
    """`train.precision` -> the precision this device runs; an impossible choice is a ValueError naming why."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name not in DTYPES:
        raise ValueError(f"config train.precision: unknown precision {name!r}; valid: auto, {', '.join(DTYPES)}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("config train.precision: fp16 needs a CUDA device (loss scaling); use bf16 or fp32 on "
                         f"{device.type}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("config train.precision: bf16 is not supported by this GPU; use fp16 or fp32")
    return Precision(name, device)


def attention_backends(model: torch.nn.Module) -> list:
    """The distinct backend objects of a model's attention modules (those with a `backend` attribute)."""
    seen = {}
    for module in model.modules():
        backend = getattr(module, "backend", None)
        if backend is not None:
            seen.setdefault(id(backend), backend)
    return list(seen.values())


def check_backends(model: torch.nn.Module, precision: Precision, head_dim: int, heads: int) -> None:
    """Fail before training when an attention backend of `model` cannot run the training calls at the compute
    dtype (with gradients, key padding masked), naming the backend and its reasons."""
    inputs = AttentionInputs(precision.device.type, precision.dtype, head_dim, head_dim, heads, masked=True,
                             requires_grad=True)
    problems = []
    for backend in attention_backends(model):
        if isinstance(backend, AutoBackend):
            continue  # auto picks a supporting backend per call
        reasons = backend.not_supported_reasons(inputs)
        if reasons:
            problems.append(f"{backend.NAME}: " + "; ".join(reasons))
    if problems:
        raise ValueError(f"train.precision {precision.name} on {precision.device.type}: the attention backend cannot "
                         f"run the training calls ({inputs}):\n  - " + "\n  - ".join(problems)
                         + "\nchoose another backend (--attn-backend) or precision (train.precision=...)")
