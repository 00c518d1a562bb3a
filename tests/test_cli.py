import json
import os

import pytest

from bpmt_fast.attention import BACKENDS, ENV_VAR
from bpmt_fast.cli import main


def test_backends_table_lists_every_backend_with_reasons(capsys):
    assert main(["backends"]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "triton" in text and "CUDA" in text and "GPU" in text
    for name in BACKENDS:
        assert f"\n{name} " in text
    assert "not installed" in text  # flash-attn / xformers are not on the test machine


def test_backends_json(capsys):
    assert main(["backends", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in report["backends"]} == set(BACKENDS)
    assert all(row["available"] or row["reason"] for row in report["backends"])
    assert {"torch", "triton", "cuda", "gpu"} <= set(report["environment"])


def test_unknown_backend_lists_valid_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--attn-backend", "nonsense"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "nonsense" in error and "valid names" in error and "math" in error and "sdpa" in error


def test_demo_trains_with_the_chosen_backend(capsys, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "auto")  # recorded, so the CLI's change is undone after the test
    assert main(["demo", "--attn-backend", "sdpa", "--steps", "1"]) == 0
    assert os.environ[ENV_VAR] == "sdpa"  # the CLI choice is the process default
    out = capsys.readouterr().out
    assert "sdpa " in out and "math " in out and "agree with math" in out


def test_python_m_bpmt_fast_info_is_the_backends_report():
    """`python -m bpmt_fast.info` (the `python -m xformers.info` convention) prints what `bpmt-fast backends` does."""
    import subprocess
    import sys

    def run(*args):
        result = subprocess.run([sys.executable, *args, "--json"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    info, backends = run("-m", "bpmt_fast.info"), run("-m", "bpmt_fast.cli", "backends")
    for report in (info, backends):
        report["environment"].pop("date")  # the two runs' clock readings
    assert info == backends
    assert {row["name"] for row in info["backends"]} >= {"math", "sdpa", "triton", "flow-triton"}
    assert all(row["available"] or row["reason"] for row in info["backends"])
