"""Training: the step against hand-written and transformers references, modes, the loop, resume.

Tolerances (stated per test):
- fp32 step vs a hand-written reference: rtol 1e-6 / atol 1e-5 on every parameter after 5 steps
  (the same fp32 ops; only AdamW's kernel differs, ~1e-7 relative).
- fp32 step vs transformers + torch.optim.AdamW: atol 1e-5 after 3 steps (forward parity is 1e-5).
- bf16 autocast vs fp32: bf16 keeps 8 mantissa bits (~4e-3 relative per op), so the parameter
  updates are compared: direction (cosine > 0.99), 99% of elements within 0.2 lr, all within
  2 lr per step (see the test for why single elements may be that far).
- compile vs eager: loss within 1e-5, gradients within 1e-5.
- resume: bit-identical (torch.equal), as the same ops run in the same order on the same state.
"""
import copy
import csv
import io
import json
import os
import random
import shutil
import signal

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import minift.train_loop
from minift.checkpoint import hf_state_dict
from minift.errors import MiniftError
from minift.model import SelfAttention
from minift.tasks.classify import BertClassifier
from minift.modes import apply_mode, merge_lora, parse_mode
from minift.predict import evaluate, predict
from minift.tokenizer import Tokenizer
from minift.train_loop import train
from minift.train_step import make_loss_fn, make_optimizer, make_schedule, train_step
from conftest import interrupt_at

CPU = torch.device("cpu")
WORDS = ("the movie film story plot good bad great awful love hate fun boring funny sad happy dull fine "
         "best worst not very really i you we it was is").split()
LABELS = ("negative", "neutral", "positive")
# Every train() call here: tiny model, CPU, fp32, eager, short sequences.
FAST = dict(precision="fp32", compile="off", device="cpu", max_length=24)


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, SelfAttention):
            m.p_drop = 0.0
    return model


def make_batches(tiny_dir, seed, n_micro=2, size=4):
    """n_micro padded micro-batches of random vocabulary words (lengths differ, so padding is masked)."""
    tok = Tokenizer.from_dir(tiny_dir)
    rng = random.Random(seed)
    out = []
    for _ in range(n_micro):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10))) for _ in range(size)]
        b = tok(texts, max_length=16)
        b["labels"] = torch.tensor([rng.randrange(3) for _ in range(size)])
        out.append(b)
    return out


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))


def write_csv(path, n, seed=0, pair=False, labels=LABELS):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"] + (["text2"] if pair else []))
        for i in range(n):
            w.writerow([sentence(rng), labels[i % len(labels)]] + ([sentence(rng)] if pair else []))
    return path


def tensors(path):
    return load_file(path / "model.safetensors")


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---- 1. the step against a hand-written reference ----

def test_step_matches_hand_written_reference(tiny_dir):
    """5 steps: 2 accumulated micro-batches, clipping active, warmup then decay, decoupled weight decay."""
    lr, wd, clip, warmup, total = 1e-2, 0.1, 0.05, 2, 10
    b1, b2, eps = 0.9, 0.999, 1e-8
    net = no_dropout(BertClassifier.from_pretrained(tiny_dir))
    ref = copy.deepcopy(net)
    start = [p.detach().clone() for p in ref.parameters()]
    opt = make_optimizer(net, lr, wd)
    sched = make_schedule(opt, warmup, total)
    loss_fn = make_loss_fn(net, None, CPU, compile=False)
    # Linear warmup over 2 steps that starts above 0, peak at step 2, then linear decay to 0 at step 10.
    factors = (1 / 3, 2 / 3, 8 / 8, 7 / 8, 6 / 8)
    m = [torch.zeros_like(p) for p in ref.parameters()]
    v = [torch.zeros_like(p) for p in ref.parameters()]
    for k, f in enumerate(factors):
        micro = make_batches(tiny_dir, seed=k)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr * f, rel=1e-12)
        loss, norm, applied = train_step(loss_fn, opt, sched, None, micro, clip)

        ref_loss = 0.0
        for b in micro:
            logits = ref(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            part = F.cross_entropy(logits, b["labels"]) / len(micro)
            part.backward()
            ref_loss += part.item()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        step_lr, t = lr * f, k + 1
        with torch.no_grad():
            for p, m_, v_ in zip(ref.parameters(), m, v):
                g = p.grad
                m_.mul_(b1).add_((1 - b1) * g)
                v_.mul_(b2).add_((1 - b2) * g * g)
                if p.ndim >= 2:  # decoupled decay: matrices and embeddings only
                    p.mul_(1 - step_lr * wd)
                m_hat, v_hat = m_ / (1 - b1 ** t), v_ / (1 - b2 ** t)
                p.sub_(step_lr * m_hat / (v_hat.sqrt() + eps))
                p.grad = None

        assert applied
        assert loss.item() == pytest.approx(ref_loss, rel=1e-6)
        assert norm.item() == pytest.approx(ref_norm.item(), rel=1e-5)
        assert norm.item() > 3 * clip  # the clipping changed the update
    moved = max((p - s).abs().max().item() for p, s in zip(ref.parameters(), start))
    assert moved > 1e-2  # far above the tolerance: a wrong update could not hide in it
    for (name, p), r in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-5, msg=name)


