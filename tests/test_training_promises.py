"""The README's training promises, each as a test that fails when the promise breaks.

- finetune starts from the stage-1 / stage-2 weights (in one invocation and across `--stages` invocations), and the
  stage-2 pair encoder takes part in it (its gradient is not zero);
- the weights evaluated at the end are the kept best checkpoint, and `eval RUN` reproduces results.json exactly;
- early stopping reads the validation split only: no test sequence is read before the final evaluation;
- a kill between any two file operations of a checkpoint save leaves a run that resumes to the same weights;
- the split is saved and data that no longer gives it is refused;
- losses and the learning-rate schedule against hand-computed values.
"""
import json
import math
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from bpmt_fast.train import checkpoint, pipeline
from bpmt_fast.train.config import to_dict
from bpmt_fast.train.data import Datasets
from bpmt_fast.train.losses import (batch_hard_triplet_loss, masked_reconstruction_loss,
                                    supervised_contrastive_loss)
from bpmt_fast.train.pipeline import evaluate_run, run_pipeline
from bpmt_fast.train.stages import FinetuneStage, warmup_cosine
from test_pipeline import TINY, tiny_config as config_for  # the tiny synthetic run every pipeline test trains


def weights_of(folder) -> dict:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: dict, b: dict, what: str = "") -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=lambda m: f"{what} {key}: {m}")


def state_of(model) -> dict:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ stages chain


@pytest.fixture
def finetune_start(monkeypatch):
    """Records the model's weights when each finetune stage starts and its pair-encoder gradient after a step."""
    seen = {"start": [], "pair_grad": []}
    run, step = FinetuneStage.run, FinetuneStage.train_step

    def recording_run(self):
        seen["start"].append((self.name, state_of(self.model)))
        return run(self)

    def recording_step(self, *args):
        out = step(self, *args)
        if self.name == "bpmt":
            grads = [p.grad for p in self.model.pair_encoder.parameters()]
            seen["pair_grad"].append(sum(float(g.abs().sum()) for g in grads if g is not None))
        return out

    monkeypatch.setattr(FinetuneStage, "run", recording_run)
    monkeypatch.setattr(FinetuneStage, "train_step", recording_step)
    return seen


def test_finetune_starts_from_the_pretrained_weights_in_one_invocation(tmp_path, finetune_start):
    run_pipeline(config_for(tmp_path, models=["bpmt", "baseline"]))
    ckpts = tmp_path / "checkpoints"
    starts = dict(finetune_start["start"])
    assert_same_weights(starts["bpmt"], weights_of(checkpoint.latest_checkpoint(ckpts, "bpmt-stage2")), "bpmt")
    assert_same_weights(starts["baseline"], weights_of(checkpoint.latest_checkpoint(ckpts, "baseline-stage1")),
                        "baseline")
    # Stage 2 sits on top of stage 1: its checkpoint carries stage 1's part encoders (frozen by default).
    stage1 = weights_of(checkpoint.latest_checkpoint(ckpts, "bpmt-stage1"))
    stage2 = weights_of(checkpoint.latest_checkpoint(ckpts, "bpmt-stage2"))
    assert_same_weights({k: v for k, v in stage2.items() if k.startswith("part_encoder.")},
                        {k: v for k, v in stage1.items() if k.startswith("part_encoder.")}, "frozen part encoders")
    assert finetune_start["pair_grad"] and min(finetune_start["pair_grad"]) > 0  # stage-2 features are used


def test_stages_chain_across_invocations_and_never_start_from_random_weights(tmp_path, finetune_start, capsys):
    config = config_for(tmp_path, models=["bpmt"])
    with pytest.raises(ValueError, match="no bpmt-stage2 checkpoint"):
        run_pipeline(config, stages=["ft"])
    run_pipeline(config, stages=["1"])
    with pytest.raises(ValueError, match="no bpmt-stage2 checkpoint"):
        run_pipeline(config, stages=["ft"])
    run_pipeline(config, stages=["2"])
    capsys.readouterr()
    run_pipeline(config, stages=["ft"])
    stage2 = checkpoint.latest_checkpoint(tmp_path / "checkpoints", "bpmt-stage2")
    assert f"finetune starts from {stage2}" in capsys.readouterr().out
    assert_same_weights(finetune_start["start"][-1][1], weights_of(stage2), "separate invocations")
    assert min(finetune_start["pair_grad"]) > 0


def test_an_unfinished_earlier_stage_is_an_error(tmp_path, monkeypatch):
    config = config_for(tmp_path, models=["baseline"], stage1={"epochs": 2, "batch_size": 16})
    from bpmt_fast.train.stages import ReconstructionStage

    original = ReconstructionStage.train_epoch

    def killed(self, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch, *args)

    monkeypatch.setattr(ReconstructionStage, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, stages=["1"])
    with pytest.raises(ValueError, match="stage1 stopped after epoch 1"):
        run_pipeline(config, stages=["ft"])


