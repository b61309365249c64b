"""The parity figures of README's family table: the largest relative differences from transformers, per
family, over the random configurations of tests/test_families.py (the tests assert the bounds; this prints
the values). fp32, CPU. Usage: python bench/family_parity.py
"""
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_families as t  # noqa: E402  (the tests' configurations and helpers)
from minift import Bert  # noqa: E402
from minift.checkpoint import LAYOUTS, hf_names, hf_tensor_names  # noqa: E402
from minift.tasks.classify import BertClassifier  # noqa: E402


def encoder(family, kw, d):
    hf = t.hf_model(family, kw, seed=len(t.IDS[0]) + sum(map(ord, str(kw))))
    hf.save_pretrained(d)
    ours = Bert.from_pretrained(d).eval()
    ids, mask = t.batch(ours.config.pad_token_id, seed=sum(map(ord, family)))
    m = mask.bool()
    w = torch.randn(t.T, ours.config.hidden_size, generator=torch.Generator().manual_seed(0))
    ref, (h, _) = hf(input_ids=ids, attention_mask=mask).last_hidden_state, ours(ids, mask)
    (ref * w * mask[..., None]).sum().backward()
    (h * w * mask[..., None]).sum().backward()
    names = LAYOUTS[family][1]
    grads = [t.rel(p.grad, t.hf_grad(hf, hf_names(n, names))) for n, p in ours.named_parameters()
             if not n.startswith("pooler.")]
    return t.rel(h[m], ref[m]), max(grads)


def classifier(family, kw, d):
    auto = t.transformers.AutoModelForSequenceClassification
    hf = t.hf_model(family, dict(kw, num_labels=3), seed=7 + len(kw), auto=auto)
    hf.save_pretrained(d)
    ours = BertClassifier.from_pretrained(d).eval()
    ids, mask = t.batch(ours.config.pad_token_id, seed=11)
    labels = torch.tensor([0, 2, 1, 2])
    o = hf(input_ids=ids, attention_mask=mask, labels=labels)
    logits, loss = ours(ids, mask, labels=labels)
    o.loss.backward()
    loss.backward()
    params, prefix = dict(hf.named_parameters()), LAYOUTS[family][0]
    grads = [t.rel(p.grad, torch.cat([params[(f"{prefix}." if n.startswith("bert.") else "") + s].grad
                                      for s in hf_tensor_names(ours, n)])) for n, p in ours.named_parameters()]
    return max(t.rel(logits, o.logits), t.rel(loss, o.loss)), max(grads)


def main():
    torch.set_num_threads(1)
    t.transformers.utils.logging.disable_progress_bar()
    worst = defaultdict(lambda: [0.0] * 4)
    for i, (family, kw) in enumerate(t.HEAD_CASES):
        with tempfile.TemporaryDirectory() as d:
            figures = (encoder(family, kw, Path(d) / "e") if i < len(t.CASES) else (0.0, 0.0)) + \
                classifier(family, kw, Path(d) / "c")
        worst[family] = [max(a, b) for a, b in zip(worst[family], figures)]
    print("| family | configs | hidden states | encoder gradients | logits and loss | classifier gradients |")
    print("|---|---:|---:|---:|---:|---:|")
    for family, f in worst.items():
        n = sum(fam == family for fam, _ in t.HEAD_CASES)
        print(f"| {family} | {n} | " + " | ".join(f"{x:.1e}" for x in f) + " |")


if __name__ == "__main__":
    main()
