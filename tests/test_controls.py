"""The training controls: schedules, class weights, label smoothing, evaluation by steps, early stopping,
macro-F1, gradient checkpointing, exact accumulation, layer decay.

Tolerances (stated per test):
- schedules vs transformers.get_scheduler: rel 1e-12 (the same float formulas).
- losses vs a hand computation, macro-F1 vs scikit-learn: rel 1e-6 (fp32 against float64).
- gradients with checkpointing, or accumulated vs one big batch: atol 1e-6 (the same ops, or sums in
  another order, on gradients of order 1e-2).
- two torchrun processes vs one: weights within 1e-5 after Adam (the argument of tests/test_ddp.py).
- resume: bit-identical (torch.equal), as the same ops run in the same order on the same state.
"""
import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from minift.errors import MiniftError
from minift.train_loop import train
from minift.train_step import make_optimizer, make_schedule
from conftest import ROOT, interrupt_at
from test_ddp import checkpoint_weights, free_port, torchrun_train
from test_train import FAST, clf_data, rows, tensors, write_csv  # noqa: F401  (clf_data: a fixture)


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
        assert "class weights " + " ".join(f"{k}={v:.4g}" for k, v in values.items()) + ";" in first, first
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


# ---- evaluation by steps, early stopping ----

def run(tiny_dir, data, out, **kw):
    """40 examples in batches of 4: 10 steps an epoch."""
    train_file, dev_file = data
    opts = {**FAST, "max_steps": 12, "batch_size": 4, "lr": 1e-3, "seed": 3, "eval_every": 3, **kw}
    return train(tiny_dir, train_file, out, eval=dev_file, log=io.StringIO(), **opts)


