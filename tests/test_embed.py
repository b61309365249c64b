"""--task embed: losses against sentence-transformers' (on fixed embeddings and end to end on a small model), the
gradient cache against the whole batch, duplicate masking, retrieval metrics by hand, memorising pairs, the saved
directory in sentence-transformers and transformers, resume, and bad inputs."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import interrupt_at
from test_pooling import FAMILIES
from minift import MiniftError
from minift.contrastive import LossSpec, cosent_loss, embedding_loss, ranking_loss
from minift.pooling import Pooling, write_pooling
from minift.retrieval import correlations, ranks, retrieval_metrics
from minift.tasks import TaskOptions
from minift.tasks.embed import Embed, Rows, SentenceEncoder
from minift.tokenizer import Tokenizer
from minift.train_loop import train

st = pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")
losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")

PAIRS = [("a cat sat on the mat", "the cat is on a mat"), ("dogs bark loudly", "a dog is barking"),
         ("I love pizza", "pizza is my favourite food"), ("the sun is hot", "it is warm in the sunshine"),
         ("rain falls all day", "it is raining"), ("cars are fast", "the car drives quickly"),
         ("birds fly south", "a bird in the sky"), ("fish swim", "fish live in the water"),
         ("Crème brûlée in Zürich", "a dessert in a Swiss city"), ("我喜欢这部电影", "a film I like"),
         ("the old man the boats", "elderly people crew ships"), ("trains run late", "the railway is slow"),
         ("coffee is bitter", "an espresso tastes strong"), ("snow in winter", "cold white flakes"),
         ("books on a shelf", "a library of novels"), ("music plays softly", "a quiet song")]
NEGATIVES = [p for _, p in PAIRS[3:]] + [p for _, p in PAIRS[:3]]  # another row's positive as a hard negative
FAST = dict(precision="fp32", device="cpu", compile="off")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random BERT (dropout off) with sentence-transformers' files: mean pooling, normalised."""
    from test_families import random_checkpoint
    d = random_checkpoint("bert", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=37), "distilbert", tmp_path_factory.mktemp("m") / "bert",
                          transformers.AutoModel)
    write_pooling(d, Pooling("mean", True), 32, 60)
    return d


def write(path: Path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


# ---- losses on fixed embeddings ----

def fixed(k=3, B=6, H=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, B, H, generator=g, dtype=torch.float64).requires_grad_()


def distinct(k, B):
    return torch.arange(k * B).view(k, B)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [False, True])
def test_ranking_loss_matches_sentence_transformers(k, symmetric):
    emb = fixed(k)
    mine = ranking_loss(emb, distinct(k, 6), 20.0, symmetric)
    ref_loss = losses.MultipleNegativesRankingLoss(
        torch.nn.Module(), scale=20.0, directions=("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",),
        partition_mode="per_direction" if symmetric else "joint")
    ref = ref_loss.compute_loss_from_embeddings(list(emb), None)
    assert mine.item() == pytest.approx(ref.item(), rel=1e-5)
    g_mine, g_ref = (torch.autograd.grad(x, emb)[0] for x in (mine, ref))
    torch.testing.assert_close(g_mine, g_ref, rtol=1e-4, atol=1e-8)


def test_cosent_matches_sentence_transformers():
    emb = fixed(2, 8)
    scores = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.0, 0.3, 1.0, 0.5], dtype=torch.float64)  # ties too
    mine = cosent_loss(emb, scores, 20.0)
    ref = losses.CoSENTLoss(torch.nn.Module(), scale=20.0).compute_loss_from_embeddings(list(emb), scores)
    assert mine.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(*(torch.autograd.grad(x, emb)[0] for x in (mine, ref)), rtol=1e-4, atol=1e-8)


def test_duplicates_in_a_batch_are_not_negatives():
    """Row 2's positive is row 0's positive again: for anchor 0 it is no negative, so the loss is what it would be
    without that candidate; and the other way round."""
    emb = fixed(2, 3)
    ids = torch.tensor([[0, 1, 2], [3, 4, 3]])
    got = ranking_loss(emb, ids, 20.0)
    sim = 20 * torch.nn.functional.normalize(emb[0], dim=-1) @ torch.nn.functional.normalize(emb[1], dim=-1).T
    keep = [[0, 1], [0, 1, 2], [1, 2]]  # anchor i's candidates: its positive and the real negatives
    want = sum(torch.logsumexp(sim[i, keep[i]], 0) - sim[i, i] for i in range(3)) / 3
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert got.item() < ranking_loss(emb, distinct(2, 3), 20.0).item()


