"""One optimisation step, written out: forward, loss, backward, clip, AdamW, schedule, zero grads.

Everything a step needs is built here too: the AdamW parameter groups, the learning-rate
schedule, the precision and the (optionally compiled) loss function.
"""
import contextlib
import math

import torch
import torch.distributed as dist
import torch.nn as nn

from minift.allocator import keep_freed_memory
from minift.errors import MiniftError


def pick_device(device: str = "auto") -> torch.device:
    """The device to run on. On a CPU, freed memory is kept for the next batch (minift/allocator.py)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise MiniftError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise MiniftError(f"--device {device}: no CUDA GPU is visible to PyTorch")
    if index and int(index) >= torch.cuda.device_count():
        raise MiniftError(f"--device {device}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s), "
                          f"numbered from 0")
    if kind == "cpu":
        keep_freed_memory()
    return torch.device(device)


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `precision` ('auto', 'fp32', 'bf16', 'fp16'); None means plain fp32.

    Weights, gradients and optimizer state stay fp32 in every case: autocast only runs the
    matmuls in the low precision, so no master copy has to be kept by hand. fp16 trains with a
    GradScaler (loss scaling), on a GPU or a CPU; on a CPU without fp16 instructions it is slow,
    so auto never picks it there."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # bf16 pays on CPUs with native bf16 instructions (AVX512-BF16, AMX); elsewhere it is emulated and slow.
        return torch.bfloat16 if cpu_has_bf16() else None
    if precision not in ("fp32", "bf16", "fp16"):
        raise MiniftError(f"--precision {precision!r}: expected auto, fp32, bf16 or fp16")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters.

    Decoupled weight decay applies to matrices and embeddings only: decaying biases and
    LayerNorm gains pulls them towards zero, which is not a useful prior (they are 1-D).
    With layer_decay < 1, layer-wise learning-rate decay: the classifier gets lr, each layer
    below it one more factor of layer_decay, the embeddings the smallest.
    """
    depth_of = layer_depths(model)
    n_layers = max(depth_of.values())
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = weight_decay if p.ndim >= 2 else 0.0
        scale = layer_decay ** (n_layers - depth_of[name])
        g = groups.setdefault((decay, scale), {"params": [], "weight_decay": decay, "lr": lr * scale})
        g["params"].append(p)
    if not groups:
        raise MiniftError("nothing to train: every parameter is frozen")
    # The fused kernel updates all parameters in a few launches instead of one per tensor.
    return torch.optim.AdamW(list(groups.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


def layer_depths(model: nn.Module) -> dict[str, int]:
    """0 for embeddings, i + 1 for encoder layer i, L + 1 for the pooler and classifier."""
    n = len(model.bert.layers)
    out = {}
    for name, _ in model.named_parameters():
        if name.startswith("bert.embeddings."):
            out[name] = 0
        elif name.startswith("bert.layers."):
            out[name] = int(name.split(".")[2]) + 1
        else:
            out[name] = n + 1
    return out


SCHEDULES = ("linear", "cosine", "constant")


def make_schedule(optimizer, warmup_steps: int, total_steps: int, kind: str = "linear",
                  min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the peak rate, then `kind`: linear decay to 0 at total_steps, cosine decay
    to min_ratio of the peak, or constant. These are transformers' schedules (get_scheduler: linear,
    cosine_with_min_lr, constant_with_warmup) one step ahead: their first step, at rate 0, moves nothing,
    so warmup here starts at 1 / (warmup_steps + 1) of the peak."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "cosine":
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0 if kind == "constant" else max(0.0, 1 - progress)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loss_fn(model: nn.Module, amp_dtype: torch.dtype | None, device: torch.device, compile: bool):
    """(**batch: the model's keyword arguments, labels included) -> scalar loss, under autocast.

    dynamic=True compiles one graph with symbolic batch and sequence sizes, so a new batch
    shape does not trigger a new compilation."""
    def loss_fn(**batch):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return model(**batch)[1]
    bert = getattr(model, "module", model).bert  # DDP wraps the model
    bert.recompute_context = None  # what --checkpointing's recomputation runs under: as the forward below
    if compile:
        return torch.compile(loss_fn, dynamic=True)
    if device.type == "cpu" and amp_dtype is None:  # fp32 linears, forward and backward, on gemm.py's path
        from minift.gemm import fast_linears
        bert.recompute_context = lambda: fast_linears(model, keep=False)

        def fp32_loss_fn(**batch):
            with fast_linears(model, keep=False):
                return loss_fn(**batch)
        return fp32_loss_fn
    return loss_fn


def loss_units(batch: dict, class_weights: torch.Tensor | None = None) -> float:
    """What a batch's loss is the mean over: its labelled tokens (tag, mlm: the labels that are not -100),
    each counted with its class's weight where classes are weighted; else its rows (classify, multilabel,
    regression: examples; qa: windows)."""
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point():  # also embed pairs, rerank passages
        return float(len(batch["input_ids"]))
    real = labels[labels != -100]
    return float(class_weights[real].sum()) if class_weights is not None else float(real.numel())


def accumulation_shares(units: list[float], world: int = 1, device=None) -> list[float] | None:
    """Each micro-batch's factor on its mean loss so that the step's gradient is that of one batch holding
    every micro-batch of every process: its units over the units of them all (summed across processes,
    before any forward pass), times the process count, which DDP's averaging divides out again.
    None (equal parts) when there is nothing to count."""
    total = sum(units)
    if world > 1:
        t = torch.tensor(total, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total = t.item()
    return [u * world / total for u in units] if total > 0 else None


def train_step(loss_fn, optimizer, scheduler, scaler, micro_batches: list[dict], max_grad_norm: float = 1.0,
               shares: list[float] | None = None, no_sync=None):
    """One update from len(micro_batches) accumulated micro-batches.

    shares: each micro-batch's factor on its mean loss (accumulation_shares); default equal parts.
    no_sync: DistributedDataParallel.no_sync, entered for all but the last micro-batch, so that the
    gradients are all-reduced once per step instead of once per micro-batch.
    Returns (mean loss, gradient norm before clipping, applied). A step whose gradients are
    not finite is not applied: with fp16 the scaler skips it and lowers its scale; in other
    precisions it is skipped here. The schedule advances only with applied updates.
    """
    shares = shares or [1 / len(micro_batches)] * len(micro_batches)
    total = 0.0
    for i, (batch, share) in enumerate(zip(micro_batches, shares)):
        last = i == len(micro_batches) - 1
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            loss = loss_fn(**batch) * share
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    fold = scaler is None and optimizer.defaults.get("fused")
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    norm = grad_norm(params) if fold else torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    applied = bool(torch.isfinite(norm))
    if scaler is not None:
        scaler.step(optimizer)  # skips the update itself when it found inf/NaN
        scaler.update()
    elif applied and fold:
        # Clipping inside the update: the fused AdamW kernel divides each gradient by grad_scale as it
        # reads it (GradScaler's hook), which saves clip_grad_norm_'s pass over every gradient.
        optimizer.grad_scale = ((norm + 1e-6) / max_grad_norm).clamp(min=1.0)
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale
    elif applied:
        optimizer.step()
    if applied:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total, norm, applied


def grad_norm(params) -> torch.Tensor:
    """The L2 norm of all gradients together, as clip_grad_norm_ computes it (without clipping)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params
                                                 if p.grad is not None]))
