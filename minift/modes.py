"""Fine-tuning modes: which parameters train.

full   every parameter (the default: "bidirectional" fine-tuning of the whole encoder)
head   encoder frozen; only the task's head (and the pooler, where the task has one) trains
top-N  the last N encoder layers and the head
lora   low-rank adapters (Hu et al., 2021) beside every encoder linear, plus the head;
       merged into the weights on save, so the saved model is a plain BERT
"""
import math

import torch
import torch.nn as nn

from minift.errors import MiniftError


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) * B A x, with W and b frozen and only A [r, in], B [out, r] trained.

    B starts at zero, so training starts exactly from the pretrained function."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.scale = alpha / rank

    def forward(self, x):  # [..., in] -> [..., out]
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.B @ self.A) * self.scale  # [out, r] @ [r, in]
        return self.base


LORA_TARGETS = ("attn.qkv", "attn.proj", "fc", "proj")  # every linear inside an encoder layer


def parse_mode(mode: str) -> tuple[str, int]:
    """'full' | 'head' | 'lora' | 'top-N' -> (kind, N)."""
    if mode in ("full", "head", "lora"):
        return mode, 0
    if mode.startswith("top-") and mode[4:].isdigit() and int(mode[4:]) > 0:
        return "top", int(mode[4:])
    raise MiniftError(f"--mode {mode!r}: expected full, head, lora or top-N with N a positive number of layers")


def apply_mode(model: nn.Module, mode: str, lora_rank: int = 8, lora_alpha: float = 16.0):
    kind, n = parse_mode(mode)
    layers = model.bert.layers
    if kind == "top" and n > len(layers):
        raise MiniftError(f"--mode {mode}: the model has only {len(layers)} encoder layers")
    model.requires_grad_(kind == "full")
    if kind == "full":
        return model
    if kind == "top":
        layers[len(layers) - n:].requires_grad_(True)
    if kind == "lora":
        if lora_rank <= 0 or lora_alpha <= 0:
            raise MiniftError(f"LoRA needs a positive rank and alpha (got rank {lora_rank}, alpha {lora_alpha})")
        for layer in layers:
            for target in LORA_TARGETS:
                owner_name, _, attr = target.rpartition(".")
                owner = layer.get_submodule(owner_name)  # "" is the layer itself
                setattr(owner, attr, LoRALinear(getattr(owner, attr), lora_rank, lora_alpha))
    for name, p in model.named_parameters():  # the head: everything outside the encoder, and its pooler
        if not name.startswith("bert.") or name.startswith("bert.pooler."):
            p.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place: the result has no LoRA modules."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model
