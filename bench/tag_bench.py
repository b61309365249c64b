"""Token tagging: minift's BertTagger against transformers' BertForTokenClassification, side by side.

    python bench/tag_bench.py [--steps 8] [--repeats 3] [--device cpu|cuda]

Training steps on real batches of 32 sentences from data/pos/train.txt (`minift fetch data pos`), MiniLM
weights, max length 128, in the precision minift's "auto" picks (bf16 on a CPU with AMX or AVX512-BF16,
where it is the faster one; fp32 elsewhere) for both. transformers runs as its Trainer does: random order,
each batch padded to its longest sentence (DataCollatorForTokenClassification, labels padded with -100),
SDPA attention, autocast, backward, clip, AdamW, linear schedule. minift runs make_loss_fn + train_step
(1) on those very batches and (2) on its own length-bucketed batches, as its training loop does. The
systems see the same sentences; the comparison is in real (non-padding) tokens per second, the median
of alternating repeats, with min-max.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from minift.config import BertConfig
from minift.data import length_batches
from minift.tasks.tag import BertTagger, Tag, read_tagged
from minift.tokenizer import Tokenizer
from minift.train_step import make_loss_fn, make_optimizer, make_schedule, pick_precision, train_step

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = ROOT / "weights" / "all-MiniLM-L6-v2", ROOT / "data" / "pos" / "train.txt"
MAX_LEN, BATCH, LR, WD = 128, 32, 5e-5, 0.01


def features():
    task, tok = Tag(), Tokenizer.from_dir(MODEL)
    ds = read_tagged(DATA)
    id2label = task.label_names(ds)
    config = BertConfig.from_json(MODEL)
    config.id2label = id2label
    return task, tok, id2label, task.features(ds, tok, MAX_LEN, config, None)


def minift_step(id2label, dev, amp):
    torch.manual_seed(0)
    net = BertTagger.from_pretrained(MODEL, id2label=id2label, new_head=True).to(dev).train()
    opt = make_optimizer(net, LR, WD)
    sched = make_schedule(opt, 100, 10 ** 6)
    loss_fn = make_loss_fn(net, amp, dev, compile=False)
    return lambda b: train_step(loss_fn, opt, sched, None, [b])


def hf_step(id2label, dev, amp):
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    net = transformers.BertForTokenClassification.from_pretrained(
        MODEL, id2label=id2label, label2id={v: k for k, v in id2label.items()}, attn_implementation="sdpa")
    net = net.to(dev).train()
    named = list(net.named_parameters())  # Trainer's groups: no decay on biases and LayerNorm
    opt = torch.optim.AdamW([{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": WD},
                             {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0}], lr=LR)
    sched = transformers.get_linear_schedule_with_warmup(opt, 100, 10 ** 6)

    def step(b):
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = net(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    dev = torch.device(args.device)
    amp = pick_precision("auto", dev)
    task, tok, id2label, f = features()
    from transformers import AutoTokenizer, DataCollatorForTokenClassification
    collator = DataCollatorForTokenClassification(AutoTokenizer.from_pretrained(MODEL))
    n = 2 + args.steps  # two warm-up steps, then the timed ones
    rng = random.Random(0)
    shuffled = list(range(len(f.ids)))
    rng.shuffle(shuffled)
    same = [shuffled[i * BATCH:(i + 1) * BATCH] for i in range(n)]
    bucketed = length_batches([len(x) for x in f.ids], BATCH, seed=0)[:n]

    def ours(idx):
        return task.batch(f, idx, tok.pad_id)

    def theirs(idx):
        return collator([{"input_ids": f.ids[i], "token_type_ids": [0] * len(f.ids[i]), "labels": f.labels[i]}
                         for i in idx])
    systems = {"transformers: random order, pad to longest": (hf_step, same, theirs),
               "minift: the same batches": (minift_step, same, ours),
               "minift: bucketed, pad to longest": (minift_step, bucketed, ours)}
    units, tokens, pad = {}, {}, {}
    for name, (make, batches, collate) in systems.items():
        step = make(id2label, dev, amp)
        for idx in batches[:2]:
            step({k: v.to(dev) for k, v in collate(idx).items()})
        timed = batches[2:]
        tokens[name] = sum(len(f.ids[i]) for idx in timed for i in idx)
        pad[name] = 1 - tokens[name] / sum(len(idx) * max(len(f.ids[i]) for i in idx) for idx in timed)
        units[name] = lambda s=step, c=collate, tb=timed: [s({k: v.to(dev) for k, v in c(idx).items()}) for idx in tb]
    times = {k: [] for k in units}
    for _ in range(args.repeats):  # alternating, so that a change in the machine's load hits all alike
        for name, fn in units.items():
            t = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu
    print(f"\n{where}, {torch.get_num_threads()} threads, torch {torch.__version__}, {'bf16' if amp else 'fp32'}; "
          f"{args.steps} steps of {BATCH} x {args.repeats} repeats\n")
    print("| system | padding | real tok/s (median) | min-max | vs transformers |\n|---|---:|---:|---:|---:|")
    ref = tokens[next(iter(units))] / statistics.median(times[next(iter(units))])
    for name, ts in times.items():
        rates = [tokens[name] / t for t in ts]
        med = tokens[name] / statistics.median(ts)
        print(f"| {name} | {100 * pad[name]:.0f}% | {med:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} "
              f"| {med / ref:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
