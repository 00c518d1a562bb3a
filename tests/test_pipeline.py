"""The whole pipeline on a tiny synthetic dataset: run directory contents, stage selection, resume after a kill."""
import json

import pytest
import torch
import yaml

from bpmt_fast.train import checkpoint
from bpmt_fast.train.config import load_config
from bpmt_fast.train.pipeline import run_pipeline
from bpmt_fast.train.stages import ReconstructionStage

TINY = {
    "model": {"dim": 16, "heads": 2, "part_layers": 1, "pair_layers": 1, "embedding_dim": 16},
    "data": {"synthetic": {"num_subjects": 10, "sequences_per_subject": 6, "min_frames": 20, "max_frames": 30},
             "max_frames": 24, "test_subjects": 0.3, "val_subjects": 0.2},
    "stage1": {"epochs": 2, "batch_size": 16},
    "stage2": {"epochs": 1, "batch_size": 16},
    "finetune": {"epochs": 2, "identities_per_batch": 4, "sequences_per_identity": 2, "batches_per_epoch": 2},
}


def tiny_config(run_dir, **overrides):
    values = {**TINY, "run_dir": str(run_dir), **overrides}
    return load_config(overrides=values)


def test_full_pipeline_writes_the_run_directory(tmp_path):
    results = run_pipeline(tiny_config(tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.md", "results.json"):
        assert (run / name).is_file(), name
    for plot in ("bpmt_stage1_parts.png", "bpmt_stage2_pairs.png", "bpmt_finetune.png", "baseline_finetune.png"):
        assert (run / "plots" / plot).is_file(), plot
    assert {"bpmt", "baseline", "pose-stats 1-NN (reference)"} <= set(results["models"])
    summary = (run / "summary.md").read_text()
    assert "bpmt" in summary and "baseline" in summary and "rank-1" in summary
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stage1 = [r for r in records if r["stage"] == "stage1" and r["model"] == "bpmt"]
    assert {r["split"] for r in stage1} == {"train", "val"}
    assert set(stage1[0]["per_group"]) == {"torso", "left_arm", "right_arm", "left_leg", "right_leg"}
    # The summary's train vs validation table comes from metrics.jsonl: the kept epoch is the first best score.
    curves = results["curves"]
    assert set(curves["bpmt"]) == {"stage1", "stage2", "finetune"} and set(curves["baseline"]) == {"stage1", "finetune"}
    scores = [r["score"] for r in records if r["model"] == "bpmt" and r["stage"] == "finetune" and r["split"] == "val"]
    assert curves["bpmt"]["finetune"]["best_epoch"] == scores.index(max(scores)) + 1
    assert curves["bpmt"]["finetune"]["epochs"] == len(scores)
    assert "Train vs validation" in summary


def test_unknown_stage_and_config_key_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline(tiny_config(tmp_path), stages=["3"])
    with pytest.raises(ValueError, match="unknown config key.*epochz"):
        load_config(overrides={"stage1": {"epochz": 1}})


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, monkeypatch):
    stages = ["1"]
    config = dict(models=["bpmt"], stages=stages)
    run_pipeline(tiny_config(tmp_path / "straight", **config))

    original = ReconstructionStage.train_epoch
    calls = {"n": 0}

    def killed_in_second_epoch(self, epoch, *args):
        calls["n"] += 1
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch, *args)

    monkeypatch.setattr(ReconstructionStage, "train_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tiny_config(tmp_path / "killed", **config))
    monkeypatch.setattr(ReconstructionStage, "train_epoch", original)
    run_pipeline(tiny_config(tmp_path / "killed", **config))

    straight = checkpoint.latest_checkpoint(tmp_path / "straight" / "checkpoints", "bpmt-stage1")
    resumed = checkpoint.latest_checkpoint(tmp_path / "killed" / "checkpoints", "bpmt-stage1")
    from safetensors.torch import load_file

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_an_epoch_logged_but_not_checkpointed_is_rerun_not_recorded_twice(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, models=["bpmt"], stages=["1"])
    original = ReconstructionStage.save

    def killed_while_saving_epoch_2(self, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt("simulated kill after logging epoch 2")
        return original(self, state)

    monkeypatch.setattr(ReconstructionStage, "save", killed_while_saving_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config)
    monkeypatch.setattr(ReconstructionStage, "save", original)
    run_pipeline(config)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records if r["stage"] == "stage1"] == [
        (1, "train"), (1, "val"), (2, "train"), (2, "val")]


def test_cli_train_then_eval(tmp_path, monkeypatch, capsys):
    import yaml

    from bpmt_fast.cli import main

    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump({**TINY, "models": ["baseline"]}))
    monkeypatch.setenv("BPMT_ATTN_BACKEND", "auto")
    assert main(["train", "--config", str(preset), "--run-dir", str(tmp_path / "run"), "--attn-backend", "flow",
                 "--stages", "1,ft"]) == 0
    assert "attention backend: flow" in (tmp_path / "run" / "summary.md").read_text()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert "baseline" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["math", "sdpa", "flow"])
