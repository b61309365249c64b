"""--task rerank against sentence-transformers' CrossEncoder, trained side by side on identical batches.

  python bench/rerank_parity.py DATA.csv [--model weights/all-MiniLM-L6-v2] [--steps 50] [--batch 8]
                                [--max-length 128] [--lr 5e-5] [--warmup 0.1] [--seed 0] [--dropout]

Both start from the same checkpoint with the same new head (minift's, seeded, copied into sentence-transformers'
BertForSequenceClassification), take the batches minift's training loop draws (DATA: query, passage, label rows; a
batch is --batch queries with all their passages), and step with the same AdamW (weight decay 0.01 on matrices),
warmup and linear decay, gradients clipped to norm 1, fp32. minift steps with its own train_step; sentence-
transformers with its BinaryCrossEntropyLoss on texts it tokenizes itself (its ListNetLoss takes the softmax of
the labels as the target, which --listwise does not: no listwise counterpart here). Before training it prints, for
the first batch, whether the two tokenizations agree, both losses, and the four largest gradient differences, each
relative to the largest gradient of its tensor; then one line per step: both losses and both gradient norms.
Dropout is off unless --dropout (then each draws its own masks).
"""
import argparse
import json
from types import SimpleNamespace

import torch

from minift.checkpoint import hf_tensor_names
from minift.data import length_batches
from minift.tasks.rerank import CrossEncoder, Rerank
from minift.tokenizer import Tokenizer
from minift.train_step import make_loss_fn, make_optimizer, make_schedule, train_step


def st_model(model_dir, max_length, mini):
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    st = STCrossEncoder(model_dir, num_labels=1, max_length=max_length)
    hf = st.model  # the transformers BertForSequenceClassification inside
    with torch.no_grad():  # the same new head on both sides
        hf.classifier.weight.copy_(mini.classifier.weight)
        hf.classifier.bias.copy_(mini.classifier.bias)
    return st, hf


def st_inputs(rows, feats, idx):
    """The texts and labels of batch idx as sentence-transformers' BinaryCrossEntropyLoss takes them."""
    q, p = rows.columns
    pairs = [r for i in idx for r in feats.rows[i]]
    return [[q[r] for r in pairs], [p[r] for r in pairs]], torch.tensor([rows.scores[r] for r in pairs])


def hf_grad(hf, mini, name):
    """The HF model's gradient of the tensor(s) that minift holds as `name` (QKV fused)."""
    params = dict(hf.named_parameters())
    srcs = [("bert." + s) if name.startswith("bert.") else s for s in hf_tensor_names(mini, name)]
    return torch.cat([params[s].grad for s in srcs])


def compare_first_batch(mini, hf, st, loss_fn, st_loss_fn, batch, inputs, labels):
    st_enc = st.preprocess(list(zip(*inputs)))  # the same pairs, tokenized by each
    same = st_enc["input_ids"].shape == batch["input_ids"].shape and \
        bool((st_enc["input_ids"] == batch["input_ids"]).all() and
             (st_enc["token_type_ids"] == batch["token_type_ids"]).all())
    print(f"tokens and token types identical: {same}")
    a = loss_fn(**batch)
    a.backward()
    b = st_loss_fn(inputs, labels)
    b.backward()
    print(f"first batch: loss minift {a.item():.7f} sentence-transformers {b.item():.7f}")
    worst = []
    for name, p in mini.named_parameters():
        g, h = p.grad, hf_grad(hf, mini, name)
        worst.append((((g - h).abs().max() / h.abs().max().clamp(min=1e-30)).item(), name))
    worst.sort(reverse=True)
    print("largest relative gradient differences:", ", ".join(f"{n} {d:.2e}" for d, n in worst[:4]))
    mini.zero_grad(set_to_none=True)
    hf.zero_grad(set_to_none=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--model", default="weights/all-MiniLM-L6-v2")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dropout", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    mini = CrossEncoder.from_pretrained(args.model, id2label={0: "LABEL_0"}, new_head=True)
    tok = Tokenizer.from_dir(args.model)
    st, hf = st_model(args.model, args.max_length, mini)
    mini.train(args.dropout)
    hf.train(args.dropout)
    task = Rerank()
    opts = SimpleNamespace(label_column="label", listwise=False)
    rows = task.read(args.data, opts)
    feats = task.features(rows, tok, args.max_length, mini.config, opts)
    lengths = [len(x) for x in feats.ids]
    batches, epoch = [], 0
    while len(batches) < args.steps:
        batches += length_batches(lengths, args.batch, seed=args.seed + epoch)
        epoch += 1
    loss_fn = make_loss_fn(mini, None, torch.device("cpu"), compile=False)
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    st_loss_fn = BinaryCrossEntropyLoss(st)
    opt_a = make_optimizer(mini, args.lr, 0.01)
    groups = [{"params": [p for p in hf.parameters() if p.ndim >= 2], "weight_decay": 0.01},
              {"params": [p for p in hf.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    opt_b = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    warm = int(args.warmup * args.steps)
    sched_a, sched_b = (make_schedule(o, warm, args.steps) for o in (opt_a, opt_b))
    pad = tok.pad_id
    first = task.batch(feats, batches[0], pad)
    compare_first_batch(mini, hf, st, loss_fn, st_loss_fn, first, *st_inputs(rows, feats, batches[0]))
    for step, idx in enumerate(batches[:args.steps], 1):
        batch = task.batch(feats, idx, pad)
        la, norm_a, _ = train_step(loss_fn, opt_a, sched_a, None, [batch], 1.0)
        lb = st_loss_fn(*st_inputs(rows, feats, idx))
        lb.backward()
        norm_b = torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt_b.step()
        sched_b.step()
        opt_b.zero_grad(set_to_none=True)
        print(json.dumps({"step": step, "minift": round(la.item(), 5), "sentence-transformers": round(lb.item(), 5),
                          "grad_norm": [round(norm_a.item(), 4), round(norm_b.item(), 4)]}), flush=True)


if __name__ == "__main__":
    main()
