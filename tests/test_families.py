"""The BERT family's encoders against transformers' AutoModel, on fresh random tiny configs.

Each case builds a random checkpoint with transformers (weights perturbed so that outputs differ
between tokens), loads it into minift, and compares in fp32: the last hidden states at real tokens
within 1e-5 relative (to the largest magnitude of the reference), every parameter's gradient of the
same scalar loss within 1e-4 relative; then saves it back and checks that transformers loads minift's
directory to the same outputs. Batches have padded rows (and a row of one real token).
"""
import json

import pytest
import torch

from minift import Bert, BertConfig, MiniftError
from minift.checkpoint import hf_tensor_names
from minift.families import FAMILIES
from minift.tasks.classify import BertClassifier

transformers = pytest.importorskip("transformers")

# (model_type, transformers config kwargs); odd head counts, ELECTRA's narrow embeddings, ModernBERT's
# local windows shorter (4 < T) and longer (64 > T) than the sequences, with and without biases.
CASES = [
    ("roberta", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                     type_vocab_size=1, pad_token_id=1)),
    ("xlm-roberta", dict(hidden_size=36, num_hidden_layers=3, num_attention_heads=3, intermediate_size=50,
                         hidden_act="gelu_new", type_vocab_size=1, pad_token_id=1)),
    ("camembert", dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=5, intermediate_size=81,
                       hidden_act="relu", type_vocab_size=2, pad_token_id=3)),
    ("roberta", dict(hidden_size=45, num_hidden_layers=1, num_attention_heads=5, intermediate_size=64,
                     hidden_act="gelu_pytorch_tanh", type_vocab_size=1, pad_token_id=1)),
    ("xlm-roberta", dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=100,
                         type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)),
    ("distilbert", dict(dim=32, n_layers=2, n_heads=2, hidden_dim=37)),
    ("distilbert", dict(dim=45, n_layers=3, n_heads=5, hidden_dim=70, activation="relu")),
    ("distilbert", dict(dim=36, n_layers=1, n_heads=3, hidden_dim=50, sinusoidal_pos_embds=True, pad_token_id=2)),
    ("electra", dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37)),
    ("electra", dict(embedding_size=24, hidden_size=36, num_hidden_layers=3, num_attention_heads=3,
                     intermediate_size=50, hidden_act="gelu_new", type_vocab_size=3)),
    ("electra", dict(embedding_size=40, hidden_size=40, num_hidden_layers=2, num_attention_heads=5,
                     intermediate_size=81)),
    ("modernbert", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
                        global_attn_every_n_layers=2, local_attention=4, pad_token_id=0)),
    ("modernbert", dict(hidden_size=36, num_hidden_layers=4, num_attention_heads=3, intermediate_size=50,
                        global_attn_every_n_layers=3, local_attention=64, pad_token_id=0, global_rope_theta=1000.0,
                        local_rope_theta=50.0)),
    ("modernbert", dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=5, intermediate_size=81,
                        global_attn_every_n_layers=2, local_attention=6, pad_token_id=0, norm_bias=True,
                        attention_bias=True, mlp_bias=True, classifier_bias=True, hidden_activation="gelu_new")),
]
IDS = [f"{family}-{i}" for i, (family, _) in enumerate(CASES)]
V, T = 97, 17


