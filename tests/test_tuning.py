"""Tuned launch tables (kernels/tuning.py) and the tuner's sweep (bpmt_fast/bench/tune.py), on CPU with fakes."""
import argparse
import json
import os
import re

import pytest
import torch

from bpmt_fast.bench import tune
from bpmt_fast.kernels import tuning
from bpmt_fast.kernels.tuning import TuningTableError

CONFIG = {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}
ENTRY = {"kernel": "fwd", "mode": "segment", "head_block": 32, "bucket": 64, "dtype": "bf16", "config": CONFIG}


@pytest.fixture(autouse=True)
def _fresh_tables(monkeypatch, tmp_path):
    """Tables come from a temporary folder, nothing cached across tests, GPU-style lookups (no interpreter)."""
    monkeypatch.setattr(tuning, "TUNED_DIR", tmp_path)
    monkeypatch.setattr(tuning.common, "INTERPRET", False)
    tuning.clear_cache()
    yield
    tuning.clear_cache()


def write(path, entries, **top):
    table = {"format": 1, "arch": path.stem, "runs": [{"device": "test"}], "entries": entries, **top}
    path.write_text(json.dumps(table))
    return path


# ---------------------------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length, bucket", [(0, 16), (1, 16), (16, 16), (17, 32), (32, 32), (60, 64), (100, 128),
                                            (128, 128), (129, 256), (256, 256), (257, 512), (489, 512),
                                            (20000, 512)])
def test_length_bucket(length, bucket):
    assert tuning.length_bucket(length) == bucket


def test_make_key_converts_dtype_and_buckets_length():
    assert tuning.make_key("dq", "packed", 64, 25, torch.float16) == ("dq", "packed", 64, 32, "fp16")
    assert tuning.make_key("fwd", "segment", 32, 489, "bf16") == ("fwd", "segment", 32, 512, "bf16")
    with pytest.raises(ValueError, match="float64"):
        tuning.make_key("fwd", "segment", 32, 60, torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"config": {**CONFIG, "block_m": 24}}, r"config\.block_m must be a power of two in \[16, 256\].*got 24"),
    ({"config": {**CONFIG, "block_n": 8}}, r"config\.block_n must be a power of two.*got 8"),
    ({"config": {**CONFIG, "num_warps": 3}}, r"config\.num_warps must be one of \(1, 2, 4, 8, 16\), got 3"),
    ({"config": {**CONFIG, "num_stages": 0}}, r"config\.num_stages .* got 0"),
    ({"config": {**CONFIG, "waves": 2}}, r"unknown config key\(s\) \['waves'\]"),
    ({"blockm": 64}, r"unknown key\(s\) \['blockm'\]"),
    ({"mode": "pack"}, r"mode must be one of .*got 'pack'"),
    ({"bucket": 60}, r"bucket must be one of .*got 60"),
    ({"head_block": 48}, r"head_block must be one of .*got 48"),
    ({"dtype": "float16"}, r"dtype must be one of .*got 'float16'"),
    ({"median_ms": -1.0}, r"median_ms must be a positive number"),
    ({"run": 3}, r"run must index the table's runs"),
])
def test_bad_entry_names_file_entry_and_key(tmp_path, change, message):
    path = write(tmp_path / "sm90.json", [ENTRY, {**ENTRY, "bucket": 128, **change}])
    with pytest.raises(TuningTableError, match=message) as error:
        tuning.load_table(path, "sm90")
    assert str(path) in str(error.value) and "entries[1]" in str(error.value)


def test_table_level_errors(tmp_path):
    path = tmp_path / "sm90.json"
    with pytest.raises(TuningTableError, match=r"unknown top-level key\(s\) \['extra'\]"):
        tuning.load_table(write(path, [ENTRY], extra=1))
    with pytest.raises(TuningTableError, match=r"arch 'sm80' does not match .*'sm90'"):
        tuning.load_table(write(path, [ENTRY], arch="sm80"), "sm90")
    with pytest.raises(TuningTableError, match=r"entries\[1\].*duplicate key"):
        tuning.load_table(write(path, [ENTRY, ENTRY]))
    with pytest.raises(TuningTableError, match=r"entries\[0\]: missing key\(s\) \['config'\]"):
        tuning.load_table(write(path, [{k: v for k, v in ENTRY.items() if k != "config"}]))
    path.write_text("{not json")
    with pytest.raises(TuningTableError, match=re.escape(f"{path}: not valid JSON")):
        tuning.load_table(path)


def test_missing_file_means_no_entries(tmp_path):
    assert tuning.load_table(tmp_path / "sm75.json") == {}


