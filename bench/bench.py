"""minift versus Hugging Face transformers, side by side: same weights, data and machine.

    python bench/bench.py [--quick] [--device cpu|cuda] [--out bench/results] [--cases abcld] [--accuracy [all]]

(a) fixed-shape training step, (b) fine-tuning steps on real polarity batches, (c) inference on the
polarity test set, (l) the same on movie reviews cut to 128 and 512 tokens, (d) torch.compile of
minift's loss. The header gives the matmul ceilings, the best of the paths this process has. Prints a Markdown table and writes OUT/bench.json;
bench/README.md says how to read them. --quick only checks that everything runs.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from minift.allocator import keep_freed_memory
from minift.config import BertConfig
from minift.data import length_batches, read_dataset
from minift.model import cpu_class
from minift.predict import low_precision_weights, run_model
from minift.tasks import TASKS
from minift.tasks.classify import BertClassifier, Features, encode_labels, label_map
from minift.tokenizer import Tokenizer
from minift.train_step import make_loss_fn, make_optimizer, make_schedule, pick_precision, train_step

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = ROOT / "weights" / "all-MiniLM-L6-v2", ROOT / "data" / "polarity"
MAX_LEN, BATCH, LR, WD = 128, 32, 5e-5, 0.01
QUICK_BATCH = 8  # --quick: small batches, to keep a run that only checks the code short
BF16 = torch.bfloat16
SYNTHETIC = "synthetic bert-base (random weights)"
# Needed work, the usual accounting (Kaplan et al. 2020) for what a classifier's output depends on: per
# real token and layer, one multiply-add per weight (2W) plus the attention scores Q.K^T and the weighted
# sum of V over the T real tokens of its sequence (4*H*T); backward does twice the forward. Padding is not
# needed, nor, in the last layer, anything past the keys and values for tokens other than [CLS]: the
# classifier reads [CLS] alone. Both systems are held to the same count; MFU shows who spends time on more.
FLOPS_FORMULA = ("per sequence of T real tokens, W = 4H^2 + 2HI matmul weights per layer: forward = "
                 "(L-1) * T * (2W + 4HT) + T * 2 * 2H^2 (last layer's keys and values) + 2(W - 2H^2) + 4HT "
                 "(its [CLS] row), training = 3 * forward; embeddings are lookups, pooler and head negligible")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def autocast(dev, dtype):
    return torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def pname(dtype):
    return "bf16" if dtype == BF16 else "fp32"


def low_precision(dev):
    """bf16 where minift's precision "auto" picks it (the machine has it natively), else None (fp32).
    Its fp16 choice on old GPUs would need a GradScaler in both training loops; this benchmark leaves that out."""
    return BF16 if pick_precision("auto", dev) == BF16 else None


def precisions(dev):
    """fp32, and bf16 where it is native: emulated bf16 is skipped, and main() says so."""
    return [None] + [BF16] * (low_precision(dev) is not None)


def quantize_available():
    from minift.quantize import available
    return available()


def to(batch, dev):
    return {k: v.to(dev) for k, v in batch.items()}


def random_batch(B, T, dev, seed=0):
    """Random token ids (no special or padding ids), no padding, random binary labels."""
    g = torch.Generator().manual_seed(seed)
    zeros = torch.zeros(B, T, dtype=torch.long)
    return to({"input_ids": torch.randint(1000, 30000, (B, T), generator=g), "attention_mask": zeros + 1,
               "token_type_ids": zeros, "labels": torch.randint(0, 2, (B,), generator=g)}, dev)


# ---------------------------------------------------------------- the machine: CPU class, ceilings, FLOPs
def timed_once(fn, dev):
    sync(dev); t = time.perf_counter(); fn(); sync(dev)
    return time.perf_counter() - t


def matmul_ceiling(dev, dtype, budget_s, make=None):
    """Best GFLOP/s of one square product, bounded by time: n doubles from 256 while a product takes
    under an eighth of the budget (up to 4096 on a CPU, where 4096 beat 2048 by ~15% in fp32, 8192 on a
    GPU), then the largest n repeats until the budget is spent. make(n) -> the product as a function
    (default: torch.mm in dtype on dev)."""
    make = make or (lambda n: torch_product(n, dev, dtype))
    deadline, n, best, top = time.perf_counter() + budget_s, 256, 0.0, 8192 if dev.type == "cuda" else 4096
    while True:
        fn = make(n)
        fn()  # first call: allocation, packing
        t = timed_once(fn, dev)
        best = max(best, 2 * n ** 3 / t / 1e9)
        if n >= top or t > budget_s / 8 or time.perf_counter() > deadline:
            break
        n *= 2
    while time.perf_counter() < deadline:
        best = max(best, 2 * n ** 3 / timed_once(fn, dev) / 1e9)
    return round(best, 1)


def torch_product(n, dev, dtype):
    a, b = (torch.randn(n, n, device=dev).to(dtype) for _ in range(2))
    return lambda: torch.mm(a, b)


def onednn_product(n, dtype):
    """oneDNN's linear on a weight packed once, as minift/gemm.py runs fp32 inference."""
    x, w = torch.randn(n, n).to(dtype), torch.ops.mkldnn._reorder_linear_weight(torch.randn(n, n).to(dtype), None)
    return lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def int8_product(n):  # minift's int8 kernel: quantises its input each call, as in inference
    from minift.quantize import Int8Linear, engine
    x, f = torch.randn(n, n), Int8Linear(torch.nn.Linear(n, n, bias=False), *engine())
    return lambda: f(x)


