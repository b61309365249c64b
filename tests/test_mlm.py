"""Masked-LM adaptation (--task mlm): the head against transformers' BertForMaskedLM, masking, packing,
training, saving, resume.

Tolerances: fp32 logits and loss within 1e-5 of transformers, gradients within 1e-4 (as for the encoder);
masking proportions within 1.5 points of 15% / 80 / 10 / 10 on ~22,000 chosen tokens (the binomial
standard deviation there is under 0.3 points); resume bit-identical (torch.equal).
"""
import io
import json
import os
import random
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file

import minift.train_loop
from minift.cli import main
from minift.errors import MiniftError
from minift.predict import evaluate, predict
from minift.tasks import TaskOptions, get
from minift.tasks.classify import BertClassifier
from minift.tasks.mlm import BertForMaskedLM, Texts, mask_tokens, pack
from minift.tokenizer import Tokenizer
from minift.train_loop import train
from conftest import interrupt_at

WORDS = ("the movie film story plot good bad great awful love hate fun boring funny sad happy dull fine "
         "best worst not very really i you we it was is zebra quixotic blurb").split()  # the last three: pieces
FAST = dict(precision="fp32", compile="off", device="cpu", max_length=24, task="mlm")
MLM = get("mlm")


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))


def write_txt(path, n, seed=0):
    rng = random.Random(seed)
    path.write_text("".join(sentence(rng) + "\n" for _ in range(n)))
    return path


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def hf_mlm_dir(transformers, tmp_path, config, seed=0):
    """A transformers BertForMaskedLM with random weights (a random output bias too), saved."""
    torch.manual_seed(seed)
    hf = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():
        hf.cls.predictions.bias.normal_()
    d = tmp_path / f"hf-{seed}"
    hf.save_pretrained(d)
    return d


def random_batch(vocab, seed, B=3, T=13):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:], mask[2, 4:] = 0, 0
    labels = torch.where((torch.rand(B, T, generator=g) < 0.3) & mask.bool(), ids, -100)
    labels[:, 1] = ids[:, 1]  # at least one target per row
    return ids, mask, torch.randint(0, 2, (B, T), generator=g) * mask, labels


CONFIGS = {
    "gelu": dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
    "relu-3types": dict(vocab_size=61, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=50, hidden_act="relu", type_vocab_size=3),
    "gelu_new": dict(vocab_size=120, hidden_size=16, num_hidden_layers=3, num_attention_heads=1,
                     intermediate_size=16, hidden_act="gelu_new", layer_norm_eps=1e-7),
}


