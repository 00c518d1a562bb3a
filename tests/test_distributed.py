"""torchrun with 2 CPU ranks (gloo) trains exactly what one process trains with the same global batches."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bpmt_fast.train import checkpoint
from bpmt_fast.train.config import load_config
from bpmt_fast.train.data import (build_datasets, eval_loader, identity_loader, load_sequences, make_split,
                                  shuffled_loader)
from bpmt_fast.train.distributed import Parallel
from bpmt_fast.train.pipeline import run_pipeline
from bpmt_fast.train.stages import build_model

# Dropout off: each rank draws its own dropout masks, so only a dropout-free run can match bit for bit.
DDP_RUN = {
    "model": {"dim": 16, "heads": 2, "part_layers": 1, "pair_layers": 1, "embedding_dim": 16, "dropout": 0.0},
    "data": {"synthetic": {"num_subjects": 10, "sequences_per_subject": 6, "min_frames": 20, "max_frames": 30},
             "max_frames": 24, "test_subjects": 0.3, "val_subjects": 0.2},
    "stage1": {"epochs": 2, "batch_size": 8},
    "stage2": {"epochs": 1, "batch_size": 8},
    "finetune": {"epochs": 2, "identities_per_batch": 4, "sequences_per_identity": 2, "batches_per_epoch": 2},
}


def train_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["model"], r["stage"], r["epoch"]): r["loss"] for r in records if r.get("split") == "train"}


def test_rank_shards_cover_the_global_batch():
    shards = [Parallel(rank=r, world_size=3).shard(list(range(8))) for r in range(3)]
    assert [len(s) for s in shards] == [2, 3, 3] and sum(shards, []) == list(range(8))


def test_identity_batches_must_split_evenly_over_the_ranks():
    config = load_config(overrides=DDP_RUN)
    sequences, _ = load_sequences(config.data)
    data = build_datasets(sequences, make_split(sequences, config.data), config.data, config.augment, seed=0)
    with pytest.raises(ValueError, match="4 x 2 = 8 sequences does not split evenly over 3 ranks"):
        identity_loader(data.train, 4, 2, seed=0, epoch=0, parallel=Parallel(rank=0, world_size=3))
    halves = [list(identity_loader(data.train, 4, 2, 0, 0, Parallel(rank=r, world_size=2))) for r in range(2)]
    whole = list(identity_loader(data.train, 4, 2, 0, 0))
    assert [a["indices"] + b["indices"] for a, b in zip(*halves)] == [batch["indices"] for batch in whole]


def test_augmentation_does_not_depend_on_the_rank():
    config = load_config(overrides=DDP_RUN)
    sequences, _ = load_sequences(config.data)
    data = build_datasets(sequences, make_split(sequences, config.data), config.data, config.augment, seed=0)
    single = next(iter(shuffled_loader(data.train, 6, seed=0, epoch=3)))
    halves = [next(iter(shuffled_loader(data.train, 6, 0, 3, Parallel(rank=r, world_size=2)))) for r in range(2)]
    assert halves[0]["indices"] + halves[1]["indices"] == single["indices"]
    for half, offset in zip(halves, (0, 3)):
        for i, length in enumerate(half["lengths"].tolist()):
            torch.testing.assert_close(half["poses"][i, :length], single["poses"][offset + i, :length])


def test_two_rank_ddp_run_matches_single_process(tmp_path):
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(DDP_RUN))
    run_pipeline(load_config(config_path, {"run_dir": str(tmp_path / "single")}))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "bpmt_fast.cli", "train", "--config", str(config_path), "--run-dir", str(tmp_path / "ddp")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data parallel: 2 ranks" in done.stdout

    single, ddp = train_losses(tmp_path / "single"), train_losses(tmp_path / "ddp")
    assert single.keys() == ddp.keys() and len(single) == 9  # bpmt: 2 + 1 + 2 epochs, baseline: 2 + 2
    for key in single:
        assert ddp[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
    # Compare what the weights compute, not the weights: parameters with an exactly-zero gradient (the key bias
    # under softmax, biases whose constant offset the BN-neck removes) take AdamW steps driven by rounding noise,
    # different in each run; the BN running mean follows those offsets, so the check normalises with batch
    # statistics (dropout is off, so training mode is deterministic).
    config = load_config(config_path)
    sequences, _ = load_sequences(config.data)
    data = build_datasets(sequences, make_split(sequences, config.data), config.data, config.augment, seed=0)
    batch = next(iter(eval_loader(data.subset(list(range(24))))))
    for name in ("bpmt", "baseline"):
        embeddings = []
        for run in ("single", "ddp"):
            model = build_model(name, config.model, num_classes=len(data.label_map))
            checkpoint.load_weights(checkpoint.latest_checkpoint(tmp_path / run / "checkpoints", f"{name}-finetune"),
                                    model)
            out = model.train()(batch["poses"], batch["lengths"])  # batch statistics: offsets cancel
            embeddings.append(out["inference_feat"]["embeddings"])
        torch.testing.assert_close(embeddings[1], embeddings[0], rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def torchrun_train(config_path, run_dir, script=("-m", "bpmt_fast.cli"), env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script,
               "train", "--config", str(config_path), "--run-dir", str(run_dir)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)


def test_a_killed_two_rank_run_with_dropout_resumes_to_the_uninterrupted_weights(tmp_path):
    """Each rank draws its own dropout; a resumed run must restore every rank's RNG (not rank 0's on all ranks)
    and take rank 0's early-stopping decisions, so it ends where the uninterrupted run ends."""
    run = {**DDP_RUN, "models": ["baseline"], "stages": ["1", "ft"], "model": {**DDP_RUN["model"], "dropout": 0.3},
           "stage1": {"epochs": 1, "batch_size": 8},
           "finetune": {**DDP_RUN["finetune"], "epochs": 3}}
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(run))
    straight = torchrun_train(config_path, tmp_path / "straight")
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    killing_script = (str(Path(__file__).with_name("ddp_killed_train.py")),)
    killed = torchrun_train(config_path, tmp_path / "resumed", killing_script, {"KILL_EPOCH": "2"})
    assert killed.returncode != 0 and "simulated kill at finetune epoch 3" in killed.stdout + killed.stderr
    resumed = torchrun_train(config_path, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming after epoch 2" in resumed.stdout

    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "straight")
    for name in ("baseline-finetune", "baseline-best"):
        a = load_file(checkpoint.latest_checkpoint(tmp_path / "straight" / "checkpoints", name) / "model.safetensors")
        b = load_file(checkpoint.latest_checkpoint(tmp_path / "resumed" / "checkpoints", name) / "model.safetensors")
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=lambda m: f"{name} {key}: {m}")