def same_run(a, b):
    ta, tb = tensors(a), tensors(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    ra, rb = rows(a), rows(b)
    assert rb and rb == ra[len(ra) - len(rb):]


@pytest.fixture(scope="module")
def by_steps(tiny_dir, clf_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("steps") / "out"
    return out, run(tiny_dir, clf_data, out, metric="loss")


def test_eval_every_keeps_the_best_of_all_evaluations(by_steps, clf_data):
    from minift.predict import evaluate
    out, row = by_steps
    r = rows(out)
    assert [(x["step"], x["epoch"]) for x in r] == [(3, 0.3), (6, 0.6), (9, 0.9), (10, 1.0), (12, 1.2)]
    losses = [x["dev_loss"] for x in r]
    best = losses.index(min(losses))
    assert [x["kept"] for x in r] == [x["dev_loss"] < min(losses[:i], default=math.inf) for i, x in enumerate(r)]
    m = evaluate(out, clf_data[1], precision="fp32", device="cpu")
    assert m["loss"] == pytest.approx(losses[best], abs=1e-5)  # the saved model is the best evaluation's
    assert row == r[-1]


@pytest.mark.parametrize("at", [4, 6, 10])  # after a mid-epoch step; at an evaluation; at an epoch's end
def test_eval_every_resumes_bit_identical(tiny_dir, clf_data, by_steps, tmp_path, monkeypatch, at):
    b = tmp_path / "out"
    with monkeypatch.context() as mp:
        interrupt_at(mp, at)
        assert run(tiny_dir, clf_data, b, metric="loss") == {"stopped_at": at}
    assert run(tiny_dir, clf_data, b, metric="loss", resume=True) == by_steps[1]
    same_run(by_steps[0], b)


def test_save_every_saves_the_checkpoint_between_evaluations(tiny_dir, clf_data, tmp_path, monkeypatch):
    import minift.train_loop as loop
    saved, real = [], loop.save_state
    monkeypatch.setattr(loop, "save_state", lambda r: (saved.append(r.state["step"]), real(r)))
    run(tiny_dir, clf_data, tmp_path / "out", eval_every=4, save_every=3)
    # evaluations at 4, 8, 10 (the epoch's end) and 12 (the last step); --save-every alone at 3, 6, 9
    assert saved == [3, 4, 6, 8, 9, 10, 12]
    assert [x["step"] for x in rows(tmp_path / "out")] == [4, 8, 10, 12]


def test_patience_stops_at_the_right_evaluation_and_resumes_with_its_count(tiny_dir, clf_data, tmp_path,
                                                                             monkeypatch):
    """Every step evaluated; the run must stop at the first evaluation that ends `patience` evaluations in a
    row whose dev loss is not below the best so far by more than min_delta."""
    opts = dict(eval_every=1, max_steps=40, metric="loss", patience=3, min_delta=0.002, lr=3e-4)
    log = io.StringIO()
    row = train(tiny_dir, clf_data[0], tmp_path / "a", eval=clf_data[1], log=log, **{**FAST, "batch_size": 4,
                                                                                      "seed": 3, **opts})
    r = rows(tmp_path / "a")
    best, waited, stop, best_step = math.inf, 0, None, None
    for x in r:  # the rule, restated
        waited = 0 if best - x["dev_loss"] > 0.002 else waited + 1
        if x["dev_loss"] < best:
            best, best_step = x["dev_loss"], x["step"]
        if waited == 3:
            stop = x["step"]
            break
    assert stop is not None and stop < 40, "the data must make it stop early"
    assert r[-1]["step"] == stop and row == r[-1]
    assert row["early_stop"] == {"best_step": best_step, "best_dev_loss": best}
    assert (f"early stop at step {stop}" in log.getvalue() and f"kept the model of step {best_step}, "
            f"dev loss {best:.4f}" in log.getvalue())
    assert [x for x in r if x["kept"]][-1]["step"] == best_step
    from minift.plot import panels, plot  # minift plot reads these rows: the stop is no curve
    assert panels({"a": r}) == ["loss", "dev_accuracy", "dev_macro_f1"]
    pytest.importorskip("matplotlib")
    assert plot([tmp_path / "a"], tmp_path / "curves.png").stat().st_size > 0
    # Interrupted after the count started, the resumed run stops at the same evaluation, with the same rows.
    with monkeypatch.context() as mp:
        interrupt_at(mp, stop - 1)
        train(tiny_dir, clf_data[0], tmp_path / "b", eval=clf_data[1], log=io.StringIO(),
              **{**FAST, "batch_size": 4, "seed": 3, **opts})
    again = train(tiny_dir, clf_data[0], tmp_path / "b", eval=clf_data[1], log=io.StringIO(), resume=True,
                  **{**FAST, "batch_size": 4, "seed": 3, **opts})
    assert again == row
    same_run(tmp_path / "a", tmp_path / "b")
    # A finished (stopped) run resumed does nothing more.
    assert train(tiny_dir, clf_data[0], tmp_path / "b", eval=clf_data[1], log=io.StringIO(), resume=True,
                 **{**FAST, "batch_size": 4, "seed": 3, **opts}) == row
    assert rows(tmp_path / "b") == r


def test_patience_needs_a_dev_set(tiny_dir, clf_data, tmp_path):
    with pytest.raises(MiniftError, match="--patience 2: .*--eval"):
        train(tiny_dir, clf_data[0], tmp_path / "out", patience=2, log=io.StringIO(), **FAST)


# ---- macro-F1 ----

@pytest.mark.parametrize("gold, pred", [
    ([0, 0, 1, 1, 2], [0, 1, 1, 1, 2]),  # every class present
    ([0, 0, 1, 1], [0, 1, 1, 1]),  # class 2 (and 3) absent from both
    ([0, 0, 0, 1], [0, 0, 3, 3]),  # class 3 only predicted, class 1 never predicted, class 2 absent
    ([2, 2], [2, 2]),  # one class present
])
def test_macro_f1_equals_scikit_learn(gold, pred):
    metrics = pytest.importorskip("sklearn.metrics")
    from minift.tasks.classify import metrics as ours
    logits = torch.nn.functional.one_hot(torch.tensor(pred), 4).float()
    got = ours(logits, torch.tensor(gold), "classify")["macro_f1"]
    assert got == pytest.approx(metrics.f1_score(gold, pred, average="macro", zero_division=0), rel=1e-6)


def test_multilabel_macro_f1_equals_scikit_learn():
    """Over indicator matrices scikit-learn averages every label, one that neither side holds as 0."""
    metrics = pytest.importorskip("sklearn.metrics")
    from minift.tasks.classify import metrics as ours
    gold = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0]])
    pred = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 1], [0, 1, 0, 0]])
    got = ours(pred.float() * 2 - 1, gold.float(), "multilabel")["macro_f1"]
    want = metrics.f1_score(gold.numpy(), pred.numpy(), average="macro", zero_division=0)
    assert got == pytest.approx(want, rel=1e-6)


# ---- gradient checkpointing ----

def grads_with_and_without_checkpointing(net, batch, loss_fn=None):
    """Every parameter's gradient of one training step (dropout on, the same seed), without and with."""
    out = []
    for on in (False, True):
        net.bert.checkpointing = on
        net.train().zero_grad()
        torch.manual_seed(0)
        (loss_fn or (lambda **b: net(**b)[1]))(**batch).backward()
        out.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    return out