def check_parity(hf, ours, batch):
    ids, mask, types, labels = batch
    a = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    full = ours(ids, mask, types)
    logits, loss = ours(ids, mask, types, labels)
    real = mask.bool()
    torch.testing.assert_close(full[real], a.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, a.logits[labels != -100], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, a.loss, rtol=1e-5, atol=1e-5)
    a.loss.backward()
    loss.backward()
    pairs = {"embeddings.word_embeddings": ours.bert.embeddings.word,
             "encoder.layer.0.output.dense": ours.bert.layers[0].proj,
             "cls.predictions.transform.dense": ours.cls.predictions.transform.dense,
             "cls.predictions.transform.LayerNorm": ours.cls.predictions.transform.LayerNorm}
    for name, mod in pairs.items():
        ref = hf.get_submodule(name if name.startswith("cls") else "bert." + name)
        torch.testing.assert_close(mod.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.cls.predictions.bias.grad, hf.cls.predictions.bias.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_random_configs(name, transformers, tmp_path):
    config = transformers.BertConfig(hidden_dropout_prob=0, attention_probs_dropout_prob=0, **CONFIGS[name])
    d = hf_mlm_dir(transformers, tmp_path, config)
    hf = transformers.BertForMaskedLM.from_pretrained(d).eval()
    ours = BertForMaskedLM.from_pretrained(d).eval()
    check_parity(hf, ours, random_batch(CONFIGS[name]["vocab_size"], seed=1))


def test_parity_minilm(minilm_dir, transformers, tmp_path):
    """MiniLM's encoder (it has no MLM head: transformers initialises one, which is saved and read back)."""
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        hf.cls.predictions.bias.normal_()
    hf.save_pretrained(tmp_path / "m")
    ours = BertForMaskedLM.from_pretrained(tmp_path / "m").eval()
    check_parity(hf, ours, random_batch(hf.config.vocab_size, seed=2, T=9))


def test_legacy_checkpoint_with_untied_copies_and_nsp_head(transformers, tmp_path):
    """Older files store the tied decoder (weight and bias) and the next-sentence head: all read correctly."""
    d = hf_mlm_dir(transformers, tmp_path, transformers.BertConfig(**CONFIGS["gelu"]))
    sd = load_file(d / "model.safetensors")
    assert not any(k.startswith("cls.predictions.decoder") for k in sd)  # what transformers writes today
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    sd["cls.predictions.decoder.bias"] = sd.pop("cls.predictions.bias")
    sd["cls.seq_relationship.weight"], sd["cls.seq_relationship.bias"] = torch.randn(2, 32), torch.zeros(2)
    save_file(sd, str(d / "model.safetensors"))
    hf = transformers.BertForMaskedLM.from_pretrained(d).eval()
    ours = BertForMaskedLM.from_pretrained(d).eval()
    ids, mask, types, _ = random_batch(97, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask, types)[mask.bool()], hf(ids, mask, types).logits[mask.bool()],
                                   rtol=1e-5, atol=1e-5)
    # Every other model leaves the pretraining heads behind.
    assert not any(k.startswith("cls") for k in BertClassifier.from_pretrained(d).state_dict())


# ---- masking and packing ----

def features(tok_dir, texts, **opts):
    tok = Tokenizer.from_dir(tok_dir)
    from minift.config import BertConfig
    return MLM.features(Texts("x", texts, list(range(1, len(texts) + 1))), tok, 64,
                        BertConfig.from_json(tok_dir / "config.json"), TaskOptions(**opts)), tok


def words_of(f, ids):
    """Positions grouped into words: a "##" piece joins the word before it."""
    groups = []
    for j, t in enumerate(ids.tolist()):
        if t in f.special:
            continue
        if f.piece[t] and groups and groups[-1][-1] == j - 1:
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


def test_masking_statistics(minilm_dir):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS + ["unbelievably", "cinematographer", "xylophonist"])
                      for _ in range(rng.randint(5, 40))) for _ in range(5000)]
    f, tok = features(minilm_dir, texts)
    # Packed: every sequence full but the last (a token short at each edge of a chunk where a [SEP] fell).
    assert all(62 <= len(x) <= 64 for x in f.ids[:-1])
    torch.manual_seed(0)
    b = MLM.batch(f, list(range(len(f.ids))), tok.pad_id)
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in f.ids], batch_first=True)
    chosen = b["labels"] != -100
    assert torch.equal(b["labels"][chosen], ids[chosen])
    special = (ids == tok.cls_id) | (ids == tok.sep_id) | (b["attention_mask"] == 0)
    assert not (chosen & special).any()  # never [CLS], [SEP] or padding
    n = (~special).sum(1)
    assert torch.equal(chosen.sum(1), torch.clamp(torch.round(0.15 * n), min=1).long())  # round(15%) per sequence
    inp = b["input_ids"][chosen]
    as_mask = (inp == tok.mask_id).float().mean().item()
    same = (inp == ids[chosen]).float().mean().item()
    other = 1 - as_mask - same
    assert chosen.sum() > 20000 and abs(as_mask - 0.8) < 0.015 and abs(same - 0.1) < 0.015 and abs(other - 0.1) < 0.015
    assert torch.equal(b["input_ids"][~chosen], ids[~chosen])  # nothing else changes

    # Whole words: each word entirely chosen or not at all, about 15% of the tokens overall.
    fw, _ = features(minilm_dir, texts, whole_word_mask=True)
    assert fw.ids == f.ids
    bw = MLM.batch(fw, list(range(len(fw.ids))), tok.pad_id)
    chosen_w = bw["labels"] != -100
    multi = 0
    for r in range(500):
        for word in words_of(fw, ids[r]):
            flags = chosen_w[r, word]
            assert flags.all() or not flags.any(), (r, word)
            multi += len(word) > 1 and bool(flags.all())
    assert multi > 100  # words of several pieces were chosen, whole
    assert abs(chosen_w.sum().item() / (~special).sum().item() - 0.15) < 0.015
    assert not (chosen_w & special).any()


