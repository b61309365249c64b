"""The training controls: schedules, class weights, label smoothing, evaluation by steps, early stopping,
macro-F1, gradient checkpointing, exact accumulation, layer decay.

Tolerances (stated per test):
- schedules vs transformers.get_scheduler: rel 1e-12 (the same float formulas).
- losses vs a hand computation or F.cross_entropy: rel 1e-6 (fp32 sums in another order).
- gradients with checkpointing, or accumulated vs one big batch: atol 1e-6 (the same ops, or sums in
  another order, on gradients of order 1e-2).
- resume: bit-identical (torch.equal), as the same ops run in the same order on the same state.
"""
import io
import json
import math
import signal

import pytest
import torch
import torch.nn as nn

from minift.errors import MiniftError
from minift.train_loop import train
from minift.train_step import make_optimizer, make_schedule
from conftest import interrupt_at
from test_train import FAST, rows, tensors, write_csv


# ---- schedules ----

@pytest.mark.parametrize("kind, theirs, extra", [
    ("linear", "linear", {}),
    ("cosine", "cosine_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine", "cosine", {}),
    ("constant", "constant_with_warmup", {}),
])
@pytest.mark.parametrize("warmup", [0, 3])
def test_schedule_matches_transformers_one_step_ahead(kind, theirs, extra, warmup):
    """Ours at step s equals transformers' at step s + 1 with one more warmup and one more training step:
    transformers' first step, at rate 0, is the one left out."""
    transformers = pytest.importorskip("transformers")
    total, lr = 20, 1e-3
    ours_opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    theirs_opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    ours = make_schedule(ours_opt, warmup, total, kind, extra.get("min_lr_rate", 0.0))
    ref = transformers.get_scheduler(theirs, theirs_opt, num_warmup_steps=warmup + 1, num_training_steps=total + 1,
                                     scheduler_specific_kwargs=extra or None)
    theirs_opt.step()
    ref.step()  # transformers' step 0, at rate 0
    seen = []
    for step in range(total):
        seen.append(ours.get_last_lr()[0])
        assert seen[-1] == pytest.approx(ref.get_last_lr()[0], rel=1e-12, abs=1e-15), (kind, step)
        ours_opt.step(), theirs_opt.step()
        ours.step(), ref.step()
    assert seen[0] == pytest.approx(lr / (warmup + 1)) and max(seen) == pytest.approx(lr)
    if kind == "constant":
        assert seen[-1] == lr
    else:  # decays: to the floor at the last step (total), which the last update (total - 1) nearly reaches
        assert seen[-1] < 0.2 * lr


def test_schedule_options_refused(tiny_dir, tmp_path):
    tr = write_csv(tmp_path / "train.csv", 6)
    for opts, flag in (({"schedule": "step"}, "--schedule 'step'"), ({"min_lr_ratio": 0.1}, "--min-lr-ratio 0.1"),
                       ({"schedule": "cosine", "min_lr_ratio": 1.5}, "--min-lr-ratio 1.5")):
        with pytest.raises(MiniftError, match=flag):
            train(tiny_dir, tr, tmp_path / "out", log=io.StringIO(), **FAST, **opts)


# ---- class weights and label smoothing ----

def hand_loss(logits, labels, w=None, eps=0.0):
    """Cross-entropy written out in float64: per row (1 - eps) * -log p[y] + eps * mean_k -log p[k],
    times w[y]; averaged over the rows whose label is not -100, weighted by w[y]."""
    lp = torch.log_softmax(logits.double(), -1)
    total = norm = 0.0
    for row, y in zip(lp, labels.tolist()):
        if y == -100:
            continue
        wy = 1.0 if w is None else float(w[y])
        total += wy * ((1 - eps) * -row[y].item() + eps * -row.mean().item())
        norm += wy
    return total / norm


def classifier_batch(tiny_dir, seed=0):
    from test_train import make_batches
    from minift.tasks.classify import BertClassifier
    net = BertClassifier.from_pretrained(tiny_dir).eval()  # eval: no dropout, so both passes agree
    b = make_batches(tiny_dir, seed=seed, n_micro=1, size=8)[0]
    with torch.no_grad():  # logits far from uniform, where smoothing changes the loss clearly
        net.classifier.weight.mul_(100)
    return net, b


@pytest.mark.parametrize("w, eps", [((0.5, 2.0, 1.25), 0.0), (None, 0.1)])
def test_classify_loss_weights_and_smoothing_by_hand(tiny_dir, w, eps):
    net, b = classifier_batch(tiny_dir)
    assert len(set(b["labels"].tolist())) == 3
    if w is not None:
        net.class_weights = torch.tensor(w)
    net.label_smoothing = eps
    with torch.no_grad():
        logits, loss = net(**b)
    want = hand_loss(logits, b["labels"], w, eps)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert abs(want - hand_loss(logits, b["labels"])) > 1e-3  # the option changed the loss