def test_every_stage_runs_every_attention_through_the_chosen_backend(tmp_path, monkeypatch, backend):
    import collections
    import math

    from bpmt_fast.attention.base import AttentionBackend

    used = collections.Counter()
    original = AttentionBackend.attend  # the model's entry point into every backend

    def counting(self, *args, **kwargs):
        used[self.NAME] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AttentionBackend, "attend", counting)
    run_pipeline(tiny_config(tmp_path, model={**TINY["model"], "attn_backend": backend}))
    assert set(used) == {backend} and used[backend] > 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    stages = {(r["model"], r["stage"]) for r in records if r.get("split") == "train" and math.isfinite(r["loss"])}
    assert stages == {("bpmt", "stage1"), ("bpmt", "stage2"), ("bpmt", "finetune"),
                      ("baseline", "stage1"), ("baseline", "finetune")}


def test_an_untrainable_split_fails_before_training_with_a_clear_error(tmp_path, capsys, monkeypatch):
    from bpmt_fast.cli import console_main

    config = tiny_config(tmp_path / "run", finetune={**TINY["finetune"], "identities_per_batch": 50})
    with pytest.raises(ValueError, match="identities_per_batch=50 .* training identities"):
        run_pipeline(config)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained

    closed_data = {k: v for k, v in TINY["data"].items() if k not in ("test_subjects", "val_subjects")}
    closed_set = tiny_config(tmp_path / "closed", data={**closed_data, "protocol": "closed-set"},
                             finetune={**TINY["finetune"], "ce_weight": 0.0})
    with pytest.raises(ValueError, match="closed-set classification, which needs the classifier"):
        run_pipeline(closed_set)

    import yaml

    preset = tmp_path / "bad.yaml"
    preset.write_text(yaml.safe_dump({**TINY, "finetune": {**TINY["finetune"], "identities_per_batch": 50}}))
    monkeypatch.setattr("sys.argv", ["bpmt-fast", "train", "--config", str(preset), "--run-dir", str(tmp_path / "cli")])
    assert console_main() == 2
    assert "bpmt-fast: error: finetune.identities_per_batch=50" in capsys.readouterr().err


def test_a_run_directory_refuses_to_resume_under_changed_training_settings(tmp_path):
    """Checkpoints belong to the settings that trained them: a changed learning rate or width is refused, naming
    each key; what runs now, the backend and the evaluation may change; a directory without checkpoints starts
    over with any config."""
    run_dir = tmp_path / "run"
    run_pipeline(tiny_config(run_dir, models=["baseline"]), stages=["1"])
    changed = tiny_config(run_dir, models=["baseline"], stage1={**TINY["stage1"], "lr": 0.01},
                          model={**TINY["model"], "dim": 32, "heads": 4})
    with pytest.raises(ValueError, match=r"(?s)other settings.*model\.dim: 16 -> 32.*model\.heads: 2 -> 4.*"
                                         r"stage1\.lr: 0\.001 -> 0\.01"):
        run_pipeline(changed, stages=["1"])
    allowed = tiny_config(run_dir, models=["baseline"], evaluation={"flip": True},
                          model={**TINY["model"], "attn_backend": "math"})
    run_pipeline(allowed, stages=["1"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["stage1"]["lr"]  # a key an older version did not write: not compared
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    run_pipeline(tiny_config(run_dir, models=["baseline"], stage1={**TINY["stage1"], "lr": 0.01}), stages=["1"])
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text("model:\n  dim: 99\n")  # a config but no checkpoint: nothing to mix
    run_pipeline(tiny_config(fresh, models=["baseline"]), stages=["1"])
