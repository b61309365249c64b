"""Which library multiplies the fp32 matrices on a CPU: torch's default or oneDNN.

PyTorch sends an fp32 nn.Linear to MKL. On AMD CPUs MKL takes a slower code path, and oneDNN, which
PyTorch ships too, is faster on the same product, most with its weight laid out ("packed") for it once
(docs/performance.md; bench/bench.py's ceilings show the paths side by side). So where a short
measurement on the model's own shapes says oneDNN is faster on this machine, the linears run through
`torch.ops.mkldnn._linear_pointwise`: at inference (predict, eval, embed, the dev evaluation of training)
on weights packed once by `_reorder_linear_weight` and packed again only when they change; in fp32
training through OneDNNLinear, which does the forward and both gradient products in oneDNN.

    mkl     torch's default (F.linear; MKL on x86)
    onednn  oneDNN
    auto    measure both on the model's shapes once per process, take the faster (the default)

MINIFT_GEMM=mkl|onednn|auto overrides. Where a PyTorch lacks the two oneDNN ops, or they fail a one-off
check, the default path is used.
"""
import contextlib
import functools
import os
import time
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.errors import MiniftError
from minift.model import ACT

PATHS = ("mkl", "onednn")
ROWS = 64  # rows of the timed products: enough to rank the paths as larger products rank them (docs/performance.md)
_packed = weakref.WeakKeyDictionary()  # nn.Linear -> ((weight's storage, version), packed weight)


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN's packed linear and it computes a linear (a feature test, not a version
    test: the ops are private and may go)."""
    try:
        g = torch.Generator().manual_seed(0)  # not the global one, which a training run has seeded
        x, w, b = (torch.randn(*shape, generator=g) for shape in ((3, 8), (5, 8), (5,)))
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, None), b, "none", [], "")
        return torch.allclose(y, F.linear(x, w, b), rtol=1e-4, atol=1e-5)
    except (AttributeError, RuntimeError, TypeError):
        return False


# A resumed training run takes the path its first part took, whatever a new measurement would say: the same
# products summed in the same order are what make it bit-identical to a run never stopped (train_loop.setup).
PINNED = [None]


def pin(path: str | None):
    PINNED[0] = path


def requested() -> str:
    if PINNED[0]:
        return PINNED[0]
    path = os.environ.get("MINIFT_GEMM", "auto").strip().lower() or "auto"
    if path not in PATHS + ("auto",):
        raise MiniftError(f"MINIFT_GEMM={path!r}: expected mkl, onednn or auto")
    return path


def decide(timings: dict[str, float]) -> str:
    """The path with the least time; on a tie, the earlier in PATHS (torch's default first)."""
    return min(PATHS, key=lambda p: (timings.get(p, float("inf")), PATHS.index(p)))


def measure(shapes: tuple, rows: int = ROWS, repeats: int = 9) -> dict[str, float]:
    """Seconds per pass over one product of every (in, out) shape, per path: the least of `repeats`
    passes, which alternate between the paths after one warm-up each. A pass takes a millisecond or two:
    on a shared machine one preemption outlasts it, hence the least of several."""
    g = torch.Generator().manual_seed(0)  # not the global one, which a training run has seeded
    with torch.inference_mode():
        xs = [torch.randn(rows, k, generator=g) for k, _ in shapes]
        ws = [torch.randn(n, k, generator=g) for k, n in shapes]
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in ws]
        runs = {"mkl": lambda: [F.linear(x, w) for x, w in zip(xs, ws)],
                "onednn": lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                                   for x, p in zip(xs, packed)]}
        best = dict.fromkeys(runs, float("inf"))
        for f in runs.values():
            f()
        for _ in range(repeats):
            for name, f in runs.items():
                t = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - t)
    return best


@functools.cache
def measured(shapes: tuple, threads: int) -> dict[str, float]:
    return measure(shapes)


def choose(shapes: tuple, threads: int, request: str) -> tuple[str, str]:
    """(path, why) for fp32 linears of these (in, out) shapes on this many threads, as `request`ed (mkl, onednn,
    auto); the measurement is made once per process for a given shape set and thread count."""
    if request == "mkl":
        return "mkl", "MINIFT_GEMM=mkl"
    if not onednn_available():
        return "mkl", "this PyTorch has no oneDNN packed linear"
    if request == "onednn":
        return "onednn", "MINIFT_GEMM=onednn"
    t = measured(shapes, threads)
    return decide(t), f"measured on this model's shapes: oneDNN {t['mkl'] / t['onednn']:.2f}x the default's speed"


def linear_shapes(model: nn.Module) -> tuple:
    """The distinct (in, out) shapes of the model's fp32 CPU linears, sorted."""
    return tuple(sorted({(m.in_features, m.out_features) for m in fp32_linears(model)}))


def fp32_linears(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.dtype == torch.float32
            and m.weight.device.type == "cpu"]


