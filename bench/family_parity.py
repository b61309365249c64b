"""The parity figures of docs/families.md's table: the largest relative differences from transformers, per
family, over the random configurations of tests/test_families.py (encoder, sequence head) and
tests/test_family_heads.py (token and masked-LM heads), and of ModernBERT at long context (test_families.py's
LONG); the tests assert the bounds, this prints the values. fp32, CPU. Usage: python bench/family_parity.py
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_families as t  # noqa: E402  (the tests' configurations and helpers)
import test_family_heads as h  # noqa: E402
from minift import Bert  # noqa: E402
from minift.checkpoint import hf_names, hf_tensor_names  # noqa: E402
from minift.families import FAMILIES  # noqa: E402
from minift.tasks.classify import BertClassifier  # noqa: E402
from minift.tasks.mlm import BertForMaskedLM  # noqa: E402
from minift.tasks.tag import BertTagger  # noqa: E402


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
    names = FAMILIES[family].names
    grads = [t.rel(p.grad, t.hf_grad(hf, hf_names(n, names))) for n, p in ours.named_parameters()
             if not n.startswith("pooler.")]
    return t.rel(h[m], ref[m]), max(grads)


def worst_grad(ours, hf):  # the largest relative difference of a gradient, over every minift parameter
    params, prefix = dict(hf.named_parameters(remove_duplicate=False)), ours.config.family.prefix
    return max(t.rel(p.grad, torch.cat([params[(f"{prefix}." if n.startswith("bert.") else "") + s].grad
                                        for s in hf_tensor_names(ours, n)])) for n, p in ours.named_parameters())


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
    return max(t.rel(logits, o.logits), t.rel(loss, o.loss)), worst_grad(ours, hf)


def token_head(cls, auto, family, kw, d, seed, labels):
    """A head on every token (tests/test_family_heads.py): logits at the real tokens and the loss, gradients."""
    hf = t.hf_model(family, kw, seed=seed, auto=auto)
    hf.save_pretrained(d)
    ours = cls.from_pretrained(d).eval()
    ids, mask = t.batch(ours.config.pad_token_id, seed=19 if cls is BertForMaskedLM else 29)
    m, y = mask.bool(), labels(ids, mask)
    o = hf(input_ids=ids, attention_mask=mask, labels=y)
    loss = ours(ids, mask, labels=y)[1]
    with torch.no_grad():
        logits = ours(ids, mask)
    o.loss.backward()
    loss.backward()
    return max(t.rel(logits[m], o.logits[m]), t.rel(loss, o.loss)), worst_grad(ours, hf)


def masked_lm(family, kw, d):
    def labels(ids, mask):
        chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.4
        y = torch.where(mask.bool() & chosen, ids, -100)
        y[:, 0] = ids[:, 0]
        return y
    return token_head(BertForMaskedLM, t.transformers.AutoModelForMaskedLM, family, kw, d, 17 + len(kw), labels)


def tagger(family, kw, d):
    def labels(ids, mask):
        y = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(4)).masked_fill(mask == 0, -100)
        y[0, 2] = -100
        return y
    return token_head(BertTagger, t.transformers.AutoModelForTokenClassification, family, dict(kw, num_labels=5), d,
                      23 + len(kw), labels)


def long_context(d):
    """ModernBERT at 2,048 tokens, windows of 128 (tests/test_families.py's LONG): (hidden states, gradients)
    per attention path."""
    import minift.model
    family, kw = t.LONG
    hf = t.hf_model(family, kw, seed=1)
    hf.save_pretrained(d)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, t.V, (2, 2048), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 1337:] = 0
    ids, m, w = ids.masked_fill(mask == 0, 0), mask.bool(), torch.randn(2048, kw["hidden_size"], generator=g)
    ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    (ref * w * mask[..., None]).sum().backward()
    out = {}
    for path, sdpa in (("SDPA", {minift.model.CPU_CLASS: {torch.float32: 1}}), ("written out", {})):
        minift.model.SDPA_CPU_INFERENCE = sdpa
        ours = Bert.from_pretrained(d).eval()
        h, _ = ours(ids, mask)
        (h * w * mask[..., None]).sum().backward()
        grads = [t.rel(p.grad, t.hf_grad(hf, hf_names(n, FAMILIES[family].names))) for n, p in ours.named_parameters()
                 if not n.startswith("pooler.")]
        out[path] = (t.rel(h[m], ref[m]), max(grads))
    return out


def main():
    torch.set_num_threads(1)
    t.transformers.utils.logging.disable_progress_bar()
    runs = [(family, kw, (encoder, classifier, tagger, masked_lm)) for family, kw in t.CASES]
    runs += [(*t.HEAD_CASES[-1], (None, classifier, None, None)), (*h.MLM_CASES[-1], (None, None, None, masked_lm))]
    worst = defaultdict(lambda: [0.0] * 8)
    for family, kw, measures in runs:
        with tempfile.TemporaryDirectory() as d:
            figures = [x for i, f in enumerate(measures) for x in (f(family, kw, Path(d) / str(i)) if f else (0, 0))]
        worst[family] = [max(a, b) for a, b in zip(worst[family], figures)]
    print("| family | configs | hidden states | encoder gradients | sequence head: logits and loss | gradients "
          "| token head: logits and loss | gradients | masked LM: logits and loss | gradients |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for family, f in worst.items():
        n = sum(fam == family for fam, _ in t.CASES)
        print(f"| {family} | {n} | " + " | ".join(f"{x:.1e}" for x in f) + " |")
    with tempfile.TemporaryDirectory() as d:
        figures = long_context(d)
    print("\n| ModernBERT, 2,048 tokens, windows of 128 | hidden states | encoder gradients |\n|---|---:|---:|")
    for path, f in figures.items():
        print(f"| {path} | " + " | ".join(f"{x:.1e}" for x in f) + " |")


if __name__ == "__main__":
    main()
