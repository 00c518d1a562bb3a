"""`BPMT_REQUIRE_CUDA=1`: on a CUDA machine, a test skipped because a backend that should run there cannot run is
a failure, not a skip. tests/conftest.py applies the rule; `bpmt-fast gpu-check` sets the variable.

The rule (`skip_failure`) reads the skip reason and this machine's backend availability:
- the reason is about a backend that should run on a CUDA machine (`required_backends`): sdpa, sdpa-flash,
  sdpa-efficient, sdpa-cudnn, sdpa-math, flex, triton, flow-triton, and xformers / flash-attn when their package
  is importable. The tests name the backend first ("<name>: <reasons>"); an unprefixed reason that quotes a
  required backend's unavailability reason counts too;
- and that backend is unavailable here (its `why_unavailable()` is not None), or the reason says it refuses
  device 'cuda'.
Everything else stays a skip: a capability the backend declares it lacks for those inputs (a dtype, a head dim,
padding, the CPU-parametrized case of a CUDA-only backend or of a Triton backend outside the interpreter), a
missing optional package, missing data files, and tests that need a CPU-only machine.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Mapping

ENV_VAR = "BPMT_REQUIRE_CUDA"
# Ship with torch or with this package: a CUDA machine with our requirements runs all of them.
ALWAYS_REQUIRED = ("sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "flex", "triton",
                   "flow-triton")
# Optional packages: required only where the package is importable (a broken install is then a failure).
REQUIRED_WHEN_IMPORTABLE = {"xformers": "xformers", "flash-attn": "flash_attn"}
REFUSES_CUDA = "device 'cuda' not in"


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "").strip() == "1"


def required_backends(importable=lambda module: importlib.util.find_spec(module) is not None) -> list[str]:
    """Backends that must run on a CUDA machine with this environment."""
    optional = [name for name, module in REQUIRED_WHEN_IMPORTABLE.items() if importable(module)]
    return list(ALWAYS_REQUIRED) + optional


def backend_status() -> dict[str, str | None]:
    """{required backend: why it is unavailable here, or None} for this machine."""
    from bpmt_fast.attention import BACKENDS

    return {name: BACKENDS[name].why_unavailable() for name in required_backends() if name in BACKENDS}


def named_backend(reason: str, status: Mapping[str, str | None]) -> str | None:
    """The required backend a skip reason is about, or None."""
    for name in sorted(status, key=len, reverse=True):  # "sdpa-flash: ..." is not about "sdpa"
        if reason.startswith(f"{name}:"):
            return name
    for name, unavailable in status.items():
        if unavailable and unavailable in reason:
            return name
    return None


def skip_failure(reason: str, status: Mapping[str, str | None]) -> str | None:
    """The failure message when a skip with `reason` must fail on this CUDA machine, else None (it stays a skip).

    `status`: {backend that should run here: why it is unavailable, or None}, as `backend_status()` gives it."""
    name = named_backend(reason, status)
    if name is None:
        return None
    if status[name] is not None:
        return (f"{ENV_VAR}=1: backend '{name}' should run on this CUDA machine but is unavailable "
                f"({status[name]}); skip reason: {reason}")
    if REFUSES_CUDA in reason:
        return f"{ENV_VAR}=1: backend '{name}' refuses device 'cuda' on a CUDA machine; skip reason: {reason}"
    return None


def no_cuda_message(torch_version: str, cuda_build: str | None) -> str:
    build = f"CUDA build {cuda_build}" if cuda_build else "a CPU-only build"
    return (f"{ENV_VAR}=1 but torch {torch_version} ({build}) sees no CUDA device: run these tests on a GPU "
            f"machine, or unset {ENV_VAR}")
