"""Checkpoint I/O: round trips with Hugging Face transformers, and every way a checkpoint is refused.

Tolerances: fp32 outputs of minift and transformers within 1e-5 max abs (same operations in the
same order, only kernel choices differ; see test_model.py). Saving and loading only copies tensors,
so minift -> file -> minift round trips must be bit-exact (torch.equal), not merely close.
Half-precision files: see test_half_precision_file for the bound and why.
"""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minift import Bert, BertClassifier, MiniftError

TOL = 1e-5
LABELS4 = {0: "anger", 1: "joy", 2: "fear", 3: "surprise"}


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def perturb(model, seed=0, scale=0.3):
    """Real-looking weights: BERT's 0.02 init makes every output nearly the same, hiding mix-ups."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def batch(vocab_size, type_vocab_size=2, B=3, T=11, seed=0):
    """Token ids with padding (rows 1 and 2) and mixed token types; no fully padded row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, T // 2:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = torch.randint(0, type_vocab_size, (B, T), generator=g) * mask
    assert types.any() and not mask.all()
    return ids, mask, types


def state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def copy_tiny(tiny_dir, dst):
    shutil.copytree(tiny_dir, dst)
    return dst


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def edit_weights(d, fn):
    sd = load_file(d / "model.safetensors")
    fn(sd)
    save_file(sd, str(d / "model.safetensors"))


def write_checkpoint(d, tensors, config_from):
    d.mkdir()
    shutil.copy(config_from / "config.json", d / "config.json")
    save_file(tensors, str(d / "model.safetensors"))
    return d


def refusal(cls, path, **kw) -> str:
    with pytest.raises(MiniftError) as e:
        cls.from_pretrained(path, **kw)
    return str(e.value)


def hf_classifier(transformers, seed=0, **cfg):
    cfg = dict(dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=40, id2label=LABELS4,
                    label2id={v: k for k, v in LABELS4.items()}), **cfg)
    torch.manual_seed(seed)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**cfg, attn_implementation="sdpa"))
    return perturb(hf, seed)


