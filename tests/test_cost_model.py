"""The kernel cost model (`bpmt-fast bench model`): its counts restated independently on small cases, the
launchers' choices flowing into it, and the design targets of the kernels at the benchmark's shapes.

The model records GPU launches, so it runs in a child process without TRITON_INTERPRET (this test process
interprets the kernels, see conftest.py); the pure counting functions are checked here directly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bpmt_fast.bench import cost_model as cm
from bpmt_fast.bench.shapes import AttentionCase

try:
    import triton  # noqa: F401
except ImportError as error:  # pragma: no cover
    pytest.skip(f"triton is not installed: {error}", allow_module_level=True)


def run_model(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "bpmt_fast.cli", "bench", "model", "--out", str(tmp_path), *args],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "cost-model.json").read_text())
    return result.stdout, {(r["case"], r["direction"]): r for r in data["rows"]}, data


@pytest.fixture(scope="module")
def full_model(tmp_path_factory):
    """The model at full size on an H100 in bf16: bpmt-fixed, bpmt-varlen and cross-pairs."""
    return run_model(tmp_path_factory.mktemp("model"))


def test_output_is_labelled_a_model(full_model):
    stdout, rows, data = full_model
    assert stdout.startswith("Cost MODEL (not a measurement)") and data["model"] is True
    assert data["gpu"]["name"] == "H100 SXM" and data["dtype"] == "bf16"


def test_readme_shows_this_model(full_model):
    """The README's cost-model section is the command's output (`bpmt-fast bench model --readme`)."""
    stdout, _, _ = full_model
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split(cm.README_START)[1].split(cm.README_END)[0]
    assert section.strip() == stdout.strip(), "README cost model is stale: run `bpmt-fast bench model --readme`"


def test_no_program_is_idle(full_model):
    """Persistent grids sized from a lower bound on the real work units: never an idle program."""
    _, rows, _ = full_model
    assert len(rows) == 12
    assert all(r["idle_programs"] == 0 and r["programs"] > 0 for r in rows.values())


def test_design_floor_within_target_of_ideal(full_model):
    """Issue target: design floor within 1.15x of the ideal floor, forward and forward + backward, on every case
    of the three sets (here <= 1.05x): N60 and the part pairs run the one-pass backward, N240 and the Gait3D
    lengths one launch per (segment, head), and the model's padded calls are read in place (nothing packed)."""
    _, rows, _ = full_model
    for (case, direction), row in rows.items():
        assert row["ratio"] <= 1.05, (case, direction, row["ratio"])
    backward = {case: row["kernels"][1:] for (case, direction), row in rows.items() if direction == "fwd+bwd"}
    assert backward["B256x5 N60 H8 D32"] == ["varlen_attention_bwd_fused_kernel"]
    assert backward["B256x20 pairs N60 H8 D32"] == ["varlen_attention_bwd_fused_kernel"]
    assert backward["B256x5 N240 H8 D32"] == ["varlen_attention_bwd_segment_kernel"]
    for (case, direction), row in rows.items():
        if "packed" not in case:  # full length: views; padded: read in place; only small index ops around
            assert row["around_mb"] < 0.5, (case, direction, row["around_mb"])


def test_model_follows_the_launchers(tmp_path):
    """Quick sizes in fp32, where the launchers pick other tiles: still no idle program; the model's kernel list
    is what the launchers launched."""
    _, rows, data = run_model(tmp_path, "--quick", "--dtype", "fp32", "--gpu", "a100", "--shapes", "bpmt-varlen")
    assert data["gpu"]["sms"] == 108 and len(rows) == 4
    assert all(r["idle_programs"] == 0 for r in rows.values())
    assert all(r["kernels"][0] == "varlen_attention_fwd_kernel" for r in rows.values())


def test_refused_under_the_interpreter():
    with pytest.raises(RuntimeError, match="without TRITON_INTERPRET"):
        cm.run_model(["bpmt-fixed"], "h100", "bf16", quick=True)