def test_bf16_autocast_step_close_to_fp32(tiny_dir):
    """Adam turns each gradient into a step of about lr whatever its size, so an element whose gradient
    is near 0 can flip sign under bf16 rounding and land up to ~2 lr per step away: a few elements may
    differ by a few lr. The bulk must agree: the update directions (cosine > 0.99), 99% of the elements
    within 0.2 lr (fp32 vs bf16 measured: cosine 0.998, 99th percentile 0.1 lr, max 2.3 lr over 3 steps)."""
    lr, steps = 1e-3, 3
    updates, losses = {}, {}
    for amp in (None, torch.bfloat16):
        net = no_dropout(BertClassifier.from_pretrained(tiny_dir))
        start = torch.cat([p.detach().flatten() for p in net.parameters()])
        opt = make_optimizer(net, lr, 0.01)
        sched = make_schedule(opt, 0, 100)
        loss_fn = make_loss_fn(net, amp, CPU, compile=False)
        losses[amp] = []
        for k in range(steps):
            loss, norm, applied = train_step(loss_fn, opt, sched, None, make_batches(tiny_dir, seed=k), 1.0)
            assert applied and torch.isfinite(loss)
            losses[amp].append(loss.item())
        for p in net.parameters():
            assert p.dtype == torch.float32  # weights (and so the update) stay fp32 under autocast
        updates[amp] = torch.cat([p.detach().flatten() for p in net.parameters()]) - start
    d32, d16 = updates[None], updates[torch.bfloat16]
    diff = (d32 - d16).abs()
    assert d32.abs().max() > 2 * lr  # the updates are not trivial
    assert F.cosine_similarity(d32, d16, dim=0) > 0.99
    assert diff.quantile(0.99) < 0.2 * lr
    assert diff.max() < 2 * steps * lr
    assert losses[torch.bfloat16] == pytest.approx(losses[None], abs=1e-3)  # loss of order 1, fp32 softmax


# ---- 2. the same as transformers + torch.optim.AdamW ----

def test_step_matches_transformers_and_torch_adamw(tiny_dir):
    transformers = pytest.importorskip("transformers")
    lr, wd, clip, warmup, total = 1e-2, 0.1, 0.05, 1, 5
    hf = transformers.BertForSequenceClassification.from_pretrained(
        tiny_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf.train()
    net = no_dropout(BertClassifier.from_pretrained(tiny_dir))
    start = {k: v.clone() for k, v in hf_state_dict(net).items()}  # (it returns views of the parameters)

    named = list(hf.named_parameters())
    groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": wd},
              {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
    hf_opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    hf_sched = torch.optim.lr_scheduler.LambdaLR(
        hf_opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else (total - s) / (total - warmup))

    opt = make_optimizer(net, lr, wd)
    sched = make_schedule(opt, warmup, total)
    loss_fn = make_loss_fn(net, None, CPU, compile=False)
    for k in range(3):
        micro = make_batches(tiny_dir, seed=10 + k)
        loss, norm, _ = train_step(loss_fn, opt, sched, None, micro, clip)
        hf_loss = 0.0
        for b in micro:
            part = hf(**b).loss / len(micro)
            part.backward()
            hf_loss += part.item()
        hf_norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), clip)
        hf_opt.step()
        hf_sched.step()
        hf_opt.zero_grad()
        assert loss.item() == pytest.approx(hf_loss, abs=1e-5)
        assert norm.item() == pytest.approx(hf_norm.item(), rel=1e-4)
        assert norm.item() > clip

    ours, theirs = hf_state_dict(net), dict(hf.named_parameters())
    assert set(ours) == set(theirs)
    assert max((ours[k] - start[k]).abs().max().item() for k in ours) > 1e-2
    for k, t in theirs.items():
        torch.testing.assert_close(ours[k], t.detach(), rtol=0, atol=1e-5, msg=k)