def test_checkpointing_gives_the_same_gradients_bert(tiny_dir):
    net, b = classifier_batch(tiny_dir)
    assert net.config.hidden_dropout_prob > 0 and net.config.attention_probs_dropout_prob > 0
    assert (b["attention_mask"] == 0).any()  # padded: the packed layout goes through the checkpoints
    calls = []
    hook = torch.utils.checkpoint.checkpoint
    torch.utils.checkpoint.checkpoint = lambda *a, **k: (calls.append(1), hook(*a, **k))[1]
    try:
        plain, ckpt = grads_with_and_without_checkpointing(net, b)
    finally:
        torch.utils.checkpoint.checkpoint = hook
    assert len(calls) == len(net.bert.layers)
    assert set(plain) == set(ckpt) == {n for n, _ in net.named_parameters()}
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=0, atol=1e-6, msg=n)
    # dropout really drew masks: another seed gives other gradients
    net.bert.checkpointing = False
    net.zero_grad()
    torch.manual_seed(1)
    net(**b)[1].backward()
    assert not torch.allclose(net.bert.layers[0].fc.weight.grad, plain["bert.layers.0.fc.weight"], atol=1e-6)


def test_checkpointing_gives_the_same_gradients_modernbert_tagger():
    """ModernBERT (rotary, GeGLU, local windows shorter than the sequence), a token head, padded rows."""
    from minift.config import BertConfig
    from minift.tasks.tag import BertTagger
    cfg = BertConfig.from_dict({"model_type": "modernbert", "hidden_size": 32, "num_hidden_layers": 3,
                                "num_attention_heads": 2, "intermediate_size": 37, "global_attn_every_n_layers": 3,
                                "local_attention": 16, "pad_token_id": 0, "vocab_size": 99, "mlp_dropout": 0.1,
                                "embedding_dropout": 0.1, "attention_dropout": 0.1, "num_labels": 5,
                                "id2label": {str(i): f"T{i}" for i in range(5)}})
    torch.manual_seed(0)
    net = BertTagger(cfg)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (3, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 29:] = mask[2, 7:] = 0
    labels = torch.randint(0, 5, (3, 40), generator=g).masked_fill(mask == 0, -100)
    plain, ckpt = grads_with_and_without_checkpointing(net, dict(input_ids=ids.masked_fill(mask == 0, 0),
                                                                 attention_mask=mask, labels=labels))
    assert set(plain) == set(ckpt) and len(plain) == len(list(net.parameters()))
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=0, atol=1e-6, msg=n)


def test_checkpointing_on_the_onednn_path(tiny_dir, monkeypatch):
    """fp32 on a CPU whose linears take oneDNN (minift/gemm.py): the recomputation in backward, which runs after
    the forward's context has closed, goes through oneDNN too (torch's own linear there saves other tensors than
    the forward did, which checkpoint refuses)."""
    from minift import gemm
    from minift.train_step import make_loss_fn
    if not gemm.onednn_available():
        pytest.skip("this PyTorch has no oneDNN packed linear")
    monkeypatch.setenv("MINIFT_GEMM", "onednn")
    calls, real = [], gemm.packed_forward
    monkeypatch.setattr(gemm, "packed_forward", lambda m, x: calls.append(1) or real(m, x))
    net, b = classifier_batch(tiny_dir)
    plain, ckpt = grads_with_and_without_checkpointing(net, b, make_loss_fn(net, None, torch.device("cpu"), False))
    per_layer = len(gemm.fp32_linears(net.bert.layers[0]))
    assert len(calls) == 2 * len(gemm.fp32_linears(net)) + len(net.bert.layers) * per_layer  # recomputed: oneDNN
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=0, atol=1e-6, msg=n)


def test_checkpointing_through_train(tiny_dir, clf_data, tmp_path):
    """The same run with --checkpointing ends with the same weights (the same gradients, step after step)."""
    run(tiny_dir, clf_data, tmp_path / "a", max_steps=4, eval_every=None)
    run(tiny_dir, clf_data, tmp_path / "b", max_steps=4, eval_every=None, checkpointing=True)
    ta, tb = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=1e-6, msg=k)



def saved_for_backward(net, loss_fn, batch, checkpointing: bool):
    """One training step (dropout on, seed 0): the gradients, and the bytes autograd kept for backward."""
    net.bert.checkpointing = checkpointing
    net.train().zero_grad()
    kept = []
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (kept.append(t.numel() * t.element_size()), t)[1],
                                                  lambda t: t):
        loss = loss_fn(**batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}, sum(kept)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's own compile stack