def test_matryoshka_sums_over_leading_dimensions():
    emb, ids = fixed(2), distinct(2, 6)
    got = embedding_loss(emb, ids, LossSpec(dims=(16, 8, 4)))
    assert got.item() == pytest.approx(sum(ranking_loss(emb[..., :d], ids, 20.0).item() for d in (16, 8, 4)))


# ---- end to end on a small model, against sentence-transformers ----

def minift_loss_and_grads(d, columns, scores=None, **options):
    net = SentenceEncoder.from_pretrained(d)
    task, tok = Embed(), Tokenizer.from_dir(d)
    rows = Rows("<test>", [list(c) for c in columns], scores, list(range(len(columns[0]))))
    f = task.features(rows, tok, 60, net.config, TaskOptions(**options))
    _, loss = net(**task.batch(f, list(range(len(columns[0]))), tok.pad_id))
    loss.backward()
    from minift.checkpoint import hf_tensor_names
    return loss.item(), {"+".join(hf_tensor_names(net, n)): p.grad for n, p in net.named_parameters()}


def st_loss_and_grads(d, make_loss, columns, scores=None):
    model = st.SentenceTransformer(str(d), device="cpu")
    features = [model.tokenize(list(c)) for c in columns]
    loss = make_loss(model)(features, None if scores is None else torch.tensor(scores))
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model[0].auto_model.named_parameters()}


def assert_same_grads(grads, ref_grads):
    """minift's gradients (names: the Hugging Face tensors each is made of, joined by +) against transformers',
    within 1e-4 of the tensor's largest gradient (fp32 sums in another order differ by some 1e-6 there)."""
    for name, g in grads.items():
        ref = torch.cat([ref_grads[s] for s in name.split("+")])
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item(), msg=name)