def hf_model(family, kw, seed, auto=None):
    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(family, vocab_size=V, max_position_embeddings=40, **kw)
    model = (auto or transformers.AutoModel).from_config(cfg, attn_implementation="sdpa").eval()
    with torch.no_grad():  # real-looking weights: the 0.02 init makes every output nearly the same
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def batch(pad, seed):
    """Ids that are never the padding id, and three padded rows (one with a single real token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V - 1, (4, T), generator=g)
    ids += (ids >= pad).long()  # skip pad
    mask = torch.ones_like(ids)
    mask[1, T // 2:] = mask[2, 3:] = mask[3, 1:] = 0
    return ids.masked_fill(mask == 0, pad), mask


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def hf_grad(hf, names):  # the gradient of a minift tensor: its Hugging Face parts stacked
    params = dict(hf.named_parameters())
    return torch.cat([params[n].grad for n in names])


def assert_hidden_like_transformers(ours, hf, ids, mask, w, path):
    """Last hidden states at the real tokens within 1e-5 of AutoModel's, then the gradients of the scalar
    sum(h * w) and the save-and-reload check (assert_like_transformers)."""
    m = mask.bool()
    ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    h, _ = ours(ids, mask)
    assert rel(h[m], ref[m]) <= 1e-5
    (ref * w * mask[..., None]).sum().backward()
    (h * w * mask[..., None]).sum().backward()
    assert_like_transformers(ours, hf, lambda model: model(input_ids=ids, attention_mask=mask).last_hidden_state[m],
                             path, transformers.AutoModel)


def assert_like_transformers(ours, hf, outputs, d, auto):
    """After both models back-propagated the same loss: every gradient of minift's model within 1e-4 (relative)
    of its Hugging Face tensors' (a tensor the loss does not reach, a pooler, has no gradient on either side).
    Then minift's save to d loads in transformers (auto) as hf's very class, named so in config.json, and
    outputs(model) of it is within 1e-6 of hf's."""
    # (remove_duplicate=False: a masked LM's decoder, tied to the word embeddings, keeps its own name)
    params, prefix = dict(hf.named_parameters(remove_duplicate=False)), ours.config.family.prefix
    for name, p in ours.named_parameters():
        own = f"{prefix}." if name.startswith("bert.") else ""
        grads = [params[own + n].grad for n in hf_tensor_names(ours, name)]
        if p.grad is None:
            assert all(g is None for g in grads), name
        else:
            assert rel(p.grad, torch.cat(grads)) <= 1e-4, name
    ours.save_pretrained(d)
    config = json.loads((d / "config.json").read_text())
    assert config["model_type"] == ours.config.model_type and config["architectures"] == [type(hf).__name__]
    back = auto.from_pretrained(d, attn_implementation="sdpa").eval()
    assert type(back) is type(hf)
    with torch.no_grad():
        assert rel(outputs(back), outputs(hf)) <= 1e-6


@pytest.mark.parametrize("family,kw", CASES, ids=IDS)
def test_hidden_states_and_gradients_match_transformers(family, kw, tmp_path):
    hf = hf_model(family, kw, seed=len(IDS[0]) + sum(map(ord, str(kw))))
    hf.save_pretrained(tmp_path / "hf")
    ours = Bert.from_pretrained(tmp_path / "hf").eval()
    assert ours.config.model_type == family
    pad = ours.config.pad_token_id
    ids, mask = batch(pad, seed=sum(map(ord, family)))
    w = torch.randn(T, ours.config.hidden_size, generator=torch.Generator().manual_seed(0))  # a scalar loss to derive
    assert_hidden_like_transformers(ours, hf, ids, mask, w, tmp_path / "ours")
    assert torch.equal(Bert.from_pretrained(tmp_path / "ours").embeddings.word.weight, ours.embeddings.word.weight)


@pytest.mark.parametrize("family,kw", [CASES[0], CASES[6], CASES[9], CASES[11]], ids=["roberta", "distilbert",
                                                                                     "electra", "modernbert"])
def test_padding_and_the_first_token_path_change_nothing(family, kw, tmp_path):
    """Each row alone (no padding) gives the hidden states it gets in a padded batch, and the last layer's
    first-token-only path (pooled_only, through a pooler) gives the pooled vector of the full path."""
    hf_model(family, kw, seed=3).save_pretrained(tmp_path)
    cfg = BertConfig.from_json(tmp_path)
    ours = Bert(cfg, pooler=True)
    ours.load_state_dict(Bert.from_pretrained(tmp_path).state_dict(), strict=False)
    ours.eval()
    ids, mask = batch(cfg.pad_token_id, seed=5)
    with torch.no_grad():
        h, pooled = ours(ids, mask)
        assert rel(ours(ids, mask, pooled_only=True), pooled) <= 1e-5
        for i, n in enumerate(mask.sum(1).tolist()):
            h1, p1 = ours(ids[i:i + 1, :n])
            assert rel(h[i, :n], h1[0]) <= 1e-5 and rel(pooled[i], p1[0]) <= 1e-5