# ------------------------------------------------------------------------- best weights, eval, test split


def scripted_validation(monkeypatch, score_of_epoch):
    """Finetune validation that scores epoch e (0-based) `score_of_epoch(e)`, whatever the weights."""
    original = FinetuneStage.validate

    def validate(self, epoch):
        return {**original(self, epoch), "score": score_of_epoch(epoch)}

    monkeypatch.setattr(FinetuneStage, "validate", validate)


def falling_validation(monkeypatch):
    """The best epoch is the first, so the last epoch's weights differ from the kept ones."""
    scripted_validation(monkeypatch, lambda epoch: 0.9 - 0.1 * epoch)


def test_the_best_weights_are_evaluated_and_eval_reproduces_results(tmp_path, monkeypatch):
    falling_validation(monkeypatch)
    evaluated = {}
    original = pipeline.evaluate_trained

    def recording(model, *args):
        evaluated[len(evaluated)] = state_of(model)
        return original(model, *args)

    monkeypatch.setattr(pipeline, "evaluate_trained", recording)
    config = config_for(tmp_path, models=["baseline"], finetune={**TINY["finetune"], "epochs": 3})
    run_pipeline(config, stages=["1", "ft"])
    ckpts = tmp_path / "checkpoints"
    best = weights_of(checkpoint.latest_checkpoint(ckpts, "baseline-best"))
    last = weights_of(checkpoint.latest_checkpoint(ckpts, "baseline-finetune"))
    assert checkpoint.read_state(checkpoint.latest_checkpoint(ckpts, "baseline-best"))["epoch"] == 1
    assert any(not torch.equal(best[k], last[k]) for k in best)  # else the test could not tell them apart
    assert_same_weights(evaluated[0], best, "evaluated")

    saved = json.loads((tmp_path / "results.json").read_text())
    again = json.loads(json.dumps(evaluate_run(tmp_path), default=pipeline.jsonable))
    for name, result in saved["models"].items():
        assert {k: v for k, v in result.items() if k not in ("seconds", "speed")} == again["models"][name], name


def test_early_stopping_never_reads_the_test_split(tmp_path, monkeypatch):
    reads, phase = [], {"final": False}
    subset, evaluate = Datasets.subset, pipeline.evaluate_trained

    def recording_subset(self, indices, crop=False):
        reads.append((phase["final"], set(indices)))
        return subset(self, indices, crop)

    def final_evaluation(*args):
        phase["final"] = True
        return evaluate(*args)

    monkeypatch.setattr(Datasets, "subset", recording_subset)
    monkeypatch.setattr(pipeline, "evaluate_trained", final_evaluation)
    results = run_pipeline(config_for(tmp_path, models=["bpmt"]))
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["lists"]["gallery"] and split["lists"]["probe"]
    data = pipeline.prepare_data(config_for(tmp_path, models=["bpmt"]), say=lambda *a: None)
    test = set(data.split.gallery) | set(data.split.probe) | set(data.split.test)
    validation = set(data.split.val)
    before = [indices for final, indices in reads if not final]
    assert before and all(not indices & test for indices in before)
    assert any(indices <= validation for indices in before)  # validation was read for early stopping
    assert any(final and indices & test for final, indices in reads)
    assert "test" in results["models"]["bpmt"]


# ------------------------------------------------------------------------------ kills during a save

FILE_OPERATIONS = [(tempfile, "mkdtemp"), (tempfile, "mkstemp"), (checkpoint, "save_file"), (torch, "save"),
                   (os, "rename"), (os, "replace"), (shutil, "rmtree"), (os, "fsync")]


class KillAt:
    """Patches every file operation a checkpoint save uses; the `kill_at`-th one raises instead of running."""

    def __init__(self, monkeypatch, kill_at: int | None):
        self.count, self.kill_at = 0, kill_at
        for module, name in FILE_OPERATIONS:
            monkeypatch.setattr(module, name, self.wrap(getattr(module, name)))

    def wrap(self, fn):
        def operation(*args, **kwargs):
            self.count += 1
            if self.count == self.kill_at:
                raise KeyboardInterrupt(f"simulated kill before file operation {self.count} ({fn.__name__})")
            return fn(*args, **kwargs)
        return operation


KILL_RUN = dict(models=["baseline"], stages=["1", "ft"], stage1={"epochs": 1, "batch_size": 16},
                finetune={**TINY["finetune"], "epochs": 2})


def final_weights(run_dir) -> dict:
    ckpts = run_dir / "checkpoints"
    return {name: weights_of(checkpoint.latest_checkpoint(ckpts, name))
            for name in ("baseline-stage1", "baseline-finetune", "baseline-best")}