def test_tag_loss_weights_and_smoothing_by_hand(tiny_dir):
    from minift.tasks.tag import BertTagger
    net = BertTagger.from_pretrained(tiny_dir, id2label={i: f"T{i}" for i in range(4)}, new_head=True).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = mask[2, 3:] = 0
    labels = torch.randint(0, 4, (3, 9), generator=g)
    labels[:, 0] = labels[0, 2] = -100  # [CLS], a later piece
    labels[mask == 0] = -100
    w = torch.tensor([0.25, 1.0, 3.0, 1.5])
    for weights, eps in ((w, 0.0), (None, 0.2)):
        net.class_weights, net.label_smoothing = weights, eps
        with torch.no_grad():
            logits, loss = net(ids, mask, labels=labels)
        real = mask.bool()
        assert loss.item() == pytest.approx(hand_loss(logits[real], labels[real], weights, eps), rel=1e-6)


def test_multilabel_pos_weight_by_hand(tiny_dir):
    net, b = classifier_batch(tiny_dir)
    net.config.problem_type = "multi_label_classification"
    y = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 1, 0]]).float()
    pw = torch.tensor([3.0, 0.5, 2.0])
    net.class_weights = pw
    with torch.no_grad():
        logits, loss = net(**{**b, "labels": y})
    x = logits.double()
    want = -(pw * y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_class_weights_through_train(tiny_dir, tmp_path):
    """balanced = scikit-learn's compute_class_weight; the weights are in run.json and the first line, and
    change training; a file and an inline list give the same weights."""
    utils = pytest.importorskip("sklearn.utils")
    import csv
    import numpy as np
    tr = tmp_path / "train.csv"
    labels = ["negative"] * 10 + ["neutral"] * 3 + ["positive"] * 2
    with open(tr, "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"]] + [[f"good film {i % 4}", y] for i, y in enumerate(labels)])
    want = utils.compute_class_weight("balanced", classes=np.array(sorted(set(labels))), y=np.array(labels))
    runs = {}
    for name, spec in (("none", None), ("balanced", "balanced"), ("inline", "neutral=2.5, positive=4"),
                       ("file", str(tmp_path / "w.json"))):
        (tmp_path / "w.json").write_text('{"positive": 4, "neutral": 2.5}')
        log = io.StringIO()
        runs[name] = train(tiny_dir, tr, tmp_path / name, eval=tr, class_weights=spec, max_steps=2, batch_size=8,
                           lr=1e-3, log=log, **FAST)
        saved = json.loads((tmp_path / name / "run.json").read_text())
        first = log.getvalue().splitlines()[0]
        if spec is None:
            assert "class_weight_values" not in saved and "class weights" not in first
            continue
        values = saved["class_weight_values"]
        expect = dict(zip(("negative", "neutral", "positive"), want if spec == "balanced" else (1.0, 2.5, 4.0)))
        assert values == pytest.approx(expect, rel=1e-6)
        assert first.endswith("class weights " + " ".join(f"{k}={v:.4g}" for k, v in values.items())), first
    assert runs["balanced"]["train_loss"] != runs["none"]["train_loss"]
    assert runs["inline"] == runs["file"]


@pytest.mark.parametrize("opts, match", [
    ({"class_weights": "neutral=0"}, "label 'neutral': weight '0'"),
    ({"class_weights": "happy=2"}, "label 'happy' is not in the training set"),
    ({"class_weights": "neutral"}, "'neutral' is not label=weight"),
    ({"class_weights": "balanced", "task": "regression"}, "--class-weights is for --task"),
    ({"label_smoothing": 1.0}, "--label-smoothing 1.0"),
    ({"label_smoothing": 0.1, "task": "multilabel"}, "--label-smoothing 0.1"),
])
def test_loss_options_refused(tiny_dir, tmp_path, opts, match):
    tr = write_csv(tmp_path / "train.csv", 6)
    with pytest.raises(MiniftError, match=match):
        train(tiny_dir, tr, tmp_path / "out", log=io.StringIO(), max_steps=1, **{**FAST, **opts})
    assert not (tmp_path / "out" / "run.json").exists()


def test_balanced_weights_of_tags_and_multilabel():
    """tag: balanced over the words' tags, as scikit-learn's; multilabel: negatives / positives per label."""
    utils = pytest.importorskip("sklearn.utils")
    import numpy as np
    from types import SimpleNamespace
    from minift.class_weights import class_weights
    gold = [[0, 0, 1, 0], [2, 0], [0, 1, 1, 0, 0, 3]]
    got = class_weights("balanced", "tag", SimpleNamespace(gold=gold), {i: f"T{i}" for i in range(4)})
    flat = np.array([t for s in gold for t in s])
    want = utils.compute_class_weight("balanced", classes=np.arange(4), y=flat)
    assert got.tolist() == pytest.approx(want.tolist(), rel=1e-6)
    multi = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 1], [1, 0, 1]]).float()
    got = class_weights("balanced", "multilabel", SimpleNamespace(labels=multi), {0: "a", 1: "b", 2: "c"})
    assert got.tolist() == pytest.approx([2 / 3, 4.0, 1.0])