LONG = ("modernbert", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
                          global_attn_every_n_layers=3, local_attention=128, pad_token_id=0))  # global, local, local


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "written-out"])
def test_modernbert_long_context_matches_transformers(sdpa, tmp_path, monkeypatch):
    """2,048 tokens through windows of 128 (local layers last, so that the first-token-only path reads one),
    in both attention paths: hidden states within 1e-5 and every gradient within 1e-4 of transformers, a
    padded row whose end falls inside a block; pooled_only's [CLS] rows equal the full path's."""
    import minift.model
    monkeypatch.setattr(minift.model, "SDPA_CPU_INFERENCE", {minift.model.CPU_CLASS: {torch.float32: 1}} if sdpa else {})
    family, kw = LONG
    hf = hf_model(family, kw, seed=1)
    hf.save_pretrained(tmp_path)
    ours = Bert.from_pretrained(tmp_path).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, V, (2, 2048), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 1337:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    assert_hidden_like_transformers(ours, hf, ids, mask, torch.randn(2048, 32, generator=g), tmp_path / "ours")
    pooled = Bert(ours.config, pooler=True)
    pooled.load_state_dict(ours.state_dict(), strict=False)
    with torch.no_grad():
        assert rel(pooled.eval()(ids, mask, pooled_only=True), pooled(ids, mask)[1]) <= 1e-5


def test_modernbert_window_masks_do_not_grow_with_t_squared(monkeypatch):
    """What the attention of each layer is given at B=2, T=2,048, windows of 128: the global layer a [B, 1, 1, T]
    key mask, each local one blocks of 64 queries against 192 keys with a [B * T / 64, 1, 64, 192] mask, so that
    neither mask nor scores hold a [T, T] matrix (B * T * T would be 8.4 million booleans; these are 0.8 million)."""
    import minift.model
    calls, real = [], minift.model.attention

    def spy(q, k, v, mask, *args, **kw):
        calls.append((tuple(q.shape), tuple(k.shape), None if mask is None else tuple(mask.shape)))
        return real(q, k, v, mask, *args, **kw)
    monkeypatch.setattr(minift.model, "attention", spy)
    cfg = BertConfig.from_dict({"model_type": "modernbert", **LONG[1], "vocab_size": V})
    ids = torch.randint(1, V, (2, 2048))
    mask = torch.ones_like(ids)
    mask[1, 1000:] = 0
    with torch.no_grad():
        Bert(cfg, pooler=False).eval()(ids, mask)
    assert calls[0] == ((2, 2, 2048, 16), (2, 2, 2048, 16), (2, 1, 1, 2048))
    assert calls[1:] == [((64, 2, 64, 16), (64, 2, 192, 16), (64, 1, 64, 192))] * 2


def test_config_names_of_each_family_are_translated():
    d = BertConfig.from_dict({"model_type": "distilbert", "dim": 48, "n_heads": 3, "n_layers": 2, "hidden_dim": 99,
                              "activation": "relu", "dropout": 0.2, "attention_dropout": 0.3})
    assert (d.hidden_size, d.num_attention_heads, d.num_hidden_layers, d.intermediate_size, d.hidden_act,
            d.hidden_dropout_prob, d.attention_probs_dropout_prob, d.type_vocab_size) == (48, 3, 2, 99, "relu", .2, .3, 0)
    assert "dim" in d.to_dict() and "hidden_size" not in d.to_dict() and "type_vocab_size" not in d.to_dict()
    # ModernBERT's older config.json style: thetas and the global-layer period as plain keys
    m = BertConfig.from_dict({"model_type": "modernbert", "num_hidden_layers": 4, "global_attn_every_n_layers": 2,
                              "global_rope_theta": 5.0, "local_rope_theta": 7.0})
    assert m.sliding == [False, True, False, True] and (m.rope_theta, m.local_rope_theta) == (5.0, 7.0)
    assert m.to_dict()["rope_parameters"]["sliding_attention"]["rope_theta"] == 7.0
    assert BertConfig.from_dict({"model_type": "roberta"}).position_offset == 2  # after pad_token_id 1


@pytest.mark.parametrize("d,expect", [
    ({"model_type": "deberta-v2"}, "model_type='deberta-v2'"),
    ({"model_type": "modernbert", "norm_bias": True}, "norm_bias"),
    ({"model_type": "modernbert", "rope_parameters": {"full_attention": {"rope_type": "yarn"}}}, "rope_type='yarn'"),
    ({"model_type": "modernbert", "classifier_pooling": "max"}, "classifier_pooling='max'"),
    ({"model_type": "modernbert", "embedding_dropout": 0.1}, "embedding_dropout"),
    ({"model_type": "distilbert", "activation": "tanh"}, "activation='tanh'"),
])
def test_unsupported_family_options_are_named(d, expect):
    with pytest.raises(MiniftError, match=expect.replace("(", r"\(").replace("[", r"\[")):
        BertConfig.from_dict(d)


