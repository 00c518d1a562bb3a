"""`bpmt-fast gpu-check` tested without a GPU: the one-line refusal, the BPMT_REQUIRE_CUDA skip rule, README
regeneration from saved results, the time budgets (bench rows and gpu-check parts), verdict lines and files,
the kernel launch check on CPU (Triton interpreter) from an uninstalled source tree, and the parsers of what
child processes leave behind. The orchestration runs with an injected CPU device; nothing here claims a GPU
result."""
from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bpmt_fast import require_cuda
from bpmt_fast.bench import gpu_check
from bpmt_fast.bench.gpu_check import FAIL, PASS, SKIPPED, TIMEOUT, Check, Verdict
from bpmt_fast.bench.readme import END, START, replace_section, update_readme
from bpmt_fast.cli import main

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "bench-quick-cpu" / "results.json"  # `bench all --quick` on CPU
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def plain_python_env() -> dict:
    """`python -S` + this: torch importable, bpmt_fast not installed (what the GPU machine has)."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(site.getsitepackages())}


# ---- refusal and the uninstalled source tree ------------------------------------------------------------------
@needs_no_cuda
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_refuses_without_cuda_in_one_line():
    result = subprocess.run([shutil.which("make"), "-s", "-C", str(ROOT), "gpu-check", f"PYTHON={sys.executable} -S"],
                            capture_output=True, text=True, env=plain_python_env(), timeout=120)
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert result.returncode == 2, result.stderr
    assert len(ours) == 1 and ours[0].startswith("bpmt-fast: error: gpu-check needs a CUDA GPU"), result.stderr
    assert result.stdout == ""


@needs_no_cuda
def test_cli_refusal_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        main(["gpu-check", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written


def test_launch_part_on_cpu_from_an_uninstalled_source_tree(tmp_path, monkeypatch):
    """The real launch part: a worker process (python -S: the source tree's own kernels mapping, no install)
    launches two cases in the Triton interpreter and compares them with the references."""
    from bpmt_fast.kernels.specializations import all_cases

    cases = all_cases()
    chosen = [i for i, c in enumerate(cases) if c.head_dim == 16 and (
        (c.op == "softmax" and c.max_len == 12 and c.dtype == torch.float16 and not c.pack_rows)
        or (c.op == "flow" and c.causal and c.dtype == torch.float32))]
    assert len(chosen) == 2
    monkeypatch.setenv("PYTHONPATH", ":".join(site.getsitepackages()))
    check = Check(out=tmp_path, device="cpu", launch_cases=chosen, launch_workers=1, python=[sys.executable, "-S"])
    verdict = gpu_check.part_launches(check, time.monotonic() + 240)
    assert verdict.status == PASS and verdict.reason == "2/2 cases ok", (verdict, (tmp_path / "launches" /
                                                                                   "worker-0.log").read_text())
    report = json.loads((tmp_path / "launches.json").read_text())
    assert report["device"] == "cpu"
    for row in report["cases"]:
        assert set(row["checks"]) == {"output", "dq", "dk", "dv"}
        assert all(0 <= c["error"] <= c["allowed"] for c in row["checks"].values())


def test_launch_summary_reports_failures_crashes_and_time_budget():
    records = {0: {"case": "a", "status": "ok"}, 1: {"case": "b", "status": "error",
                                                     "reason": "launch_case: OutOfResources: shared memory"}}
    verdict = gpu_check.launch_summary(records, [0, 1, 2, 3], {3: "worker-1 exited with status -11: "})
    assert verdict.status == FAIL
    assert "1/4 cases ok" in verdict.reason and "b (launch_case: OutOfResources" in verdict.reason
    assert "1 not run: their worker died" in verdict.reason and "1 not run: time budget" in verdict.reason
    assert gpu_check.launch_summary({0: records[0]}, [0, 1], {}).status == TIMEOUT
    assert gpu_check.launch_summary({0: records[0]}, [0], {}).status == PASS
    skipped = {0: records[0], 1: {"case": "c", "status": "skipped", "reason": "bfloat16 on CPU is not supported"}}
    verdict = gpu_check.launch_summary(skipped, [0, 1], {})
    assert verdict.status == PASS and verdict.reason == "1/2 cases ok; 1 skipped (bfloat16 on CPU is not supported)"


def test_bf16_cases_are_skipped_in_the_interpreter_with_the_backends_reason():
    from bpmt_fast.kernels.specializations import all_cases

    bf16 = next(c for c in all_cases() if c.dtype == torch.bfloat16)
    record = gpu_check.check_case(bf16, "cpu")
    assert record["status"] == "skipped" and "Triton interpreter's bf16 tl.dot is wrong" in record["reason"]
    assert gpu_check.declared_limit(bf16, "cuda") is None


def test_launch_order_puts_the_library_shapes_first():
    from bpmt_fast.kernels.specializations import all_cases

    cases = all_cases()
    order = gpu_check.launch_order(cases)
    assert sorted(order) == list(range(len(cases)))
    assert cases[order[0]].dtype == torch.bfloat16 and cases[order[0]].head_dim == 32
    assert cases[order[-1]].dtype == torch.float32 and cases[order[-1]].head_dim == 128


# ---- BPMT_REQUIRE_CUDA ----------------------------------------------------------------------------------------
STATUS = {name: None for name in require_cuda.ALWAYS_REQUIRED}
STATUS["sdpa-cudnn"] = "cuDNN is not available in this torch build"
STATUS["flow-triton"] = "package triton is not installed (No module named 'triton')"


@pytest.mark.parametrize("reason, fails", [
    ("sdpa-cudnn: cuDNN is not available in this torch build; device 'cpu' not in ['cuda']", True),  # unavailable
    ("package triton is not installed (No module named 'triton')", True),  # a module-level skip quoting it
    ("flow-triton: package triton is not installed (No module named 'triton')", True),
    ("triton: device 'cuda' not in ['cpu']", True),  # a backend refusing CUDA on a CUDA machine
    ("sdpa-efficient: device 'cpu' not in ['cuda']", False),  # the CPU-parametrized case of a CUDA-only backend
    ("triton: CPU tensors run only in the Triton interpreter (set TRITON_INTERPRET=1)", False),
    ("sdpa-flash: on CUDA takes no attention mask: needs full-length sequences (no padding)", False),
    ("sdpa-flash: on CUDA needs float16 or bfloat16", False),  # declared capability, not "cannot run here"
    ("flex: compiled FlexAttention needs a power-of-two head_dim >= 16", False),
    ("sdpa: dtype float64 not in ['bfloat16']", False),  # "sdpa" prefix: about sdpa, which is available
    ("flash-attn: package flash-attn is not installed (No module named 'flash_attn')", False),  # optional, absent
    ("xformers: package xformers is not installed (No module named 'xformers')", False),
    ("Gait3D sample data not found at /data/gait3d", False),
    ("needs the Triton interpreter on a CPU-only machine", False),
    ("xformers is installed here", False),
])
def test_require_cuda_rule(reason, fails):
    failure = require_cuda.skip_failure(reason, STATUS)
    assert (failure is not None) == fails, failure
    if fails:
        assert failure.startswith("BPMT_REQUIRE_CUDA=1: backend '") and reason in failure


def test_require_cuda_longest_backend_name_wins_and_optional_packages_join_when_importable():
    assert require_cuda.named_backend("sdpa-flash: x", STATUS) == "sdpa-flash"
    assert require_cuda.named_backend("sdpa: x", STATUS) == "sdpa"
    assert require_cuda.named_backend("flow: x", STATUS) is None  # flow (the reference) is not CUDA-specific
    assert "xformers" in require_cuda.required_backends(importable=lambda module: module == "xformers")
    assert "xformers" not in require_cuda.required_backends(importable=lambda module: False)
    broken = {**STATUS, "xformers": "probe failed: OSError: libcudart.so.12: cannot open shared object file"}
    assert require_cuda.skip_failure("xformers: probe failed: OSError: libcudart.so.12: cannot open shared "
                                     "object file", broken)


REQUIRE_CUDA_TESTS = """
import pytest

def test_unavailable():
    pytest.skip("sdpa-cudnn: cuDNN is not available in this torch build")

def test_refuses_cuda():
    pytest.skip("triton: device 'cuda' not in ['cpu']")

def test_cpu_case():
    pytest.skip("sdpa-efficient: device 'cpu' not in ['cuda']")

def test_capability():
    pytest.skip("sdpa-flash: on CUDA needs float16 or bfloat16")

@pytest.mark.skipif(True, reason="Gait3D sample data not found at /nowhere")
def test_data():
    pass

def test_passes():
    pass
"""


@pytest.fixture
def cuda_pytester(pytester, monkeypatch):
    """A pytester with this repository's conftest, on a pretended CUDA machine where cuDNN and the Triton
    backends are unavailable (only the hooks' view of the machine is pretended, nothing is measured)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(require_cuda, "backend_status", lambda: dict(STATUS, triton=None))
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_skips=REQUIRE_CUDA_TESTS)
    pytester.makepyfile(test_module_skip='import pytest\npytest.skip("flow-triton: package triton is not '
                                         'installed (No module named \'triton\')", allow_module_level=True)\n')
    return pytester


def test_require_cuda_turns_required_skips_into_failures(cuda_pytester, monkeypatch):
    monkeypatch.setenv("BPMT_REQUIRE_CUDA", "1")
    # As gpu-check runs the tests: a module that fails to collect must not stop the others.
    result = cuda_pytester.runpytest_inprocess("-rfEs", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, skipped=3, failed=2, errors=1)
    result.stdout.fnmatch_lines(["BPMT_REQUIRE_CUDA=1: backend 'sdpa-cudnn' should run on this CUDA machine*",
                                 "ERROR test_module_skip.py - BPMT_REQUIRE_CUDA=1: backend 'flow-triton' should*"])
    monkeypatch.delenv("BPMT_REQUIRE_CUDA")
    cuda_pytester.runpytest_inprocess().assert_outcomes(passed=1, skipped=6)  # unset: all stay skips


@needs_no_cuda
def test_require_cuda_without_cuda_stops_at_once_in_one_line(pytester, monkeypatch):
    monkeypatch.setenv("BPMT_REQUIRE_CUDA", "1")
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: BPMT_REQUIRE_CUDA=1 but torch") and "no CUDA" in errors[0]


# ---- README regeneration --------------------------------------------------------------------------------------
@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", path)
    results = tmp_path / "benchmarks" / "results" / "run"
    results.mkdir(parents=True)
    shutil.copy(FIXTURE, results / "results.json")
    return path, results


def between(text):
    return text.split(START)[1].split(END)[0]


def test_readme_section_is_replaced_between_the_markers_only_and_idempotently(readme):
    path, results = readme
    before = path.read_text()
    assert "GPU results: none yet" in between(before)
    update_readme(results, path, require_gpu=False)  # the CPU fixture; gpu-check and the CLI require a GPU run
    after = path.read_text()
    assert after.split(START)[0] == before.split(START)[0] and after.split(END)[1] == before.split(END)[1]
    section = between(after)
    assert "none yet" not in section and "do not edit by hand" in section
    for expected in ("torch 2.13.0+cpu", "git commit", "[report.md](benchmarks/results/run/report.md)",
                     "[run/results.json](benchmarks/results/run/results.json)", "#### Attention", "`sdpa`",
                     "#### Training step", "#### Accuracy", "| B2x5 N15 H8 D32 | fwd |"):
        assert expected in section, expected
    update_readme(results, path, require_gpu=False)
    assert path.read_text() == after  # same results, same README


def test_readme_refuses_cpu_results_and_names_the_file_without_markers(readme, capsys):
    path, results = readme
    with pytest.raises(ValueError, match=r"results\.json holds a cpu run; .*GPU runs only"):
        main(["bench", "report", str(results), "--readme", str(path)])
    path.write_text("# no markers here\n")
    with pytest.raises(ValueError, match=f"{path} needs exactly one '{START}'"):
        update_readme(results, path, require_gpu=False)
    with pytest.raises(ValueError, match="README.md needs exactly one"):
        replace_section(f"{END}\n{START}\n", "x", "README.md")  # out of order


def test_readme_links_the_plots_of_the_run(readme):
    path, results = readme
    (results / "plots").mkdir()
    (results / "plots" / "speedup.png").write_bytes(b"png")
    update_readme(results, path, require_gpu=False)
    assert "[speedup](benchmarks/results/run/plots/speedup.png)" in path.read_text()


# ---- time budgets ---------------------------------------------------------------------------------------------
class StepClock:
    """A fake monotonic clock: every reading advances it by `step` seconds."""

    def __init__(self, step: float = 1.0):
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_bench_budget_skips_late_rows_and_saves_after_every_row(tmp_path, monkeypatch):
    from bpmt_fast.bench import runner

    saved = []
    real_write = runner.write_json
    monkeypatch.setattr(runner, "write_json", lambda results, out: saved.append(len(results["rows"])) or
                        real_write(results, out))
    runner.run_bench("attention", quick=True, out=tmp_path, backends=["math"], shapes=["bpmt-fixed"],
                     device="cpu", budget_s=3.5, clock=StepClock())
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    statuses = [(r["case"], r["status"], r["reason"]) for r in rows]
    assert [s for _, s, _ in statuses[:2]] == ["ok", "ok"]  # the first case started within the budget
    assert statuses[2:] and all(s == "skipped" and why == "time budget" for _, s, why in statuses[2:])
    assert saved == list(range(len(rows) + 1))  # the empty results, then after every row
    assert "| skipped |" in (tmp_path / "report.md").read_text()


def test_bench_zero_budget_runs_nothing_but_records_every_row(tmp_path):
    main(["bench", "all", "--quick", "--backends", "math", "--shapes", "bpmt-fixed,train-step", "--device", "cpu",
          "--budget-s", "0", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["budget_s"] == 0
    assert {r["suite"] for r in results["rows"]} == {"attention", "train-step", "accuracy"}
    assert all(r["status"] == "skipped" and r["reason"] == "time budget" for r in results["rows"])
    assert not (tmp_path / "accuracy").exists()  # not even the accuracy suite's data was made


def test_suite_deadlines_share_what_is_left():
    from bpmt_fast.bench.runner import suite_deadline

    suites = ["attention", "train-step", "accuracy"]
    assert suite_deadline("attention", suites, None, 0.0) is None
    assert suite_deadline("attention", suites, 100.0, 0.0) == pytest.approx(50.0)
    assert suite_deadline("train-step", suites, 100.0, 20.0) == pytest.approx(20 + 80 * 0.35 / 0.5)  # 30 unused
    assert suite_deadline("accuracy", suites, 100.0, 120.0) == 120.0  # overdue: no time, not negative


def fake_part(name, status=PASS, takes=0.0, clock=None, seen=None):
    def run(check, deadline):
        if seen is not None:  # what verdict.json says while this part runs: the earlier parts' verdicts
            seen[name] = [p["part"] for p in json.loads((check.out / "verdict.json").read_text())["parts"]]
        if clock is not None:
            clock.now += takes
        if status == "crash":
            raise RuntimeError(f"{name} broke")
        return Verdict(name, status, f"{name} says {status}",
                       expected="known" if status == FAIL and name == "sync" else None)
    return run


def test_parts_run_in_order_within_their_budgets(tmp_path):
    clock, seen = StepClock(0.0), {}
    parts = {"env": fake_part("env", clock=clock, seen=seen),
             "launches": fake_part("launches", takes=70, clock=clock, seen=seen),  # budget 60: over
             "tests": fake_part("tests", "crash", takes=10, clock=clock, seen=seen),
             "sync": fake_part("sync", FAIL, clock=clock, seen=seen),
             "train": fake_part("train", clock=clock, seen=seen),
             "bench": fake_part("bench", takes=1000, clock=clock, seen=seen),  # uses up everything
             "readme": fake_part("readme", clock=clock, seen=seen)}
    verdicts = gpu_check.run_gpu_check(tmp_path / "check", device="cpu", bench_out=tmp_path / "bench",
                                       parts=parts, clock=clock)
    got = {v.part: v for v in verdicts}
    assert [v.part for v in verdicts] == list(gpu_check.PARTS)
    assert got["env"].status == PASS and got["launches"].status == TIMEOUT
    assert "ran past its deadline by 10 s" in got["launches"].reason
    assert got["tests"].status == FAIL and "RuntimeError: tests broke" in got["tests"].reason
    assert (tmp_path / "check" / "tests.error.txt").is_file()  # the crash's traceback
    assert got["sync"].status == FAIL and got["sync"].ok  # expected: does not fail the run
    assert got["bench"].status == TIMEOUT
    assert got["readme"].status == SKIPPED and got["readme"].reason.startswith("time budget")
    assert seen["sync"] == ["env", "launches", "tests"]  # verdict.json rewritten after every part
    saved = json.loads((tmp_path / "check" / "verdict.json").read_text())
    assert saved["finished"] and saved["device"] == "cpu" and saved["gpu_result"] is False
    assert saved["overall"] == FAIL  # the crashed tests part
    lines = (tmp_path / "check" / "verdict.txt").read_text().splitlines()
    assert len(lines) == 7 and lines[3].startswith("sync      FAIL") and lines[3].endswith("[expected: known]")


def test_budgets_scale_and_the_bench_takes_what_is_left():
    budgets = gpu_check.part_budgets(900)
    assert budgets["tests"] == 260 and budgets["env"] == 10 and budgets["train"] == 240
    order = list(gpu_check.PARTS)
    # The readme keeps its 5 s, plus the time a kill of the bench at its deadline may take.
    assert gpu_check.budget_for("bench", order, gpu_check.part_budgets(450), 300) == 295 - gpu_check.KILL_GRACE_S
    assert gpu_check.budget_for("tests", order, gpu_check.part_budgets(450), 100) == 100  # capped by what is left
    assert gpu_check.budget_for("env", order, gpu_check.part_budgets(45), 45) == gpu_check.MIN_PART_S


def test_real_env_and_readme_parts_on_cpu_say_cpu(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    shutil.copy(FIXTURE, bench / "results.json")
    fakes = {name: fake_part(name) for name in ("launches", "tests", "sync", "train", "bench")}
    verdicts = gpu_check.run_gpu_check(tmp_path / "check", 60, device="cpu", bench_out=bench,
                                       readme=tmp_path / "README.md", parts=fakes)
    got = {v.part: v for v in verdicts}
    assert got["env"].status == PASS and got["env"].reason.startswith("cpu (rehearsal)")
    env = json.loads((tmp_path / "check" / "env.json").read_text())
    assert env["gpu"]["device"] == "cpu" and "nothing here is a GPU result" in env["gpu"]["note"]
    assert env["kernels_import_error"] is None
    assert got["readme"].status == SKIPPED and "CPU rehearsal" in got["readme"].reason
    assert (bench / "report.md").is_file() and not (tmp_path / "README.md").exists()


def test_run_processes_kills_at_the_deadline(tmp_path):
    started = time.monotonic()
    statuses = gpu_check.run_processes(
        [([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], tmp_path / "a.log"),
         ([sys.executable, "-c", "print('done')"], tmp_path / "b.log")], time.monotonic() + 1.0)
    assert statuses == [None, 0] and time.monotonic() - started < 15
    assert (tmp_path / "a.log").read_text() == "started\n" and (tmp_path / "b.log").read_text() == "done\n"


def test_child_process_parts_write_their_verdict(tmp_path):
    """A part in a child process (`python -m bpmt_fast.bench.gpu_check part NAME`): its verdict comes back."""
    check = Check(out=tmp_path, device="cpu", bench_out=tmp_path / "bench")
    verdict = gpu_check.run_isolated("env", check, time.monotonic() + 120)
    assert verdict.status == PASS and verdict.reason.startswith("cpu (rehearsal)"), verdict
    assert json.loads((tmp_path / "env.verdict.json").read_text())["part"] == "env"


# ---- what child processes leave behind ------------------------------------------------------------------------
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_ok[sdpa-cuda]" time="0.1"/>
<testcase classname="tests.test_a" name="test_bad[triton-cuda]" time="0.1"><failure message="AssertionError: dq: max error 0.5 &gt; allowed 0.01&#10;more">x</failure></testcase>
<testcase classname="tests.test_a" name="test_skip[flex-cpu]" time="0"><skipped type="pytest.skip" message="flex: FlexAttention has no backward on CPU">s</skipped></testcase>
<testcase classname="tests.test_a" name="test_skip2[flex-cpu]" time="0"><skipped message="flex: FlexAttention has no backward on CPU">s</skipped></testcase>
</testsuite></testsuites>"""


def test_test_groups_are_summarised_from_junit_or_from_the_log_of_a_killed_run(tmp_path):
    (tmp_path / "kernels.xml").write_text(JUNIT)
    failed = gpu_check.group_result("kernels", 1, tmp_path)
    assert failed["status"] == FAIL and failed["counts"] == {"passed": 1, "failed": 1, "skipped": 2}
    assert failed["failing"] == ["tests.test_a::test_bad[triton-cuda]: AssertionError: dq: max error 0.5 > "
                                 "allowed 0.01"]
    assert failed["skip_reasons"] == [("flex: FlexAttention has no backward on CPU", 2)]
    (tmp_path / "models.log").write_text("tests/test_m.py::test_a[x] PASSED   [ 10%]\n"
                                         "tests/test_m.py::test_b[y] FAILED   [ 20%]\n")
    killed = gpu_check.group_result("models", None, tmp_path)
    assert killed == {"group": "models", "status": TIMEOUT, "counts_so_far": {"passed": 1, "failed": 1}}
    crashed = gpu_check.group_result("api", 3, tmp_path)
    assert crashed["status"] == FAIL and "status 3 without a report" in crashed["reason"]
    verdict = gpu_check.tests_verdict([failed, killed])
    assert verdict.status == FAIL and "models: TIMEOUT (1 failed, 1 passed) at its deadline" in verdict.reason


def test_tests_part_runs_pytest_groups_in_parallel_with_junit(tmp_path):
    """The real tests part (on CPU: without BPMT_REQUIRE_CUDA): one group passes, one cannot even start."""
    check = Check(out=tmp_path, device="cpu", test_groups={
        "smoke": ["tests/test_skeleton.py::test_coco17_parts_are_bpmt"], "broken": ["tests/test_nonexistent.py"]})
    verdict = gpu_check.part_tests(check, time.monotonic() + 120)
    assert verdict.status == FAIL
    assert verdict.reason.startswith("smoke: PASS (1 passed) | broken: FAIL (nothing counted) pytest exit status 4: "
                                     ), verdict.reason
    assert "tests/test_nonexistent.py" in verdict.reason  # the end of its log says what went wrong
    summary = json.loads((tmp_path / "tests.json").read_text())
    assert summary["require_cuda"] is False and summary["groups"][0]["counts"] == {"passed": 1}
    assert "test_coco17_parts_are_bpmt PASSED" in (tmp_path / "tests" / "smoke.log").read_text()


def test_sync_location_points_into_the_repository():
    def sync_here():
        raise RuntimeError("called a synchronizing CUDA operation")

    try:
        sync_here()
    except RuntimeError as error:
        location, tail = gpu_check.sync_location(error)
    assert location.startswith("tests/test_gpu_check.py:") and "in sync_here" in location and tail
    results = [{"backend": "triton", "status": "sync", "location": "bpmt_fast/train/stages.py:82 in _to: x"},
               {"backend": "sdpa", "status": "not run", "reason": "time budget"}]
    verdict = gpu_check.sync_verdict(results, on_gpu=True)
    assert verdict.status == FAIL and not verdict.expected and not verdict.ok  # the step must not sync
    assert "triton: sync at bpmt_fast/train/stages.py:82" in verdict.reason
    assert gpu_check.sync_verdict([{"backend": "sdpa", "status": "ok"}], True).status == PASS
    assert gpu_check.sync_verdict([{"backend": "sdpa", "status": "error", "error": "E"}], True).ok is False


def test_first_sync_and_sync_sites_read_torchs_sync_debugging(monkeypatch):
    """Driven by a fake step that behaves as torch does under the debug modes (CUDA-only, so faked here)."""
    import warnings

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    calls = []

    def step(batch):
        calls.append(batch)
        if len(calls) == 2:
            raise RuntimeError("called a synchronizing CUDA operation")

    first = gpu_check.first_sync(step, iter(range(10)))
    assert first["status"] == "sync" and first["step"] == 1 and "in step" in first["location"]
    assert modes == ["error", "default", "error", "default"]  # back to default after every step
    assert gpu_check.first_sync(lambda batch: None, iter(range(10))) is None

    def syncing():
        for _ in range(2):
            warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("something else")
    sites = gpu_check.sync_sites(syncing)
    assert len(sites) == 1 and sites[0]["count"] == 2 and sites[0]["location"].startswith("tests/test_gpu_check.py:")


def test_sync_steps_run_the_finetune_step_on_cpu(tmp_path):
    """The training code the sync part drives (FinetuneStage.train_step); on CPU there is nothing to check."""
    tiny = {**gpu_check.SYNC_RUN, "model": {"dim": 16, "heads": 2, "part_layers": 1, "pair_layers": 1,
                                            "embedding_dim": 16}}
    result = gpu_check.sync_steps("sdpa", torch.device("cpu"), tmp_path, run=tiny)
    assert result["status"] == "not checked" and "needs CUDA" in result["reason"]


def test_bench_verdict():
    row = {"suite": "attention", "backend": "triton", "case": "c", "status": "ok", "reason": ""}
    assert gpu_check.bench_verdict({"rows": [row]}, Path("f")).status == PASS
    late = {**row, "status": "skipped", "reason": "time budget"}
    assert gpu_check.bench_verdict({"rows": [row, late]}, Path("f")).status == TIMEOUT
    wrong = {**row, "status": "wrong", "reason": "gate vs math: dq max error 1 > allowed 0.1"}
    verdict = gpu_check.bench_verdict({"rows": [row, late, wrong]}, Path("f"))
    assert verdict.status == FAIL and "triton c: gate vs math" in verdict.reason
    assert gpu_check.bench_verdict({"rows": []}, Path("f")).status == FAIL


def test_check_settings_survive_the_trip_to_a_child(tmp_path):
    check = Check(out=tmp_path, device="cpu", bench_out=tmp_path / "b", readme=None, launch_cases=[1, 2],
                  test_groups={"g": ["tests/test_x.py"]})
    assert Check.from_json(Path(check.save()).read_text()) == check


# ---- part: train ----------------------------------------------------------------------------------------------
def test_budgets_sum_to_the_default_total_and_every_part_has_one():
    assert set(gpu_check.DEFAULT_BUDGETS) == set(gpu_check.PARTS)
    assert sum(gpu_check.DEFAULT_BUDGETS.values()) == gpu_check.DEFAULT_TOTAL_S
    assert sum(gpu_check.part_budgets(900).values()) == pytest.approx(900)
    parts = list(gpu_check.PARTS)
    assert parts.index("sync") < parts.index("train") < parts.index("bench")


def test_gpu_speed_preset_loads_at_the_acceptance_shape():
    from bpmt_fast.train.config import load_config

    config = load_config(gpu_check.TRAIN_PRESET, ["train.precision=bf16", "train.compile=reduce-overhead"])
    model = config.model
    assert (model.dim, model.heads, model.part_layers, model.pair_layers) == (128, 8, 2, 1)
    assert config.finetune.identities_per_batch * config.finetune.sequences_per_identity == 256
    assert config.stage1.batch_size == config.stage2.batch_size == 256
    assert config.data.max_frames == 60 and config.train.frame_buckets == [60] and config.models == ["bpmt"]
    assert config.stage1.epochs == config.stage2.epochs == config.finetune.epochs == 1
    training_subjects = config.data.synthetic["num_subjects"] * (1 - config.data.test_subjects)
    assert training_subjects >= config.finetune.identities_per_batch  # a full P x K batch exists
    # The CPU rehearsal's overrides are valid on top of it.
    tiny = load_config(gpu_check.TRAIN_PRESET, ["device=cpu", "train.precision=fp32", "train.compile='off'",
                                                *gpu_check.TRAIN_CPU_OVERRIDES])
    assert tiny.train.compile == "off" and tiny.model.dim == 16


def test_train_plan_orders_the_most_informative_runs_first():
    check = Check(out=Path("unused"))
    plan = gpu_check.train_plan(check)
    assert [(r["backend"], r["compile"]) for r in plan][:4] == [
        ("sdpa", "off"), ("sdpa", "reduce-overhead"), ("triton", "off"), ("triton", "reduce-overhead")]
    assert {r["backend"] for r in plan} == set(gpu_check.TRAIN_BACKENDS)
    assert all(r["precision"] == "bf16" and r["status"] in gpu_check.NOT_RUN for r in plan)
    cpu = gpu_check.train_plan(Check(out=Path("unused"), device="cpu"))
    assert [(r["backend"], r["compile"], r["precision"]) for r in cpu] == [("sdpa", "off", "fp32")]


def test_train_verdict():
    ok = {"backend": "sdpa", "compile": "off", "status": "ok", "step_ms": 12.5, "seq_per_s": 2048.0,
          "peak_memory_mb": 900.0}
    late = {"backend": "triton", "compile": "off", "status": "not run", "reason": "time budget"}
    absent = {"backend": "xformers", "compile": "off", "status": "unavailable", "reason": "not installed"}
    broken = {"backend": "triton", "compile": "reduce-overhead", "status": "error", "reason": "exit status 1"}
    killed = {**late, "status": "timeout", "reason": "killed at its deadline"}
    verdict = gpu_check.train_verdict([ok, absent], on_gpu=True)
    assert verdict.status == PASS and "sdpa off: ok 12.5 ms/step, 2048 seq/s, 900 MiB" in verdict.reason
    assert "xformers off: unavailable (not installed)" in verdict.reason
    assert gpu_check.train_verdict([ok, late], True).status == TIMEOUT
    assert gpu_check.train_verdict([ok, killed], True).status == TIMEOUT
    assert gpu_check.train_verdict([ok, killed, broken], True).status == FAIL
    assert gpu_check.train_verdict([late], True).status == TIMEOUT  # the budget left not even one run
    assert gpu_check.train_verdict([ok], False).reason.startswith("CPU rehearsal")


def test_train_part_cpu_rehearsal_runs_the_pipeline_and_compares(tmp_path):
    """The real orchestration: `bpmt-fast train` in a child process (tiny model, fp32, eager, sdpa), results.json
    read back, `bpmt-fast compare` over the finished run."""
    check = Check(out=tmp_path, device="cpu")
    started = time.monotonic()
    verdict = gpu_check.part_train(check, time.monotonic() + 120)
    assert time.monotonic() - started < 60
    assert verdict.status == PASS, verdict.reason
    report = json.loads((tmp_path / "train.json").read_text())
    (row,) = report["runs"]
    assert row["status"] == "ok" and row["backend"] == "sdpa" and row["compile"] == "off"
    assert row["step_ms"] > 0 and row["seq_per_s"] > 0 and row["peak_memory_mb"] > 0 and row["seconds"] > 0
    assert (tmp_path / "train" / "compare.md").is_file() and report["compare"].endswith("compare.md")
    assert "sdpa-off" in (tmp_path / "train" / "compare.md").read_text()


def test_train_part_out_of_time_starts_nothing(tmp_path):
    check = Check(out=tmp_path, device="cpu")
    verdict = gpu_check.part_train(check, time.monotonic())
    assert verdict.status == TIMEOUT
    (row,) = json.loads((tmp_path / "train.json").read_text())["runs"]
    assert row["status"] == "not run" and row["reason"] == "time budget"