# ---------------------------------------------------------------------------------------------------------------
# lookup
# ---------------------------------------------------------------------------------------------------------------
def test_lookup_hit_miss_and_lazy_single_load(tmp_path, monkeypatch):
    write(tmp_path / "sm90.json", [ENTRY])
    loads = []
    real_load = tuning.load_table
    monkeypatch.setattr(tuning, "load_table", lambda *a: loads.append(a) or real_load(*a))
    assert tuning.tuned_config("fwd", "segment", 32, 60, torch.bfloat16, "sm90") == CONFIG  # bucket 64
    assert tuning.tuned_config("fwd", "segment", 32, 33, torch.bfloat16, "sm90") == CONFIG  # bucket 64 too
    assert tuning.tuned_config("fwd", "segment", 32, 65, torch.bfloat16, "sm90") is None  # bucket 128
    assert tuning.tuned_config("fwd", "packed", 32, 60, torch.bfloat16, "sm90") is None
    assert tuning.tuned_config("fwd", "segment", 32, 60, torch.float16, "sm90") is None
    assert tuning.tuned_config("dq", "segment", 32, 60, torch.bfloat16, "sm90") is None
    assert tuning.tuned_config("fwd", "segment", 32, 60, torch.bfloat16, "sm80") is None  # no file: no entries
    assert len(loads) == 2  # sm90 once, sm80 once
    tuning.tuned_config("fwd", "segment", 32, 60, torch.bfloat16, "sm90")["block_m"] = 16  # a copy is returned
    assert tuning.tuned_config("fwd", "segment", 32, 60, torch.bfloat16, "sm90") == CONFIG


