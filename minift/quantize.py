"""int8 inference: the encoder's matmul weights stored as int8, one scale per output channel; each
batch's activations quantised on the fly (dynamic quantisation), the product accumulated in int32.

A CPU feature. It runs on PyTorch's quantized::linear_dynamic kernel: oneDNN on CPUs with AMX int8
tiles, FBGEMM (AVX2 / AVX-512) elsewhere. PyTorch has deprecated the quantized tensor types that
kernel's weights are packed from (torch.quantize_per_channel; docs/operating.md, int8 inference); where a PyTorch no longer
has them, quantize() says so instead of failing deep inside a forward pass.
Embeddings, LayerNorms, attention, pooler and classifier stay fp32: they are a small part of the
work, and the pooler and classifier read only B rows.
"""
import warnings

import torch
import torch.nn as nn

from minift.errors import MiniftError
from minift.model import cpu_flags

SCHEMES = ("int8",)


def engine() -> tuple[str, bool]:
    """(quantized engine, reduce_range). oneDNN's AMX int8 kernel was the fastest on a Xeon with AMX.
    Without VNNI, FBGEMM sums pairs of u8 x s8 products in int16, which can saturate: 7-bit activations
    (reduce_range, torch.ao's default) avoid it, at a cost in accuracy (on a head-only polarity
    classifier, 92.5% of predictions agreed with fp32 instead of 97%), so only there."""
    flags = cpu_flags()
    if "amx_int8" in flags and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn", False
    return "x86", not flags & {"avx512_vnni", "avx_vnni"}


def available() -> bool:
    try:
        return hasattr(torch, "quantize_per_channel") and torch.ops.quantized.linear_dynamic is not None
    except (AttributeError, RuntimeError):
        return False


class Int8Linear(nn.Module):
    """nn.Linear for inference: int8 weights per output channel, activations quantised per call
    (asymmetric uint8 over the whole input, its range measured each call)."""

    def __init__(self, linear: nn.Linear, engine_name: str, reduce_range: bool):
        super().__init__()
        self.in_features, self.out_features, self.reduce_range = linear.in_features, linear.out_features, reduce_range
        w = linear.weight.detach().float()  # [out, in]
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()  # symmetric: zero point 0
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine_name  # prepack lays the weights out for this engine's kernel
        try:
            with warnings.catch_warnings():  # the deprecation, said once in docs/operating.md rather than on every run
                warnings.simplefilter("ignore")
                qw = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            bias = None if linear.bias is None else linear.bias.detach().float()
            self.packed = torch.ops.quantized.linear_prepack(qw, bias)
        finally:
            torch.backends.quantized.engine = before

    def forward(self, x):  # [..., in] -> [..., out], fp32
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range)

    def train(self, mode: bool = True):
        if mode:
            raise MiniftError("an int8-quantised model is for inference only: fine-tune the fp32 model, "
                              "then quantise it for predict, eval or embed (--quantize int8)")
        return super().train(False)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise MiniftError("an int8-quantised model cannot be saved: save the fp32 model, quantise it when loading")

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize(model: nn.Module, scheme: str = "int8", precision: str = "auto") -> nn.Module:
    """Replace the nn.Linear layers of the encoder (model.layers, or model.bert.layers) by Int8Linear,
    in place; the model is put in eval mode. Returns the model. The rest computes in fp32, so
    `precision` may only be auto or fp32."""
    if scheme not in SCHEMES:
        raise MiniftError(f"--quantize {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if precision not in ("auto", "fp32"):
        raise MiniftError(f"--quantize {scheme} computes the rest in fp32: --precision {precision} does not combine "
                          "with it (leave --precision at auto or fp32)")
    if next(model.parameters()).device.type != "cpu":
        raise MiniftError("--quantize int8 runs on the CPU only: use --device cpu")
    if not available():
        raise MiniftError(f"--quantize int8: this PyTorch ({torch.__version__}) no longer has the quantized "
                          "kernels it uses (torch.quantize_per_channel, quantized::linear_dynamic); "
                          "use PyTorch 2.13 or earlier, or run without --quantize")
    name, reduce_range = engine()
    layers = model.bert.layers if hasattr(model, "bert") else model.layers
    model.eval()
    for layer in layers:
        for parent in (layer, layer.attn):
            for child_name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    setattr(parent, child_name, Int8Linear(child, name, reduce_range))
    return model