def hf_load(cls, path):
    model, info = cls.from_pretrained(path, attn_implementation="sdpa", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


# ---- 1. minift -> transformers ----

def test_classifier_saved_by_minift_loads_in_transformers(tiny_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = perturb(BertClassifier.from_pretrained(tiny_dir))
    ours.config.problem_type = "single_label_classification"
    ours.save_pretrained(tmp_path / "ours")
    hf = hf_load(transformers.BertForSequenceClassification, tmp_path / "ours")
    ids, mask, types = batch(ours.config.vocab_size)
    with torch.no_grad():
        assert max_diff(hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                        ours(ids, mask, types)) <= TOL
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and cfg["model_type"] == "bert"
    assert cfg["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert cfg["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
    assert cfg["problem_type"] == "single_label_classification"
    assert hf.config.problem_type == "single_label_classification" and hf.config.num_labels == 3
    assert hf.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    # The tensor names are exactly those transformers itself writes for this architecture.
    transformers.BertForSequenceClassification(hf.config).save_pretrained(tmp_path / "hf")
    mine, theirs = load_file(tmp_path / "ours" / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert set(mine) == set(theirs)
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in theirs.items()}
    assert all(v.dtype == torch.float32 for v in mine.values())
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
                 "bert.encoder.layer.1.output.LayerNorm.bias", "bert.pooler.dense.weight", "classifier.weight"):
        assert name in mine
    # Without a problem_type, config.json does not invent one.
    ours.config.problem_type = None
    ours.save_pretrained(tmp_path / "plain")
    assert "problem_type" not in json.loads((tmp_path / "plain" / "config.json").read_text())


def test_encoder_saved_by_minift_loads_as_transformers_bertmodel(tiny_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = perturb(Bert.from_pretrained(tiny_dir), seed=1)
    ours.save_pretrained(tmp_path / "ours")
    hf = hf_load(transformers.BertModel, tmp_path / "ours")
    ids, mask, types = batch(ours.config.vocab_size, seed=1)
    with torch.no_grad():
        o = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        h, pooled = ours(ids, mask, types)
    m = mask.bool()
    assert max_diff(h[m], o.last_hidden_state[m]) <= TOL and max_diff(pooled, o.pooler_output) <= TOL
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == ["BertModel"]
    transformers.BertModel(hf.config).save_pretrained(tmp_path / "hf")
    mine = load_file(tmp_path / "ours" / "model.safetensors")
    assert set(mine) == set(load_file(tmp_path / "hf" / "model.safetensors"))
    assert "encoder.layer.0.attention.self.key.weight" in mine and not any(k.startswith("bert.") for k in mine)


# ---- 2. transformers -> minift ----

def test_transformers_multilabel_classifier_loads_and_round_trips_bit_exact(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = hf_classifier(transformers, seed=2, problem_type="multi_label_classification")
    hf.save_pretrained(tmp_path / "hf")
    ours = BertClassifier.from_pretrained(tmp_path / "hf").eval()
    ids, mask, types = batch(101, seed=2)
    with torch.no_grad():
        assert max_diff(ours(ids, mask, types), hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits) <= TOL
    assert ours.config.problem_type == "multi_label_classification"
    assert ours.config.id2label == LABELS4 and ours.config.num_labels == 4
    assert ours.classifier.weight.shape == (4, 32)
    ours.save_pretrained(tmp_path / "again")
    # minift's file holds the very tensors transformers wrote, under the same names...
    theirs, mine = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # ...and reloading it gives the same model, bit for bit, with the same head description.
    again = BertClassifier.from_pretrained(tmp_path / "again")
    assert state_equal(again, ours) and again.config == ours.config
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert cfg["problem_type"] == "multi_label_classification"
    assert cfg["label2id"] == {"anger": 0, "joy": 1, "fear": 2, "surprise": 3}


# ---- 3. sharded checkpoints ----

def test_sharded_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = hf_classifier(transformers, seed=3, hidden_size=64, intermediate_size=100)
    d = tmp_path / "sharded"
    hf.save_pretrained(d, max_shard_size="50KB")
    shards = sorted(set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(shards) >= 3 and not (d / "model.safetensors").exists()
    assert all((d / s).exists() for s in shards)
    ours = BertClassifier.from_pretrained(d).eval()
    ids, mask, types = batch(101, seed=3)
    with torch.no_grad():
        assert max_diff(ours(ids, mask, types), hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits) <= TOL
    (d / shards[1]).unlink()
    msg = refusal(BertClassifier, d)
    assert str(d / shards[1]) in msg and "missing" in msg


def test_shard_index_errors(tiny_dir, tmp_path):
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(tiny_dir / "config.json", d)
    sd = load_file(tiny_dir / "model.safetensors")
    names = sorted(sd)
    half = len(names) // 2
    save_file({k: sd[k] for k in names[:half]}, str(d / "part-1.safetensors"))
    save_file({k: sd[k] for k in names[half:]}, str(d / "part-2.safetensors"))
    weight_map = {k: "part-1.safetensors" if i < half else "part-2.safetensors" for i, k in enumerate(names)}
    index = d / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert state_equal(BertClassifier.from_pretrained(d), BertClassifier.from_pretrained(tiny_dir))
    # A tensor the index promises but no shard holds.
    index.write_text(json.dumps({"weight_map": dict(weight_map, **{"bert.encoder.layer.9.output.dense.weight": "part-2.safetensors"})}))
    msg = refusal(BertClassifier, d)
    assert "in no shard" in msg and "bert.encoder.layer.9.output.dense.weight" in msg
    for bad in ("{not json", json.dumps({"metadata": {}})):
        index.write_text(bad)
        msg = refusal(BertClassifier, d)
        assert "not a valid shard index" in msg and str(index) in msg


# ---- 4. legacy tensor names ----

def test_legacy_names_prefix_and_extra_tensors(tiny_dir, tmp_path):
    src = perturb(Bert.from_pretrained(tiny_dir), seed=4)
    src.save_pretrained(tmp_path / "plain")
    legacy = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in load_file(tmp_path / "plain" / "model.safetensors").items()}
    assert sum(k.endswith(("LayerNorm.gamma", "LayerNorm.beta")) for k in legacy) == 2 * (1 + 2 * 2)
    g = torch.Generator().manual_seed(4)
    legacy.update({  # a pretraining checkpoint's heads and buffer, none of them part of the encoder
        "bert.embeddings.position_ids": torch.arange(64)[None],
        "cls.predictions.bias": torch.randn(200, generator=g),
        "cls.predictions.transform.dense.weight": torch.randn(32, 32, generator=g),
        "cls.predictions.transform.LayerNorm.gamma": torch.ones(32),
        "cls.seq_relationship.weight": torch.randn(2, 32, generator=g),
    })
    loaded = Bert.from_pretrained(write_checkpoint(tmp_path / "legacy", legacy, tiny_dir)).eval()
    assert state_equal(loaded, src)
    ids, mask, types = batch(200, seed=4)
    with torch.no_grad():
        h0, p0 = src(ids, mask, types)
        h1, p1 = loaded(ids, mask, types)
    assert torch.equal(h0, h1) and torch.equal(p0, p1)

    # Sentence-embedding checkpoints often have no pooler.
    del legacy["bert.pooler.dense.weight"], legacy["bert.pooler.dense.bias"]
    d = write_checkpoint(tmp_path / "no-pooler", legacy, tiny_dir)
    enc = Bert.from_pretrained(d).eval()
    assert enc.pooler is None
    with torch.no_grad():
        h2, p2 = enc(ids, mask, types)
    assert p2 is None and torch.equal(h2, h0)
    clf = BertClassifier.from_pretrained(d).eval()  # fresh pooler and head, BERT's initialisation
    assert torch.equal(clf.bert(ids, mask, types)[0].detach(), h0)
    for fresh in (clf.bert.pooler, clf.classifier):
        assert torch.all(fresh.bias == 0)
        assert abs(fresh.weight.std().item() - 0.02) < 0.006 and fresh.weight.abs().max().item() < 0.2
    assert not torch.equal(clf.bert.pooler.weight, src.pooler.weight)


# ---- 5. half-precision files ----

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_file(dtype, tiny_dir, tmp_path):
    src = perturb(BertClassifier.from_pretrained(tiny_dir), seed=5)
    src.save_pretrained(tmp_path / "fp32")
    sd = load_file(tmp_path / "fp32" / "model.safetensors")
    half = {k: v.to(dtype) for k, v in sd.items()}
    loaded = BertClassifier.from_pretrained(write_checkpoint(tmp_path / "half", half, tiny_dir)).eval()
    ref = BertClassifier.from_pretrained(
        write_checkpoint(tmp_path / "rounded", {k: v.float() for k, v in half.items()}, tiny_dir)).eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ids, mask, types = batch(200, seed=5)
    with torch.no_grad():
        out, out_ref = loaded(ids, mask, types), ref(ids, mask, types)
    assert max_diff(out, out_ref) <= TOL
    assert state_equal(loaded, ref)  # widening is exact, so the parameters are the rounded weights themselves

    # Against the original fp32 weights. Round-to-nearest moves each weight w by |dw| <= u|w|, with
    # u = 2^-11 (fp16, 11 significant bits) or 2^-8 (bf16, 8); fp16 subnormals (|w| < 2^-14) are
    # off by at most half their spacing, 2^-25. To first order a logit then moves by
    # pred = sum_i dlogit/dw_i * dw_i, computed below per logit from the actual rounding, and
    # |pred| <= scale = sum_i |dlogit/dw_i| |dw_i|. The Taylor remainder is second order, about u
    # times the first-order scale: allow 4u * scale (+ fp32 noise). A weight loaded wrongly, or
    # rounded twice, moves a logit by an unpredicted amount and fails the second assertion.
    u = 2 ** -11 if dtype == torch.float16 else 2 ** -8
    params = dict(src.named_parameters())
    rounded = dict(ref.named_parameters())
    dw = {k: (rounded[k] - p).detach() for k, p in params.items()}
    assert all((dw[k].abs() <= u * p.detach().abs() + 2 ** -25).all() for k, p in params.items())
    assert any(dw[k].abs().max() > 0 for k in dw)  # the file really was rounded
    logits = src(ids, mask, types)
    for b in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            grads = torch.autograd.grad(logits[b, c], list(params.values()), retain_graph=True, allow_unused=True)
            pairs = [(g, dw[k]) for k, g in zip(params, grads) if g is not None]
            pred = sum((g * d).sum().item() for g, d in pairs)
            scale = sum((g.abs() * d.abs()).sum().item() for g, d in pairs)
            moved = out[b, c].item() - logits[b, c].item()
            assert abs(moved) <= (1 + 4 * u) * scale + TOL, (b, c, moved, scale)
            assert abs(moved - pred) <= 4 * u * scale + TOL, (b, c, moved, pred, scale)


# ---- 6. error paths ----

def test_missing_tensor_is_named(tiny_dir, tmp_path):
    d = copy_tiny(tiny_dir, tmp_path / "m")
    edit_weights(d, lambda sd: sd.pop("bert.encoder.layer.1.attention.self.key.weight"))
    msg = refusal(BertClassifier, d)
    assert str(d) in msg and "missing (1): encoder.layer.1.attention.self.key.weight" in msg
    # Its siblings in the fused QKV projection are known names, not "unexpected".
    assert "unexpected" not in msg and "query" not in msg
    assert "missing (1): encoder.layer.1.attention.self.key.weight" in refusal(Bert, d)


def test_unexpected_tensors_are_named(tiny_dir, tmp_path):
    d = copy_tiny(tiny_dir, tmp_path / "u")
    edit_weights(d, lambda sd: sd.update({"bert.encoder.layer.0.attention.self.rotary.weight": torch.zeros(3)}))
    msg = refusal(BertClassifier, d)
    assert "unexpected (1): encoder.layer.0.attention.self.rotary.weight" in msg and "missing" not in msg
    # A config with fewer layers than the file: the extra layer is unexpected.
    d2 = copy_tiny(tiny_dir, tmp_path / "u2")
    edit_config(d2, num_hidden_layers=1)
    msg = refusal(Bert, d2)
    assert "unexpected (16):" in msg and "encoder.layer.1.attention.self.query.weight" in msg
    assert "encoder.layer.0." not in msg


def test_wrong_shape_names_actual_and_expected(tiny_dir, tmp_path):
    d = copy_tiny(tiny_dir, tmp_path / "s")
    edit_config(d, intermediate_size=40)
    msg = refusal(BertClassifier, d)
    assert "wrong shape (6):" in msg
    assert "encoder.layer.0.intermediate.dense.weight [37, 32] (expected [40, 32])" in msg
    assert "encoder.layer.1.output.dense.weight [32, 37] (expected [32, 40])" in msg
    assert "unexpected" not in msg and "missing" not in msg
    # A transposed matrix has the right number of elements but the wrong shape.
    d2 = copy_tiny(tiny_dir, tmp_path / "t")
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    edit_weights(d2, lambda sd: sd.update({name: sd[name].t().contiguous()}))
    msg = refusal(BertClassifier, d2)
    assert "wrong shape (1): encoder.layer.1.intermediate.dense.weight [32, 37] (expected [37, 32])" in msg


def test_num_labels_mismatch_names_classifier(tiny_dir):
    msg = refusal(BertClassifier, tiny_dir, id2label={0: "no", 1: "yes"})
    assert "classifier.weight [3, 32] (expected [2, 32])" in msg and "classifier.bias [3] (expected [2])" in msg
    # The same labels as the checkpoint load fine.
    m = BertClassifier.from_pretrained(tiny_dir, id2label={0: "neg", 1: "neu", 2: "pos"})
    assert m.config.id2label == {0: "neg", 1: "neu", 2: "pos"}


def test_half_a_head_is_missing_not_fresh(tiny_dir, tmp_path):
    for name in ("bert.pooler.dense.bias", "classifier.bias"):
        d = copy_tiny(tiny_dir, tmp_path / name)
        edit_weights(d, lambda sd: sd.pop(name))
        msg = refusal(BertClassifier, d)
        assert f"missing (1): {name.removeprefix('bert.')}" in msg
    # A head absent as a whole starts fresh instead.
    d = copy_tiny(tiny_dir, tmp_path / "headless")
    edit_weights(d, lambda sd: [sd.pop(k) for k in ("classifier.weight", "classifier.bias")])
    m = BertClassifier.from_pretrained(d, id2label={0: "a", 1: "b"})
    assert m.classifier.weight.shape == (2, 32) and torch.all(m.classifier.bias == 0)


RAN = []


def _side_effect(tag):
    RAN.append(tag)
    return torch.zeros(1)


class Payload:
    """Unpickling this calls _side_effect: what a malicious pytorch_model.bin would do."""

    def __reduce__(self):
        return _side_effect, ("code ran",)


def test_pickle_refused_unless_allowed_and_then_weights_only(tiny_dir, tmp_path, monkeypatch):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(tiny_dir / "config.json", d)
    torch.save(load_file(tiny_dir / "model.safetensors"), d / "pytorch_model.bin")
    msg = refusal(BertClassifier, d)
    assert "pickle" in msg and "allow_pickle" in msg and str(d) in msg

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert state_equal(BertClassifier.from_pretrained(d, allow_pickle=True), BertClassifier.from_pretrained(tiny_dir))
    assert len(calls) == 1 and calls[0].get("weights_only") is True
    monkeypatch.undo()

    # A pickle that runs code when unpickled is refused, and its code does not run.
    torch.save({"bert.embeddings.word_embeddings.weight": Payload()}, d / "pytorch_model.bin")
    RAN.clear()
    msg = refusal(BertClassifier, d, allow_pickle=True)
    assert "weights_only=True" in msg and str(d / "pytorch_model.bin") in msg and RAN == []
    torch.load(d / "pytorch_model.bin", weights_only=False)  # proof the payload is live
    assert RAN == ["code ran"]

    # Pickles that hold something other than a state dict.
    torch.save([torch.zeros(2)], d / "pytorch_model.bin")
    assert "expected a state dict" in refusal(BertClassifier, d, allow_pickle=True)
    torch.save({"state_dict": load_file(tiny_dir / "model.safetensors")}, d / "pytorch_model.bin")
    msg = refusal(BertClassifier, d, allow_pickle=True)
    assert "expected a state dict" in msg and "'state_dict'" in msg


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_safetensors(damage, tiny_dir, tmp_path):
    d = copy_tiny(tiny_dir, tmp_path / damage)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncated": data[:len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    msg = refusal(BertClassifier, d)
    assert "truncated or corrupted" in msg and str(f) in msg


def test_directory_errors(tiny_dir, tmp_path):
    msg = refusal(Bert, tmp_path / "nowhere")
    assert "no such model directory" in msg and str(tmp_path / "nowhere") in msg
    assert "no such model directory" in refusal(Bert, tiny_dir / "model.safetensors")  # a file, not a directory

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_dir / "config.json", no_weights)
    msg = refusal(Bert, no_weights)
    assert "no weights found" in msg and "model.safetensors" in msg and "pytorch_model.bin" in msg

    no_config = copy_tiny(tiny_dir, tmp_path / "no-config")
    (no_config / "config.json").unlink()
    msg = refusal(Bert, no_config)
    assert "no config.json" in msg and str(no_config / "config.json") in msg


@pytest.mark.parametrize("text,expect", [
    ("{\"hidden_size\": 32,", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (b"\xff\xfe{}", "not valid JSON"),
])
def test_invalid_config_json(text, expect, tiny_dir, tmp_path):
    d = copy_tiny(tiny_dir, tmp_path / "c")
    (d / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    msg = refusal(BertClassifier, d)
    assert expect in msg and str(d / "config.json") in msg


@pytest.mark.parametrize("key,value", [("position_embedding_type", "relative_key"), ("hidden_act", "tanh"),
                                       ("model_type", "deberta-v2"), ("is_decoder", True)])
def test_unsupported_config_names_key_and_value(key, value, tiny_dir, tmp_path):
    d = copy_tiny(tiny_dir, tmp_path / "c")
    edit_config(d, **{key: value})
    msg = refusal(Bert, d)
    assert key in msg and str(value).lower() in msg.lower() and str(d / "config.json") in msg


# ---- 7. atomic save ----

def test_save_leaves_no_temporary_files_and_replaces_old_ones(tiny_dir, tmp_path):
    d = tmp_path / "out"
    first = perturb(BertClassifier.from_pretrained(tiny_dir), seed=7)
    first.save_pretrained(d)
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]
    old_bytes = (d / "model.safetensors").read_bytes()
    second = perturb(BertClassifier.from_pretrained(tiny_dir, id2label={0: "x", 1: "y", 2: "z"}), seed=8)
    with open(d / "model.safetensors", "rb") as reader:  # a reader that opened the old file meanwhile
        second.save_pretrained(d)
        assert reader.read() == old_bytes  # the new file was renamed into place, not written over the old
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]
    back = BertClassifier.from_pretrained(d)
    assert state_equal(back, second) and not state_equal(back, first)
    assert json.loads((d / "config.json").read_text())["id2label"] == {"0": "x", "1": "y", "2": "z"}


def test_failed_save_keeps_the_old_file(tiny_dir, tmp_path, monkeypatch):
    import minift.checkpoint

    d = tmp_path / "out"
    model = BertClassifier.from_pretrained(tiny_dir)
    model.save_pretrained(d)
    before = (d / "model.safetensors").read_bytes()

    def crash_mid_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(minift.checkpoint, "save_file", crash_mid_write)
    with pytest.raises(MiniftError, match=r"cannot write model.safetensors in .*: disk full"):
        perturb(model).save_pretrained(d)
    assert (d / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]


# ---- 8. an encoder from a classifier checkpoint ----

def test_encoder_from_classifier_checkpoint(tiny_dir):
    enc = Bert.from_pretrained(tiny_dir).eval()
    clf = BertClassifier.from_pretrained(tiny_dir).eval()
    assert not hasattr(enc, "classifier") and enc.pooler is not None
    ids, mask, types = batch(200, seed=8)
    with torch.no_grad():
        h0, p0 = enc(ids, mask, types)
        h1, p1 = clf.bert(ids, mask, types)
    assert torch.equal(h0, h1) and torch.equal(p0, p1)
    assert state_equal(enc, clf.bert)


# ---- a real checkpoint ----

def test_minilm_round_trip_is_bit_exact(minilm_dir, tmp_path):
    Bert.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    original, saved = load_file(minilm_dir / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert set(original) - set(saved) == {"embeddings.position_ids"} and set(saved) <= set(original)
    assert all(torch.equal(saved[k], original[k]) for k in saved)
