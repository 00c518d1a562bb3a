"""`bpmt-fast bench`: a quick run of every suite writes JSON, markdown and plots; the correctness gate rejects a
wrong backend before timing it; the report rebuilds from JSON; bad names are errors that list the valid ones."""
import json
import math
import os

import pytest
import torch

from bpmt_fast.attention import BACKENDS, AttentionBackend
from bpmt_fast.bench import shapes
from bpmt_fast.bench.attention_bench import analytic_cost, cpu_memory_guard, gate_slice
from bpmt_fast.attention.triton import runs_interpreted
from bpmt_fast.cli import main

STATUSES = {"ok", "wrong", "error", "oom", "unsupported", "skipped", "unavailable", "differs"}
PLOTS = {"long_time.png", "long_memory.png", "speedup.png", "train_step.png"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `bench all --quick` for the whole module (it is the slow part: ~20 s on two CPU cores)."""
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "all", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def rows_of(results, suite, **match):
    return [r for r in results["rows"] if r["suite"] == suite and all(r[k] == v for k, v in match.items())]


def test_quick_run_records_machine_versions_and_ceilings(quick_run):
    _, results = quick_run
    env = results["environment"]
    assert {"torch", "triton", "cuda", "gpu", "driver", "date", "git_commit", "python"} <= set(env)
    assert results["settings"]["quick"] and results["settings"]["suite"] == "all"
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert results["settings"]["device"] == expected_device
    assert results["settings"]["dtype"] == ("bfloat16" if expected_device == "cuda" else "float32")
    hardware = results["hardware"]
    assert hardware["bandwidth_gb_s"] > 0 and hardware["matmul_tflop_s"] > 0
    assert {b["name"] for b in results["backends"]} == set(BACKENDS)


def test_quick_run_has_rows_for_every_available_backend(quick_run):
    _, results = quick_run
    available = [name for name, cls in BACKENDS.items() if cls.is_available()]
    assert "math" in available
    for suite in ("attention", "train-step", "accuracy"):
        assert {r["backend"] for r in rows_of(results, suite)} >= set(available), suite
    for row in results["rows"]:
        assert row["status"] in STATUSES, row
        if row["status"] == "ok":
            assert row.get("median_ms", 1.0) > 0
        else:
            assert row["reason"], row  # every row without numbers says why
            for key in ("median_ms", "tflop_s", "sequences_per_s", "rank1"):
                assert math.isnan(row.get(key, math.nan)), (key, row)
    # math is the reference: always measured, forward and backward, on every attention case.
    math_rows = rows_of(results, "attention", backend="math")
    assert math_rows and all(r["status"] == "ok" for r in math_rows)
    assert {r["shape_set"] for r in math_rows} == {"bpmt-fixed", "bpmt-varlen", "cross-pairs", "long"}
    assert {r["direction"] for r in math_rows} == {"fwd", "fwd+bwd"}
    ok = [r for r in rows_of(results, "attention") if r["status"] == "ok"]
    assert all(r["tflop_s"] > 0 and r["bandwidth_fraction"] > 0 and r["gate"] for r in ok)
    assert all(r["gate"] == "inexact, not gated against math" for r in ok if r["backend"] == "flow")


def test_interpreted_triton_backends_are_skipped_rows_on_cpu(quick_run):
    _, results = quick_run
    interpreted = [n for n, cls in BACKENDS.items() if cls.is_available() and runs_interpreted(cls, "cpu")]
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1" or not interpreted:
        pytest.skip("needs the Triton interpreter on a CPU-only machine")
    for name in interpreted:
        rows = rows_of(results, "attention", backend=name) + rows_of(results, "train-step", backend=name)
        assert rows and all(r["status"] == "skipped" and "interpreted on CPU" in r["reason"] for r in rows)


def test_train_step_has_an_attention_removed_bound_that_is_not_a_backend(quick_run):
    _, results = quick_run
    removed = rows_of(results, "train-step", backend="attention removed", mode="eager")
    assert {r["model"] for r in removed} == {"bpmt", "baseline"} and all(r["status"] == "ok" for r in removed)
    assert all(r["sequences_per_s"] > 0 for r in rows_of(results, "train-step", backend="math", mode="eager"))
    assert "attention removed" not in BACKENDS


def test_accuracy_exact_backends_agree_with_math(quick_run):
    _, results = quick_run
    rows = [r for r in rows_of(results, "accuracy") if r["status"] in ("ok", "differs")]
    assert rows_of(results, "accuracy", backend="math")[0]["status"] == "ok"
    for row in rows:
        assert math.isfinite(row["loss_finetune"]) and 0 <= row["rank1"] <= 1
        if row["exact"]:
            assert row["status"] == "ok" and row["max_loss_diff_vs_math"] <= 1e-3, row


def test_quick_run_writes_markdown_and_plots(quick_run):
    out, _ = quick_run
    report = (out / "report.md").read_text()
    for section in ("## Attention", "### bpmt-varlen", "## Training step", "## Accuracy", "## Plots"):
        assert section in report
    assert {p.name for p in (out / "plots").glob("*.png")} == PLOTS
    assert all((out / "plots" / name).stat().st_size > 1000 for name in PLOTS)


def test_report_rebuilds_from_json(quick_run, tmp_path):
    out, _ = quick_run
    assert main(["bench", "report", str(out / "results.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} == PLOTS
    with pytest.raises(ValueError, match="no benchmark results"):
        main(["bench", "report", str(tmp_path / "missing")])


class DoubledV(AttentionBackend):
    """Deliberately wrong: fast, plausible-looking, and not attention."""

    NAME = "doubled-v"
    DESCRIPTION = "returns 2 v (test only)"

    def _padded(self, q, k, v, q_lengths, kv_lengths, scale, causal):
        return 2 * v


def test_correctness_gate_rejects_a_wrong_backend_before_timing(tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS, DoubledV.NAME, DoubledV)
    assert main(["bench", "attention", "--quick", "--backends", "doubled-v", "--shapes", "bpmt-fixed",
                 "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    wrong = rows_of(results, "attention", backend="doubled-v")
    assert wrong and all(r["status"] == "wrong" and "gate vs math" in r["reason"] for r in wrong)
    assert all(math.isnan(r["median_ms"]) and math.isnan(r["tflop_s"]) for r in wrong)
    assert all(r["status"] == "ok" for r in rows_of(results, "attention", backend="math"))  # math always runs
    assert "| doubled-v | fwd | wrong |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("argv, valid", [
    (["bench", "attention", "--quick", "--shapes", "nope"], "bpmt-fixed"),
    (["bench", "attention", "--quick", "--backends", "math,nope"], "math"),
    (["bench", "attention", "--quick", "--shapes", "train-step"], "bpmt-varlen"),
])
def test_unknown_names_are_errors_listing_the_valid_ones(argv, valid, tmp_path):
    with pytest.raises(ValueError, match=f"valid|shape sets: .*{valid}") as info:
        main(argv + ["--out", str(tmp_path)])
    assert valid in str(info.value)
    assert not (tmp_path / "results.json").exists()  # nothing ran


def test_analytic_cost_counts_valid_tokens_of_every_segment():
    case = shapes.AttentionCase("t", batch=2, n_q=3, n_k=3, heads=4, head_dim=8, layout="packed",
                                q_lengths=(2, 3), kv_lengths=(2, 3))
    flops, moved = analytic_cost(case, "fwd", element_size=2)
    assert flops == 4 * 4 * 8 * (2 * 2 + 3 * 3)
    assert moved == (5 + 5 + 5 + 5) * 4 * 8 * 2  # q, k, v, o once
    flops_bwd, moved_bwd = analytic_cost(case, "fwd+bwd", element_size=2)
    assert flops_bwd == 3.5 * flops and moved_bwd == 2 * moved


def test_shape_sets_use_real_gait3d_lengths_and_shrink_for_quick():
    lengths = shapes.gait3d_lengths()
    assert len(lengths) == 472 and min(lengths) == 25 and max(lengths) == 489
    assert shapes.sample_lengths(16) == shapes.sample_lengths(16)  # fixed seed
    full = shapes.SHAPE_SETS["bpmt-varlen"].cases(quick=False)[0]
    assert full.batch == 256 * 5 and set(full.q_lengths) <= set(lengths)
    for name, shape_set in shapes.SHAPE_SETS.items():
        if shape_set.kind == "attention":
            small = sum(c.token_pairs() * c.heads for c in shape_set.cases(quick=True))
            big = sum(c.token_pairs() * c.heads for c in shape_set.cases(quick=False))
            assert small * 100 < big, name
    long_full = shapes.SHAPE_SETS["long"].cases(quick=False)
    assert [c.n_q for c in long_full][0] == 64 and long_full[-1].n_q == 16384 and long_full[0].head_dim == 64
    assert gate_slice(long_full[-1]) == (1, 1)  # the fp32 reference at N=16k checks one sequence-head


def test_score_materialising_backends_skip_cases_that_would_not_fit_in_cpu_memory():
    huge = shapes.AttentionCase("huge", batch=64, n_q=16384, n_k=16384, heads=8, head_dim=64)  # TiBs of scores
    cpu = torch.device("cpu")
    assert "GiB" in cpu_memory_guard("math", huge, cpu, with_grad=True)
    assert cpu_memory_guard("sdpa", huge, cpu, with_grad=True) is None  # flash-style, O(N) memory
    assert cpu_memory_guard("math", shapes.SHAPE_SETS["long"].cases(quick=True)[0], cpu, with_grad=True) is None