def path_for(model: nn.Module) -> tuple[str, str]:
    """(path, why) for this model's inference on a CPU; mkl where it has no fp32 CPU linear."""
    shapes = linear_shapes(model)
    return choose(shapes, torch.get_num_threads(), requested()) if shapes else ("mkl", "no fp32 CPU linear")


def describe(model: nn.Module, amp_dtype=None, quantize: str | None = None) -> str:
    """One line for a run's first output: what multiplies the matrices, and why."""
    dev = next(model.parameters()).device
    if dev.type != "cpu":
        return f"matmuls: {str(amp_dtype or 'fp32').removeprefix('torch.')} on {dev}"
    if quantize:
        from minift.quantize import engine
        return f"matmuls: int8 in the encoder (quantized::linear_dynamic, {engine()[0]} engine), fp32 elsewhere"
    if amp_dtype is not None:
        return f"matmuls: {str(amp_dtype).removeprefix('torch.')} under autocast"
    path, why = path_for(model)
    name = {"mkl": "torch's default (MKL)", "onednn": "oneDNN, packed weights"}[path]
    return f"matmuls: fp32 through {name} ({why}; MINIFT_GEMM=mkl|onednn|auto chooses)"


def packed_weight(m: nn.Linear) -> torch.Tensor:
    """m's weight in oneDNN's layout, packed again only when the weight has changed since."""
    w = m.weight
    key = (w.data_ptr(), 0 if w.is_inference() else w._version)  # inference tensors cannot change in place
    got = _packed.get(m)
    if got is None or got[0] != key:
        with torch.inference_mode():
            got = _packed[m] = key, torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), None)
    return got[1]


class OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b with all three products in oneDNN: forward, x's gradient (gy W) and W's (gy^T x). The weight
    is passed unpacked (oneDNN lays it out per call, a small cost against the product): it changes every step."""

    @staticmethod
    def forward(ctx, x, w, b):  # x [M, in], w [out, in], b [out] or None -> [M, out]
        x = x.contiguous()
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    @staticmethod
    def backward(ctx, gy):  # gy [M, out]
        x, w = ctx.saved_tensors
        gy = gy.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # [M, out] x [out, in]: a linear whose weight is W^T
            gx = torch.ops.mkldnn._linear_pointwise(gy, w.t().contiguous(), None, "none", [], "")
        if ctx.needs_input_grad[1]:  # [out, M] x [M, in]: a linear whose weight is x^T
            gw = torch.ops.mkldnn._linear_pointwise(gy.t().contiguous(), x.t().contiguous(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(0)
        return gx, gw, gb


def packed_forward(m: nn.Linear, x):
    if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return F.linear(x, m.weight, m.bias)  # a precision oneDNN's fp32 path is not for
    if torch.is_grad_enabled():  # training: every product through oneDNN, gradients by OneDNNLinear
        y = OneDNNLinear.apply(x.reshape(-1, x.size(-1)), m.weight, m.bias)
        return y.view(*x.shape[:-1], -1)
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight(m), m.bias, "none", [], "")


# oneDNN's post-op for each activation of a layer's feed-forward (minift.model.ACT, name and algorithm). Applied
# as the product is written, it spares a pass over the [rows, intermediate] output, and oneDNN's GELU costs far
# less than torch's (bench/kernel_choices.py).
POST_OPS = {ACT["gelu"]: ("gelu", "none"), ACT["gelu_new"]: ("gelu", "tanh"), ACT["gelu_pytorch_tanh"]: ("gelu", "tanh"),
            ACT["relu"]: ("relu", ""), ACT["silu"]: ("swish", "")}


def fused_fc_act(layer: nn.Module, x):
    """layer.fc_act (act(fc(x))) on the oneDNN path: at inference one product with the activation fused."""
    m = layer.fc
    if torch.is_grad_enabled() or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return layer.act(m(x))
    name, algorithm = POST_OPS[layer.act]
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight(m), m.bias, name, [], algorithm)


@contextlib.contextmanager
def fast_linears(model: nn.Module, keep: bool = True):
    """Within the block, the model's fp32 CPU linears run on the path path_for() picks: at inference on weights
    packed once, with gradients through OneDNNLinear. keep=False drops the packed weights on leaving (a model
    that trains on)."""
    linears = fp32_linears(model) if path_for(model)[0] == "onednn" else []
    packed = {id(m) for m in linears}
    fused = [layer for layer in model.modules() if hasattr(layer, "fc_act") and not layer.geglu
             and layer.act in POST_OPS and id(layer.fc) in packed]
    for m in linears:
        m.forward = functools.partial(packed_forward, m)
    for layer in fused:
        layer.fc_act = functools.partial(fused_fc_act, layer)
    try:
        yield
    finally:
        for layer in fused:
            del layer.fc_act
        for m in linears:
            del m.forward
            if not keep:
                _packed.pop(m, None)
