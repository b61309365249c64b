"""--task rerank: a cross-encoder that sentence-transformers' CrossEncoder and transformers load with the same
scores; its losses and grouped metrics by hand; predict sorts passages; bad inputs are clear errors."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minift import MiniftError
from minift.retrieval import grouped_metrics
from minift.tasks.rerank import CrossEncoder, Groups, rerank
from minift.train_loop import train

st = pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")

PAIRS = [("a cat sat on the mat", "the cat is on a mat"), ("dogs bark loudly", "a dog is barking"),
         ("I love pizza", "pizza is my favourite food"), ("the sun is hot", "it is warm in the sunshine"),
         ("rain falls all day", "it is raining"), ("cars are fast", "the car drives quickly"),
         ("birds fly south", "a bird in the sky"), ("fish swim", "fish live in the water")]
ROWS = [row for i, (q, p) in enumerate(PAIRS)
        for row in ((q, p, 1), (q, PAIRS[(i + 1) % 8][1], 0), (q, PAIRS[(i + 3) % 8][1], 0))]
FAST = dict(precision="fp32", device="cpu", compile="off")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random BERT with a WordPiece tokenizer saved as BERT's (token types: 1 for the passage)."""
    from test_families import random_checkpoint
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    d = random_checkpoint("bert", kw, "distilbert", tmp_path_factory.mktemp("m") / "bert", transformers.AutoModel)
    config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "BertTokenizer"}))
    return d


def write(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture(scope="module")
def reranker(model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("rr")
    data = write(d / "rr.csv", ["query", "passage", "label"], ROWS)
    row = train(str(model_dir), str(data), str(d / "out"), eval=str(data), task="rerank", max_steps=80, batch_size=8,
                lr=3e-3, warmup=0.05, log=open("/dev/null", "w"), **FAST)
    return d / "out", data, row


def test_memorises_and_loads_in_cross_encoder_with_the_same_scores(reranker):
    out, data, row = reranker
    assert row["dev_mrr@10"] == 1.0 and row["dev_ndcg@10"] == 1.0, row
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 1
    assert config["sentence_transformers"]["activation_fn"].endswith("Sigmoid")
    pairs = [(q, p) for q, p, _ in ROWS]
    from minift.predict import predict
    mine = np.array([r["score"] for r in predict(out, [q for q, _ in pairs], [p for _, p in pairs], device="cpu",
                                                 precision="fp32")])
    ref = st.CrossEncoder(str(out), device="cpu").predict(pairs, convert_to_numpy=True)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-6)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    enc = transformers.AutoTokenizer.from_pretrained(out)([q for q, _ in pairs], [p for _, p in pairs], padding=True,
                                                          return_tensors="pt")
    with torch.no_grad():
        logits = hf(**enc).logits.squeeze(-1)
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), mine, rtol=1e-5, atol=1e-6)


def test_predict_sorts_the_passages(reranker, capsys):
    out, _, _ = reranker
    query, passages = PAIRS[0][0], [p for _, p, _ in ROWS[2::-1]]  # its training group, the relevant one last
    got = rerank(out, query, passages, device="cpu", precision="fp32")
    assert got[0]["passage"] == PAIRS[0][1] and sorted(r["passage"] for r in got) == sorted(passages)
    assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)
    from minift.cli import main
    assert main(["predict", "--model", str(out), "--query", query, *passages, "--precision", "fp32"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["passage"] for x in lines] == [r["passage"] for r in got]


def test_losses_by_hand():
    logits = torch.tensor([[2.0], [0.5], [-1.0], [0.3], [0.1]], requires_grad=True)
    labels, group = torch.tensor([1.0, 0, 0, 0, 1]), torch.tensor([0, 0, 0, 1, 1])
    model = CrossEncoder.__new__(CrossEncoder)  # the loss reads nothing of the model
    pointwise = model.loss(logits, Groups(labels, group, False))
    assert pointwise.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits.squeeze(), labels).item())
    listwise = model.loss(logits, Groups(labels, group, True))
    want = (F.cross_entropy(logits[:3].T, torch.tensor([0])) + F.cross_entropy(logits[3:].T, torch.tensor([1]))) / 2
    assert listwise.item() == pytest.approx(want.item(), rel=1e-6)
    g1, g2 = (torch.autograd.grad(x, logits)[0] for x in (listwise, want))
    torch.testing.assert_close(g1, g2)


