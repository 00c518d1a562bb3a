"""StageMeter: medians, p90, warm-up and memory on CPU with a scripted clock; the CUDA path where there is CUDA."""
import json
import types

import pytest
import torch

from bpmt_fast.train import throughput
from bpmt_fast.train.throughput import CPU_MEMORY_KIND, CUDA_MEMORY_KIND, StageMeter


@pytest.fixture
def clock(monkeypatch):
    """A perf_counter the test moves by hand: `clock.now` in seconds."""
    fake = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(throughput, "time", types.SimpleNamespace(perf_counter=lambda: fake.now))
    return fake


def run_steps(meter, clock, step_ms, sizes):
    for ms, size in zip(step_ms, sizes):
        meter.step_started()
        clock.now += ms / 1000.0
        meter.step_finished(size)
        clock.now += 0.5  # time between steps (the loader) is not a step's time


def test_median_and_p90_of_measured_steps(clock):
    meter = StageMeter(torch.device("cpu"), warmup_steps=0)
    run_steps(meter, clock, [10, 20, 30, 40, 50], [8] * 5)
    summary = meter.summary()
    assert summary["steps"] == 5 and summary["warmup_excluded"] == 0
    assert summary["step_ms"] == pytest.approx(30.0)
    assert summary["step_ms_p90"] == pytest.approx(46.0)  # linear interpolation between 40 and 50


def test_warmup_steps_are_excluded(clock):
    meter = StageMeter(torch.device("cpu"), warmup_steps=2)
    run_steps(meter, clock, [900, 800, 10, 10, 10], [4] * 5)  # slow first steps: compile, allocator growth
    summary = meter.summary()
    assert summary["steps"] == 3 and summary["warmup_excluded"] == 2
    assert summary["step_ms"] == pytest.approx(10.0) and summary["step_ms_p90"] == pytest.approx(10.0)


def test_seq_per_s_from_median_step_time(clock):
    meter = StageMeter("cpu", warmup_steps=1)
    run_steps(meter, clock, [500, 20, 25, 40], [16] * 4)
    summary = meter.summary()
    assert summary["step_ms"] == pytest.approx(25.0)
    assert summary["seq_per_s"] == pytest.approx(16 / 0.025)


def test_seq_per_s_is_median_of_each_steps_rate(clock):
    """Batches of different size (a short last batch): the median is over each step's own sequences / second."""
    meter = StageMeter("cpu", warmup_steps=0)
    run_steps(meter, clock, [10, 10, 10], [10, 20, 5])  # 1000, 2000, 500 seq/s
    assert meter.summary()["seq_per_s"] == pytest.approx(1000.0)


def test_fewer_steps_than_warmup_measures_them_all(clock):
    meter = StageMeter("cpu", warmup_steps=3)
    run_steps(meter, clock, [10, 30], [2, 2])
    summary = meter.summary()
    assert summary["steps"] == 2 and summary["warmup_excluded"] == 0
    assert summary["step_ms"] == pytest.approx(20.0)


def test_reused_across_epochs_keeps_every_step_and_one_warmup(clock):
    meter = StageMeter("cpu", warmup_steps=1)
    run_steps(meter, clock, [100, 10, 10], [4] * 3)
    assert meter.summary()["steps"] == 2  # end of epoch 1
    run_steps(meter, clock, [20, 20, 20], [4] * 3)
    summary = meter.summary()  # end of epoch 2: all 6 steps, the first alone excluded
    assert summary["steps"] == 5 and summary["step_ms"] == pytest.approx(20.0)


def test_no_steps_gives_none_times_and_json_ready_summary(clock):
    summary = StageMeter("cpu").summary()
    assert summary["steps"] == 0 and summary["seq_per_s"] is None and summary["step_ms"] is None
    json.dumps(summary, allow_nan=False)


def test_cpu_memory_is_the_process_peak_rss(clock):
    summary = StageMeter("cpu").summary()
    assert summary["memory_kind"] == CPU_MEMORY_KIND == "cpu process peak RSS"
    assert 1 < summary["peak_memory_mb"] < 1e6  # MiB: a Python process with torch loaded is tens of MiB or more


def test_unbalanced_calls_are_errors(clock):
    meter = StageMeter("cpu")
    with pytest.raises(RuntimeError, match="without step_started"):
        meter.step_finished(1)
    meter.step_started()
    with pytest.raises(RuntimeError, match="twice"):
        meter.step_started()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA path: events and max_memory_allocated need a GPU")
def test_cuda_events_and_allocated_peak():
    device = torch.device("cuda")
    meter = StageMeter(device, warmup_steps=1)
    x = torch.randn(1024, 1024, device=device)
    for _ in range(4):
        meter.step_started()
        y = x @ x  # 4 MiB result: the allocated peak is at least that
        meter.step_finished(32)
        del y
    assert len(meter._pending) == 4  # nothing read back (no sync) before summary()
    summary = meter.summary()
    assert summary["steps"] == 3 and summary["step_ms"] > 0 and summary["seq_per_s"] > 0
    assert summary["memory_kind"] == CUDA_MEMORY_KIND
    assert summary["peak_memory_mb"] >= 8  # x and y
    assert meter._pending == []
