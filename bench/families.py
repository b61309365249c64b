"""minift versus transformers per family: fine-tuning steps on real-length batches, side by side.

    python bench/families.py [--families roberta,distilbert,electra,modernbert] [--batch 32] [--repeats 5] [--steps 4]

Each family at its base model's real shape (random weights, the same in both systems: transformers'
*ForSequenceClassification builds them, minift loads its saved directory). Batches: --batch sequences with
the token lengths of the polarity training set (tokenised by MiniLM), random token ids, in random
order, padded to the longest; both systems step through the same batches, under the same autocast
dtype, with AdamW, clipping and a linear schedule. Repeats alternate between the systems; the table
gives the median step time with its min-max, and the ratio of medians.
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import LR, WD, alternate, autocast, device_name, low_precision, pname, polarity  # noqa: E402
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


def systems(family, d, dev, amp):
    """name -> one update of that system; both from the same random weights."""
    import transformers
    from transformers import get_linear_schedule_with_warmup
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(family, num_labels=2, **SHAPES[family])
    hf = transformers.AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa")
    hf.save_pretrained(d)
    ours = BertClassifier.from_pretrained(d).to(dev).train()
    opt = make_optimizer(ours, LR, WD)
    sched, loss_fn = make_schedule(opt, 100, 10 ** 6), make_loss_fn(ours, amp, dev, False)
    hf = hf.to(dev).train()
    named = list(hf.named_parameters())  # Trainer's groups: no decay on biases and norms
    hf_opt = torch.optim.AdamW([{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": WD},
                                {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0}], lr=LR)
    hf_sched = get_linear_schedule_with_warmup(hf_opt, 100, 10 ** 6)

    def hf_step(b):
        with autocast(dev, amp):
            loss = hf(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step(); hf_sched.step(); hf_opt.zero_grad(set_to_none=True)
    return {"minift": lambda b: train_step(loss_fn, opt, sched, None, [b]), "transformers": hf_step}, cfg


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(SHAPES))
    ap.add_argument("--batch", type=int, default=32, help="sequences per batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per repeat")
    args = ap.parse_args()
    dev = torch.device("cpu")
    amp = low_precision(dev)
    print(f"{device_name(dev)}, {torch.get_num_threads()} threads, torch {torch.__version__}, autocast {pname(amp)}\n")
    print(f"{args.batch} sequences per batch, {args.repeats} alternating repeats of {args.steps} steps; "
          "median s/step (min-max)\n")
    print("| family (base shape, random weights) | minift s/step | transformers s/step | speedup |")
    print("|---|---:|---:|---:|")
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory() as d:
            steps, cfg = systems(family, d, dev, amp)
            data = batches(cfg, args.steps + 1, args.batch)
            for s in steps.values():  # warm-up
                s(data[0])
            units = {k: lambda s=s: [s(b) for b in data[1:]] for k, s in steps.items()}
            times = {k: [t / args.steps for t in ts] for k, ts in alternate(units, args.repeats, dev).items()}
        med = {k: statistics.median(ts) for k, ts in times.items()}
        cell = {k: f"{med[k]:.3f} ({min(ts):.3f}-{max(ts):.3f})" for k, ts in times.items()}
        print(f"| {family} | {cell['minift']} | {cell['transformers']} | {med['transformers'] / med['minift']:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
