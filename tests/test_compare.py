"""`bpmt-fast compare`: fake run directories -> one markdown table, compare.md and compare.png."""
import json
import sys

import pytest
import yaml

from bpmt_fast.cli import console_main, main

REFERENCE = "pose-stats 1-NN (reference)"


def speed(seq_per_s: float, step_ms: float, peak_mb: float, kind: str = "cuda max_memory_allocated") -> dict:
    return {"steps": 10, "warmup_excluded": 3, "seq_per_s": seq_per_s, "step_ms": step_ms, "step_ms_p90": step_ms,
            "peak_memory_mb": peak_mb, "memory_kind": kind}


def scores(rank1: float, mAP: float) -> dict:
    return {"all": {"reid": {"rank1": rank1, "mAP": mAP}, "cross-view": {"rank1": rank1 / 2, "mAP": mAP / 2}}}


def write_run(root, name, models, backend="sdpa", device="cuda", train=None, protocols=("reid", "cross-view")):
    run = root / name
    run.mkdir()
    results = {"data": "synthetic", "split": "subject-disjoint", "test_retrieval": "x", "protocols": list(protocols),
               "device": device, "attn_backend": backend, "models": models, "curves": {}}
    (run / "results.json").write_text(json.dumps(results))
    config = {"models": list(models), "model": {"dim": 32}}
    if train is not None:
        config["train"] = train
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


@pytest.fixture
def runs(tmp_path):
    """Two new runs (speed recorded, train section) and an older one (neither)."""
    fast = write_run(tmp_path, "fast", {
        REFERENCE: {"test": scores(0.25, 0.2)},
        "bpmt": {"test": scores(0.75, 0.6), "seconds": 10.0,
                 "speed": {"stage1": speed(900.0, 5.0, 300.0), "stage2": speed(800.0, 6.0, 512.4),
                           "finetune": speed(640.0, 25.0, 400.0)}},
    }, backend="triton", train={"precision": "bf16", "compile": "default"})
    slow = write_run(tmp_path, "slow", {
        "bpmt": {"test": scores(0.7, 0.55), "seconds": 20.0, "speed": {"finetune": speed(64.0, 250.0, 100.0)}},
    }, backend="math", train={"precision": "fp32", "compile": False})  # unquoted `off` in YAML reads as False
    old = write_run(tmp_path, "old", {"baseline": {"test": scores(0.5, 0.4), "seconds": 5.0}},
                    backend="auto", device="cpu")
    return [fast, slow, old]


def table_rows(text: str) -> dict:
    """{(run, model): {column: cell}} from the printed markdown table."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]
    return {(row["run"], row["model"]): row for row in rows}


def test_one_table_with_a_row_per_run_and_model(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == [("fast", REFERENCE), ("fast", "bpmt"), ("slow", "bpmt"), ("old", "baseline")]
    bpmt = rows["fast", "bpmt"]
    assert (bpmt["attn backend"], bpmt["precision"], bpmt["compile"], bpmt["device"]) == ("triton", "bf16",
                                                                                          "default", "cuda")
    assert (bpmt["stage1 seq/s"], bpmt["stage2 seq/s"], bpmt["finetune seq/s"]) == ("900.0", "800.0", "640.0")
    assert bpmt["finetune step ms"] == "25.0" and bpmt["peak memory MiB"] == "512"  # max over stages
    assert (bpmt["protocol"], bpmt["rank-1"], bpmt["mAP"]) == ("reid", "0.750", "0.600")
    assert rows["slow", "bpmt"]["compile"] == "off" and rows["slow", "bpmt"]["attn backend"] == "math"


def test_missing_fields_show_a_dash(runs, tmp_path, capsys):
    main(["compare", *map(str, runs), "--out", str(tmp_path / "report")])
    rows = table_rows(capsys.readouterr().out)
    old = rows["old", "baseline"]  # no speed in results.json, no train section in config.yaml
    for column in ("precision", "compile", "stage1 seq/s", "finetune seq/s", "finetune step ms", "peak memory MiB"):
        assert old[column] == "-", column
    assert old["rank-1"] == "0.500"
    reference = rows["fast", REFERENCE]  # no training: no speed
    assert reference["finetune seq/s"] == "-" and reference["rank-1"] == "0.250"
    assert rows["slow", "bpmt"]["stage1 seq/s"] == "-"  # a run that trained only the finetune stage


def test_writes_compare_md_and_png(runs, tmp_path, capsys):
    out = tmp_path / "report"
    main(["compare", *map(str, runs), "--out", str(out)])
    printed = capsys.readouterr().out
    markdown = (out / "compare.md").read_text()
    assert "| fast | bpmt | triton |" in markdown and "![" in markdown and "compare.png" in markdown
    assert printed.split("\n\nwrote")[0] in markdown  # the printed table is the file's table
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_out_is_compare_in_the_current_directory(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["compare", str(runs[0])])
    assert (tmp_path / "compare" / "compare.md").is_file() and (tmp_path / "compare" / "compare.png").is_file()


def test_protocol_option_selects_the_test_columns(runs, tmp_path, capsys):
    main(["compare", str(runs[0]), "--protocol", "cross-view", "--out", str(tmp_path / "report")])
    bpmt = table_rows(capsys.readouterr().out)["fast", "bpmt"]
    assert (bpmt["protocol"], bpmt["rank-1"], bpmt["mAP"]) == ("cross-view", "0.375", "0.300")


def test_protocol_a_run_lacks_is_an_error_naming_the_run(tmp_path):
    run = write_run(tmp_path, "gait3d-run", {"bpmt": {"test": {"all": {"gait3d": {"rank1": 0.5, "mAP": 0.4}}}}},
                    protocols=("gait3d",))
    with pytest.raises(ValueError, match=r"gait3d-run.*'reid'.*gait3d"):
        main(["compare", str(run), "--protocol", "reid", "--out", str(tmp_path / "report")])


def test_unknown_protocol_name_is_an_argparse_error(runs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(runs[0]), "--protocol", "nonsense"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "nonsense" in error and "reid" in error and "cross-view" in error


def test_run_without_results_json_is_an_error_naming_it(runs, tmp_path, monkeypatch, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with pytest.raises(ValueError, match="unfinished.*no results.json"):
        main(["compare", str(runs[0]), str(unfinished), "--out", str(tmp_path / "report")])
    # The console script turns it into one line on stderr and exit status 2.
    monkeypatch.setattr(sys, "argv", ["bpmt-fast", "compare", str(unfinished), "--out", str(tmp_path / "r")])
    assert console_main() == 2
    assert "unfinished" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written for a failed comparison


def test_same_directory_names_are_told_apart_by_path(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    runs = [write_run(parent, "run", {"bpmt": {"test": scores(0.5, 0.4)}}) for parent in (a, b)]
    main(["compare", *map(str, runs), "--out", str(tmp_path / "report")])
    assert set(table_rows(capsys.readouterr().out)) == {(str(runs[0]), "bpmt"), (str(runs[1]), "bpmt")}


def test_the_resolved_precision_is_shown_not_auto(tmp_path, capsys):
    run = write_run(tmp_path, "auto", {"bpmt": {"test": scores(0.5, 0.4)}}, train={"precision": "auto"})
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "precision": "bf16"}))  # what `train` resolved
    assert main(["compare", str(run), "--out", str(tmp_path / "out")]) == 0
    assert table_rows(capsys.readouterr().out)["auto", "bpmt"]["precision"] == "bf16"