def test_lookup_none_under_interpreter_without_cuda_and_when_disabled(tmp_path, monkeypatch):
    write(tmp_path / "sm90.json", [ENTRY])
    with tuning.tables_disabled():
        assert tuning.tuned_config("fwd", "segment", 32, 60, "bf16", "sm90") is None
    monkeypatch.setattr(tuning.common, "INTERPRET", True)
    assert tuning.tuned_config("fwd", "segment", 32, 60, "bf16", "sm90") is None
    monkeypatch.setattr(tuning.common, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tuning.device_arch() is None
    assert tuning.tuned_config("fwd", "segment", 32, 60, "bf16") is None  # arch of no device


def test_device_arch_string(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    tuning._arch_of.cache_clear()
    try:
        assert tuning.device_arch(0) == "sm90"
    finally:
        tuning._arch_of.cache_clear()


def test_broken_table_raises_on_first_lookup(tmp_path):
    write(tmp_path / "sm90.json", [{**ENTRY, "config": {**CONFIG, "num_warps": 5}}])
    with pytest.raises(TuningTableError, match=r"sm90\.json: entries\[0\].*num_warps"):
        tuning.tuned_config("fwd", "segment", 32, 60, "bf16", "sm90")


def test_override_config(tmp_path, monkeypatch):
    write(tmp_path / "sm90.json", [ENTRY])
    monkeypatch.setattr(tuning.common, "INTERPRET", True)  # overrides work in the interpreter too
    other = {"block_m": 16, "block_n": 16, "num_warps": 2, "num_stages": 1}
    with tuning.override_config("fwd", other) as lookups:
        assert tuning.tuned_config("fwd", "packed", 64, 20, "fp16", "sm90") == other
        assert tuning.tuned_config("dq", "packed", 64, 20, "fp16", "sm90") is None  # other kernels untouched
        with tuning.override_config("fwd", CONFIG) as inner:
            assert tuning.tuned_config("fwd", "segment", 32, 60, "bf16") == CONFIG
        assert inner == {("fwd", "segment", 32, 64, "bf16")}
        assert tuning.tuned_config("fwd", "packed", 64, 20, "fp16") == other  # restored
    assert lookups == {("fwd", "packed", 64, 32, "fp16")}
    assert tuning.tuned_config("fwd", "packed", 64, 20, "fp16") is None
    with pytest.raises(TuningTableError, match=r"override_config\('fwd'\): config\.num_warps"):
        with tuning.override_config("fwd", {**CONFIG, "num_warps": 6}):
            pass
    assert "fwd" not in tuning._OVERRIDES


# ---------------------------------------------------------------------------------------------------------------
# the tuner's sweep, with fake launches and a fake clock
# ---------------------------------------------------------------------------------------------------------------
def label(config):
    return tune.config_label(config)


class FakeGPU:
    """Launch functions whose calls ask tuned_config as a launcher must; `measure` returns the time given by
    `times(config)` and advances a fake clock by `cost` seconds per measurement."""

    def __init__(self, times, fails=lambda c: None, wrong=lambda c: False, wired=True, cost=1.0):
        self.times, self.fails, self.wrong, self.wired, self.cost = times, fails, wrong, wired, cost
        self.now = 0.0
        self.measured = []

    def run(self, config, key):
        def call():
            if self.wired:
                asked = tuning.tuned_config(key.kernel, key.mode, key.head_block, key.bucket, key.dtype)
                assert asked == config  # None for the default (tables are disabled while sweeping)
            reason = config and self.fails(config)
            if reason:
                raise RuntimeError(reason)
            return torch.ones(4) + (1.0 if config and self.wrong(config) else 0.0)
        call.config = config
        return call

    def measure(self, fn):
        self.now += self.cost
        self.measured.append(fn.config)
        return self.times(fn.config)

    def clock(self):
        return self.now


KEY = tune.TuneKey("fwd", "segment", 32, 64, "bf16")
BEST = {"block_m": 32, "block_n": 64, "num_warps": 8, "num_stages": 3}


def times_with_best(config):
    if config is None:
        return 10.0  # the default
    return 5.0 if config == BEST else 20.0


def test_candidates_and_keys():
    short = tune.candidate_configs(tune.TuneKey("fwd", "segment", 32, 16, "bf16"))
    assert len(short) == 9 and {(c["block_m"], c["block_n"]) for c in short} == {(16, 16)}
    packed = tune.candidate_configs(tune.TuneKey("dq", "packed", 32, 16, "bf16"))
    assert len(packed) == 4 * 4 * 3 * 3
    assert packed[0] == {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}  # typical first
    keys = tune.sweep_keys(["fwd"], [32], ["bf16"], [64, 128])
    assert [(k.mode, k.bucket) for k in keys] == [("segment", 64), ("packed", 64), ("segment", 128)]


def test_sweep_picks_fastest_and_records_skips():
    gpu = FakeGPU(times_with_best, fails=lambda c: "out of resource: shared memory" if c["block_m"] == 16 else None,
                  wrong=lambda c: c["block_n"] == 16)
    results, stopped = tune.sweep([KEY], {"fwd": gpu.run}, gpu.measure, budget_s=1e9, clock=gpu.clock)
    (result,) = results
    assert not stopped
    assert result.status == "tuned" and result.config == BEST
    assert result.median_ms == 5.0 and result.default_ms == 10.0
    reasons = {label(c): why for c, why in result.skipped}
    assert reasons["16x64/w4/s2"] == "RuntimeError: out of resource: shared memory"
    assert reasons["64x16/w4/s2"].startswith("wrong result: output 0 differs")
    candidates = tune.candidate_configs(KEY)
    assert result.measured + len(result.skipped) == len(candidates)
    assert len(gpu.measured) == 1 + result.measured  # skipped ones were never timed


def test_default_kept_when_no_candidate_beats_it():
    gpu = FakeGPU(lambda c: 10.0 if c is None else 9.9)  # 1% faster: noise
    (result,), _ = tune.sweep([KEY], {"fwd": gpu.run}, gpu.measure, 1e9, clock=gpu.clock)
    assert result.status == "default fastest" and result.config is None and result.median_ms == 9.9


def test_unwired_launcher_stops_the_key():
    gpu = FakeGPU(times_with_best, wired=False)
    (result,), _ = tune.sweep([KEY], {"fwd": gpu.run}, gpu.measure, 1e9, clock=gpu.clock)
    assert result.status == "not tuned: the launcher does not read tuned_config for this key"
    assert len(result.skipped) == 1 and "did not ask tuned_config" in result.skipped[0][1]
    assert gpu.measured == [None]  # only the default was timed


def test_unregistered_kernel_and_failing_default():
    gpu = FakeGPU(times_with_best)

    def broken(config, key):
        raise RuntimeError("launcher exploded")

    keys = [tune.TuneKey("fused_bwd", "segment", 32, 64, "bf16"), tune.TuneKey("dq", "segment", 32, 64, "bf16")]
    results, _ = tune.sweep(keys, {"fwd": gpu.run, "dq": broken}, gpu.measure, 1e9, clock=gpu.clock)
    assert results[0].status == "not tuned: no launch function registered for kernel 'fused_bwd'"
    assert results[1].status == "not tuned: the default failed (RuntimeError: launcher exploded)"


def test_sweep_respects_budget_and_shares_it():
    gpu = FakeGPU(times_with_best, cost=1.0)  # 1 fake second per measurement
    keys = [KEY, tune.TuneKey("fwd", "segment", 32, 128, "bf16"), tune.TuneKey("dq", "segment", 32, 64, "bf16")]
    results, stopped = tune.sweep(keys, {"fwd": gpu.run, "dq": gpu.run}, gpu.measure, budget_s=12.0,
                                  clock=gpu.clock)
    assert gpu.now <= 12.0 + 1.0  # at most one measurement past the budget
    assert [r.key for r in results] == keys  # the equal share leaves time for every key
    assert all(r.measured >= 2 for r in results)
    assert results[0].measured + 1 <= 4 + 1  # first key: a third of 12 s, plus the one it overran
    gpu = FakeGPU(times_with_best, cost=5.0)
    results, stopped = tune.sweep(keys, {"fwd": gpu.run, "dq": gpu.run}, gpu.measure, budget_s=4.0,
                                  clock=gpu.clock)
    assert stopped and len(results) == 1  # the default's measurement spent the whole budget


def test_table_written_merged_and_read_back(tmp_path):
    gpu = FakeGPU(times_with_best)
    keys = [KEY, tune.TuneKey("dq", "packed", 16, 32, "fp16")]
    results, _ = tune.sweep(keys, {"fwd": gpu.run, "dq": gpu.run}, gpu.measure, 1e9, clock=gpu.clock)
    path = tmp_path / "sm90.json"
    run = {"device": "fake", "torch": torch.__version__, "date": "today"}
    tune.write_table(path, tune.merged_table(None, "sm90", run, results))
    assert tuning.load_table(path, "sm90") == {KEY.table_key(): BEST, keys[1].table_key(): BEST}
    assert tuning.tuned_config("dq", "packed", 16, 20, torch.float16, "sm90") == BEST  # via TUNED_DIR
    data = json.loads(path.read_text())
    entry = data["entries"][1]
    assert entry["median_ms"] == 5.0 and entry["default_ms"] == 10.0 and entry["run"] == 0

    # a second run where the default wins for KEY: its entry goes, the other stays, the run is appended
    gpu = FakeGPU(lambda c: 10.0)
    again, _ = tune.sweep([KEY], {"fwd": gpu.run}, gpu.measure, 1e9, clock=gpu.clock)
    merged = tune.merged_table(tune.read_existing(path, "sm90"), "sm90", {"device": "fake 2"}, again)
    tune.write_table(path, merged)
    assert tuning.load_table(path, "sm90") == {keys[1].table_key(): BEST}
    assert [r["device"] for r in json.loads(path.read_text())["runs"]] == ["fake", "fake 2"]


def test_write_table_refuses_an_invalid_table(tmp_path):
    path = tmp_path / "sm90.json"
    bad = {"format": 1, "arch": "sm90", "runs": [], "entries": [{**ENTRY, "config": {**CONFIG, "block_m": 20}}]}
    with pytest.raises(TuningTableError, match="block_m"):
        tune.write_table(path, bad)
    assert not path.exists()


def test_real_launchers_under_the_interpreter(monkeypatch):
    """The launch functions for today's launchers run (tiny input, fp32, CPU): whether or not the launcher reads
    tuned_config yet, the sweep ends in a defined state without raising."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1, a CPU machine)")
    monkeypatch.setattr(tuning.common, "INTERPRET", True)
    monkeypatch.setattr(tune, "DEVICE", "cpu")
    monkeypatch.setattr(tune, "BATCH", 2)
    monkeypatch.setattr(tune, "PARTS", 1)
    clock = iter(range(1000))
    for kernel in ("fwd", "dq"):
        key = tune.TuneKey(kernel, "segment", 16, 16, "fp32")
        result = tune.tune_key(key, tune.LAUNCHES[kernel], lambda fn: 1.0, deadline=3,
                               clock=lambda: next(clock))
        assert result.default_ms == 1.0
        assert result.status in ("tuned", "default fastest",
                                 "not tuned: the launcher does not read tuned_config for this key"), result
    tune._INPUTS.clear()


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------
def parse(argv):
    parser = argparse.ArgumentParser()
    tune.add_tune_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_parser_options():
    args = parse(["tune", "--budget-s", "90", "--kernels", "fwd,dq", "--head-dims", "32,64", "--dtypes", "bf16",
                  "--out", "t.json"])
    assert (args.budget_s, args.kernels, args.head_dims, args.dtypes, args.out) == \
        (90.0, ["fwd", "dq"], [32, 64], ["bf16"], "t.json")
    assert parse(["tune"]).kernels == list(tune.DEFAULT_KERNELS)
    for bad in (["--head-dims", "48"], ["--dtypes", "fp8"], ["--budget-s", "0"]):
        with pytest.raises(SystemExit):
            parse(["tune", *bad])


def test_run_tune_without_cuda_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = parse(["tune", "--out", str(tmp_path / "sm90.json")])
    assert args.run(args) == 2
    err = capsys.readouterr().err
    assert "tuning needs a CUDA GPU" in err and "sees none" in err
    assert not (tmp_path / "sm90.json").exists()