def test_checkpointing_under_compile(tiny_dir):
    """--checkpointing --compile on: the compiled step recomputes too (it keeps for backward no more than the
    eager checkpointed step, where the compiled step without checkpointing keeps several times more) and
    gives the eager gradients within 1e-6. One compilation (tens of seconds on a 2-core CPU): the compiled
    step is checked with checkpointing only. fallback_random: the compiled dropout draws its masks as
    eager does, so that the replayed masks of the recomputation are what is compared."""
    from minift.train_step import make_loss_fn
    net, b = classifier_batch(tiny_dir)
    cpu = torch.device("cpu")
    eager = make_loss_fn(net, None, cpu, compile=False)
    plain, plain_bytes = saved_for_backward(net, eager, b, checkpointing=False)
    _, ckpt_bytes = saved_for_backward(net, eager, b, checkpointing=True)
    assert ckpt_bytes < plain_bytes / 4
    torch._dynamo.reset()
    try:
        with torch._inductor.config.patch(fallback_random=True):
            got, got_bytes = saved_for_backward(net, make_loss_fn(net, None, cpu, compile=True), b, checkpointing=True)
    finally:
        torch._dynamo.reset()
    assert got_bytes <= ckpt_bytes
    for n in plain:
        torch.testing.assert_close(got[n], plain[n], rtol=0, atol=1e-6, msg=n)

# ---- layer decay ----

def test_layer_decay_gives_each_group_its_learning_rate(tiny_dir):
    """tiny-bert has 2 layers: the head gets lr, layer 1 lr * 0.5, layer 0 lr * 0.25, the embeddings
    lr * 0.125; the schedule scales every group by the same factor."""
    from minift.tasks.classify import BertClassifier
    net = BertClassifier.from_pretrained(tiny_dir)
    lr = 1e-3
    opt = make_optimizer(net, lr, 0.01, layer_decay=0.5)
    sched = make_schedule(opt, 3, 10)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    want = {"bert.embeddings.": 0.125, "bert.layers.0.": 0.25, "bert.layers.1.": 0.5, "bert.pooler.": 1.0,
            "classifier.": 1.0}
    seen = set()
    for name, p in net.named_parameters():
        prefix = next(k for k in want if name.startswith(k))
        seen.add(prefix)
        g = group_of[id(p)]
        assert g["initial_lr"] == pytest.approx(lr * want[prefix], rel=1e-12), name
        assert g["lr"] == pytest.approx(lr * want[prefix] / 4, rel=1e-12), name  # warmup's first factor, 1/4
        assert g["weight_decay"] == (0.01 if p.ndim >= 2 else 0.0), name
    assert seen == set(want)
    opt.step()
    sched.step()
    for name, p in net.named_parameters():
        prefix = next(k for k in want if name.startswith(k))
        assert group_of[id(p)]["lr"] == pytest.approx(lr * want[prefix] / 2, rel=1e-12), name


# ---- exact accumulation ----

def rows_of(g, n, lo, hi, vocab=200):
    """n random rows of lo..hi tokens: ids, and for each a random label per token (-100 at some)."""
    out = []
    for _ in range(n):
        T = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = torch.randint(5, vocab, (T,), generator=g)
        lab = torch.randint(0, 4, (T,), generator=g)
        lab[torch.rand(T, generator=g) < 0.4] = -100
        lab[0] = -100
        lab[1] = int(ids[1]) % 4  # at least one label per row
        out.append((ids, lab))
    return out


def padded(rows, task):
    ids = nn.utils.rnn.pad_sequence([r[0] for r in rows], batch_first=True)
    mask = nn.utils.rnn.pad_sequence([torch.ones_like(r[0]) for r in rows], batch_first=True)
    b = {"input_ids": ids, "attention_mask": mask}
    if task == "qa":
        lengths = mask.sum(1)
        b["start_positions"] = torch.stack([r[0][0] % n for r, n in zip(rows, lengths)])
        b["end_positions"] = torch.minimum(b["start_positions"] + 2, lengths - 1)
    else:
        labels = nn.utils.rnn.pad_sequence([r[1] for r in rows], batch_first=True, padding_value=-100)
        b["labels"] = labels if task == "tag" else torch.where(labels >= 0, ids, -100)  # mlm: the token itself
    return b


def task_model(tiny_dir, task):
    from minift.tasks.mlm import BertForMaskedLM
    from minift.tasks.qa import BertQA
    from minift.tasks.tag import BertTagger
    from test_train import no_dropout
    cls = {"tag": BertTagger, "qa": BertQA, "mlm": BertForMaskedLM}[task]
    torch.manual_seed(0)
    extra = {"id2label": {i: f"T{i}" for i in range(4)}} if task == "tag" else {}
    return no_dropout(cls.from_pretrained(tiny_dir, new_head=True, **extra))