CASES = {
    "pairs": (dict(), lambda m: losses.MultipleNegativesRankingLoss(m), 2),
    "hard negatives": (dict(), lambda m: losses.MultipleNegativesRankingLoss(m), 3),
    "symmetric": (dict(symmetric=True), lambda m: losses.MultipleNegativesRankingLoss(
        m, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"), 2),
    "matryoshka": (dict(matryoshka="32,16,8"), lambda m: losses.MatryoshkaLoss(
        m, losses.MultipleNegativesRankingLoss(m), [32, 16, 8]), 3),
    "cached": (dict(mini_batch=5), lambda m: losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=5), 3),
    "scale 7": (dict(scale=7.0), lambda m: losses.MultipleNegativesRankingLoss(m, scale=7.0), 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_loss_and_gradients_match_sentence_transformers(model_dir, case):
    options, make_loss, k = CASES[case]
    # hard negatives that are no row's positive: sentence-transformers does not mask duplicates
    columns = [[a for a, _ in PAIRS[:8]], [p for _, p in PAIRS[:8]], [p for _, p in PAIRS[8:]]][:k]
    loss, grads = minift_loss_and_grads(model_dir, columns, **options)
    ref_loss, ref_grads = st_loss_and_grads(model_dir, make_loss, columns)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_same_grads(grads, ref_grads)


def test_cosent_training_matches_sentence_transformers(model_dir):
    columns = [[a for a, _ in PAIRS[:8]], [p for _, p in PAIRS[:8]]]
    scores = [0.0, 1.0, 0.5, 0.25, 1.0, 0.75, 0.1, 0.9]
    loss, grads = minift_loss_and_grads(model_dir, columns, scores)
    ref_loss, ref_grads = st_loss_and_grads(model_dir, lambda m: losses.CoSENTLoss(m), columns, scores)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_same_grads(grads, ref_grads)


# ---- the gradient cache ----

def big_batch(d, mini_batch, dtype, n=512):
    """One batch of n (anchor, positive, hard negative) rows: 3 n texts."""
    net = SentenceEncoder.from_pretrained(d).to(dtype)
    task, tok = Embed(), Tokenizer.from_dir(d)
    rows = [(f"{a} number {i}", f"{p} {i}", f"{n} {i + 1}") for i in range(32) for (a, p), n in zip(PAIRS, NEGATIVES)]
    rows = Rows("<t>", [list(c) for c in zip(*rows[:n])], None, list(range(n)))
    f = task.features(rows, tok, 16, net.config, TaskOptions(mini_batch=mini_batch))
    return net, task.batch(f, list(range(n)), tok.pad_id)


def test_gradient_cache_gives_the_gradients_of_the_whole_batch(model_dir):
    """fp32, a batch of 128 in mini-batches of 16: the gradients of the whole batch, within 1e-4 of each tensor's
    largest (fp32 sums over some 5,000 tokens in another order; a batch of 512 is checked in fp64 below)."""
    grads = []
    for mini in (None, 16):
        net, batch = big_batch(model_dir, mini, torch.float32, n=128)
        net(**batch)[1].backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-4 * g.abs().max().item(), msg=n)


def test_gradient_cache_trains_as_the_whole_batch(model_dir):
    """--batch-size 512 --mini-batch 32: the weights after one training step (train_step: AdamW, clipping,
    schedule) with and without the cache are the same within 1e-6 relative. In fp64: AdamW's first step is lr * g / (|g| + eps), which turns fp32 rounding
    in a gradient near 0 into a whole step of either sign."""
    from minift.train_step import make_schedule, train_step
    weights = []
    for mini in (None, 32):
        net, batch = big_batch(model_dir, mini, torch.float64)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        train_step(lambda **b: net(**b)[1], opt, make_schedule(opt, 0, 1), None, [batch], 1.0)
        weights.append({n: p.detach().clone() for n, p in net.named_parameters()})
    before = SentenceEncoder.from_pretrained(model_dir).state_dict()
    for n, w in weights[0].items():
        assert "token_type" in n or not torch.equal(w.float(), before[n]), n  # it moved
        # atol: the key bias's gradient is 0 but for rounding (softmax ignores a shift), so AdamW moves it by
        # some 1e-9 of noise, where a real step is lr = 1e-3
        torch.testing.assert_close(weights[1][n], w, rtol=1e-6, atol=1e-9, msg=n)


def test_gradient_cache_replays_the_dropout_masks(tmp_path):
    """With dropout on, the re-run of each mini-batch draws the masks of its first run: the gradients are those
    of the same mini-batches run once with gradients."""
    d = Path(__file__).parent.parent / "weights" / "tiny-bert"
    net, task, tok = SentenceEncoder.from_pretrained(d).train(), Embed(), Tokenizer.from_dir(d)
    assert net.config.hidden_dropout_prob > 0
    rows = Rows("<t>", [[a for a, _ in PAIRS], [p for _, p in PAIRS]], None, list(range(16)))
    batch = task.batch(task.features(rows, tok, 32, net.config, TaskOptions(mini_batch=6)), list(range(16)), tok.pad_id)
    torch.manual_seed(1)
    net(**batch)[1].backward()
    cached = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    torch.manual_seed(1)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    emb = torch.cat([net.embed(**{k: v[i:i + 6] for k, v in inputs.items()}) for i in range(0, 32, 6)])
    embedding_loss(emb.view(2, 16, -1), batch["labels"].values, LossSpec()).backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(cached[n], p.grad, rtol=1e-5, atol=1e-5 * p.grad.abs().max().item(), msg=n)


# ---- metrics ----

def test_retrieval_metrics_by_hand_with_ties():
    q = np.eye(3, dtype=np.float32)
    corpus = np.array([[1, 0, 0], [1, 0, 0], [0, 0.6, 0.8], [0, 0, 1]], dtype=np.float32)
    # query 0: docs 0 and 1 tie; its relevant doc 1 ranks 2 (ties count against it)
    # query 1: relevant doc 2 (0.6) ranks 1; query 2: relevant doc 2 (0.8) ranks 2 behind doc 3 (1.0)
    r = ranks(q, corpus, np.array([1, 2, 2]))
    assert r.tolist() == [2, 1, 2]
    m = retrieval_metrics(np.array([2, 1, 2, 11]))
    assert m["recall@1"] == 0.25 and m["recall@10"] == 0.75
    assert m["mrr@10"] == pytest.approx((0.5 + 1 + 0.5 + 0) / 4)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 + 1 / math.log2(3)) / 4)


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    sim, scores = rng.normal(size=50), rng.integers(0, 5, size=50).astype(float)  # many ties in the scores
    got = correlations(sim, scores)
    assert got["spearman"] == pytest.approx(stats.spearmanr(sim, scores).statistic, rel=1e-9)
    assert got["pearson"] == pytest.approx(stats.pearsonr(sim, scores).statistic, rel=1e-9)


# ---- training runs ----

