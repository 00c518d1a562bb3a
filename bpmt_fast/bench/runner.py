"""`bpmt-fast bench SUITE`: settings from the command line -> machine ceilings -> suites -> JSON + report."""
from __future__ import annotations

import contextlib
import datetime
import re
import time
from pathlib import Path
from typing import Callable

import torch

from bpmt_fast.train.distributed import resolve_device

from .common import Settings, resolve_dtype, say, select_backends
from .hardware import measure_hardware
from .report import load_results, new_results, write_json, write_report
from .shapes import SHAPE_SETS, select_shape_sets

SUITES = ("attention", "train-step", "accuracy")
SUITE_SHAPE_KIND = {"attention": "attention", "train-step": "train-step", "accuracy": None}
# How a time budget (--budget-s) is shared among the suites that run: each suite gets its share of what is left
# when it starts, so time an earlier suite did not use goes to the later ones.
SUITE_BUDGET_SHARES = {"attention": 0.5, "train-step": 0.35, "accuracy": 0.15}


def default_out(device: torch.device) -> Path:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("bench-results") / f"{stamp}-{re.sub(r'[^A-Za-z0-9]+', '-', where).strip('-').lower()}"


def suites_to_run(suite: str, shapes: list[str] | None) -> list[str]:
    """The suites of `suite` ("all" or one) that have something to run under --shapes."""
    if suite != "all" and suite not in SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}; valid: {', '.join(SUITES)}, all")
    select_shape_sets(shapes)  # unknown names: ValueError listing the valid ones
    chosen = []
    for name in SUITES if suite == "all" else (suite,):
        kind = SUITE_SHAPE_KIND[name]
        if kind is None or not shapes or select_shape_sets(shapes, kind):
            chosen.append(name)
        elif suite != "all":
            valid = [s for s, shape_set in SHAPE_SETS.items() if shape_set.kind == kind]
            raise ValueError(f"--shapes {','.join(shapes)} selects no shape set of the {name} suite; "
                             f"its shape sets: {', '.join(valid)}")
    return chosen


@contextlib.contextmanager
def cpu_threads(settings: Settings):
    """CPU --quick runs on one thread. It is a smoke test, and on a shared machine multi-threaded ops wait for
    descheduled worker threads: tiny calls then time in scheduler quanta (8 ms steps), which one thread avoids."""
    previous = torch.get_num_threads()
    if settings.quick and settings.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def suite_deadline(name: str, suites: list[str], end: float | None, now: float) -> float | None:
    """When suite `name` (one of the `suites` still to run, in order) must stop starting rows, or None."""
    if end is None:
        return None
    later = suites[suites.index(name):]
    share = SUITE_BUDGET_SHARES[name] / sum(SUITE_BUDGET_SHARES[s] for s in later)
    return now + max(0.0, end - now) * share


def run_bench(suite: str, *, quick: bool = False, out: str | Path | None = None, backends: list[str] | None = None,
              shapes: list[str] | None = None, dtype: str | None = None, device: str = "auto",
              budget_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> Path:
    """Run `suite` ("attention", "train-step", "accuracy" or "all"); returns the folder with the results.

    `budget_s`: seconds for the whole run (measured on `clock`), shared among the suites (`SUITE_BUDGET_SHARES`);
    a row that would start past its suite's share is a `skipped` row with reason "time budget". The budget is
    cooperative: a row that started finishes. results.json is rewritten after every row."""
    if budget_s is not None and budget_s < 0:
        raise ValueError(f"budget_s must be >= 0 seconds, got {budget_s}")
    end = None if budget_s is None else clock() + budget_s
    suites = suites_to_run(suite, shapes)
    torch_device = resolve_device(device)
    settings = Settings(device=torch_device, dtype=resolve_dtype(dtype, torch_device), quick=quick,
                        backends=select_backends(backends), shapes=shapes,
                        out=Path(out) if out else default_out(torch_device), clock=clock)
    settings.out.mkdir(parents=True, exist_ok=True)
    # Imported here: the suites pull in the model and training code, which `bench report` does not need.
    from .accuracy_bench import run_accuracy
    from .attention_bench import run_attention
    from .train_step_bench import run_train_step

    with cpu_threads(settings) as threads:
        hardware = measure_hardware(settings.device, settings.dtype, quick)
        say(f"bench {suite}: {settings.device.type}, {settings.dtype_name}, {threads} CPU threads, backends "
            f"{', '.join(settings.backends)}; copy {hardware['bandwidth_gb_s']:.1f} GB/s, matmul "
            f"{hardware['matmul_tflop_s']:.3g} TFLOP/s")
        results = new_results({"suite": suite, "quick": quick, "dtype": settings.dtype_name,
                               "device": settings.device.type, "backends": settings.backends, "shapes": shapes,
                               "cpu_threads": threads, "budget_s": budget_s}, settings.device, hardware)
        write_json(results, settings.out)
        runners = {"attention": lambda: run_attention(settings, hardware),
                   "train-step": lambda: run_train_step(settings), "accuracy": lambda: run_accuracy(settings)}
        for name in suites:
            settings.deadline = suite_deadline(name, suites, end, clock())
            for row in runners[name]():
                results["rows"].append(row)
                write_json(results, settings.out)  # after every row: a kill or crash keeps what was measured
    report = write_report(results, settings.out)
    say(f"results: {settings.out / 'results.json'}, report: {report}")
    return settings.out


def rebuild_report(path: str | Path, out: str | Path | None = None) -> Path:
    """`bench report`: markdown and plots again from a saved results JSON (or its folder)."""
    results, folder = load_results(path)
    report = write_report(results, Path(out) if out else folder)
    say(f"report: {report}")
    return report