def test_masks_fresh_per_draw_fixed_for_evaluation(tiny_dir):
    f, tok = features(tiny_dir, [sentence(random.Random(i)) for i in range(40)])
    idx = list(range(len(f.ids)))
    torch.manual_seed(5)
    a = MLM.batch(f, idx, tok.pad_id)
    b = MLM.batch(f, idx, tok.pad_id)
    torch.manual_seed(5)
    assert torch.equal(MLM.batch(f, idx, tok.pad_id)["labels"], a["labels"])  # the seed decides
    assert not torch.equal(a["labels"], b["labels"])  # the next draw (next epoch) masks anew
    with torch.inference_mode():  # evaluation: sequence i always gets the same masks, in any batch
        e1 = MLM.batch(f, idx, tok.pad_id)
        e2 = MLM.batch(f, idx[::-1], tok.pad_id)
        one = MLM.batch(f, [3], tok.pad_id)
    assert torch.equal(e1["labels"], e2["labels"].flip(0))
    assert torch.equal(one["labels"][0], e1["labels"][3, :one["labels"].shape[1]])


def test_pack():
    sep = 3
    pieces = [[10, 11, 12], [20], [30, 31, 32, 33, 34, 35, 36], [40, 41]]
    # The stream 10 11 12 | 20 | 30 ... 36 | 40 41 cut every 4 tokens; a [SEP] at a chunk's edge goes.
    assert pack(pieces, 4, sep) == [[10, 11, 12], [20, 3, 30, 31], [32, 33, 34, 35], [36, 3, 40, 41]]
    assert pack(pieces, 100, sep) == [[10, 11, 12, 3, 20, 3, 30, 31, 32, 33, 34, 35, 36, 3, 40, 41]]


# ---- training through minift.train ----

@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    return write_txt(d / "train.txt", 60, seed=1), write_txt(d / "dev.txt", 16, seed=2)


def run(model, data, out, **kw):
    log = kw.pop("log", io.StringIO())
    opts = {**FAST, "max_steps": 12, "batch_size": 4, "lr": 2e-3, "seed": 3, **kw}
    return train(model, data[0], out, eval=data[1], log=log, **opts)


