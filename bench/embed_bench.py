"""minift's embed training against sentence-transformers' own, side by side: same model, texts, batches, loss.

    python bench/embed_bench.py [--steps 5] [--batch 32] [--max-length 64] [--threads 2]
    python bench/embed_bench.py --retrieval [--steps 20] [--batch 16] [--max-length 128] [--threads 2]

One training step (forward, loss, backward, clip to norm 1, AdamW) of minift's SentenceEncoder and of a
SentenceTransformer with MultipleNegativesRankingLoss (scale 20), driven by a plain torch loop over the very
same token tensors (its Trainer would draw its own batches), fp32, timed alternately after one warm-up step;
then the gradient-cache pair: minift's --mini-batch 8 against CachedMultipleNegativesRankingLoss(mini_batch_size=8).
Pairs: polarity's training texts of one label in file order, text 2j as the anchor and 2j+1 as its positive;
half the batch from each label. Peak RSS: each system alone in a fresh process, warm-up and one step
(sentence-transformers' process also holds transformers' import). Prints a Markdown table.

--retrieval: the metric each reaches. Both train from the same model on the same batches of reviews-ir's training
pairs (`minift fetch data reviews-ir`; shuffled with seed 0, --batch consecutive pairs a step), with the same
loss, fp32, AdamW at a constant 2e-5, clipping and seed 0, dropout on (each draws its own masks; --no-dropout:
off); then each embeds the test split with its own inference (minift's embed, SentenceTransformer.encode) at
--max-length, and the same code scores both: each test query against the 149 test passages (recall@1, recall@10,
MRR@10), beside the model as it ships. It prints both loss curves, then a Markdown table.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import csv
import json
import random
import statistics
import subprocess
import sys

import numpy as np
import torch

from bench.bench import MODEL, DATA, ROOT, alternate, peak_rss_kib
from minift.data import read_dataset
from minift.predict import embed_texts
from minift.retrieval import ranks, retrieval_metrics
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


def columns(b):
    """minift's batch (rows: anchors, then positives) as sentence-transformers' features, one dict per column."""
    B = b["labels"].values.shape[-1]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if b.get(k) is not None]
    return [{k: b[k][c * B:(c + 1) * B] for k in keys} for c in range(2)]


def st_step(b, cached):
    """The update sentence-transformers' Trainer makes (AdamW, no decay on biases and LayerNorm, clip 1),
    on the columns of minift's batch."""
    import sentence_transformers as st
    from sentence_transformers.sentence_transformer import losses
    torch.manual_seed(0)
    model = st.SentenceTransformer(str(MODEL), device="cpu").train()
    loss = (losses.CachedMultipleNegativesRankingLoss(model, scale=SCALE, mini_batch_size=MINI) if cached
            else losses.MultipleNegativesRankingLoss(model, scale=SCALE))
    features = columns(b)
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if p.ndim >= 2], "weight_decay": WD},
                             {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0}], lr=LR)

    def step(other=None):  # other: a batch of the same shape instead of b
        value = loss(features if other is None else columns(other), None)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        return value.item()
    step.model = model
    return step


def ir_pairs(split):
    with open(ROOT / "data" / "reviews-ir" / f"{split}.csv", newline="", encoding="utf-8") as f:
        return [(r["query"], r["passage"]) for r in csv.DictReader(f)]


def ir_batches(args):
    """--steps batches of --batch (anchor, positive) pairs of reviews-ir's training split, as minift pads them."""
    tok, task = Tokenizer.from_dir(MODEL), Embed()
    data = ir_pairs("train")
    random.Random(0).shuffle(data)
    data = data[:args.steps * args.batch]
    rows = Rows("<bench>", [[a for a, _ in data], [p for _, p in data]], None, list(range(len(data))))
    config = SentenceEncoder.from_pretrained(MODEL).config
    f = task.features(rows, tok, args.max_length, config, TaskOptions(scale=SCALE))
    return [task.batch(f, list(range(i, i + args.batch)), tok.pad_id) for i in range(0, len(data), args.batch)]