# ---- 3. torch.compile ----

@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's own compile stack
def test_compiled_loss_matches_eager_without_recompiling(tiny_dir):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    net = no_dropout(BertClassifier.from_pretrained(tiny_dir))
    eager = make_loss_fn(net, None, CPU, compile=False)
    compiled = make_loss_fn(net, None, CPU, compile=True)
    for seed, size in ((0, 2), (1, 3)):  # two batch sizes, and two sequence lengths
        b = make_batches(tiny_dir, seed=seed, n_micro=1, size=size)[0]
        want = eager(**b)
        want.backward()
        want_grads = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        got = compiled(**b)
        got.backward()
        assert got.item() == pytest.approx(want.item(), abs=1e-5)
        for p, g in zip(net.parameters(), want_grads):
            torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-5)
        net.zero_grad()
        # The packing of real tokens runs eagerly (a graph break by design: it is data, not shape), which
        # splits the loss into a few graphs; a second batch shape must not add any.
        graphs = graphs if seed else counters["stats"]["unique_graphs"]
        assert counters["stats"]["unique_graphs"] == graphs, f"recompiled for batch shape {tuple(b['input_ids'].shape)}"
    torch._dynamo.reset()


# ---- 4. it learns ----

def test_memorises_eight_examples(tiny_dir):
    """8 examples with arbitrary labels, 150 full-mode steps: the training set is learnt by heart.
    (Dropout off so that the tiny model's capacity all goes to memorising; all 8 seeds tried passed,
    final losses 0.01-0.03.)"""
    torch.manual_seed(0)
    net = no_dropout(apply_mode(BertClassifier.from_pretrained(tiny_dir), "full"))
    opt = make_optimizer(net, 3e-3, 0.01)
    sched = make_schedule(opt, 10, 150)
    loss_fn = make_loss_fn(net, None, CPU, compile=False)
    batch = make_batches(tiny_dir, seed=3, n_micro=1, size=8)[0]
    assert len(set(batch["labels"].tolist())) == 3
    losses = [train_step(loss_fn, opt, sched, None, [batch], 1.0)[0].item() for _ in range(150)]
    net.eval()
    with torch.no_grad():
        logits = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert (logits.argmax(1) == batch["labels"]).all()
    assert F.cross_entropy(logits, batch["labels"]).item() < 0.05
    assert losses[0] > 1.0 and losses[-1] < 0.05


# ---- 5. modes ----

