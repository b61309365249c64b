"""minift versus transformers per family: fine-tuning steps on real-length batches, side by side.

    python bench/families.py [--families roberta,distilbert,electra,modernbert] [--batch 32] [--repeats 5] [--steps 4]

Each family at its base model's real shape (random weights, the same in both systems: transformers'
*ForSequenceClassification builds them once and saves them, and each system loads that directory). Batches:
--batch sequences with the token lengths of the polarity training set (tokenised by MiniLM), random token
ids, in random order, padded to the longest; both systems step through the same batches, under the same
autocast dtype, with AdamW, clipping and a linear schedule. Each repeat of each system runs in a process of
its own (load, one warm-up step, --steps timed steps), so that only one system's model and optimizer state
is ever in memory (a ModernBERT-base step of both in one process did not fit beside other jobs on a 2-core
machine); repeats alternate between the systems. The table gives the median step time with its min-max, the
ratio of medians, and each system's largest peak resident memory over its processes.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench.bench import LR, WD, autocast, device_name, low_precision, pname, polarity  # noqa: E402
from minift.config import BertConfig  # noqa: E402
from minift.tasks.classify import BertClassifier  # noqa: E402
from minift.tokenizer import Tokenizer  # noqa: E402
from minift.train_step import make_loss_fn, make_optimizer, make_schedule, train_step  # noqa: E402

# model_type -> its base model's shape (transformers' defaults fill in the rest)
SHAPES = {
    "roberta": dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1),  # roberta-base
    "distilbert": {},  # distilbert-base: 6 layers of 768
    "electra": dict(embedding_size=768, hidden_size=768, num_attention_heads=12, intermediate_size=3072),  # -base
    "modernbert": {},  # modernbert-base: 22 layers of 768, GeGLU 1152, windows of 128, global every 3rd
}


def quiet_transformers():
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def save_model(family, d):
    """The family's base-shaped random classifier, saved to d for both systems to load."""
    transformers = quiet_transformers()
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(family, num_labels=2, **SHAPES[family])
    transformers.AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa").save_pretrained(d)


def minift_step(d, dev, amp):
    ours = BertClassifier.from_pretrained(d).to(dev).train()
    opt = make_optimizer(ours, LR, WD)
    sched, loss_fn = make_schedule(opt, 100, 10 ** 6), make_loss_fn(ours, amp, dev, False)
    return lambda b: train_step(loss_fn, opt, sched, None, [b])


def transformers_step(d, dev, amp):
    transformers = quiet_transformers()
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(d, attn_implementation="sdpa").to(dev).train()
    named = list(hf.named_parameters())  # Trainer's groups: no decay on biases and norms
    opt = torch.optim.AdamW([{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": WD},
                             {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0}], lr=LR)
    sched = transformers.get_linear_schedule_with_warmup(opt, 100, 10 ** 6)

    def step(b):
        with autocast(dev, amp):
            loss = hf(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
    return step


SYSTEMS = {"minift": minift_step, "transformers": transformers_step}


def batches(cfg, n, size, seed=0):
    """n batches of `size` sequences with polarity's real lengths and random ids (never the padding id)."""
    _, ids, _, _ = polarity("train")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ids), generator=g)[: n * size].split(size)
    out = []
    for idx in order:
        rows = [(torch.randint(3, cfg.vocab_size, (len(ids[i]),), generator=g)).tolist() for i in idx]
        b = Tokenizer.pad(rows, [[0] * len(r) for r in rows], cfg.pad_token_id)
        b["labels"] = torch.randint(0, 2, (len(rows),), generator=g)
        if cfg.model_type in ("distilbert", "modernbert", "roberta"):  # token types: none, or one
            del b["token_type_ids"]
        out.append(b)
    return out


def peak_rss_gb():
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from the parent)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2 ** 20


def repeat(args):
    """One repeat of one system, in this process: load, one warm-up step, --steps timed steps -> JSON line."""
    dev = torch.device("cpu")
    step = SYSTEMS[args.system](args.dir, dev, low_precision(dev))
    data = batches(BertConfig.from_json(args.dir), args.steps + 1, args.batch)
    step(data[0])
    t = time.perf_counter()
    for b in data[1:]:
        step(b)
    print(json.dumps({"s_per_step": (time.perf_counter() - t) / args.steps, "peak_rss_gb": peak_rss_gb()}))


def run_repeat(system, d, args):
    cmd = [sys.executable, __file__, "--system", system, "--dir", d, "--batch", str(args.batch),
           "--steps", str(args.steps)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{system} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(SHAPES))
    ap.add_argument("--batch", type=int, default=32, help="sequences per batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per repeat")
    ap.add_argument("--system", choices=list(SYSTEMS), help=argparse.SUPPRESS)  # a repeat's own process
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.system:
        return repeat(args)
    dev = torch.device("cpu")
    print(f"{device_name(dev)}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"autocast {pname(low_precision(dev))}\n")
    print(f"{args.batch} sequences per batch, {args.repeats} alternating repeats of {args.steps} steps, each in a "
          "process of its own; median s/step (min-max); peak resident memory per process\n")
    print("| family (base shape, random weights) | minift s/step | transformers s/step | speedup | minift GB | "
          "transformers GB |")
    print("|---|---:|---:|---:|---:|---:|")
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory() as d:
            save_model(family, d)
            runs = {k: [] for k in SYSTEMS}
            for _ in range(args.repeats):
                for k in SYSTEMS:
                    runs[k].append(run_repeat(k, d, args))
        times = {k: [r["s_per_step"] for r in rs] for k, rs in runs.items()}
        med = {k: statistics.median(ts) for k, ts in times.items()}
        cell = {k: f"{med[k]:.3f} ({min(ts):.3f}-{max(ts):.3f})" for k, ts in times.items()}
        gb = {k: f"{max(r['peak_rss_gb'] for r in rs):.1f}" for k, rs in runs.items()}
        print(f"| {family} | {cell['minift']} | {cell['transformers']} | {med['transformers'] / med['minift']:.2f}x "
              f"| {gb['minift']} | {gb['transformers']} |", flush=True)


if __name__ == "__main__":
    main()
