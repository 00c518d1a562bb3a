"""Train-step suite: one forward + backward + AdamW step of BPMT and the baseline, per backend, eager and under
torch.compile (default and mode="reduce-overhead", i.e. CUDA graphs).

An "attention removed" row swaps every attention call for one that returns v unchanged: the step time left is
what the rest of the model costs, so (step - step without attention) bounds what any attention kernel can win.
It exists only inside this suite and is never registered as a backend.

The step timed is the training pipeline's own (`Stage.train_step` through `stages.step_runner`): the same
precision handling (bf16 / fp16 autocast with fp32 weights, AdamW state and losses; fp16 with a gradient
scaler), compilation (`train.compile`), losses (finetune: batch-hard triplet + cross-entropy on P x K labels) and
optimizer step as `bpmt-fast train`. Sequences are full length (lengths=None): the packed-parts measurement of
GPU.md.
"""
from __future__ import annotations

from typing import Iterator

import torch

from bpmt_fast.attention import BACKENDS, AttentionBackend, AttentionInputs, AutoBackend
from bpmt_fast.model import BPMT, Baseline, ModelConfig
from bpmt_fast.train.config import load_config
from bpmt_fast.train.stages import step_runner, warmup_cosine

from .common import (ATTENTION_REMOVED, ERROR, NAN, OK, OOM, SKIPPED, TIME_BUDGET_REASON, UNSUPPORTED, Settings,
                     error_text, say, select_backends, skip_reason)
from .shapes import TrainCase, select_shape_sets
from .timing import free_memory, is_out_of_memory, measure

MODES = {"eager": None, "compile": "default", "compile reduce-overhead": "reduce-overhead"}
COMPILE_WARMUP_STEPS = 3  # compile, then record CUDA graphs (reduce-overhead records on the second or third call)


class NoAttention(AttentionBackend):
    """Returns v as the attention output: no attention cost at all (Nq == Nk in every model call)."""

    NAME = ATTENTION_REMOVED
    DESCRIPTION = "v passed through unchanged: a bound on any attention kernel's gain (benchmark only)"

    def padded(self, q, k, v, q_lengths=None, kv_lengths=None, scale=None, causal=False):
        return v  # (B, Nk, H, Dv)

    def attend(self, q, kv, layout_, scale=None):
        return kv[:, :, -1]  # the values of the fused (S, N, 2 or 3, H, D) projection: (S, N, H, Dv)


def remove_attention(model: torch.nn.Module) -> None:
    """Swap the backend object every attention module resolved at construction."""
    for module in model.modules():
        if isinstance(getattr(module, "backend", None), (AttentionBackend, AutoBackend)):
            module.backend = NoAttention()


def build_model(case: TrainCase, backend: str) -> torch.nn.Module:
    config = ModelConfig(dim=case.dim, heads=case.heads, part_layers=case.part_layers, pair_layers=case.pair_layers,
                         num_classes=case.num_classes, attn_backend="math" if backend == ATTENTION_REMOVED else backend)
    torch.manual_seed(0)  # the same weights for every backend
    model = (BPMT if case.model == "bpmt" else Baseline)(config)
    if backend == ATTENTION_REMOVED:
        remove_attention(model)
    return model


