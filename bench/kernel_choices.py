"""Why minift's CPU attention and dropout are written out, and where SDPA takes over: the alternatives,
timed side by side on this machine.

    python bench/kernel_choices.py [--threads N] [--repeats 7]

Training (forward + backward): one attention block (MiniLM's 12 heads of 32, batch 32, half the rows
padded to half length, dropout 0.1), its softmax on bf16 scores (the bf16 kernel against softmax computed
in fp32), and one hidden dropout ([32, T, 384], p = 0.1). Inference (forward only, no dropout): the
attention block with every query and with the last layer's single [CLS] query, written out against SDPA's
fused kernel, MiniLM's whole classifier forward with the [CLS]-only last layer against the full one, the
feed-forward's product with its GELU fused in oneDNN against GELU after it, and the int8 linear
(--quantize int8) with the engine minift picks against the other and against fp32.
fp32, and bf16 where the CPU has it natively. Milliseconds, median of the repeats, which alternate
between the two sides of a row; min-max in brackets. The table's header names the CPU class:
minift.model.SDPA_CPU_INFERENCE holds the choice these rows support, per class.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from minift import BertClassifier
from minift.gemm import onednn_available
from minift.model import CPU_CLASS, attention, dropout
from minift.quantize import Int8Linear, available, engine
from minift.train_step import cpu_has_bf16

MODEL = Path(__file__).resolve().parents[1] / "weights" / "all-MiniLM-L6-v2"


def alternate(fns, n):
    """ms per call of each function, calls alternating (a, b, a, b, ...) after one warm-up each."""
    for f in fns:
        f()
    ts = [[] for _ in fns]
    for _ in range(n):
        for t, f in zip(ts, fns):
            start = time.perf_counter()
            f()
            t.append((time.perf_counter() - start) * 1e3)
    return [(statistics.median(t), min(t), max(t)) for t in ts]


def fmt(m):
    return f"{m[0]:.2f} ({m[1]:.2f}-{m[2]:.2f})"


def line(T, dt, op, theirs_name, theirs, ours):
    print(f"| {T} | {str(dt).removeprefix('torch.')} | {op} | {theirs_name} | {fmt(theirs)} | {fmt(ours)} "
          f"| {theirs[0] / ours[0]:.2f}x |")


def training_rows(T, dt, n):
    q, k, v = (torch.randn(32, 12, T, 32, dtype=dt, requires_grad=True) for _ in range(3))
    m = torch.ones(32, 1, 1, T, dtype=torch.bool)
    m[::2, ..., T // 2:] = False  # half the rows padded to half length

    def run(f):
        f().float().sum().backward()

    def sdpa_math():
        with sdpa_kernel(SDPBackend.MATH):
            run(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=0.1))
    sdpa, math_, ours = alternate([lambda: run(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=0.1)),
                                   sdpa_math, lambda: run(lambda: attention(q, k, v, m, 0.1, sdpa=False))], n)
    best = min((sdpa, "SDPA (default)"), (math_, "SDPA (math)"))
    line(T, dt, "train: attention, dropout 0.1", best[1], best[0], ours)
    if dt == torch.bfloat16:  # minift's softmax runs in fp32 even on bf16 scores
        s = torch.randn(32, 12, T, T, dtype=dt, requires_grad=True)
        low, high = alternate([lambda: torch.softmax(s, -1).float().sum().backward(),
                               lambda: torch.softmax(s, -1, dtype=torch.float32).sum().backward()], n)
        line(T, dt, "train: softmax, bf16 kernel vs fp32", "bf16 softmax", low, high)
    x = torch.randn(32, T, 384, dtype=dt, requires_grad=True)
    g = torch.randn_like(x)
    theirs, ours = alternate([lambda: F.dropout(x, 0.1, True).backward(g), lambda: dropout(x, 0.1).backward(g)], n)
    line(T, dt, "train: hidden dropout", "F.dropout", theirs, ours)


@torch.inference_mode()
def inference_rows(T, dt, n):
    k, v = (torch.randn(32, 12, T, 32, dtype=dt) for _ in range(2))
    m = torch.ones(32, 1, 1, T, dtype=torch.bool)
    m[::2, ..., T // 2:] = False
    for Tq, what in ((T, "every query"), (1, "[CLS] query only")):
        q = torch.randn(32, 12, Tq, 32, dtype=dt)
        theirs, ours = alternate([lambda: attention(q, k, v, m, 0.0, sdpa=True),
                                  lambda: attention(q, k, v, m, 0.0, sdpa=False)], n)
        line(T, dt, f"inference: attention, {what}", "SDPA (default)", theirs, ours)


@torch.inference_mode()
def cls_only_rows(dt, n):
    """MiniLM's classifier forward on the polarity-like shape: batch 64, lengths 10..T."""
    net = BertClassifier.from_pretrained(MODEL, id2label={0: "0", 1: "1"}).eval()
    for T in (48, 128):
        ids = torch.randint(1000, 30000, (64, T))
        mask = (torch.arange(T) < torch.randint(10, T + 1, (64, 1))).long()
        with torch.autocast("cpu", dtype=dt, enabled=dt != torch.float32):
            full, cls = alternate([lambda: net.classifier(net.bert(ids, mask)[1]),
                                   lambda: net.classifier(net.bert(ids, mask, pooled_only=True))], n)
        line(T, dt, "inference: MiniLM forward, [CLS]-only last layer", "full last layer", full, cls)