def test_a_kill_at_any_file_operation_of_a_save_resumes_to_the_same_weights(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, lambda epoch: 0.1 * epoch)  # every epoch is a new best: -best is replaced
    saved_after = []  # the operation count at the end of each save
    save = checkpoint.save_checkpoint
    with monkeypatch.context() as patch:
        counter = KillAt(patch, None)
        patch.setattr(checkpoint, "save_checkpoint", lambda *a: (save(*a), saved_after.append(counter.count))[0])
        run_pipeline(config_for(tmp_path / "straight", **KILL_RUN))
    straight = final_weights(tmp_path / "straight")
    # Saves: stage 1, then per finetune epoch the new best and the epoch's checkpoint.
    assert len(saved_after) == 5 and saved_after[0] >= 8
    records = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    # Every operation of the stage-1 save and of the second -best and finetune saves: those replace an earlier
    # checkpoint of the same name, so they also remove the old folder.
    kills = [*range(1, saved_after[0] + 1), *range(saved_after[2] + 1, saved_after[4] + 1)]
    for kill_at in kills:
        run_dir = tmp_path / f"killed-{kill_at}"
        with monkeypatch.context() as patch:
            KillAt(patch, kill_at)
            with pytest.raises(KeyboardInterrupt):
                run_pipeline(config_for(run_dir, **KILL_RUN))
        run_pipeline(config_for(run_dir, **KILL_RUN))
        for name, weights in final_weights(run_dir).items():
            assert_same_weights(weights, straight[name], f"kill at operation {kill_at}: {name}")
        assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
        kept = [r for r in (run_dir / "metrics.jsonl").read_text().splitlines() if '"stage": "test"' not in r]
        assert len(kept) == len([r for r in records if '"stage": "test"' not in r])


def test_a_pointer_to_a_missing_folder_is_an_error_not_other_weights(tmp_path):
    config = config_for(tmp_path, **KILL_RUN)
    run_pipeline(config)
    best = checkpoint.latest_checkpoint(tmp_path / "checkpoints", "baseline-best")
    shutil.rmtree(best)
    with pytest.raises(ValueError, match="damaged"):
        evaluate_run(tmp_path)


def test_stale_staging_folders_are_removed_at_start_up(tmp_path, capsys):
    ckpts = tmp_path / "checkpoints"
    (ckpts / ".baseline-stage1.1.abc").mkdir(parents=True)
    (ckpts / "baseline-stage1.7.orphan").mkdir()
    (ckpts / ".baseline-stage1.latest.x.tmp").write_text("baseline-stage1.7.orphan")
    run_pipeline(config_for(tmp_path, **KILL_RUN), stages=["1"])
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith(".") or "orphan" in p.name) == []
    assert "left by a killed save" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- saved split


def test_the_split_is_saved_and_changed_data_is_refused(tmp_path):
    config = config_for(tmp_path, **KILL_RUN)
    run_pipeline(config, stages=["1"])
    record = json.loads((tmp_path / "split.json").read_text())
    assert set(record["lists"]["train"]) and not set(record["lists"]["train"]) & set(record["lists"]["gallery"])
    grown = {**TINY["data"], "synthetic": {**TINY["data"]["synthetic"], "num_subjects": 11}}
    other_seed = {**TINY["data"], "seed": 1}
    for data in grown, other_seed:
        changed = config_for(tmp_path, **{**KILL_RUN, "data": data})
        with pytest.raises(ValueError, match="other settings"):  # the saved config already differs
            run_pipeline(changed, stages=["1"])
        # same config, different sequences (files changed on disk): the saved split itself refuses
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(changed), sort_keys=False))
        with pytest.raises(ValueError, match="no longer gives the split saved"):
            run_pipeline(changed, stages=["1"])


# ------------------------------------------------------------------------------ losses and schedule


def test_batch_hard_triplet_loss_by_hand():
    embeddings = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest positive 1.0, hardest negative 3.0 -> relu(1 - 3 + 0.5) = 0
    # anchor 1: positive 1.0, negative 2.0 -> relu(1 - 2 + 0.5) = 0
    # anchor 2: positive 0.5, negative 2.0 -> 0; anchor 3: positive 0.5, negative 2.5 -> 0
    assert float(batch_hard_triplet_loss(embeddings, labels, margin=0.5)) == 0.0
    # margin 1.5: anchor 0: 1 - 3 + 1.5 = -0.5 -> 0; anchor 1: 1 - 2 + 1.5 = 0.5; anchor 2: 0.5 - 2 + 1.5 = 0;
    # anchor 3: 0.5 - 2.5 + 1.5 = -0.5 -> 0 -> mean 0.125
    assert float(batch_hard_triplet_loss(embeddings, labels, margin=1.5)) == pytest.approx(0.125)
    # an anchor without a positive is left out of the mean: anchors 0 and 1 give 1 - 5 + 4.5 and 1 - 4 + 4.5
    lone = batch_hard_triplet_loss(torch.tensor([[0.0], [1.0], [5.0]]), torch.tensor([0, 0, 1]), margin=4.5)
    assert float(lone) == pytest.approx((0.5 + 1.5) / 2)