# ---- the counting functions against hand-computed values ----
def test_ideal_cost_restated():
    """Two segments (3 and 5 tokens), keys (4 and 2), H2 D8, bf16: ideal bytes read q, k, v and write o once;
    FLOPs 4 D sum(Nq Nk) per head; backward x2.5 FLOPs, one more exp per score, q k v o dO read, dq dk dv written."""
    case = AttentionCase("t", 2, 5, 4, 2, 8, layout="packed", q_lengths=(3, 5), kv_lengths=(4, 2))
    fwd = cm.ideal_cost(case, 2, backward=False)
    pairs = 3 * 4 + 5 * 2
    assert fwd.hbm_bytes == 2 * (8 * 8 + 6 * 8 * 2 + 8 * 8) * 2
    assert fwd.flops == 2 * 4 * 8 * pairs and fwd.exps == 2 * pairs
    both = cm.ideal_cost(case, 2, backward=True)
    assert both.hbm_bytes == fwd.hbm_bytes + 2 * (4 * 8 * 8 + 4 * 6 * 8) * 2  # q o dO dq: 8 tokens; k v dk dv: 6
    assert both.flops == 3.5 * fwd.flops and both.exps == 2 * fwd.exps


def test_padded_calls_write_every_padded_row():
    """Padded calls (the model's, with lengths) read the valid rows and write all N rows of each sequence (the
    model needs the zeros): the ideal counts them; packed and full-length calls write the valid rows only."""
    padded = AttentionCase("pad", 2, 6, 6, 2, 8, q_lengths=(6, 3), kv_lengths=(6, 3))
    packed = AttentionCase("p", 2, 6, 6, 2, 8, layout="packed", q_lengths=(6, 3), kv_lengths=(6, 3))
    assert cm.padded_call(padded) and not cm.padded_call(packed)
    assert not cm.padded_call(AttentionCase("full", 4, 6, 6, 2, 8))
    extra_rows = 2 * 6 - 9  # padding rows of o written
    assert cm.ideal_cost(padded, 2, False).hbm_bytes - cm.ideal_cost(packed, 2, False).hbm_bytes == \
        2 * extra_rows * 8 * 2
    assert cm.ideal_cost(padded, 2, True).hbm_bytes - cm.ideal_cost(packed, 2, True).hbm_bytes == \
        2 * extra_rows * 8 * 2 * 4  # o, dq, dk, dv


def test_row_blocks():
    """Per segment: each segment's blocks; packed: blocks of all rows back to back with the segments they span."""
    assert cm._row_blocks([5, 0, 3], 4, packed=False) == [(0, 0, 4), (0, 0, 1), (2, 2, 3)]
    assert cm._row_blocks([5, 0, 3], 4, packed=True) == [(0, 0, 4), (0, 2, 4)]


def test_floor_is_the_slowest_resource():
    gpu = cm.GPUS["h100"]
    memory = cm.Cost("m", hbm_bytes=2.97e12 * 1e-6)  # 1 us of bandwidth
    compute = cm.Cost("c", flops=708e12 * 2e-6, hbm_bytes=1.0)  # 2 us of bf16 matmul
    exps = cm.Cost("e", exps=gpu.exp_per_s * 3e-6)
    assert memory.floor_us(gpu, torch.bfloat16) == pytest.approx(1.0)
    assert compute.floor_us(gpu, torch.bfloat16) == pytest.approx(2.0)
    assert compute.floor_us(gpu, torch.float32) == pytest.approx(2.0 * 708 / 67)
    assert exps.floor_us(gpu, torch.bfloat16) == pytest.approx(3.0)


def test_model_beside_measurements():
    """gpu-check writes the model's floors beside the measured `triton` times of its bench run (fake results
    here: one measured row, the rest missing)."""
    assert cm.gpu_key("NVIDIA H200") == "h200" and cm.gpu_key("NVIDIA A100-SXM4-80GB") == "a100"
    assert cm.gpu_key("some other GPU") == "h100"
    script = (
        "import json; from bpmt_fast.bench import cost_model as cm\n"
        "rows = [{'suite': 'attention', 'shape_set': 'cross-pairs', 'case': 'B2x20 pairs N16 H8 D32', "
        "'backend': 'triton', 'direction': 'fwd', 'status': 'ok', 'median_ms': 0.5}]\n"
        "print(cm.model_vs_measured({'settings': {'dtype': 'bf16', 'quick': True}, 'rows': rows}, 'h200'))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Cost model (H200, bf16)")
    measured = [line for line in lines if line.startswith("| B2x20 pairs N16 H8 D32 | fwd |")]
    assert len(measured) == 1 and "| 500.0 |" in measured[0]
    assert any(line.startswith("| B2x20 pairs N16 H8 D32 | fwd+bwd |") and "| nan |" in line for line in lines)
