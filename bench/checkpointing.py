"""Gradient checkpointing (--checkpointing): the memory it saves and the time it costs, per sequence length.

    python bench/checkpointing.py [--cases minilm-512,modernbert-512,modernbert-2048] [--repeats 3] [--steps 2]

One training forward and backward (dropout on, a token-tagging head so that every layer computes every
token, the precision `pick_precision("auto")` picks) of:
  minilm-512       all-MiniLM-L6-v2 (weights/all-MiniLM-L6-v2), 8 sequences of 512 tokens
  modernbert-512   a random ModernBERT of modernbert-base's width (768, GeGLU 1152, windows of 128, global
                   attention every 3rd layer) with 9 layers instead of 22, 4 sequences of 512
  modernbert-2048  the same, 1 sequence of 2,048
Each repeat of each setting runs in a process of its own (checkpointing off and on alternate): build the
model, one warm-up step, then --steps steps, each timed and each measured for the memory it adds to the
process: the peak resident memory during the step (VmHWM, reset before the step through
/proc/self/clear_refs) less the resident memory before it. The children run with glibc's mmap threshold
fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_): every tensor buffer is then mapped on allocation and unmapped on
free, so resident memory follows the live tensors instead of keeping what an earlier step freed (which made
the same step measure anywhere from 200 to 460 MiB). The table gives medians over all steps of all repeats,
with the min-max, and the ratios on / off.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from minift.config import BertConfig  # noqa: E402
from minift.model import CPU_CLASS  # noqa: E402
from minift.tasks.tag import BertTagger  # noqa: E402
from minift.train_step import make_loss_fn, pick_precision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODERNBERT = dict(model_type="modernbert", hidden_size=768, intermediate_size=1152, num_attention_heads=12,
                  num_hidden_layers=9, global_attn_every_n_layers=3, local_attention=128, vocab_size=50368,
                  mlp_dropout=0.1, embedding_dropout=0.1, attention_dropout=0.1, pad_token_id=50283)
CASES = {"minilm-512": ("minilm", 8, 512), "modernbert-512": ("modernbert", 4, 512),
         "modernbert-2048": ("modernbert", 1, 2048)}
LABELS = {str(i): f"T{i}" for i in range(9)}


def model(kind: str) -> BertTagger:
    if kind == "minilm":
        d = ROOT / "weights" / "all-MiniLM-L6-v2"
        return BertTagger.from_pretrained(d, id2label={int(k): v for k, v in LABELS.items()}, new_head=True)
    return BertTagger(BertConfig.from_dict({**MODERNBERT, "num_labels": len(LABELS), "id2label": LABELS}))


def vm(field: str) -> float:
    """/proc/self/status's field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def repeat(case: str, on: bool, steps: int):
    """One process: -> JSON line {"s": [seconds per step], "mib": [memory each step added]}."""
    kind, B, T = CASES[case]
    torch.manual_seed(0)
    net = model(kind).train()
    net.bert.checkpointing = on
    dev = torch.device("cpu")
    loss_fn = make_loss_fn(net, pick_precision("auto", dev), dev, compile=False)
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(5, net.config.vocab_size - 100, (B, T), generator=g),
             "attention_mask": torch.ones(B, T, dtype=torch.long),
             "labels": torch.randint(0, len(LABELS), (B, T), generator=g)}
    times, mib = [], []
    for k in range(steps + 1):
        net.zero_grad(set_to_none=True)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = vm("VmRSS")
        t = time.perf_counter()
        loss_fn(**batch).backward()
        if k:  # the first step is the warm-up
            times.append(time.perf_counter() - t)
            mib.append(vm("VmHWM") - before)
    print(json.dumps({"s": times, "mib": mib}))


def spread(xs, fmt):
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeat", nargs=2, metavar=("CASE", "ON"), help=argparse.SUPPRESS)  # one child process
    args = ap.parse_args()
    if args.repeat:
        return repeat(args.repeat[0], args.repeat[1] == "on", args.steps)
    print(f"CPU: {platform.processor() or platform.machine()} ({CPU_CLASS}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, precision {pick_precision('auto', torch.device('cpu')) or 'fp32'}\n")
    print("| case | tokens | step off, s | step on, s | time on/off | memory off, MiB | memory on, MiB | memory on/off |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        got = {"off": {"s": [], "mib": []}, "on": {"s": [], "mib": []}}
        for _ in range(args.repeats):
            for on in ("off", "on"):
                r = subprocess.run([sys.executable, __file__, "--repeat", case, on, "--steps", str(args.steps)],
                                   capture_output=True, text=True,
                                   env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)})
                if r.returncode:
                    sys.exit(f"{case} {on} failed:\n{r.stderr[-3000:]}")
                for k, v in json.loads(r.stdout.splitlines()[-1]).items():
                    got[on][k] += v
        off, on = got["off"], got["on"]
        _, B, T = CASES[case]
        print(f"| {case} | {B} x {T} | {spread(off['s'], '{:.2f}')} | {spread(on['s'], '{:.2f}')} | "
              f"{statistics.median(on['s']) / statistics.median(off['s']):.2f} | {spread(off['mib'], '{:.0f}')} | "
              f"{spread(on['mib'], '{:.0f}')} | {statistics.median(on['mib']) / statistics.median(off['mib']):.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