def test_grouped_metrics_by_hand_with_ties():
    got = grouped_metrics([np.array([0.9, 0.9, 0.1]), np.array([0.2, 0.8, 0.5, 0.1])],
                          [np.array([1.0, 0, 0]), np.array([0, 0, 2.0, 1.0])])
    # query 1: a tie at the top goes against the relevant passage: rank 2. query 2: grades 2 at rank 2, 1 at rank 4.
    dcg2 = 3 / math.log2(3) + 1 / math.log2(5)
    ideal2 = 3 + 1 / math.log2(3)
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert got["ndcg@10"] == pytest.approx((1 / math.log2(3) + dcg2 / ideal2) / 2)


@pytest.mark.parametrize("rows,options,message", [
    ([("q", "p", 0), ("q", "r", 0), ("z", "p", 1)], {}, r"line 2: query 'q' has no relevant passage"),
    ([("q", "p", 2), ("q", "r", 0)], {}, r"line 2: label 2; binary cross-entropy needs labels from 0 to 1"),
    ([("q", "p", "yes")], {}, r"line 2: score 'yes' is not a number"),
    ([("q", "", 1)], {}, r"line 2: column 'passage' is empty")])
def test_bad_inputs_are_clear_errors(model_dir, tmp_path, rows, options, message):
    data = write(tmp_path / "bad.csv", ["query", "passage", "label"], rows)
    with pytest.raises(MiniftError, match=message):
        train(str(model_dir), str(data), str(tmp_path / "out"), task="rerank", **FAST, **options)
    assert not (tmp_path / "out").exists()


def test_graded_labels_train_listwise(model_dir, tmp_path):
    data = write(tmp_path / "g.csv", ["query", "passage", "label"],
                 [(q, p, 3 - j) for q, p, _ in ROWS[::3] for j, p in enumerate([p, "x", "y"])])
    row = train(str(model_dir), str(data), str(tmp_path / "out"), eval=str(data), task="rerank", listwise=True,
                max_steps=2, batch_size=4, log=open("/dev/null", "w"), **FAST)
    assert 0 < row["dev_ndcg@10"] <= 1


def test_loss_and_gradients_match_cross_encoders_binary_cross_entropy(model_dir, tmp_path):
    """One batch read, tokenized and batched as training does (passages truncated, token type 1), against
    sentence-transformers' CrossEncoder with its BinaryCrossEntropyLoss on the same texts, tokenized by itself and
    given the same new head: the loss within 1e-5, every gradient within 1e-4 (head, pooler, token types included)."""
    from types import SimpleNamespace
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from minift.checkpoint import hf_tensor_names
    from minift.tasks.rerank import Rerank
    from minift.tokenizer import Tokenizer
    data = write(tmp_path / "rr.csv", ["query", "passage", "label"], ROWS)
    torch.manual_seed(0)
    mini = CrossEncoder.from_pretrained(model_dir, id2label={0: "LABEL_0"}, new_head=True).eval()
    ref = st.CrossEncoder(str(model_dir), num_labels=1, max_length=10, device="cpu")
    hf = ref.model.eval()
    with torch.no_grad():
        hf.classifier.weight.copy_(mini.classifier.weight)
        hf.classifier.bias.copy_(mini.classifier.bias)
    task, opts = Rerank(), SimpleNamespace(label_column="label", listwise=False)
    rows, tok = task.read(data, opts), Tokenizer.from_dir(model_dir)
    feats = task.features(rows, tok, 10, mini.config, opts)
    _, loss = mini(**task.batch(feats, list(range(len(PAIRS))), tok.pad_id))
    loss.backward()
    order = [r for group in feats.rows for r in group]  # the batch's pairs
    want = BinaryCrossEntropyLoss(ref)([[rows.columns[0][r] for r in order], [rows.columns[1][r] for r in order]],
                                       torch.tensor([rows.scores[r] for r in order]))
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    params = dict(hf.named_parameters())
    for name, p in mini.named_parameters():
        g = torch.cat([params[("bert." if name.startswith("bert.") else "") + s].grad
                       for s in hf_tensor_names(mini, name)])
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4 * g.abs().max().item(), msg=name)
