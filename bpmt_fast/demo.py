"""`bpmt-fast demo`: a few optimizer steps of BPMT and the baseline, every stage, on one synthetic padded batch,
with every backend that can run here (or one), so a user sees at once which backends train and that the exact
ones agree with `math`."""
from __future__ import annotations

import time

import torch

from bpmt_fast.attention import BACKENDS, AttentionInputs
from bpmt_fast.model import BPMT, Baseline, ModelConfig
from bpmt_fast.train.config import load_config
from bpmt_fast.train.distributed import resolve_device
from bpmt_fast.train.stages import step_runner, warmup_cosine

CONFIG = ModelConfig(dim=64, heads=4, part_layers=2, pair_layers=1, embedding_dim=64, num_classes=6)
BATCH, FRAMES = 12, 48


def synthetic_batch(seed: int = 0, batch: int = BATCH, frames: int = FRAMES, num_classes: int = CONFIG.num_classes):
    """Random poses with varying lengths: enough to exercise padding, not a gait dataset."""
    generator = torch.Generator().manual_seed(seed)
    poses = torch.randn(batch, frames, 17, 3, generator=generator)
    lengths = torch.randint(frames // 4, frames + 1, (batch,), generator=generator)
    lengths[0] = frames
    labels = torch.arange(batch) % num_classes
    frame_mask = torch.rand(batch, 5, frames, generator=generator) < 0.4
    return poses, lengths, labels, frame_mask


def train_steps(model_cls, backend: str, stage: str, steps: int, batch, config: ModelConfig = CONFIG,
                losses: list | None = None, device: str | torch.device = "cpu") -> tuple[float, float]:
    """Returns (final loss, ms per step) for a fresh, identically seeded model on `device`, trained with the
    pipeline's own step (`stages.step_runner`, fp32 so exact backends can be compared with math); every step's
    loss is appended to `losses` when given."""
    device = torch.device(device)
    poses, lengths, labels, frame_mask = (x.to(device) for x in batch)
    torch.manual_seed(0)
    model = model_cls(ModelConfig(**{**config.__dict__, "attn_backend": backend, "dropout": 0.0})).to(device)
    run_config = load_config(overrides={"device": device.type, "train": {"precision": "fp32"}})
    runner = step_runner("bpmt" if model_cls is BPMT else "baseline", model, stage, run_config, device)
    optimizer = torch.optim.AdamW(runner.trainable_parameters(), lr=1e-3)
    scheduler = warmup_cosine(optimizer, 0, 10**9)
    device_batch = {"poses": poses, "lengths": lengths, "labels": labels,
                    "frame_mask": frame_mask[:, : model.tokenizer.num_parts]}
    start, loss = time.perf_counter(), None
    for _ in range(steps):
        out = runner.train_step(device_batch, optimizer, scheduler)
        # finetune: (loss, parts); reconstruction: (2, G) error sums and weights of the masked frames
        loss = float(out[0]) if stage == "finetune" else float(out[0].sum() / out[1].sum().clamp(min=1))
        if losses is not None:
            losses.append(loss)
    return loss, (time.perf_counter() - start) * 1000 / steps


def trainable_here(name: str) -> str | None:
    """None if the backend can train on this machine's device (`resolve_device("auto")`), else why not."""
    device = resolve_device("auto")
    probe = torch.zeros(1, 1, 1, 16, device=device, requires_grad=True)
    reasons = BACKENDS[name].not_supported_reasons(AttentionInputs.describe(probe, probe, probe, masked=True))
    return "; ".join(reasons) or None


def run_demo(backend: str | None, steps: int = 3) -> int:
    names = [backend] if backend and backend != "auto" else list(BACKENDS)
    batch = synthetic_batch()
    print(f"demo: {steps} AdamW steps per (backend, model, stage) on a synthetic batch of {BATCH} sequences, "
          f"lengths {batch[1].min().item()}-{FRAMES} frames, COCO-17")
    print(f"{'backend':<15} {'model':<9} {'stage':<9} {'loss':>10} {'vs math':>9} {'ms/step':>9}")
    reference: dict[tuple[str, str], float] = {}
    failures = 0
    for name in (["math"] if "math" not in names else []) + names:
        reason = trainable_here(name)
        if reason:
            print(f"{name:<15} skipped: {reason}")
            continue
        for model_cls in (BPMT, Baseline):
            stages = ("part", "pair", "finetune") if model_cls is BPMT else ("part", "finetune")
            for stage in stages:
                # The device the backend was probed on (before, a CUDA machine probed CUDA but trained on CPU).
                loss, ms = train_steps(model_cls, name, stage, steps, batch, device=resolve_device("auto"))
                key = (model_cls.__name__, stage)
                reference.setdefault(key, loss) if name == "math" else None
                diff = abs(loss - reference[key])
                agree = not BACKENDS[name].IS_EXACT or diff <= 1e-3 * max(1.0, abs(reference[key]))
                failures += not agree
                shown = f"{diff:9.2e}" if BACKENDS[name].IS_EXACT else "  (inexact)"
                print(f"{name:<15} {model_cls.__name__:<9} {stage:<9} {loss:10.5f} {shown:>9} {ms:9.1f}"
                      + ("" if agree else "  <- differs from math"))
    print("all exact backends agree with math" if not failures else f"{failures} runs differ from math")
    return 1 if failures else 0