def ort_product(n, int8=False):
    """ONNX Runtime's MatMul (MLAS) on an n x n weight; int8: after its dynamic quantisation (int8 weight, input
    quantised every call), as (c)'s int8 rows run."""
    import tempfile
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.randn(n, n).astype(np.float32), "W")
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "XY"]
    m = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g", io[:1], io[1:], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = torch.get_num_threads(), 1
    with tempfile.TemporaryDirectory() as tmp:
        if int8:
            import logging
            logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process first
            from onnxruntime.quantization import QuantType, quantize_dynamic
            quantize_dynamic(m, Path(tmp) / "q.onnx", weight_type=QuantType.QInt8)
            m = str(Path(tmp) / "q.onnx")
        sess = ort.InferenceSession(m if int8 else m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.randn(n, n).astype(np.float32)
    return lambda: sess.run(None, {"X": x})


def product_paths(dev, dtype):
    """{path name: make(n) -> one n x n product}: the ways this process can multiply in dtype. On a CPU: torch's
    default (MKL for fp32 on x86, oneDNN for bf16), oneDNN's linear on a packed weight where this PyTorch has it,
    and ONNX Runtime's MLAS where it is installed; int8: minift's kernel and ONNX Runtime's dynamic int8."""
    from minift.gemm import onednn_available
    if dev.type != "cpu":
        return {"torch.mm": None}
    if dtype == torch.int8:
        paths = {"minift int8 (quantized::linear_dynamic)": int8_product}
    else:
        paths = {"torch.mm (MKL)" if dtype == torch.float32 else "torch.mm": None}
        if onednn_available():
            paths["oneDNN packed"] = lambda n: onednn_product(n, dtype)
    if dtype in (torch.float32, torch.int8) and ort_installed():
        paths["ONNX Runtime MLAS"] = lambda n: ort_product(n, int8=dtype == torch.int8)
    return paths


def ort_installed():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        return True
    except ImportError:
        return False


def best_ceiling(dev, dtype, budget):
    """(best GFLOP/s over product_paths, the path that reached it, {path: GFLOP/s}): the same budget per path."""
    by_path = {name: matmul_ceiling(dev, dtype, budget, make) for name, make in product_paths(dev, dtype).items()}
    top = max(by_path, key=by_path.get)
    return by_path[top], top, by_path


def ceilings(dev, quick):
    """Best matmul GFLOP/s per precision over the paths this process has (product_paths), the path that
    reached it, each path's figure, and copy GB/s: what the hardware gives this process right now.
    bf16 where the machine has it natively only (elsewhere it is emulated, orders of magnitude slower);
    int8 on a CPU, where minift's int8 kernel runs."""
    budget, out = (0.5 if quick else 2.0), {}
    kinds = [("fp32_matmul_gflops", torch.float32)] + [("bf16_matmul_gflops", BF16)] * (low_precision(dev) == BF16)
    kinds += [("int8_matmul_gops", torch.int8)] * (dev.type == "cpu" and quantize_available())
    for key, dtype in kinds:
        out[key], out[key + "_path"], out[key + "_by_path"] = best_ceiling(dev, dtype, budget)
    src = torch.randn(64 * 2 ** 20, device=dev)  # 256 MiB, far beyond any cache
    dst, best = torch.empty_like(src), float("inf")
    for _ in range(5):
        best = min(best, timed_once(lambda: dst.copy_(src), dev))
    out["copy_gbs_read_plus_write"] = round(2 * src.nbytes / best / 1e9, 1)
    return out


def ceiling_line(ceil):
    """'fp32 483 GFLOP/s (oneDNN packed; torch.mm (MKL) 200, ...)' per precision, and the copy rate."""
    parts = []
    for key in (k for k in ceil if k.endswith(("_gflops", "_gops"))):
        others = ", ".join(f"{p} {v:,.0f}" for p, v in ceil[key + "_by_path"].items() if p != ceil[key + "_path"])
        unit = "GOP/s" if key.endswith("_gops") else "GFLOP/s"
        parts.append(f"{key.split('_')[0]} {ceil[key]:,.0f} {unit} "
                     f"({ceil[key + '_path']}{'; ' + others if others else ''})")
    return "; ".join(parts) + f"; copy {ceil['copy_gbs_read_plus_write']} GB/s"


def flops(lengths, cfg, train):
    H, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    W, KV = 4 * H * H + 2 * H * I, 2 * H * H  # matmul weights of a layer; of its key and value projections
    fwd = sum((L - 1) * t * (2 * W + 4 * H * t) + t * 2 * KV + 2 * (W - KV) + 4 * H * t for t in lengths)
    return (3 if train else 1) * fwd


# ---------------------------------------------------------------- the two systems
def minift_model(cfg, dev):
    torch.manual_seed(0)
    net = BertClassifier(cfg) if cfg else BertClassifier.from_pretrained(MODEL, id2label={0: "-1", 1: "1"})
    return net.to(dev)


def hf_model(cfg, dev):
    import transformers
    transformers.logging.set_verbosity_error()  # the "newly initialised classifier" warning
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    if cfg is None:
        return transformers.BertForSequenceClassification.from_pretrained(
            MODEL, num_labels=2, attn_implementation="sdpa").to(dev)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers, intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads, num_labels=2, attn_implementation="sdpa")).to(dev)


