"""What every suite shares: the run's settings, which backends run, and how a result row looks."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bpmt_fast.attention import BACKENDS
from bpmt_fast.attention.triton import runs_interpreted

NAN = math.nan
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Triton backends run on CPU only inside the Triton interpreter, which is orders of magnitude slower than a GPU:
# their CPU timings would say nothing about the kernels.
ATTENTION_REMOVED = "attention removed"  # the train-step row whose attention returns v unchanged
INTERPRETED_REASON = "interpreted on CPU: timing meaningless"
INTERPRETED_TRAINING_REASON = "interpreted on CPU: too slow to train here"
TIME_BUDGET_REASON = "time budget"  # a row not started because its suite's time budget was spent

# Row statuses. Only "ok" rows carry numbers; every other status has NaN times and a reason.
OK, WRONG, ERROR, OOM, UNSUPPORTED, SKIPPED, UNAVAILABLE = ("ok", "wrong", "error", "oom", "unsupported",
                                                            "skipped", "unavailable")


@dataclass
class Settings:
    device: torch.device
    dtype: torch.dtype
    quick: bool = False
    backends: list[str] = field(default_factory=list)  # names to run, math first
    shapes: list[str] | None = None  # shape-set names; None: all
    out: Path = Path("bench-results")
    deadline: float | None = None  # clock() value after which no new row starts; None: no budget
    clock: Callable[[], float] = time.monotonic

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def out_of_time(self) -> bool:
        """Checked before each row starts: a row that started runs to its end (the budget is cooperative)."""
        return self.deadline is not None and self.clock() >= self.deadline


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA and fp32 on CPU unless asked otherwise (CPU half-precision kernels are emulation, mostly)."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def select_backends(names: list[str] | None) -> list[str]:
    """Backends to run, looked up in the registry at run time (backends may register late).

    None: every available backend. A named list is validated (unknown names raise ValueError listing the valid
    ones) and kept as named, so an unavailable backend the user asked for shows up with its reason. `math`, the
    reference, is always first.
    """
    if names:
        unknown = [n for n in names if n not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; valid: {', '.join(BACKENDS)}")
        chosen = list(dict.fromkeys(names))
    else:
        chosen = [name for name, cls in BACKENDS.items() if cls.is_available()]
    return ["math"] + [n for n in chosen if n != "math"]


def skip_reason(name: str, device: torch.device, interpreted: str = INTERPRETED_REASON) -> tuple[str, str] | None:
    """(status, reason) when a backend cannot be measured on this machine at all, else None."""
    reason = BACKENDS[name].why_unavailable()
    if reason:
        return UNAVAILABLE, reason
    if runs_interpreted(BACKENDS[name], device.type):
        return SKIPPED, interpreted
    return None


def write_json_atomic(path: Path, value) -> Path:
    """JSON written to a temporary file, then moved over `path`: a run killed mid-write keeps the previous file.
    NaN stays NaN (Python's json reads and writes it); anything else unknown is written as its str()."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    tmp.replace(path)
    return path


def error_text(error: BaseException, limit: int = 300) -> str:
    """One line of an exception for a row: the type and the start of the message."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}" + ("..." if len(text) > limit else "")


def say(message: str) -> None:
    print(message, flush=True)