def sgd_update(net, micro, shares):
    """The change of every parameter in one train_step with SGD at lr 1 and no clipping: minus the gradient."""
    import copy
    from minift.train_step import make_loss_fn, train_step
    net = copy.deepcopy(net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    train_step(make_loss_fn(net, None, torch.device("cpu"), False), opt, sched, None, micro, 1e9, shares)
    return {n: before[n] - p.detach() for n, p in net.named_parameters()}


@pytest.mark.parametrize("task", ["tag", "qa", "mlm"])
def test_accumulated_gradient_equals_one_big_batch(tiny_dir, task):
    """Micro-batches of 3, 1 and 2 rows with very different token counts: their accumulated gradient is that
    of the one batch holding them all, within 1e-6; the mean of their means (what equal parts give) is not."""
    from minift.train_step import accumulation_shares, loss_units
    net = task_model(tiny_dir, task)
    g = torch.Generator().manual_seed(1)
    parts = [rows_of(g, 3, 3, 6), rows_of(g, 1, 20, 24), rows_of(g, 2, 8, 12)]
    micro = [padded(p, task) for p in parts]
    big = padded([r for p in parts for r in p], task)
    units = [loss_units(b) for b in micro]
    assert units == ([3.0, 1.0, 2.0] if task == "qa" else [float((b["labels"] != -100).sum()) for b in micro])
    want = sgd_update(net, [big], None)
    got = sgd_update(net, micro, accumulation_shares(units))
    naive = sgd_update(net, micro, None)
    assert max((want[n] - naive[n]).abs().max().item() for n in want) > 1e-4  # equal parts are not exact
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-6, msg=n)


def test_weighted_tag_loss_accumulates_exactly(tiny_dir):
    """With --class-weights a token counts by its class's weight: still one big batch's gradient."""
    from minift.train_step import accumulation_shares, loss_units
    net = task_model(tiny_dir, "tag")
    net.class_weights = torch.tensor([0.2, 1.0, 3.0, 0.7])
    g = torch.Generator().manual_seed(2)
    parts = [rows_of(g, 2, 3, 5), rows_of(g, 2, 15, 20)]
    micro = [padded(p, "tag") for p in parts]
    want = sgd_update(net, [padded(parts[0] + parts[1], "tag")], None)
    got = sgd_update(net, micro, accumulation_shares([loss_units(b, net.class_weights) for b in micro]))
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-6, msg=n)


def test_two_processes_accumulating_tag_match_one(tiny_dir, tmp_path):
    """torchrun, 2 processes, --grad-accum 2 on tagging, where each rank's half of a micro-batch holds its own
    number of tagged words: the same weights as one process (within 1e-5 after Adam, as tests/test_ddp.py
    argues; the mean of the ranks' means, the former rule, landed 8e-5 away)."""
    from test_tag import no_dropout_dir, tagged_sentences, write_conll
    model = no_dropout_dir(tiny_dir, tmp_path / "model")
    data = write_conll(tmp_path / "train.conll", tagged_sentences(32, seed=0, lengths=(2, 14)))
    opts = dict(task="tag", max_steps=4, batch_size=8, grad_accum=2, lr=1e-3, precision="fp32", compile="off",
                device="cpu", max_length=24)
    train(model, data, tmp_path / "one", log=io.StringIO(), **opts)
    r = torchrun_train(model, data, tmp_path / "two", opts)
    assert r.returncode == 0, r.stderr
    a, b = checkpoint_weights(tmp_path / "one"), checkpoint_weights(tmp_path / "two")
    assert set(a) == set(b)
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5, k


def test_early_stop_under_torchrun_stops_every_rank(tiny_dir, clf_data, tmp_path):
    """Rank 0 alone evaluates; the others learn of the stop from it and leave with it (no hang). At lr 1e-5
    the dev accuracy cannot move in 3 steps: patience 2 stops at the third evaluation."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master-port={free_port()}", "-m", "minift", "train", "--model", str(tiny_dir), "--train", str(clf_data[0]), "--eval",
                        str(clf_data[1]), "--out", str(out), "--max-steps=40", "--batch-size=4", "--lr=1e-5",
                        "--eval-every=1", "--patience=2", "--metric=accuracy", "--precision=fp32", "--device=cpu",
                        "--max-length=24"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.strip()]
    row = json.loads(line)
    assert row["step"] == 3 and row["early_stop"]["best_step"] == 1
    assert [x["step"] for x in rows(out)] == [1, 2, 3]
    assert r.stderr.count("early stop at step 3") == 1
