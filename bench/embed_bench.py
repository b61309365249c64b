"""minift's embed training against sentence-transformers' own, side by side: same model, texts, batches, loss.

    python bench/embed_bench.py [--steps 5] [--batch 32] [--max-length 64] [--threads 2]

One training step (forward, loss, backward, clip to norm 1, AdamW) of minift's SentenceEncoder and of a
SentenceTransformer with MultipleNegativesRankingLoss (scale 20), driven by a plain torch loop over the very
same token tensors (its Trainer would draw its own batches), fp32, timed alternately after one warm-up step;
then the gradient-cache pair: minift's --mini-batch 8 against CachedMultipleNegativesRankingLoss(mini_batch_size=8).
Pairs: polarity's training texts of one label in file order, text 2j as the anchor and 2j+1 as its positive;
half the batch from each label. Peak RSS: each system alone in a fresh process, warm-up and one step
(sentence-transformers' process also holds transformers' import). Prints a Markdown table.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import json
import statistics
import subprocess
import sys

import torch

from bench.bench import MODEL, DATA, alternate, peak_rss_kib
from minift.data import read_dataset
from minift.tasks import TaskOptions
from minift.tasks.embed import Embed, Rows, SentenceEncoder
from minift.tokenizer import Tokenizer
from minift.train_step import make_loss_fn, make_optimizer, make_schedule, train_step

LR, WD, SCALE, MINI = 2e-5, 0.01, 20.0, 8
SYSTEMS = ("minift", "sentence-transformers", "minift --mini-batch 8", "sentence-transformers cached")


def pairs(B):
    """B (anchor, positive) pairs of real text: per label, consecutive texts 2j and 2j+1 in file order."""
    ds = read_dataset(DATA / "train.csv", "text", "label")
    anchors, positives = [], []
    for label in sorted(set(ds.labels)):
        texts = [t for t, y in zip(ds.texts, ds.labels) if y == label]
        n = B // 2 + (B % 2) * (label == min(ds.labels))
        anchors += texts[0:2 * n:2]
        positives += texts[1:2 * n:2]
    return anchors[:B], positives[:B]


def batch(B, max_length, mini_batch=None):
    """minift's batch: rows anchors then positives, padded together; its labels carry the loss settings."""
    tok, task = Tokenizer.from_dir(MODEL), Embed()
    anchors, positives = pairs(B)
    rows = Rows("<bench>", [anchors, positives], None, list(range(B)))
    config = SentenceEncoder.from_pretrained(MODEL).config
    f = task.features(rows, tok, max_length, config, TaskOptions(scale=SCALE, mini_batch=mini_batch))
    return task.batch(f, list(range(B)), tok.pad_id)


def minift_step(b):
    torch.manual_seed(0)
    net = SentenceEncoder.from_pretrained(MODEL).train()
    opt = make_optimizer(net, LR, WD)
    sched = make_schedule(opt, 0, 10 ** 6)
    loss_fn = make_loss_fn(net, None, torch.device("cpu"), False)
    return lambda: train_step(loss_fn, opt, sched, None, [b])


def st_step(b, cached):
    """The update sentence-transformers' Trainer makes (AdamW, no decay on biases and LayerNorm, clip 1),
    on the columns of minift's batch."""
    import sentence_transformers as st
    from sentence_transformers.sentence_transformer import losses
    torch.manual_seed(0)
    model = st.SentenceTransformer(str(MODEL), device="cpu").train()
    loss = (losses.CachedMultipleNegativesRankingLoss(model, scale=SCALE, mini_batch_size=MINI) if cached
            else losses.MultipleNegativesRankingLoss(model, scale=SCALE))
    B = b["labels"].values.shape[-1]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if b.get(k) is not None]
    features = [{k: b[k][c * B:(c + 1) * B] for k in keys} for c in range(2)]
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": WD},
                             {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0}], lr=LR)

    def step():
        loss(features, None).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
    return step


def make(system, args):
    cached = system.endswith("8") or system.endswith("cached")
    b = batch(args.batch, args.max_length, MINI if cached else None)
    return minift_step(b) if system.startswith("minift") else st_step(b, cached)


def peak_rss(system, args):
    """Peak RSS (MiB) of one system's warm-up and one step in a process of its own."""
    cmd = [sys.executable, "-m", "bench.embed_bench", "--rss", system, "--threads", str(args.threads),
           "--batch", str(args.batch), "--max-length", str(args.max_length)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rss", choices=SYSTEMS, help=argparse.SUPPRESS)  # one system alone, for its peak RSS
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss:
        step = make(args.rss, args)
        step(); step()
        print(json.dumps({"peak_rss_mib": round(peak_rss_kib() / 1024, 1)}))
        return
    print("| system | median s/step | min-max | vs sentence-transformers | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for pair in (SYSTEMS[:2], SYSTEMS[2:]):
        steps = {s: make(s, args) for s in pair}
        for s in pair:
            steps[s]()  # warm-up
        times = alternate(steps, args.steps, torch.device("cpu"))
        ref = statistics.median(times[pair[1]])
        for s in pair:
            t = times[s]
            print(f"| {s} | {statistics.median(t):.3f} | {min(t):.3f}-{max(t):.3f} | "
                  f"{ref / statistics.median(t):.2f}x | {peak_rss(s, args):.0f} |", flush=True)


if __name__ == "__main__":
    main()