@torch.inference_mode()
def fused_gelu_rows(n):
    """A feed-forward's first product and its exact GELU (MiniLM's 384 -> 1536, 2048 tokens) on packed weights:
    GELU after oneDNN's product against oneDNN applying it as the product is written (gemm.fused_fc_act)."""
    x, lin = torch.randn(2048, 384), torch.nn.Linear(384, 1536)
    w, lp = torch.ops.mkldnn._reorder_linear_weight(lin.weight, None), torch.ops.mkldnn._linear_pointwise
    after, fused = alternate([lambda: F.gelu(lp(x, w, lin.bias, "none", [], "")),
                              lambda: lp(x, w, lin.bias, "gelu", [], "none")], n)
    line(2048, torch.float32, "inference: linear 384 -> 1536 + GELU, fused in oneDNN", "GELU after the product",
         after, fused)


@torch.inference_mode()
def int8_rows(n):
    """minift's int8 linear on MiniLM's shapes (2048 tokens), the engine quantize.engine() picks against
    the other one, and against the fp32 linear."""
    chosen = engine()
    other = ("x86", chosen[1]) if chosen[0] == "onednn" else ("onednn", False)
    for k, m in ((384, 1152), (384, 1536), (1536, 384)):
        x, lin = torch.randn(2048, k), torch.nn.Linear(k, m)
        mine, theirs = Int8Linear(lin, *chosen), Int8Linear(lin, *other)
        t_other, t_fp32, t_mine = alternate([lambda: theirs(x), lambda: lin(x), lambda: mine(x)], n)
        line(2048, "int8", f"inference: linear {k} -> {m}, {chosen[0]}", f"{other[0]} engine", t_other, t_mine)
        line(2048, "int8", f"inference: linear {k} -> {m}, {chosen[0]}", "fp32 nn.Linear", t_fp32, t_mine)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = [torch.float32] + [torch.bfloat16] * cpu_has_bf16()
    print(f"{CPU_CLASS}, torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call, median "
          f"(min-max) of {args.repeats} alternating repeats" + ("" if cpu_has_bf16() else "; bf16 skipped: not native"))
    print("| T | dtype | op | alternative | alternative, ms | minift, ms | minift's speedup |")
    print("|---:|---|---|---|---:|---:|---:|")
    for dt in dtypes:
        for T in (48, 128):
            training_rows(T, dt, args.repeats)
        for T in (32, 48, 128, 512):
            inference_rows(T, dt, args.repeats)
        cls_only_rows(dt, args.repeats)
    if onednn_available():
        fused_gelu_rows(args.repeats)
    if available():
        int8_rows(args.repeats)


if __name__ == "__main__":
    main()