def test_memorises_16_pairs_and_saves_a_sentence_transformers_directory(model_dir, tmp_path):
    data = write(tmp_path / "pairs.csv", ["anchor", "positive"], PAIRS)
    out = tmp_path / "out"
    row = train(str(model_dir), str(data), str(out), eval=str(data), task="embed", max_steps=60, batch_size=16,
                lr=3e-3, warmup=0.05, log=open("/dev/null", "w"), **FAST)
    assert row["dev_recall@1"] == 1.0 and row["dev_mrr@10"] == 1.0, row
    from minift.predict import embed, evaluate
    assert evaluate(out, data, device="cpu", precision="fp32")["recall@1"] == 1.0
    texts = [a for a, _ in PAIRS]
    mine = embed(out, texts, device="cpu").numpy()
    ref = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-6)
    hf = transformers.AutoModel.from_pretrained(out)
    assert type(hf).__name__ == "BertModel"
    enc = transformers.AutoTokenizer.from_pretrained(out)(texts[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = hf(**enc).last_hidden_state
    m = enc["attention_mask"][..., None]
    torch.testing.assert_close(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1),
                               torch.from_numpy(mine[:2]), rtol=1e-5, atol=1e-6)


def test_scored_pairs_default_to_spearman(model_dir, tmp_path):
    data = write(tmp_path / "scored.csv", ["sentence1", "sentence2", "score"],
                 [(a, p, i % 5) for i, (a, p) in enumerate(PAIRS)])
    row = train(str(model_dir), str(data), str(tmp_path / "out"), eval=str(data), task="embed", max_steps=2,
                batch_size=8, log=open("/dev/null", "w"), **FAST)
    assert set(row) >= {"dev_spearman", "dev_pearson"} and "dev_ndcg@10" not in row
    assert json.loads((tmp_path / "out" / "run.json").read_text())["metric"] == "spearman"


@pytest.mark.parametrize("at", [1, 3])
def test_resume_is_bit_identical(model_dir, tmp_path, monkeypatch, at):
    data = write(tmp_path / "pairs.csv", ["anchor", "positive", "negative"],
                 [(a, p, n) for (a, p), n in zip(PAIRS, NEGATIVES)])
    opts = dict(task="embed", epochs=2, batch_size=6, mini_batch=4, eval=str(data), log=open("/dev/null", "w"), **FAST)
    a_row = train(str(model_dir), str(data), str(tmp_path / "a"), **opts)
    with monkeypatch.context() as mp:
        interrupt_at(mp, at)
        assert train(str(model_dir), str(data), str(tmp_path / "b"), **opts) == {"stopped_at": at}
    assert train(str(model_dir), str(data), str(tmp_path / "b"), resume=True, **opts) == a_row
    ta, tb = (load_file(tmp_path / x / "model.safetensors") for x in "ab")
    assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("name,text,message", [
    ("one.csv", "anchor\nx\n", "expected anchor, positive"),
    ("empty.csv", "anchor,positive\na,b\nc,\n", r"empty.csv, line 3: column 'positive' is empty"),
    ("score.csv", "a,b,score\nx,y,0.5\nx,z,high\n", r"score.csv, line 3: score 'high' is not a number"),
    ("missing.jsonl", '{"anchor": "a", "positive": "b"}\n\n{"anchor": "c"}\n',
     r"missing.jsonl, line 3: no column 'positive'"),
    ("three.tsv", "a\tb\tc\tscore\nx\ty\tz\t1\n", "two texts and a score column"),
    ("nothing.csv", "anchor,positive\n", "no examples")])
def test_bad_inputs_are_clear_errors_before_anything_is_written(model_dir, tmp_path, name, text, message):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(MiniftError, match=message):
        train(str(model_dir), str(tmp_path / name), str(tmp_path / "out"), task="embed", **FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options,message", [
    (dict(matryoshka="64,16"), r"--matryoshka 64,16: expected .* the model's 32"),
    (dict(mini_batch=0), "--mini-batch 0"), (dict(scale=-1.0), "--scale -1.0"),
    (dict(metric="spearman"), "holds pairs, scored by ndcg@10"), (dict(pooling="sum"), "--pooling 'sum'")])
def test_bad_options_are_clear_errors(model_dir, tmp_path, options, message):
    data = write(tmp_path / "pairs.csv", ["anchor", "positive"], PAIRS[:4])
    with pytest.raises(MiniftError, match=message):
        train(str(model_dir), str(data), str(tmp_path / "out"), task="embed", **FAST, **options)
    assert not (tmp_path / "out").exists()


def test_options_of_embed_are_refused_elsewhere(model_dir, tmp_path):
    data = write(tmp_path / "c.csv", ["text", "label"], [("a", "x"), ("b", "y")])
    with pytest.raises(MiniftError, match="--mini-batch is a setting of --task embed"):
        train(str(model_dir), str(data), str(tmp_path / "out"), mini_batch=4, **FAST)