def changed_tensors(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def train_a_few_steps(net, tiny_dir, steps=3):
    opt = make_optimizer(net, 1e-2, 0.01)
    sched = make_schedule(opt, 0, 100)
    loss_fn = make_loss_fn(net, None, CPU, compile=False)
    for k in range(steps):
        train_step(loss_fn, opt, sched, None, make_batches(tiny_dir, seed=k), 1.0)


@pytest.mark.parametrize("mode", ["full", "head", "top-1", "lora"])
def test_mode_trains_exactly_its_parameters(tiny_dir, mode):
    torch.manual_seed(0)
    net = apply_mode(BertClassifier.from_pretrained(tiny_dir), mode, lora_rank=4, lora_alpha=8.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train_a_few_steps(net, tiny_dir)
    changed = changed_tensors(before, net.state_dict())
    head = {k for k in before if k.startswith(("bert.pooler.", "classifier."))}
    if mode == "full":
        assert changed == set(before)
    elif mode == "head":
        assert changed == head
    elif mode == "top-1":
        assert changed == head | {k for k in before if k.startswith("bert.layers.1.")}
    else:
        lora = {k for k in before if k.endswith((".A", ".B"))}
        assert len(lora) == 2 * 4 * 2  # A and B on 4 linears in each of 2 layers
        assert changed == head | lora  # every base weight, LayerNorm and embedding unchanged
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == changed


def test_lora_merge_and_saved_model(tiny_dir, tmp_path):
    torch.manual_seed(0)
    net = apply_mode(BertClassifier.from_pretrained(tiny_dir), "lora", lora_rank=4, lora_alpha=8.0)
    train_a_few_steps(net, tiny_dir)
    assert any(p.abs().max() > 0 for n, p in net.named_parameters() if n.endswith(".B"))  # adapters are in use
    b = make_batches(tiny_dir, seed=7, n_micro=1)[0]
    net.eval()
    with torch.no_grad():
        unmerged = net(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        merged_net = merge_lora(copy.deepcopy(net))
        merged = merged_net(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        base = apply_mode(BertClassifier.from_pretrained(tiny_dir), "head").eval()(
            b["input_ids"], b["attention_mask"], b["token_type_ids"])
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    assert (unmerged - base).abs().max() > 1e-3  # the adapters changed the function
    assert set(merged_net.state_dict()) == set(BertClassifier.from_pretrained(tiny_dir).state_dict())

    # Through train(): the saved directory is a plain BERT with the adapters folded in.
    data = write_csv(tmp_path / "train.csv", 12)
    out = tmp_path / "out"
    train(tiny_dir, data, out, mode="lora", lora_rank=4, lora_alpha=8.0, lr=1e-2, max_steps=4, batch_size=4,
          log=io.StringIO(), **FAST)
    saved = tensors(out)
    assert set(saved) == set(hf_state_dict(BertClassifier.from_pretrained(tiny_dir)))
    assert not any(k.endswith((".A", ".B")) or ".base." in k for k in saved)
    # checkpoint.safetensors holds the unmerged adapters of the same (final) state
    again = apply_mode(BertClassifier.from_pretrained(out), "lora", lora_rank=4, lora_alpha=8.0)
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        again.load_state_dict({k[len("model."):]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")})
    loaded = BertClassifier.from_pretrained(out).eval()
    with torch.no_grad():
        a = again.eval()(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        c = loaded(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    torch.testing.assert_close(c, a, rtol=0, atol=1e-5)


def test_bad_modes(tiny_dir):
    for mode in ("top-0", "foo", "top-", "top-x", "lora2"):
        with pytest.raises(MiniftError, match="--mode"):
            parse_mode(mode)
    with pytest.raises(MiniftError, match="only 2 encoder layers"):
        apply_mode(BertClassifier.from_pretrained(tiny_dir), "top-99")
    assert parse_mode("top-2") == ("top", 2)


# ---- 6. the loop: resume, and the output directory ----

@pytest.fixture(scope="module")
def clf_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return write_csv(d / "train.csv", 40, seed=1), write_csv(d / "dev.csv", 12, seed=2)


def run(tiny_dir, data, out, **kw):
    train_file, dev_file = data
    opts = {**FAST, "max_steps": 12, "batch_size": 4, "lr": 1e-3, "seed": 3, **kw}
    return train(tiny_dir, train_file, out, eval=dev_file, log=io.StringIO(), **opts)


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, clf_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "out"
    row = run(tiny_dir, clf_data, out)
    return out, row




@pytest.mark.parametrize("at", [5, 10, 12])  # mid-epoch; at the end of epoch 1; at the very last step
def test_resume_is_bit_identical(tiny_dir, clf_data, uninterrupted, tmp_path, monkeypatch, at):
    a, a_row = uninterrupted
    b = tmp_path / "out"
    found = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with monkeypatch.context() as mp:
        interrupt_at(mp, at)
        assert run(tiny_dir, clf_data, b) == {"stopped_at": at}
    assert (b / "checkpoint.safetensors").exists()
    # the handlers the run found are back, whatever they were (SIG_IGN when the suite runs under nohup)
    assert {s: signal.getsignal(s) for s in found} == found
    b_row = run(tiny_dir, clf_data, b, resume=True)
    assert b_row == a_row
    ta, tb = tensors(a), tensors(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    # metrics.jsonl: the rows written after the resume are A's rows, losses included, bit for bit
    ra, rb = rows(a), rows(b)
    assert [r["step"] for r in ra] == [10, 12]
    assert rb == ra[len(ra) - len(rb):] and rb
    assert ra[-1]["train_loss"] != ra[0]["train_loss"]


@pytest.mark.parametrize("found", [signal.SIG_IGN, signal.SIG_DFL, "handler"])
def test_run_restores_the_signal_handlers_it_found(tiny_dir, clf_data, tmp_path, found):
    """A run started in the background (SIGINT ignored), in a foreground shell (Python's handler) or by
    a program with its own handlers gives back exactly what it found, after a finished or a stopped run."""
    mine = {signal.SIGINT: (lambda n, f: None), signal.SIGTERM: (lambda n, f: None)}
    want = {s: mine[s] if found == "handler" else found for s in mine}
    before = {s: signal.signal(s, h) for s, h in want.items()}
    try:
        run(tiny_dir, clf_data, tmp_path / "a", max_steps=2)
        assert {s: signal.getsignal(s) for s in want} == want
        with pytest.MonkeyPatch.context() as mp:  # the SIGINT lands while the run's own handler is in place
            interrupt_at(mp, 1)
            assert run(tiny_dir, clf_data, tmp_path / "b") == {"stopped_at": 1}
        assert {s: signal.getsignal(s) for s in want} == want
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_resume_refusals(tiny_dir, clf_data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MiniftError, match="no checkpoint"):
        run(tiny_dir, clf_data, out, resume=True)
    assert not out.exists()
    run(tiny_dir, clf_data, out, max_steps=2)
    with pytest.raises(MiniftError, match=r"differ.*'lr': \(0\.001, 0\.002\)"):
        run(tiny_dir, clf_data, out, max_steps=2, lr=2e-3, resume=True)
    with pytest.raises(MiniftError, match="batch_size"):
        run(tiny_dir, clf_data, out, max_steps=2, batch_size=8, resume=True)


def test_out_dir_not_empty_needs_overwrite(tiny_dir, clf_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(MiniftError, match="--overwrite"):
        run(tiny_dir, clf_data, out, max_steps=2)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    run(tiny_dir, clf_data, out, max_steps=2, overwrite=True)
    assert (out / "model.safetensors").exists() and [r["step"] for r in rows(out)] == [2]
    # a second --overwrite replaces the first run's records instead of appending to them
    run(tiny_dir, clf_data, out, max_steps=3, overwrite=True)
    assert [r["step"] for r in rows(out)] == [3]
    assert json.loads((out / "run.json").read_text())["max_steps"] == 3


# ---- 7. the output loads in transformers and predicts the same ----

def test_saved_model_predicts_the_same_in_transformers(tiny_dir, clf_data, uninterrupted):
    transformers = pytest.importorskip("transformers")
    out, _ = uninterrupted
    rng = random.Random(5)
    texts = [sentence(rng) for _ in range(10)]
    hf = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    with torch.no_grad():
        probs = torch.softmax(hf(**tok(texts, padding=True, return_tensors="pt")).logits, -1)
    ours = predict(out, texts, precision="fp32", device="cpu")
    assert [r["label"] for r in ours] == [hf.config.id2label[i] for i in probs.argmax(1).tolist()]
    got = torch.tensor([[r["probs"][n] for n in LABELS] for r in ours])
    torch.testing.assert_close(got, probs, rtol=0, atol=1e-5)


# ---- 8. tasks ----

@pytest.fixture(scope="module")
def base_dir(tiny_dir, tmp_path_factory):
    """tiny-bert without its 3-way classifier: a base BERT that takes a head of any size."""
    d = tmp_path_factory.mktemp("base")
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, d / name)
    save_file({k: v for k, v in tensors(tiny_dir).items() if not k.startswith("classifier.")}, str(d / "model.safetensors"))
    return d


def test_multilabel_regression_and_pairs(base_dir, tmp_path):
    rng = random.Random(0)
    names = ("action", "comedy", "drama")
    ml = tmp_path / "ml.jsonl"
    ml.write_text("".join(json.dumps({"text": sentence(rng), "label": [n for n in names if rng.random() < 0.5]}) + "\n"
                          for _ in range(16)))
    reg = tmp_path / "reg.csv"
    with open(reg, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(16):
            w.writerow([sentence(rng), f"{rng.uniform(-1, 3):.3f}"])
    pair = write_csv(tmp_path / "pair.csv", 16, pair=True)

    cases = [("multilabel", ml, {}, {"loss", "accuracy", "macro_f1"}),
             ("regression", reg, {}, {"mse", "pearson"}),
             ("classify", pair, {"text_pair_column": "text2"}, {"loss", "accuracy", "macro_f1"})]
    for task, data, extra, keys in cases:
        out = tmp_path / task
        row = train(base_dir, data, out, eval=data, task=task, max_steps=4, batch_size=8, lr=1e-3,
                    log=io.StringIO(), **extra, **FAST)
        assert set(row) == {"step", "epoch", "train_loss", "kept"} | {f"dev_{k}" for k in keys}
        assert rows(out)[-1] == row and row["step"] == 4
        m = evaluate(out, data, text_pair_column=extra.get("text_pair_column"), precision="fp32", device="cpu")
        assert set(m) == keys | {"examples", "skipped_empty"} and m["examples"] == 16
        kept = [r for r in rows(out) if r["kept"]][-1]
        for k in keys:  # the kept model's dev metrics, recomputed from the saved directory
            assert m[k] == pytest.approx(kept[f"dev_{k}"], abs=1e-5), (task, k)
    assert json.loads((tmp_path / "multilabel" / "config.json").read_text())["id2label"] == \
        {"0": "action", "1": "comedy", "2": "drama"}
    assert json.loads((tmp_path / "regression" / "config.json").read_text())["problem_type"] == "regression"
    assert set(predict(tmp_path / "regression", ["good film"], device="cpu")[0]) == {"score"}
    assert set(predict(tmp_path / "multilabel", ["good film"], device="cpu")[0]) == {"labels", "probs"}


def test_dev_label_unseen_in_training_is_scored_wrong_and_reported(tiny_dir, tmp_path):
    tr = write_csv(tmp_path / "train.csv", 9)
    dev = write_csv(tmp_path / "dev.csv", 4, labels=("negative", "surprised"))
    out = tmp_path / "out"
    row = train(tiny_dir, tr, out, eval=dev, max_steps=1, log=io.StringIO(), **FAST)
    assert row["dev_unseen_labels"] == {"surprised": 2}
    with open(dev, newline="") as f:
        gold = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    pred = predict(out, [t for t, _ in gold], device="cpu", precision="fp32")
    right = sum(p["label"] == label for p, (_, label) in zip(pred, gold))  # "surprised" is never predicted
    assert row["dev_accuracy"] == pytest.approx(right / 4, abs=1e-6)
    result = evaluate(out, dev, device="cpu", precision="fp32")
    assert result["unseen_labels"] == {"surprised": 2} and result["accuracy"] == pytest.approx(right / 4, abs=1e-6)


# ---- 9. bad options ----

@pytest.mark.parametrize("opts, flag", [
    ({"batch_size": 0}, "--batch-size 0"),
    ({"lr": -1.0}, "--lr -1"),
    ({"epochs": 0}, "--epochs 0"),
    ({"max_length": 100}, "--max-length 100"),
    ({"mode": "top-99"}, "--mode top-99"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_options_are_refused_before_writing(tiny_dir, tmp_path, opts, flag):
    tr = write_csv(tmp_path / "train.csv", 6)
    out = tmp_path / "out"
    options = {**FAST, **opts}
    with pytest.raises(MiniftError, match=flag):
        train(tiny_dir, tr, out, log=io.StringIO(), **options)
    assert not out.exists() or not any(out.iterdir())
