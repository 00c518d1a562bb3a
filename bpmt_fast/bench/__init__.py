"""`bpmt-fast bench`: evidence for choosing an attention backend, measured on the machine it runs on.

Suites (one module each): attention calls per backend and shape set (`attention_bench`), whole training steps
(`train_step_bench`), a short training run per backend (`accuracy_bench`). Shape sets live in `shapes`, the
machine's ceilings in `hardware`, timing in `timing`, JSON / markdown / plots in `report`; `runner` ties them.
"""
from .runner import SUITES, rebuild_report, run_bench
from .shapes import SHAPE_SETS

__all__ = ["run_bench", "rebuild_report", "SUITES", "SHAPE_SETS"]