@pytest.mark.parametrize("family,layout,kw", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_trains_and_loads_in_sentence_transformers(family, layout, kw, tmp_path):
    from test_families import CASES, random_checkpoint
    d = random_checkpoint(family, CASES[kw][1] if isinstance(kw, int) else kw, layout, tmp_path / "m",
                          transformers.AutoModel)
    data = write(tmp_path / "pairs.csv", ["anchor", "positive", "negative"],
                 [(a, p, n) for (a, p), n in zip(PAIRS, NEGATIVES)])
    out = tmp_path / "out"
    train(str(d), str(data), str(out), task="embed", max_steps=2, batch_size=8, pooling="cls", max_length=40,
          lr=1e-3, log=open("/dev/null", "w"), **FAST)
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    from minift.predict import embed
    texts = [a for a, _ in PAIRS]
    mine = embed(out, texts, device="cpu").numpy()
    ref = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=2e-6)
    assert not np.allclose(mine, embed(d, texts, device="cpu", pooling="cls").numpy(), atol=1e-4)  # it trained


# ---- --eval-corpus: distractors in the dev retrieval ----

def test_eval_corpus_passages_are_distractors_ranked_by_hand(model_dir, tmp_path):
    from minift.predict import evaluate
    dev = write(tmp_path / "dev.csv", ["anchor", "positive"], PAIRS[:6])
    # A copy of anchor 0 (cosine 1 with it: it outranks positive 0), positive 1 again (a dev text already: left
    # out, else it would tie with itself), an empty line, a new text, and the copy again (counted once).
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"{PAIRS[0][0]}\n{PAIRS[1][1]}\n\n{PAIRS[15][1]}\n{PAIRS[0][0]}\n", encoding="utf-8")
    out = tmp_path / "out"
    row = train(str(model_dir), str(dev), str(out), eval=str(dev), eval_corpus=str(corpus), task="embed",
                max_steps=1, batch_size=6, log=open("/dev/null", "w"), **FAST)
    # By hand, on sentence-transformers' embeddings: a query's rank counts every document at least as close.
    enc = st.SentenceTransformer(str(out), device="cpu").encode
    q, docs = enc([a for a, _ in PAIRS[:6]]), enc([p for _, p in PAIRS[:6]] + [PAIRS[0][0], PAIRS[15][1]])
    sim = q @ docs.T
    rank = np.array([(sim[i] >= sim[i, i] - 1e-6).sum() for i in range(6)])
    assert rank[0] >= 2  # the copy of anchor 0 is ahead of its positive
    by_hand = retrieval_metrics(rank)
    got = evaluate(out, dev, device="cpu", precision="fp32", eval_corpus=str(corpus))
    without = evaluate(out, dev, device="cpu", precision="fp32")
    for k, v in by_hand.items():
        assert got[k] == pytest.approx(v) and row[f"dev_{k}"] == pytest.approx(v), k
    assert got["mrr@10"] < without["mrr@10"]
    rank_without = np.array([(sim[i, :6] >= sim[i, i] - 1e-6).sum() for i in range(6)])
    assert without["recall@1"] == pytest.approx(np.mean(rank_without == 1))


@pytest.mark.parametrize("name,text,options,message", [
    ("nope.txt", None, {}, r"--eval-corpus: Cannot read .*nope.txt"),
    ("c.csv", "passage\nx\n", {}, r"--eval-corpus: .*c.csv.*no column 'text'"),
    ("blank.txt", "\n \n", {}, r"--eval-corpus .*blank.txt: no passages"),
    ("c.txt", "x\n", {"eval": None}, r"--eval-corpus .*c.txt: .* give the dev set with --eval"),
    ("c.txt", "x\n", {"scored": True}, r"--eval-corpus .*c.txt: .*scored.csv holds scored pairs")])
def test_bad_eval_corpus_is_a_clear_error(model_dir, tmp_path, name, text, options, message):
    if text is not None:
        (tmp_path / name).write_text(text, encoding="utf-8")
    if options.pop("scored", False):
        data = write(tmp_path / "scored.csv", ["a", "b", "score"], [(a, p, 1) for a, p in PAIRS[:4]])
    else:
        data = write(tmp_path / "pairs.csv", ["anchor", "positive"], PAIRS[:4])
    kw = {"eval": str(data), **options}
    with pytest.raises(MiniftError, match=message):
        train(str(model_dir), str(data), str(tmp_path / "out"), task="embed", eval_corpus=str(tmp_path / name),
              **FAST, **kw)
    assert not (tmp_path / "out").exists()