# ---- sequence classification heads ----

HEAD_CASES = CASES + [("modernbert", dict(CASES[11][1], classifier_pooling="mean", classifier_activation="silu"))]


@pytest.mark.parametrize("family,kw", HEAD_CASES, ids=IDS + ["modernbert-mean"])
def test_sequence_classifier_matches_transformers_both_ways(family, kw, tmp_path):
    """Logits and loss within 1e-5, every gradient within 1e-4 (relative), of the family's
    *ForSequenceClassification; minift's save loads in transformers to the same logits."""
    auto = transformers.AutoModelForSequenceClassification
    hf = hf_model(family, dict(kw, num_labels=3), seed=7 + len(kw), auto=auto)
    hf.save_pretrained(tmp_path / "hf")
    ours = BertClassifier.from_pretrained(tmp_path / "hf").eval()
    ids, mask = batch(ours.config.pad_token_id, seed=11)
    labels = torch.tensor([0, 2, 1, 2])
    o = hf(input_ids=ids, attention_mask=mask, labels=labels)
    logits, loss = ours(ids, mask, labels=labels)
    assert rel(logits, o.logits) <= 1e-5 and rel(loss, o.loss) <= 1e-5
    o.loss.backward()
    loss.backward()
    assert type(hf).__name__ == f"{FAMILIES[family].stem}ForSequenceClassification"
    assert_like_transformers(ours, hf, lambda model: model(input_ids=ids, attention_mask=mask).logits,
                             tmp_path / "ours", auto)


# ---- the CLI, end to end: a tiny random checkpoint of each family with its tokenizer ----

TRAIN_ROWS = [("a good film", "pos"), ("the worst plot", "neg"), ("it was fine", "mid"), ("boring and sad", "neg"),
              ("really funny story", "pos"), ("我喜欢这部电影", "pos"), ("crème brûlée 🙂", "mid"), ("nothing works", "neg")]
NO_DROPOUT = {"distilbert": dict(dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0),
              "modernbert": {}}  # ModernBERT's dropouts are 0 by default


def random_checkpoint(family, kw, layout, d, auto, **extra):
    """transformers' auto class on the family's config kw, random, saved in d with a tokenizer of `layout`
    (test_family_tokenizers.LAYOUTS); dropout off."""
    from minift.tokenizer import Tokenizer
    from test_family_tokenizers import LAYOUTS as TOKENIZERS
    tok = Tokenizer.from_dir(TOKENIZERS[layout](d))
    dropout = NO_DROPOUT.get(family, dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(family, **{**kw, "pad_token_id": tok.pad_id}, **dropout, **extra,
                                            vocab_size=tok.vocab_size, max_position_embeddings=64)
    auto.from_config(cfg).save_pretrained(d)
    return d


@pytest.mark.parametrize("family,layout,kw", [
    ("roberta", "roberta-vocab.json", CASES[0][1]), ("xlm-roberta", "xlm-roberta", CASES[1][1]),
    ("distilbert", "distilbert", CASES[5][1]), ("electra", "distilbert", CASES[8][1]),
    ("modernbert", "modernbert", CASES[11][1])], ids=["roberta", "xlm-roberta", "distilbert", "electra", "modernbert"])
def test_cli_fine_tuning_memorises_a_batch(family, layout, kw, tmp_path, capsys):
    """`minift train` on 8 examples from a random checkpoint, then `minift eval` on them: all learnt."""
    import csv

    from minift.cli import main
    d = random_checkpoint(family, kw, layout, tmp_path / "model", transformers.AutoModel)
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *TRAIN_ROWS])
    fast = ["--precision", "fp32", "--device", "cpu"]
    assert main(["train", "--model", str(d), "--train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "out"),
                 "--max-steps", "150", "--batch-size", "8", "--lr", "3e-3", "--warmup", "0.05", "--compile", "off",
                 *fast]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "out"), "--data", str(tmp_path / "train.csv"), *fast]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == 1.0 and metrics["loss"] < 0.1, metrics
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == family and saved["architectures"] == [f"{FAMILIES[family].stem}ForSequenceClassification"]


