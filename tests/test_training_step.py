"""The GPU training path, checked on the CPU: precision selection, backends refused at start-up, a training step
that reads nothing back to the host, and speed / memory recorded by every run."""
import json
import sys
from pathlib import Path

import pytest
import torch

import bpmt_fast
from bpmt_fast.train.data import identity_loader, shuffled_loader
from bpmt_fast.train.pipeline import new_model, prepare_data, run_pipeline
from bpmt_fast.train.precision import check_backends, resolve_precision
from bpmt_fast.train.stages import FinetuneStage, MetricsLog, ReconstructionStage, warmup_cosine
from test_pipeline import TINY, tiny_config

import bpmt_fast.kernels

PACKAGES = (str(Path(bpmt_fast.__file__).parent), str(Path(bpmt_fast.kernels.__file__).parent))  # ours


# ------------------------------------------------------------------------------------------------ precision


def test_precision_auto_is_fp32_on_the_cpu_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"
    assert resolve_precision("bf16", cpu).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="config train.precision: fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    assert not resolve_precision("bf16", cpu).scaler().is_enabled()  # only fp16 scales the loss


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_precision_auto_is_bf16_on_a_gpu_that_supports_it():
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert resolve_precision("auto", torch.device("cuda")).name == expected
    assert resolve_precision("fp16", torch.device("cuda")).scaler().is_enabled()


def test_a_backend_that_cannot_run_the_precision_fails_at_start_up_with_its_reasons(tmp_path):
    config = tiny_config(tmp_path, models=["baseline"], model={**TINY["model"], "attn_backend": "triton"},
                         train={"precision": "bf16"})
    with pytest.raises(ValueError, match=r"(?s)train.precision bf16 on cpu.*triton: .*bfloat16 on CPU"):
        run_pipeline(config)
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before any training
    model = new_model("baseline", config, prepare_data(config, say=lambda *a: None), torch.device("cpu"))
    check_backends(model, resolve_precision("fp32", torch.device("cpu")), 8, 2)  # fp32 runs


def test_bf16_training_keeps_fp32_weights_and_records_the_precision(tmp_path):
    results = run_pipeline(tiny_config(tmp_path, models=["baseline"], stages=["1", "ft"],
                                       train={"precision": "bf16"}))
    assert results["precision"] == "bf16"
    losses = [json.loads(r)["loss"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if '"split": "train"' in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    from bpmt_fast.train import checkpoint
    from safetensors.torch import load_file

    weights = load_file(checkpoint.latest_checkpoint(tmp_path / "checkpoints", "baseline-finetune")
                        / "model.safetensors")
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float32}
    assert "precision: bf16" in (tmp_path / "summary.md").read_text()


# ---------------------------------------------------------------------------------------------- host syncs


class HostReads:
    """Records every host read of a tensor made by our code (not torch's own internals): `.item()`,
    `.tolist()`, `bool()` / `int()` / `float()` of a tensor, `nonzero` and boolean-mask indexing. On a GPU each
    one waits for the device."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")

    def __init__(self, monkeypatch):
        self.calls, self.active = [], False
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self.wrap(name, getattr(torch.Tensor, name)))
        getitem = torch.Tensor.__getitem__

        def indexing(tensor, index):
            masks = index if isinstance(index, tuple) else (index,)
            if any(isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in masks):
                self.record("boolean-mask indexing")
            return getitem(tensor, index)

        monkeypatch.setattr(torch.Tensor, "__getitem__", indexing)

    def wrap(self, name, original):
        def read(tensor, *args, **kwargs):
            self.record(name)
            return original(tensor, *args, **kwargs)
        return read

    def record(self, name):
        if not self.active:
            return
        caller = sys._getframe(2)
        if caller.f_code.co_filename.startswith(PACKAGES):
            self.calls.append(f"{name} at {caller.f_code.co_filename}:{caller.f_lineno}")


def stage_for(stage_cls, tmp_path, *args, backend="sdpa", **overrides):
    config = tiny_config(tmp_path, models=["bpmt"], model={**TINY["model"], "attn_backend": backend}, **overrides)
    data = prepare_data(config, say=lambda *a: None)
    model = new_model("bpmt", config, data, torch.device("cpu"))
    section = config.finetune if stage_cls is FinetuneStage else config.stage1
    stage = stage_cls(*args, "bpmt", model, data, section, config, torch.device("cpu"),
                      MetricsLog(tmp_path / "m.jsonl"), tmp_path / "checkpoints")
    stage.prepare()
    model.train()
    optimizer = torch.optim.AdamW(stage.trainable_parameters(), lr=1e-3)
    return stage, data, config, optimizer, warmup_cosine(optimizer, 1, 10)


@pytest.mark.parametrize("kind, backend", [("reconstruction", "sdpa"), ("finetune", "sdpa"), ("finetune", "triton")])
def test_the_training_step_reads_nothing_back_to_the_host(tmp_path, monkeypatch, kind, backend):
    """What `bpmt-fast gpu-check` checks on a GPU with set_sync_debug_mode("error"), as far as the CPU can: the
    step path (forward, loss, backward, optimizer) never reads a tensor value on the host. `triton` packs the
    parts with the collate's host ints (max_length, total_frames)."""
    if kind == "finetune":
        stage, data, config, optimizer, scheduler = stage_for(FinetuneStage, tmp_path, backend=backend)
        batch = next(iter(identity_loader(data.train, 4, 2, seed=0, epoch=0, buckets=[24])))
        assert isinstance(batch["max_length"], int) and isinstance(batch["total_frames"], int)
        prepared = stage.to_device(batch)
    else:
        stage, data, config, optimizer, scheduler = stage_for(ReconstructionStage, tmp_path, "part")
        batch = next(iter(shuffled_loader(data.train, 8, seed=0, epoch=0)))
        prepared = stage.to_device(stage.with_mask(batch, 0))
    reads = HostReads(monkeypatch)
    reads.active = True
    stage.train_step(prepared, optimizer, scheduler)
    reads.active = False
    assert reads.calls == []
    # The detector sees host reads in package code: the model's value checks (evaluation only) make some.
    from bpmt_fast.model.common import check_pose_batch

    reads.active = True
    check_pose_batch(prepared["poses"], prepared["lengths"], None, 17, 3, 5, check_values=True)
    reads.active = False
    assert reads.calls and all("bpmt_fast/model/common.py" in call for call in reads.calls)


# ----------------------------------------------------------------------------------------- speed and memory


def test_every_run_records_speed_and_memory_per_stage(tmp_path):
    results = run_pipeline(tiny_config(tmp_path, models=["bpmt"], train={"frame_buckets": [16]}))
    speed = results["models"]["bpmt"]["speed"]
    assert set(speed) == {"stage1", "stage2", "finetune"}
    for figures in speed.values():
        assert figures["steps"] >= 1 and figures["seq_per_s"] > 0 and figures["step_ms"] > 0
        assert figures["peak_memory_mb"] > 0 and "cpu" in figures["memory_kind"]
    summary = (tmp_path / "summary.md").read_text()
    assert "Speed and memory (fp32 precision, compile off" in summary and "| bpmt | finetune |" in summary
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"]["bpmt"]["speed"]["finetune"]["steps"] == speed["finetune"]["steps"]