@pytest.fixture(scope="module")
def trained(tiny_dir, texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "out"
    log = io.StringIO()
    row = run(tiny_dir, texts, out, log=log)
    return out, row, log.getvalue()


def test_loss_falls_and_eval_reproduces_dev_metrics(tiny_dir, texts, tmp_path):
    out = tmp_path / "out"
    run(tiny_dir, texts, out, max_steps=None, epochs=6, lr=5e-3)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # From about chance (ln 200 = 5.3) towards the entropy of these texts' random words (ln 33 = 3.5).
    assert rows[0]["dev_loss"] > 4.5 and rows[-1]["dev_loss"] < 4.0
    assert all(r["dev_perplexity"] == pytest.approx(2.718281828 ** r["dev_loss"]) for r in rows)
    # The kept model, evaluated again on the same file: the same masks, the same numbers.
    kept = min(rows, key=lambda r: r["dev_loss"])
    again = evaluate(out, texts[1], precision="fp32", device="cpu", batch_size=3)
    assert again["loss"] == pytest.approx(kept["dev_loss"], rel=1e-5)
    assert again["accuracy"] == pytest.approx(kept["dev_accuracy"], rel=1e-6)


def test_memorises_a_small_batch(tiny_dir, tmp_path):
    """Four texts, seen 600 times each with fresh masks: every masked token of them is then predicted."""
    four = write_txt(tmp_path / "four.txt", 4, seed=9)
    data = tmp_path / "many.txt"
    data.write_text(four.read_text() * 200)  # epochs of 200 steps: few evaluations and checkpoints
    out = tmp_path / "out"
    train(tiny_dir, data, out, eval=four, log=io.StringIO(), **{**FAST, "lr": 5e-3, "batch_size": 4, "epochs": 3,
                                                                  "warmup": 0.0, "seed": 1, "no_pack": True})
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["dev_loss"] > 0.5 and rows[-1]["dev_accuracy"] == 1.0 and rows[-1]["dev_loss"] < 0.1


def test_saved_output_loads_in_transformers_tied(tiny_dir, texts, trained, transformers, tmp_path):
    out, _, log = trained
    assert "starting a new one for mlm" in log  # tiny-bert is a classifier: no MLM head to keep
    saved = load_file(out / "model.safetensors")
    assert not any(k.startswith(("cls.predictions.decoder", "bert.pooler")) for k in saved)
    assert {k for k in saved if k.startswith("cls.")} == {
        "cls.predictions.bias", "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias"}
    start = BertClassifier.from_pretrained(tiny_dir).state_dict()["bert.embeddings.word.weight"]
    assert not torch.equal(saved["bert.embeddings.word_embeddings.weight"], start)  # training moved it
    hf = transformers.BertForMaskedLM.from_pretrained(out).eval()
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()
    ours = BertForMaskedLM.from_pretrained(out).eval()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    ids, mask, types, labels = random_batch(200, seed=4)
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        logits, loss = ours(ids, mask, types, labels)
    torch.testing.assert_close(logits, a.logits[labels != -100], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, a.loss, rtol=1e-5, atol=1e-5)
    # A second run from the output keeps its head (it is an MLM now) and saves it tied again.
    out2 = tmp_path / "again"
    log2 = io.StringIO()
    run(out, texts, out2, max_steps=1, lr=1e-9, log=log2)
    assert "starting a new one" not in log2.getvalue()
    torch.testing.assert_close(load_file(out2 / "model.safetensors")["cls.predictions.bias"],
                               saved["cls.predictions.bias"], rtol=0, atol=1e-6)

    # predict fills [MASK] with transformers' top tokens.
    texts_in = ["the movie was [MASK] .", "[MASK] film [MASK] really"]
    rows = predict(out, texts_in, precision="fp32", device="cpu")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = tok(texts_in, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = hf(**enc).logits.softmax(-1)
    at = (enc["input_ids"] == tok.mask_token_id).nonzero().tolist()
    assert [len(r["masks"]) for r in rows] == [1, 2]
    for (r, t), got in zip(at, [m for row in rows for m in row["masks"]]):
        p, i = probs[r, t].topk(5)
        assert [g["token"] for g in got] == tok.convert_ids_to_tokens(i.tolist())
        torch.testing.assert_close(torch.tensor([g["score"] for g in got]), p, rtol=1e-5, atol=1e-6)


def test_output_fine_tunes_as_classifier(tiny_dir, trained, tmp_path, capsys):
    out, _, _ = trained
    clf_data = tmp_path / "clf.csv"
    rng = random.Random(0)
    clf_data.write_text("text,label\n" + "".join(f"{sentence(rng)},{'ab'[i % 2]}\n" for i in range(16)))
    clf = tmp_path / "clf"
    assert main(["train", "--model", str(out), "--train", str(clf_data), "--out", str(clf), "--max-steps", "2",
                 "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--max-length", "24"]) == 0
    assert "its head was for BertForMaskedLM" in capsys.readouterr().err
    # The encoder carried over; the MLM head stayed behind; the pooler and classifier started fresh.
    start = BertClassifier.from_pretrained(out, id2label={0: "a", 1: "b"}, new_head=True).state_dict()
    mlm = BertForMaskedLM.from_pretrained(out).state_dict()
    assert all(torch.equal(start[k], v) for k, v in mlm.items() if k.startswith("bert."))
    saved = load_file(clf / "model.safetensors")
    assert "classifier.weight" in saved and not any(k.startswith("cls.") for k in saved)
    assert json.loads((clf / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]


def test_head_mode_trains_the_mlm_head_only(tiny_dir, texts, tmp_path):
    out = tmp_path / "out"
    run(tiny_dir, texts, out, mode="head", max_steps=3, lr=1e-2)
    torch.manual_seed(3)  # train()'s seed: the same fresh head
    before = BertForMaskedLM.from_pretrained(tiny_dir, new_head=True).state_dict()
    after = BertForMaskedLM.from_pretrained(out).state_dict()
    for k, v in after.items():  # the decoder is the word embeddings: part of the frozen encoder
        assert torch.equal(v, before[k]) == k.startswith("bert."), k


def test_cli_switches_and_fresh_head_note(minilm_dir, tiny_dir, texts, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--model", str(tiny_dir), "--train", str(texts[0]), "--out", str(out), "--task", "mlm",
                 "--whole-word-mask", "--no-pack", "--max-steps", "1", "--batch-size", "4", "--precision", "fp32",
                 "--device", "cpu", "--max-length", "24"]) == 0
    cfg = json.loads((out / "run.json").read_text())
    assert cfg["whole_word_mask"] is True and cfg["no_pack"] is True and cfg["metric"] == "loss"
    err = capsys.readouterr().err
    assert "packed" not in err and "60 examples" in err  # one sequence per text
    # A bare encoder has no MLM head: say so.
    net, _, note = minift.train_loop.load_model(get("mlm"), minift.train_loop.RunConfig(
        model=str(minilm_dir), train="x", out="y", task="mlm"), None, False)
    assert "bare encoder" in note and "BertForMaskedLM" in note
    assert net.cls.predictions.bias.abs().sum() == 0


@pytest.mark.parametrize("content, match", [
    (b"good film\n\xe9t\xe9 movie\n", r"bad\.txt: byte 10 \(line 2\) .*not valid UTF-8"),
    (b"\n  \n", r"bad\.txt: no texts"),
])
def test_bad_text_files(tiny_dir, tmp_path, content, match):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(MiniftError, match=match):
        run(tiny_dir, (bad, None), out)
    assert not out.exists()


def test_bad_inputs(tiny_dir, texts, tmp_path):
    out = tmp_path / "out"
    doc = tmp_path / "a.docx"
    doc.write_text("x")
    with pytest.raises(MiniftError, match=r"a\.docx: unsupported file type '\.docx'.*\.txt"):
        run(tiny_dir, (doc, None), out)
    csv = tmp_path / "a.csv"
    csv.write_text("review,label\ngood,1\n")
    with pytest.raises(MiniftError, match=r"a\.csv: no column 'text'"):
        run(tiny_dir, (csv, None), out)
    with pytest.raises(MiniftError, match="--text-pair-column.*single texts"):
        run(tiny_dir, texts, out, text_pair_column="b")
    with pytest.raises(MiniftError, match="--metric 'macro_f1'.*mlm"):
        run(tiny_dir, texts, out, metric="macro_f1")
    with pytest.raises(MiniftError, match="--max-length 2: a masked LM needs at least 3"):
        run(tiny_dir, texts, out, max_length=2)
    assert not out.exists()
    run(tiny_dir, (csv, None), out, text_column="review", max_steps=1)  # the text column of a CSV
    assert (out / "model.safetensors").exists()


# ---- resume ----



@pytest.mark.parametrize("at", [3, 8])  # mid-epoch; at the end of the first epoch (32 sequences, batches of 4)
def test_resume_is_bit_identical(tiny_dir, texts, trained, tmp_path, monkeypatch, at):
    a, a_row, _ = trained
    b = tmp_path / "out"
    with monkeypatch.context() as mp:
        interrupt_at(mp, at)
        assert run(tiny_dir, texts, b) == {"stopped_at": at}
    b_row = run(tiny_dir, texts, b, resume=True)
    assert b_row == a_row
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    ra = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert rb == ra[len(ra) - len(rb):] and rb