def minift_trainer(cfg, dev, amp, total_steps=10 ** 6, compile=False):
    """One call = one update as minift's loop makes it: make_loss_fn + train_step, fused AdamW, schedule."""
    net = minift_model(cfg, dev).train()
    opt = make_optimizer(net, LR, WD)
    sched = make_schedule(opt, int(0.1 * total_steps), total_steps)
    loss_fn = make_loss_fn(net, amp, dev, compile)
    return lambda b: train_step(loss_fn, opt, sched, None, [b]), net


def hf_trainer(cfg, dev, amp, total_steps=10 ** 6):
    """One call = the update Trainer makes: forward under autocast, backward, clip, AdamW as constructed by
    default (no fused/foreach flag), linear warmup/decay LambdaLR."""
    from transformers import get_linear_schedule_with_warmup
    net = hf_model(cfg, dev).train()
    named = list(net.named_parameters())  # Trainer's groups: no decay on biases and LayerNorm
    opt = torch.optim.AdamW([{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": WD},
                             {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0}], lr=LR)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * total_steps), total_steps)

    def step(b):
        with autocast(dev, amp):
            loss = net(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
    return step, net


def alternate(units, repeats, dev):
    """Time each unit of work in turn (a, b, a, b, ...) so that drift in the machine hits all alike."""
    times = {k: [] for k in units}
    for _ in range(repeats):
        for k, fn in units.items():
            sync(dev); t = time.perf_counter(); fn(); sync(dev)
            times[k].append(time.perf_counter() - t)
    return times


def row(case, system, times, per, unit, work, work_unit, fl=None, ceiling=None, **extra):
    """A table row. Each timed repeat did `per` units (steps, passes), `work` items (seqs, tokens, steps)
    and `fl` needed FLOPs, all three counted over the whole repeat."""
    ts = [t / per for t in times]
    med = statistics.median(ts)
    r = {"case": case, "system": system, "unit": unit, "median": med, "min": min(ts), "max": max(ts),
         "times": times, "throughput": work / med / per, "throughput_unit": work_unit, **extra}
    if fl is not None and ceiling:
        r["needed_gflops"] = round(fl / per / med / 1e9, 1)
        r["mfu"] = fl / per / med / 1e9 / ceiling
    return r


# ---------------------------------------------------------------- (a) fixed-shape training step
def default_gemm(fn):
    """fn run with MINIFT_GEMM=mkl: minift's fp32 linears on torch's default matmul (minift/gemm.py)."""
    def run(*args):
        before = os.environ.get("MINIFT_GEMM")
        os.environ["MINIFT_GEMM"] = "mkl"
        try:
            return fn(*args)
        finally:
            os.environ.pop("MINIFT_GEMM") if before is None else os.environ.update(MINIFT_GEMM=before)
    return run


def case_a(dev, args, ceil):
    """Both systems train on the very same random batch: identical inputs by construction."""
    shapes = [(None, "MiniLM", 8, 64) if args.quick and dev.type == "cpu" else (None, "MiniLM", BATCH, MAX_LEN)]
    if dev.type == "cuda":
        base = BertConfig(id2label={0: "0", 1: "1"})  # bert-base sizes are BertConfig's defaults
        shapes += [(base, SYNTHETIC, 64, 128), (base, SYNTHETIC, 32, 512)]
    per = {(False, "cuda"): 20, (False, "cpu"): 2, (True, "cuda"): 5, (True, "cpu"): 1}[args.quick, dev.type]
    rows = []
    for cfg, name, B, T in shapes:
        batch, fl = random_batch(B, T, dev), flops([T] * B, cfg or BertConfig.from_json(MODEL), train=True) * per
        for amp in precisions(dev):
            steps = {"minift": minift_trainer(cfg, dev, amp)[0], "transformers": hf_trainer(cfg, dev, amp)[0]}
            if amp is None and dev.type == "cpu":  # what minift/gemm.py's path gives in training
                steps["minift (torch's default matmul)"] = default_gemm(minift_trainer(cfg, dev, amp)[0])
            for _ in range(args.warmup):
                for s in steps.values():
                    s(batch)
            units = {k: lambda s=s: [s(batch) for _ in range(per)] for k, s in steps.items()}
            times = alternate(units, args.repeats, dev)
            rows += [row(f"a train {name} {B}x{T} {pname(amp)}, identical inputs", k, t, per, "s/step", B * per, "seq/s", fl,
                         ceil[f"{pname(amp)}_matmul_gflops"]) for k, t in times.items()]
    return rows


# ---------------------------------------------------------------- (b) real-length fine-tuning steps
def polarity(split):
    tok = Tokenizer.from_dir(MODEL)
    ds = read_dataset(DATA / f"{split}.csv")
    y = encode_labels(ds, label_map(ds.labels, "classify"), "classify")
    ids, types = tok.encode(ds.texts, None, MAX_LEN)
    return tok, ids, types, y


def b_systems(dev, with_hf=True, batch=BATCH):
    """name -> (batch index lists in the order that system's loop visits them, collate, autocast dtype)."""
    tok, ids, types, y = polarity("train")
    lengths, low = [len(x) for x in ids], low_precision(dev)

    def minift_collate(idx):
        return {**Tokenizer.pad([ids[i] for i in idx], [types[i] for i in idx], tok.pad_id), "labels": y[idx]}
    batches = length_batches(lengths, batch, seed=0)
    shuffled = [b.tolist() for b in torch.randperm(len(ids), generator=torch.Generator().manual_seed(0)).split(batch)]
    systems = {f"minift: bucketed, pad to longest, {pname(low)}": (batches, minift_collate, low)}
    if not with_hf:  # keeps transformers out of minift's peak-RSS process
        return systems, lengths
    # transformers (i)'s very batches: the implementations alone compared, and what packing the real
    # tokens saves when half of every batch is padding.
    systems[f"minift (identical batches to (i)): random order, pad to longest, {pname(low)}"] = \
        (shuffled, minift_collate, low)
    from transformers import AutoTokenizer, DataCollatorWithPadding
    hf_tok = AutoTokenizer.from_pretrained(MODEL)

    def hf_collate(padding):  # what Trainer's DataCollatorWithPadding does to tokenised examples
        c = DataCollatorWithPadding(hf_tok, padding=padding, max_length=MAX_LEN)
        return lambda idx: c([{"input_ids": ids[i], "token_type_ids": types[i], "attention_mask": [1] * len(ids[i]),
                               "labels": int(y[i])} for i in idx])
    systems[f"transformers (i): random order, pad to longest, {pname(low)}"] = (shuffled, hf_collate("longest"), low)
    systems["transformers (ii): defaults, fp32, pad to 128"] = (shuffled, hf_collate("max_length"), None)
    return systems, lengths


def case_b(dev, args, ceil, rss):
    systems, lengths = b_systems(dev, batch=args.batch)
    cfg, units, info = BertConfig.from_json(MODEL), {}, {}
    for name, (batches, collate, amp) in systems.items():
        step = (minift_trainer if name.startswith("minift") else hf_trainer)(None, dev, amp)[0]
        for idx in batches[:args.b_warmup]:
            step(to(collate(idx), dev))
        timed = batches[args.b_warmup:args.b_warmup + args.steps]
        real = [lengths[i] for idx in timed for i in idx]
        padded = sum(collate(idx)["input_ids"].numel() for idx in timed)
        info[name] = dict(seqs=len(real), toks=sum(real), pad=1 - sum(real) / padded, fl=flops(real, cfg, True),
                          ceiling=ceil[f"{pname(amp)}_matmul_gflops"])
        # Collation is inside the timed loop: each system's loop pays for its own.
        units[name] = lambda s=step, c=collate, tb=timed: [s(to(c(idx), dev)) for idx in tb]
    times = alternate(units, args.repeats, dev)
    return [row("b train polarity, real lengths", k, t, args.steps, "s/step", info[k]["toks"], "real tok/s",
                info[k]["fl"], info[k]["ceiling"], seq_s=info[k]["seqs"] / statistics.median(t),
                padded_fraction=info[k]["pad"], **rss.get(k.split(":")[0], {})) for k, t in times.items()]


def rss_case(key, dev, quick):
    """A few steps of one (b) system in a fresh process: its first 4 batches (none if quick), then the batch
    holding the longest example, so that each system meets its own largest padded shape."""
    systems, lengths = b_systems(dev, with_hf=key != "minift", batch=QUICK_BATCH if quick else BATCH)
    batches, collate, amp = next(v for k, v in systems.items() if k.startswith(key + ":"))
    step = (minift_trainer if key == "minift" else hf_trainer)(None, dev, amp)[0]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    for idx in batches[:0 if quick else 4] + [next(b for b in batches if longest in b)]:
        step(to(collate(idx), dev))
    out = {"peak_rss_mib": round(peak_rss_kib() / 1024, 1)}
    if dev.type == "cuda":
        out["peak_cuda_alloc_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    print(json.dumps(out))


def peak_rss_kib():
    """This process image's peak RSS. Linux carries ru_maxrss over fork and exec, so a child of a big
    parent would report the parent's peak; VmHWM belongs to the new address space alone."""
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def measure_rss(dev, quick):
    out = {}
    for key in ("minift", "transformers (i)", "transformers (ii)"):
        cmd = [sys.executable, __file__, "--rss-case", key, "--device", dev.type, "--threads",
               str(torch.get_num_threads())] + ["--quick"] * quick
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            print(f"peak RSS of {key} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        out[key] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------- (c) inference on the test set
def onnx_sessions(hf, tmp):
    """ONNX Runtime on transformers' model: torch.onnx export (TorchScript exporter, dynamic batch and length),
    the CPU provider with every graph optimisation, and its dynamic int8 quantisation of that graph
    (weights int8, activations quantised per call). {} where onnxruntime and onnx are not installed."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        print("(c): onnxruntime or onnx not installed (pip install -e '.[bench]'): its rows are left out",
              file=sys.stderr)
        return {}
    import logging
    import warnings
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process first
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ex = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(hf, ex, fp32, input_names=names, output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={**{k: {0: "batch", 1: "length"} for k in names}, "logits": {0: "batch"}})
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = torch.get_num_threads()
    return {k: ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"]) for k, f in (("fp32", fp32),
                                                                                                 ("int8", int8))}


def case_c(dev, args, ceil):
    tok, ids, types, _ = polarity("test")
    n = 64 if args.quick else len(ids)  # quick: one batch
    return inference_case(dev, args, ceil, f"c inference polarity test ({n})", tok, ids[:n], types[:n])


def case_l(dev, args, ceil):
    """(c) on long texts: whole movie reviews (data/reviews/test.csv, polarity v2.0), the first that have at
    least T tokens, cut to T = 128 and T = 512 tokens: every sequence T real tokens long."""
    path = ROOT / "data" / "reviews" / "test.csv"
    if not path.is_file():
        print(f"(l): {path} missing (minift fetch data reviews): case (l) left out", file=sys.stderr)
        return []
    tok, texts, rows = Tokenizer.from_dir(MODEL), read_dataset(path).texts, []
    for T, n in ((128, 128), (512, 64)):
        ids, types = tok.encode(texts, None, T)
        keep = [i for i, x in enumerate(ids) if len(x) == T][:8 if args.quick else n]
        rows += inference_case(dev, args, ceil, f"l inference movie reviews cut to {T} tokens ({len(keep)})", tok,
                               [ids[i] for i in keep], [types[i] for i in keep])
    return rows


def inference_case(dev, args, ceil, case, tok, ids, types):
    """One alternating run of every system. "identical batches": the same padded tensors (file order,
    batches of 64, each padded to its longest) for every system; minift's own way sorts by length.
    minift's identical-batch rows run as predict does (minift/gemm.py's path for fp32); one more fp32 row
    keeps torch's default matmul, to show what the path gives."""
    import tempfile
    from minift.gemm import fast_linears
    from minift.quantize import quantize
    n, lengths = len(ids), [len(x) for x in ids]
    same = [Tokenizer.pad(ids[s:s + 64], types[s:s + 64], tok.pad_id) for s in range(0, n, 64)]
    mf, hf = minift_model(None, dev).eval(), hf_model(None, dev).eval()
    fl = flops(lengths, BertConfig.from_json(MODEL), train=False)

    def sorted_pass(model, amp):  # minift's own way, as predict runs it: sorted by length
        return run_model(model, TASKS["classify"], Features(ids, types, None), tok.pad_id, 64, dev, amp)

    @torch.inference_mode()
    def run(model, amp, out, fast=False):  # the identical batches through a torch model
        with autocast(dev, amp), fast_linears(model) if fast else contextlib.nullcontext():
            for b in same:
                out(model(**to(b, dev))).float().cpu()
    units, prec = {}, {}
    for amp in precisions(dev):
        # As minift.predict runs it: in low precision the matmul weights are stored in that dtype.
        m, p = (mf if amp is None else low_precision_weights(copy.deepcopy(mf), amp)), pname(amp)
        units[f"minift: length-sorted (run_model), {p}"] = lambda a=amp, m=m: sorted_pass(m, a)
        units[f"minift (identical batches), {p}"] = lambda a=amp, m=m: run(m, a, lambda y: y, fast=True)
        if amp is None:
            units["minift (identical batches, torch's default matmul), fp32"] = lambda m=m: run(m, None, lambda y: y)
        units[f"transformers (identical batches), {p}"] = lambda a=amp: run(hf, a, lambda y: y.logits)
        prec.update(dict.fromkeys([k for k in units if k not in prec], p))
    tmp = tempfile.TemporaryDirectory()
    if dev.type == "cpu" and quantize_available():
        q = quantize(copy.deepcopy(mf))
        units["minift: length-sorted (run_model), int8"] = lambda: sorted_pass(q, None)
        units["minift (identical batches), int8"] = lambda: run(q, None, lambda y: y, fast=True)
        prec.update(dict.fromkeys(list(units)[-2:], "int8"))
    for k, sess in (onnx_sessions(hf, tmp.name) if dev.type == "cpu" else {}).items():
        feeds = [{name: b[name].numpy() for name in ("input_ids", "attention_mask", "token_type_ids")} for b in same]
        units[f"onnxruntime (identical batches), {k}"] = lambda sess=sess, feeds=feeds: [sess.run(None, f) for f in feeds]
        prec[f"onnxruntime (identical batches), {k}"] = k
    for u in units.values():
        u()  # warm-up
    times = alternate(units, args.repeats, dev)
    tmp.cleanup()
    base = "minift (identical batches), fp32"
    return [row(case, k, t, 1, "s/pass", sum(lengths), "real tok/s", fl,
                ceil.get(f"{prec[k]}_matmul_gflops") or ceil.get(f"{prec[k]}_matmul_gops"),
                seq_s=n / statistics.median(t), vs=vs_c(k, units, base))
            for k, t in times.items()]


def vs_c(system, units, base):
    """What a (c) or (l) row is compared with: a minift row with the peers on identical batches in its precision
    (int8: fp32's peers too), int8 with minift's own fp32 on the same batches, and that fp32 row with
    itself on torch's default matmul."""
    if not system.startswith("minift"):
        return []
    p = system.rsplit(", ", 1)[1]
    peers = [k for k in units if not k.startswith("minift") and k.endswith((", " + p, ", fp32") if p == "int8" else p)]
    return peers + [base] * (p == "int8") + ["minift (identical batches, torch's default matmul), fp32"] * (system == base)


# ---------------------------------------------------------------- (d) torch.compile
def case_d(dev, args):
    """First (compiling) step, recompilations over 4 sequence lengths, then steady steps/s: compiled vs eager."""
    from torch._dynamo.utils import counters
    # No length equal to the batch size: dynamo's duck sizing would tie T to B and recompile once more.
    low, lens = low_precision(dev), (40, 64, 96, 128)
    batches = [random_batch(BATCH, T, dev, seed=T) for T in lens]
    torch._dynamo.reset(); counters.clear()
    steps, info = {}, {}
    for compiled in (True, False):
        name = f"minift {'compiled (dynamic=True)' if compiled else 'eager'}, {pname(low)}"
        steps[name] = step = minift_trainer(None, dev, low, compile=compiled)[0]
        sync(dev); t = time.perf_counter(); step(batches[0]); sync(dev)
        info[name] = {"first_step_s": round(time.perf_counter() - t, 2)}
        graphs = counters["stats"]["unique_graphs"]
        for b in batches[1:]:  # each new length: a recompilation unless the graph really is dynamic
            step(b)
        if compiled:
            info[name].update(graphs_after_first_step=graphs,
                              recompiles_over_4_lengths=counters["stats"]["unique_graphs"] - graphs)
    rounds = 1 if args.quick else 3
    times = alternate({k: lambda s=s: [s(b) for _ in range(rounds) for b in batches] for k, s in steps.items()},
                      args.repeats, dev)
    return [row("d compile, MiniLM 32x{40,64,96,128}", k, t, rounds * len(lens), "s/step", rounds * len(lens), "step/s",
                **info[k])
            for k, t in times.items()]


# ---------------------------------------------------------------- optional: accuracy after 2 epochs
def accuracy(dev, with_defaults: bool):
    """2 epochs, lr 5e-5, 10% warmup, batch 32, seed 0: test accuracy of the last model, training wall time.
    minift and transformers (i); with_defaults, transformers (ii) too."""
    import tempfile
    from minift.predict import evaluate
    from minift.train_loop import train
    out, (systems, lengths) = [], b_systems(dev)
    _, te_ids, te_types, te_y = polarity("test")
    with tempfile.TemporaryDirectory() as tmp, open("/dev/null", "w") as log:
        t = time.time()  # minift's own loop, reading and tokenising included, as a user runs it
        train(MODEL, DATA / "train.csv", Path(tmp) / "m", mode="full", epochs=2, lr=LR, warmup=0.1, weight_decay=WD,
              batch_size=BATCH, max_length=MAX_LEN, device=dev.type, seed=0, overwrite=True, log=log)
        wall = time.time() - t
        acc = evaluate(Path(tmp) / "m", DATA / "test.csv", device=dev.type)["accuracy"]
        out.append({"system": "minift: train(mode='full')", "test_accuracy": acc, "wall_s": wall})
    hf = [name for name in systems if name.startswith("transformers (i)") or with_defaults and
          name.startswith("transformers (ii)")]
    for name in hf:
        batches, collate, amp = systems[name]
        t = time.time()
        step, net = hf_trainer(None, dev, amp, total_steps=2 * len(batches))
        g = torch.Generator().manual_seed(1)  # a new random order in epoch 2, as the sampler gives
        for idx in batches + [b.tolist() for b in torch.randperm(len(lengths), generator=g).split(BATCH)]:
            step(to(collate(idx), dev))
        wall = time.time() - t
        net.eval()
        with torch.inference_mode(), autocast(dev, amp):
            logits = [net(**to(Tokenizer.pad(te_ids[s:s + 64], te_types[s:s + 64], 0), dev)).logits.float().cpu()
                      for s in range(0, len(te_ids), 64)]
        acc = (torch.cat(logits).argmax(1) == te_y).float().mean().item()
        out.append({"system": name, "test_accuracy": acc, "wall_s": wall})
    return out


# ---------------------------------------------------------------- report
def num(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(rows):
    lines = ["| case | system | median | min-max | throughput | MFU | peak RSS | speedup (minift rows) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        refs = [q for q in rows if q["case"] == r["case"] and (q["system"] in r["vs"] if "vs" in r
                                                                else q["system"].startswith("transformers"))]
        speed = ", ".join(f"{r['throughput'] / q['throughput']:.2f}x vs {q['system'].split(':')[0]}" for q in refs)
        tput = f"{num(r['throughput'])} {r['throughput_unit']}"
        tput += f", {num(r['seq_s'])} seq/s" if "seq_s" in r else ""
        tput += f", {100 * r['padded_fraction']:.0f}% pad" if "padded_fraction" in r else ""
        tput += f", first step {r['first_step_s']} s" if "first_step_s" in r else ""
        tput += f", {r['recompiles_over_4_lengths']} recompiles" if "recompiles_over_4_lengths" in r else ""
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else ""
        rss = f"{r['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in r else ""
        rss += f", GPU {r['peak_cuda_alloc_mib']:.0f} MiB" if "peak_cuda_alloc_mib" in r else ""
        lines.append(f"| {r['case']} | {r['system']} | {r['median']:.4g} {r['unit']} | {r['min']:.4g}-{r['max']:.4g} "
                     f"| {tput} | {mfu} | {rss} "
                     f"| {speed if r['system'].startswith('minift') else ''} |")
    return "\n".join(lines)


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2 repeats, 1 warm-up step, small shapes on a CPU, 2 steps in (b), 64 sentences in (c), no (d): "
                         "checks that it runs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--cases", default=None, help="any of a, b, c, l, d (default abcld; abc with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per system (default 5, quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat in (b) (default 40, quick 2)")
    ap.add_argument("--accuracy", nargs="?", const="users", choices=["users", "all"],
                    help="also fine-tune for 2 epochs and report test accuracy and wall time: minift and "
                         "transformers (i), as users run it; 'all' adds transformers (ii), its defaults (far slower)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice); on a machine shared "
                    "with other work, 1 thread is far less disturbed by it")
    ap.add_argument("--rss-case", help=argparse.SUPPRESS)  # the peak-RSS child process
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is visible to PyTorch")
    # As minift runs on a CPU: freed memory kept for the next batch (minift/allocator.py). Process-wide, so
    # every system here, transformers included, runs with it; MINIFT_MALLOC=default runs them all without.
    kept = dev.type == "cpu" and keep_freed_memory()
    if args.rss_case:
        return rss_case(args.rss_case, dev, args.quick)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.steps = args.steps or (2 if args.quick else 40)
    args.batch = QUICK_BATCH if args.quick and dev.type == "cpu" else BATCH
    args.warmup, args.b_warmup = (1, 1) if args.quick else (2, 3)
    cases = args.cases or ("abc" if args.quick else "abcld")
    if args.quick and args.cases is None:
        print("--quick: (d) skipped, its first step compiles for 30+ s on a CPU; --cases d runs it", file=sys.stderr)
    import transformers
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": device_name(dev), "threads": torch.get_num_threads(),
            "cpu_class": cpu_class(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "autocast_low_precision": pname(low_precision(dev)),
            "minift_optimizer": "make_optimizer: AdamW(fused=True)",
            "transformers_optimizer": "AdamW() defaults: foreach on CUDA, per-tensor loop on CPU",
            "freed_memory_kept": kept,
            "quick": args.quick, "repeats": args.repeats, "b_steps": args.steps, "flops": FLOPS_FORMULA,
            "mfu": "needed FLOP/s over the matmul ceiling of the row's precision"}
    print(f"ceilings on {meta['device']} ({meta['cpu_class']}), {meta['threads']} threads ...", file=sys.stderr)
    if low_precision(dev) is None:
        print("bf16 is not native on this machine (emulated, orders of magnitude slower): its ceiling and its rows "
              "are skipped", file=sys.stderr)
    meta["ceilings"] = ceil = ceilings(dev, args.quick)
    if dev.type == "cpu":  # the path minift's fp32 linears take on MiniLM here, and why (minift/gemm.py)
        from minift.gemm import describe
        meta["minift_fp32_matmul"] = describe(minift_model(None, dev))
    rows, result = [], {"meta": meta, "rows": []}
    for c in cases:
        print(f"case ({c}) ...", file=sys.stderr)
        rows += {"a": lambda: case_a(dev, args, ceil), "c": lambda: case_c(dev, args, ceil), "d": lambda: case_d(dev, args),
                 "l": lambda: case_l(dev, args, ceil),
                 "b": lambda: case_b(dev, args, ceil, measure_rss(dev, args.quick))}[c]()
        write(Path(args.out), result | {"rows": rows}, dev, quiet=True)  # so far: a run cut short keeps its cases
    result["rows"] = rows
    if args.accuracy:
        print("accuracy: 2 epochs per system ...", file=sys.stderr)
        result["accuracy"] = accuracy(dev, with_defaults=args.accuracy == "all")
    write(Path(args.out), result, dev)


def write(out, result, dev, quiet=False):
    """OUT/bench.json (every repeat's time, meta) and OUT/bench.md (the table, as printed)."""
    meta = result["meta"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    report = (f"{meta['device']} ({meta['cpu_class'] if dev.type == 'cpu' else 'GPU'}), {meta['threads']} threads, "
              f"torch {meta['torch']}, transformers {meta['transformers']}"
              f"{', freed memory kept (minift/allocator.py, every system)' if meta.get('freed_memory_kept') else ''}"
              f"{', QUICK (not a measurement)' if meta['quick'] else ''}\n\nceilings (best path of each precision, "
              f"MFU divides by it): {ceiling_line(meta['ceilings'])}"
              f"{chr(10) * 2 + 'minift: ' + meta['minift_fp32_matmul'] if 'minift_fp32_matmul' in meta else ''}"
              f"\n\n{table(result['rows'])}\n")
    for a in result.get("accuracy", []):
        report += f"\naccuracy: {a['system']}: test accuracy {a['test_accuracy']:.4f}, {a['wall_s']:.0f} s"
    (out / "bench.md").write_text(report + "\n")
    if not quiet:
        print("\n" + report)


if __name__ == "__main__":
    main()
