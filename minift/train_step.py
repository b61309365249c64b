"""One optimisation step, written out: forward, loss, backward, clip, AdamW, schedule, zero grads.

Everything a step needs is built here too: the AdamW parameter groups, the learning-rate
schedule, the precision and the (optionally compiled) loss function.
"""
import torch
import torch.nn as nn

from minift.errors import MiniftError


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MiniftError(f"--device {device}: no CUDA GPU is visible to PyTorch")
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


def make_schedule(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the peak rate, then linear decay to 0 at total_steps."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loss_fn(model: nn.Module, amp_dtype: torch.dtype | None, device: torch.device, compile: bool):
    """(**batch: the model's keyword arguments, labels included) -> scalar loss, under autocast.

    dynamic=True compiles one graph with symbolic batch and sequence sizes, so a new batch
    shape does not trigger a new compilation."""
    def loss_fn(**batch):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return model(**batch)[1]
    if compile:
        return torch.compile(loss_fn, dynamic=True)
    if device.type == "cpu" and amp_dtype is None:  # fp32 linears, forward and backward, on gemm.py's path
        from minift.gemm import fast_linears

        def fp32_loss_fn(**batch):
            with fast_linears(model, keep=False):
                return loss_fn(**batch)
        return fp32_loss_fn
    return loss_fn


def train_step(loss_fn, optimizer, scheduler, scaler, micro_batches: list[dict], max_grad_norm: float = 1.0):
    """One update from len(micro_batches) accumulated micro-batches.

    Returns (mean loss, gradient norm before clipping, applied). A step whose gradients are
    not finite is not applied: with fp16 the scaler skips it and lowers its scale; in other
    precisions it is skipped here. The schedule advances only with applied updates.
    """
    total = 0.0
    for batch in micro_batches:
        loss = loss_fn(**batch) / len(micro_batches)
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