TAGGED = [("Barack Obama visited Paris .", "B-PER I-PER O B-LOC O"), ("Crème brûlée in Zürich", "O O O B-LOC"),
          ("the film was funny", "O O O O"), ("我 喜欢 北京", "O O B-LOC"),
          ("Ada Lovelace wrote 🙂", "B-PER I-PER O O"), ("nothing works in Paris", "O O O B-LOC"),
          ("Obama , Paris and Zürich", "B-PER O B-LOC O B-LOC"), ("a good story", "O O O")]


@pytest.mark.parametrize("family,layout,kw", [("roberta", "roberta-vocab.json", CASES[0][1]),
                                               ("modernbert", "modernbert", CASES[11][1])], ids=["roberta", "modernbert"])
def test_cli_tagging_with_byte_level_bpe_memorises_a_file(family, layout, kw, tmp_path, capsys):
    """`minift train --task tag` on a random RoBERTa, and ModernBERT, with its byte-level BPE (RoBERTa's from
    vocab.json + merges.txt), then `minift eval` on the same CoNLL file: every word's tag learnt; `minift
    predict` on plain text splits it into the same words (no space in any) and tags them alike."""
    from minift.cli import main
    d = random_checkpoint(family, kw, layout, tmp_path / "model", transformers.AutoModel)
    (tmp_path / "train.conll").write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(text.split(), tags.split()))
                                                      for text, tags in TAGGED) + "\n", encoding="utf-8")
    fast = ["--precision", "fp32", "--device", "cpu"]
    assert main(["train", "--task", "tag", "--model", str(d), "--train", str(tmp_path / "train.conll"), "--out",
                 str(tmp_path / "out"), "--max-steps", "300", "--batch-size", "8", "--lr", "3e-3", "--warmup", "0.05",
                 "--compile", "off", *fast]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "out"), "--data", str(tmp_path / "train.conll"), *fast]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == 1.0 and metrics["f1"] == 1.0, metrics
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["architectures"] == [f"{FAMILIES[family].stem}ForTokenClassification"]
    assert main(["predict", "--model", str(tmp_path / "out"), "--device", "cpu", *[t for t, _ in TAGGED]]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    for row, (text, tags) in zip(rows, TAGGED):
        assert [(w["word"], w["tag"]) for w in row["words"]] == list(zip(text.split(), tags.split()))


# ---- question answering heads ----

@pytest.mark.parametrize("family,kw", [CASES[i] for i in (0, 1, 2, 5, 8, 11, 13)],
                         ids=[IDS[i] for i in (0, 1, 2, 5, 8, 11, 13)])
def test_qa_head_matches_transformers_both_ways(family, kw, tmp_path):
    """Start and end logits at the real tokens and the loss within 1e-5, every gradient within 1e-4, of the
    family's *ForQuestionAnswering; minift's save loads in transformers to the same logits."""
    from minift.tasks.qa import BertQA
    auto = transformers.AutoModelForQuestionAnswering
    hf = hf_model(family, kw, seed=5 + len(kw), auto=auto)
    hf.save_pretrained(tmp_path / "hf")
    ours = BertQA.from_pretrained(tmp_path / "hf").eval()
    ids, mask = batch(ours.config.pad_token_id, seed=13)
    starts, ends = torch.tensor([3, 5, 1, 0]), torch.tensor([6, 5, 2, 0])
    o = hf(input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    logits, loss = ours(ids, mask, start_positions=starts, end_positions=ends)
    m = mask.bool()
    assert rel(logits[..., 0][m], o.start_logits[m]) <= 1e-5 and rel(logits[..., 1][m], o.end_logits[m]) <= 1e-5
    # transformers' softmax also spans the padding (scores near 0 there, not -inf): compare on unpadded rows
    full = hf(input_ids=ids[:1], start_positions=starts[:1], end_positions=ends[:1])
    _, loss1 = ours(ids[:1], start_positions=starts[:1], end_positions=ends[:1])
    assert rel(loss1, full.loss) <= 1e-5
    full.loss.backward()
    loss1.backward()
    assert type(hf).__name__ == f"{FAMILIES[family].stem}ForQuestionAnswering"
    assert_like_transformers(ours, hf, lambda model: torch.stack(model(input_ids=ids, attention_mask=mask)[:2])[:, m],
                             tmp_path / "ours", auto)