def make_batch(case: TrainCase, num_parts: int, device: torch.device, seed: int = 0) -> dict:
    """A full-length device batch (lengths None): poses, P x K labels (4 per identity) and a frame mask."""
    generator = torch.Generator().manual_seed(seed)
    poses = torch.randn(case.batch, case.frames, 17, 3, generator=generator)  # (B, T, J, C), COCO-17
    poses[..., 2] = poses[..., 2].sigmoid()  # confidence in (0, 1)
    labels = (torch.arange(case.batch) // 4) % case.num_classes  # (B,): triplets need K >= 2 per identity
    frame_mask = torch.rand(case.batch, num_parts, case.frames, generator=generator) < 0.4  # (B, P, T)
    return {"poses": poses.to(device), "lengths": None, "labels": labels.to(device),
            "frame_mask": frame_mask.to(device)}


def run_config(case: TrainCase, settings: Settings, mode: str):
    """The training config whose step is timed: the pipeline's precision, compile mode and finetune losses."""
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[settings.dtype]
    compile_mode = {"eager": "off", "compile": "default", "compile reduce-overhead": "reduce-overhead"}[mode]
    return load_config(overrides={"device": settings.device.type, "train": {"precision": precision,
                                                                            "compile": compile_mode}})


def make_step(model, case: TrainCase, settings: Settings, mode: str):
    """One optimizer step of the training pipeline itself (`Stage.train_step`) on a fixed batch, as a closure."""
    stage = step_runner(case.model, model, case.stage, run_config(case, settings, mode), settings.device)
    batch = make_batch(case, model.tokenizer.num_parts, settings.device)
    optimizer = torch.optim.AdamW(stage.trainable_parameters(), lr=1e-4)
    scheduler = warmup_cosine(optimizer, 0, 10**9)
    return lambda: stage.train_step(batch, optimizer, scheduler)


def mode_skip_reason(mode: str, settings: Settings) -> str | None:
    if mode == "eager" or settings.device.type == "cuda":
        return None
    if settings.quick:
        return "CPU --quick: torch.compile not run (compiling takes minutes here)"
    if mode == "compile reduce-overhead":
        return "reduce-overhead records CUDA graphs: needs a GPU"
    return None


def attention_inputs(case: TrainCase, settings: Settings, attn_dtype: torch.dtype) -> AttentionInputs:
    head_dim = case.dim // case.heads
    return AttentionInputs(settings.device.type, attn_dtype, head_dim, head_dim, case.heads, masked=False,
                           requires_grad=True)


def empty_row(case: TrainCase, backend: str, mode: str, settings: Settings) -> dict:
    """One row before anything ran (numbers NaN)."""
    autocast_dtype = None if settings.dtype == torch.float32 else settings.dtype
    return {"suite": "train-step", "shape_set": "train-step", "case": case.name, "model": case.model,
            "stage": case.stage, "backend": backend, "mode": mode, "batch": case.batch, "frames": case.frames,
            "dim": case.dim, "heads": case.heads,
            "dtype": settings.dtype_name + (" autocast" if autocast_dtype else ""),
            "exact": True if backend == ATTENTION_REMOVED else BACKENDS[backend].IS_EXACT,
            "status": None, "reason": "", "median_ms": NAN, "sequences_per_s": NAN, "peak_mib": NAN}


def bench_one(case: TrainCase, backend: str, mode: str, settings: Settings) -> dict:
    attn_dtype = settings.dtype
    row = empty_row(case, backend, mode, settings)
    if backend != ATTENTION_REMOVED:
        skip = skip_reason(backend, settings.device)
        reasons = BACKENDS[backend].not_supported_reasons(attention_inputs(case, settings, attn_dtype))
        if skip:
            return {**row, "status": skip[0], "reason": skip[1]}
        if reasons:
            return {**row, "status": UNSUPPORTED, "reason": "; ".join(reasons)}
    skip_mode = mode_skip_reason(mode, settings)
    if skip_mode:
        return {**row, "status": SKIPPED, "reason": skip_mode}

    model = None
    try:
        model = build_model(case, backend).to(settings.device)
        model.train()
        if MODES[mode] is not None:
            torch._dynamo.reset()  # fresh caches: every model instance would otherwise count as a recompile
        step = make_step(model, case, settings, mode)
        warmup = COMPILE_WARMUP_STEPS if MODES[mode] is not None else 1
        result = measure(step, settings.device, quick=settings.quick, warmup=warmup)
    except Exception as error:  # noqa: BLE001 - any failure is a row, never a crash
        status = OOM if is_out_of_memory(error) else ERROR
        return {**row, "status": status, "reason": error_text(error)}
    finally:
        del model
        free_memory(settings.device)
    return {**row, "status": OK, "median_ms": result.median_ms, "peak_mib": result.peak_mib,
            "sequences_per_s": case.batch / (result.median_ms * 1e-3)}


def run_train_step(settings: Settings) -> Iterator[dict]:
    """Rows one by one (the runner saves each); once the suite's time budget is spent, the remaining rows are
    `skipped` with reason "time budget". Per case, every backend eager before any compiles (compiling takes
    tens of seconds per model): a budget that ends early still leaves the eager comparison of the first cases."""
    backends = (settings.backends or select_backends(None)) + [ATTENTION_REMOVED]
    for shape_set in select_shape_sets(settings.shapes, "train-step"):
        for case in shape_set.cases(settings.quick):
            for mode in MODES:
                for backend in backends:
                    if settings.out_of_time():
                        row = {**empty_row(case, backend, mode, settings), "status": SKIPPED,
                               "reason": TIME_BUDGET_REASON}
                    else:
                        row = bench_one(case, backend, mode, settings)
                    shown = (f"{row['median_ms']:.2f} ms, {row['sequences_per_s']:.0f} seq/s"
                             if row["status"] == OK else row["reason"][:90])
                    say(f"train-step | {case.name} | {backend} {mode}: {row['status']} {shown}")
                    yield row
    torch._dynamo.reset()  # drop compiled graphs (and their CUDA graph pools) before the next suite