def test_supervised_contrastive_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # unit vectors already
    labels = torch.tensor([0, 0, 1])
    t = 0.5
    # anchor 0: others 1 (cos 1) and 2 (cos 0); its only positive is 1.
    log_p = 1 / t - math.log(math.exp(1 / t) + math.exp(0 / t))
    expected = -log_p  # anchors 0 and 1 are symmetric; anchor 2 has no positive and is left out
    assert float(supervised_contrastive_loss(z, labels, t)) == pytest.approx(expected, rel=1e-6)


def test_masked_reconstruction_loss_counts_masked_frames_of_present_joints_only():
    # One sequence, one group, 3 frames, 2 joint slots x 3 channels (x, y, confidence).
    target = torch.zeros(1, 1, 3, 2, 3)
    target[..., 2] = 1.0
    target[0, 0, 1, 1, 2] = 0.0  # joint 1 missing in frame 1
    pred = target.clone()
    pred[0, 0, 0, 0, :2] = torch.tensor([1.0, 2.0])  # error 5 at a masked frame
    pred[0, 0, 1, 1, :2] = 10.0  # a missing joint: not counted
    pred[0, 0, 2, 0, 0] = 7.0  # frame 2 is not masked: not counted
    recon = {"pred": pred.flatten(-2), "target": target.flatten(-2),
             "frame_mask": torch.tensor([[[True, True, False]]]), "valid": torch.tensor([[True, True, True]]),
             "joint_valid": torch.tensor([[True, True]])}
    # counted slots: frame 0 joints 0 and 1, frame 1 joint 0 -> (5 + 0 + 0) / 3
    assert float(masked_reconstruction_loss(recon)) == pytest.approx(5 / 3)


def test_warmup_cosine_schedule_at_its_key_steps():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = warmup_cosine(optimizer, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup reaches the base rate
    assert lrs[4] == pytest.approx(1.0)  # cosine starts at the top
    assert lrs[8] == pytest.approx(0.5)  # half way through the cosine
    assert lrs[12] == pytest.approx(0.0, abs=1e-12) and lrs[13] == pytest.approx(0.0, abs=1e-12)  # stays at 0
    assert np.all(np.diff(lrs[4:13]) <= 1e-12)


# ------------------------------------------------------------------------------------ full reports


def test_the_camera_protocol_reports_fully_in_both_modes(tmp_path):
    """Closed set on held-out cameras (with validation cameras: early stopping works) and open set on unseen
    subjects: each reports the reference row, test and training-side figures, counts and 95% intervals."""
    data = {k: v for k, v in TINY["data"].items() if k not in ("test_subjects", "val_subjects")}
    closed = run_pipeline(config_for(tmp_path / "closed", models=["baseline"], stages=["1", "ft"],
                                     data={**data, "protocol": "camera", "camera": {"val_cameras": 1}}))
    summary = (tmp_path / "closed" / "summary.md").read_text()
    reference, model = closed["models"]["pose-stats 1-NN (reference)"], closed["models"]["baseline"]
    for result in (reference, model):
        test = result["closed_set"]["test"]
        assert test["num_sequences"] > 0 and test["ci95"][0] <= test["accuracy"] <= test["ci95"][1]
        reid = result["test"]["all"]["reid"]
        assert reid["num_probes"] == test["num_sequences"] and len(reid["ci95"]["rank1"]) == 2
    assert 0 <= model["closed_set"]["train"]["accuracy"] <= 1
    assert "Closed-set accuracy" in summary and "pose-stats 1-NN (reference)" in summary
    assert closed["curves"]["baseline"]["finetune"]["best_epoch"] >= 1  # validation cameras drive early stopping

    open_set = run_pipeline(config_for(tmp_path / "open", models=["baseline"], stages=["1", "ft"],
                                       data={**data, "protocol": "camera", "test_subjects": 3, "val_subjects": 2,
                                             "camera": {"open_set": True}}))
    split = json.loads((tmp_path / "open" / "split.json").read_text())
    assert not set(split["subjects"]["train"]) & set(split["subjects"]["gallery"])  # unseen subjects
    for name in ("pose-stats 1-NN (reference)", "baseline"):
        assert "closed_set" not in open_set["models"][name]
        assert open_set["models"][name]["test"]["all"]["reid"]["num_probes"] == len(split["lists"]["probe"])
    assert "train" in open_set["models"]["baseline"]  # training-subject retrieval beside the test