def ir_embeddings(encode):
    """The test split's queries and passages, embedded by `encode`, L2-normalised (weights/all-MiniLM-L6-v2 may lack
    the Normalize module's files, without which sentence-transformers does not normalise)."""
    test = ir_pairs("test")
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return unit(encode([a for a, _ in test])), unit(encode([b for _, b in test]))


def ir_metrics(q, p):
    """Each test query against every test passage."""
    r = retrieval_metrics(ranks(q, p, np.arange(len(q))))
    return {k: round(100 * r[k], 1) for k in ("recall@1", "recall@10", "mrr@10")}


def near_ties(pairs_a, pairs_b):
    """The largest difference between two systems' embeddings, and the test queries whose best two passages (by
    the first system) are closer in similarity than twice it: the ones rounding alone may reorder."""
    diff = max(float(np.abs(a - b).max()) for a, b in zip(pairs_a, pairs_b))
    top = np.sort(pairs_a[0] @ pairs_a[1].T, axis=1)[:, -2:]
    return diff, int((top[:, 1] - top[:, 0] < 2 * diff).sum())


def retrieval(args):
    """Train each system on the same batches, then score both on the test split: a Markdown table."""
    import sentence_transformers as st
    batches = ir_batches(args)
    tok = Tokenizer.from_dir(MODEL)
    torch.manual_seed(0)
    net = SentenceEncoder.from_pretrained(MODEL).train(not args.no_dropout)
    opt = make_optimizer(net, LR, WD)
    sched = make_schedule(opt, 0, 10 ** 6)
    loss_fn = make_loss_fn(net, None, torch.device("cpu"), False)
    curves = {"minift": [train_step(loss_fn, opt, sched, None, [b])[0].item() for b in batches]}
    step = st_step(batches[0], False)
    step.model.train(not args.no_dropout)
    curves["sentence-transformers"] = [step(b) for b in batches]
    model = step.model.eval()
    model.max_seq_length = args.max_length
    shipped = st.SentenceTransformer(str(MODEL), device="cpu")
    shipped.max_seq_length = args.max_length
    net.eval()
    base = SentenceEncoder.from_pretrained(MODEL).eval()
    mine = lambda m: lambda t: embed_texts(m.bert, tok, t, 64, args.max_length, m.pooling).numpy()  # noqa: E731
    emb = {"all-MiniLM-L6-v2 as it ships, sentence-transformers' inference": ir_embeddings(shipped.encode),
           "all-MiniLM-L6-v2 as it ships, minift's inference": ir_embeddings(mine(base)),
           f"minift, {len(batches)} steps": ir_embeddings(mine(net)),
           f"sentence-transformers, {len(batches)} steps": ir_embeddings(model.encode)}
    print(json.dumps({k: [round(x, 4) for x in v] for k, v in curves.items()}), flush=True)
    print("| model | recall@1 | recall@10 | MRR@10 |\n|---|---|---|---|")
    for name, (q, p) in emb.items():
        m = ir_metrics(q, p)
        print(f"| {name} | {m['recall@1']} | {m['recall@10']} | {m['mrr@10']} |", flush=True)
    (ship_st, ship_mine, a, b) = emb.values()
    for what, x, y in (("as it ships", ship_mine, ship_st), ("trained", a, b)):
        diff, n = near_ties(x, y)
        print(f"{what}: largest embedding difference minift - sentence-transformers {diff:.1e}; test queries "
              f"whose best two passages are within twice that: {n}")


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
    p.add_argument("--retrieval", action="store_true", help="train each, then the test split's retrieval metrics")
    p.add_argument("--no-dropout", action="store_true", help="--retrieval: train both with dropout off, so that they "
                   "differ by rounding alone")
    p.add_argument("--steps", type=int, help="default 5; --retrieval 20")
    p.add_argument("--batch", type=int, help="default 32; --retrieval 16")
    p.add_argument("--max-length", type=int, help="default 64; --retrieval 128")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rss", choices=SYSTEMS, help=argparse.SUPPRESS)  # one system alone, for its peak RSS
    args = p.parse_args()
    for name, default, ir in (("steps", 5, 20), ("batch", 32, 16), ("max_length", 64, 128)):
        if getattr(args, name) is None:
            setattr(args, name, ir if args.retrieval else default)
    torch.set_num_threads(args.threads)
    if args.retrieval:
        return retrieval(args)
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
