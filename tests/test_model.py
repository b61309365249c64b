"""Forward parity with Hugging Face transformers.

Tolerance: fp32 outputs within 1e-5 absolute of transformers (BERT hidden states are
LayerNorm outputs of order 1, so this is also ~1e-5 relative). The same operations run in
the same order; what differs is only the fused QKV matmul and kernel choices.
Gradients within 1e-4: they pass through the same ops in reverse, summed over more terms.
"""
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, ROOT
from minift import Bert, BertClassifier, BertConfig, MiniftError

TOL = 1e-5


def close(a, b, tol=TOL):
    return (a - b).abs().max().item() <= tol


def test_tiny_matches_committed_reference(tiny_dir):
    ref = load_file(tiny_dir / "reference.safetensors")
    model = BertClassifier.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        h, pooled = model.bert(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
        logits = model(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
    real = ref["attention_mask"].sum(1) > 0  # the fully padded row only has to be finite
    m = ref["attention_mask"].bool()  # padded positions are not compared: nobody reads them
    assert close(h[m], ref["last_hidden_state"][m])
    assert close(pooled[real], ref["pooler_output"][real])
    assert close(logits[real], ref["logits"][real])
    assert torch.isfinite(h).all() and torch.isfinite(logits).all()


def test_minilm_matches_committed_reference(minilm_dir):
    ref = load_file(FIXTURES / "minilm_reference.safetensors")
    model = Bert.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        h, pooled = model(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
    m = ref["attention_mask"].bool()
    assert close(h[m], ref["last_hidden_state"][m])  # padded positions are not compared: nobody reads them
    assert close(pooled, ref["pooler_output"])


def test_fully_padded_row_is_finite(tiny_dir):
    model = Bert.from_pretrained(tiny_dir).eval()
    ids = torch.zeros(2, 5, dtype=torch.long)
    h, pooled = model(ids, torch.zeros_like(ids))
    assert torch.isfinite(h).all() and torch.isfinite(pooled).all()


def test_padding_changes_nothing(minilm_dir):
    """The encoder computes on packed real tokens: each sentence alone (no padding, so no packing) and
    the same sentence in a batch padded to 3x its length give the same hidden states at its tokens, the
    same pooled vector, and the same pooled vector through the last layer's [CLS]-only path. fp32, 1e-5
    (the batched matmuls sum in a different order)."""
    model = Bert.from_pretrained(minilm_dir).eval()
    g = torch.Generator().manual_seed(1)
    lengths = [5, 17, 9, 30, 2]
    T = 3 * max(lengths)
    ids, mask = torch.zeros(len(lengths), T, dtype=torch.long), torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n], mask[i, :n] = torch.randint(1000, 30000, (n,), generator=g), 1
    with torch.no_grad():
        h, pooled = model(ids, mask)
        assert close(model(ids, mask, pooled_only=True), pooled, 1e-5)
        assert (h[~mask.bool()] == 0).all()  # padding carries nothing
        assert close(pooled, torch.tanh(model.pooler(h[:, 0])), 1e-6)  # pooled from [CLS], position 0
        for i, n in enumerate(lengths):
            h1, p1 = model(ids[i:i + 1, :n])
            assert close(h[i, :n], h1[0], 1e-5) and close(pooled[i], p1[0], 1e-5)


def test_bucketed_rows_change_nothing(minilm_dir, monkeypatch):
    """bf16 on a CPU computes on the packed rows rounded up to a bucket (Packing): the extra rows must
    not reach any output. The same padded batch with buckets and with exact row counts (rows_bucket
    made the identity) gives the same hidden states, pooled vector and [CLS]-only path within 1e-2
    (bf16 has 8 significant bits, and a matmul's rows may be summed in another order for another row
    count), and exactly zeros at the padding."""
    import minift.model
    from minift.model import Packing, rows_bucket
    assert [rows_bucket(n) for n in (1, 15, 16, 17, 1000, 1024, 1100)] == [1, 15, 16, 18, 1024, 1024, 1152]
    assert all(n <= rows_bucket(n) < n * 1.125 + 1 for n in range(1, 5000))
    mask = torch.zeros(4, 30, dtype=torch.long)
    for i, n in enumerate([30, 7, 19, 1]):
        mask[i, :n] = 1
    pack = Packing(torch.ones_like(mask), mask, bucket=True)
    assert pack.n == 57 and pack.rows(mask).shape[0] == rows_bucket(57) == 60 and pack.unpad(mask).shape[0] == 57

    model = Bert.from_pretrained(minilm_dir).eval()
    ids = torch.randint(1000, 30000, mask.shape, generator=torch.Generator().manual_seed(2)) * mask

    def run():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            h, pooled = model(ids, mask)
            return h.float(), pooled.float(), model(ids, mask, pooled_only=True).float()

    bucketed = run()
    monkeypatch.setattr(minift.model, "rows_bucket", lambda n: n)
    for a, b in zip(bucketed, run()):
        assert (a - b).abs().max().item() <= 1e-2 * b.abs().max().item()
    assert (bucketed[0][~mask.bool()] == 0).all()


def test_unsupported_config_values_are_named():
    with pytest.raises(MiniftError, match="position_embedding_type='relative_key'"):
        BertConfig(position_embedding_type="relative_key")
    with pytest.raises(MiniftError, match="hidden_act='tanh'"):
        BertConfig(hidden_act="tanh")
    with pytest.raises(MiniftError, match="model_type='deberta-v2'"):
        BertConfig.from_dict({"model_type": "deberta-v2"})


def test_losses_follow_problem_type(tiny_dir):
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (3, 6))
    m = BertClassifier.from_pretrained(tiny_dir).eval()
    logits, loss = m(ids, labels=torch.tensor([0, 2, 1]))
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 1])))
    multi = torch.tensor([[1., 0, 1], [0, 0, 0], [1, 1, 1]])
    logits, loss = m(ids, labels=multi)
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, multi))
    reg = BertClassifier(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=37, id2label={0: "score"})).eval()
    y = torch.tensor([0.5, -1.0, 2.0])
    logits, loss = reg(ids, labels=y)
    assert logits.shape == (3, 1) and torch.allclose(loss, ((logits.squeeze(-1) - y) ** 2).mean())


def test_import_and_forward_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import torch, minift\n"
            f"m = minift.BertClassifier.from_pretrained({str(ROOT / 'weights' / 'tiny-bert')!r}).eval()\n"
            "print(m(torch.tensor([[2, 10, 11, 3]])).shape)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "torch.Size([1, 3])" in r.stdout


# ---- live differential tests: fresh random weights and inputs against transformers ----

CONFIGS = [
    dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, hidden_act="gelu", type_vocab_size=2),
    dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=100, hidden_act="gelu_new", type_vocab_size=1),
    dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, intermediate_size=129, hidden_act="relu", type_vocab_size=2),
    dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=5, intermediate_size=81, hidden_act="silu", type_vocab_size=3),
    dict(hidden_size=36, num_hidden_layers=4, num_attention_heads=3, intermediate_size=50, hidden_act="gelu_pytorch_tanh", type_vocab_size=2),
]


def random_batch(cfg, B=3, T=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg["vocab_size"], (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, T // 2:] = 0
    mask[2, 3:] = 0
    types = torch.randint(0, cfg["type_vocab_size"], (B, T), generator=g) * mask
    return ids, mask, types


@pytest.mark.parametrize("spec", CONFIGS, ids=[c["hidden_act"] for c in CONFIGS])
def test_live_random_configs_forward_and_grad(spec, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = dict(spec, vocab_size=101, max_position_embeddings=40, id2label={0: "a", 1: "b", 2: "c"})
    torch.manual_seed(CONFIGS.index(spec))  # not hash(): Python salts it per process
    hf = transformers.BertForSequenceClassification(
        transformers.BertConfig(**cfg, label2id={"a": 0, "b": 1, "c": 2}, attn_implementation="sdpa")).eval()
    # Real-looking weights: the default 0.02 init makes every output nearly the same.
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    hf.save_pretrained(tmp_path)
    ours = BertClassifier.from_pretrained(tmp_path).eval()
    ids, mask, types = random_batch(cfg)
    labels = torch.tensor([0, 2, 1])
    o = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, output_hidden_states=True)
    logits, loss = ours(ids, mask, types, labels=labels)
    h, pooled = ours.bert(ids, mask, types)
    m = mask.bool()
    # fp32 within 1e-5 relative to the largest hidden value (about 4 with these weights)
    err = (h[m] - o.hidden_states[-1][m]).abs().max() / o.hidden_states[-1][m].abs().max()
    assert err <= TOL, err
    assert close(logits, o.logits) and close(loss, o.loss)
    o.loss.backward()
    loss.backward()
    for ours_name, hf_name in [("bert.embeddings.word.weight", "bert.embeddings.word_embeddings.weight"),
                               ("bert.layers.0.fc.weight", "bert.encoder.layer.0.intermediate.dense.weight"),
                               ("bert.layers.0.ln1.weight", "bert.encoder.layer.0.attention.output.LayerNorm.weight"),
                               ("bert.pooler.weight", "bert.pooler.dense.weight"),
                               ("classifier.weight", "classifier.weight")]:
        g_ours = dict(ours.named_parameters())[ours_name].grad
        g_hf = dict(hf.named_parameters())[hf_name].grad
        assert close(g_ours, g_hf, 1e-4), ours_name
    # The fused QKV gradient is the three Hugging Face gradients stacked.
    q, k, v = (dict(hf.named_parameters())[f"bert.encoder.layer.0.attention.self.{x}.weight"].grad for x in ("query", "key", "value"))
    assert close(ours.bert.layers[0].attn.qkv.weight.grad, torch.cat([q, k, v]), 1e-4)


def test_live_minilm_fresh_inputs(minilm_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="sdpa").eval()
    ours = Bert.from_pretrained(minilm_dir).eval()
    cfg = dict(vocab_size=30522, type_vocab_size=2)
    ids, mask, types = random_batch(cfg, B=4, T=64, seed=int(torch.randint(0, 10**6, ()).item()))
    with torch.no_grad():
        o = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        h, pooled = ours(ids, mask, types)
    m = mask.bool()
    assert close(h[m], o.last_hidden_state[m]) and close(pooled, o.pooler_output)


def test_cpu_attention_matches_sdpa():
    """The written-out CPU attention and SDPA (the GPU path) compute the same function: fp32 within 1e-6,
    including a fully padded row (both attend everywhere there, by the mask fix-up in Bert.forward)."""
    from minift.model import attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 9, 8, generator=g) for _ in range(3))
    m = torch.ones(3, 9, dtype=torch.bool)
    m[1, 5:] = False
    mask = m[:, None, None, :]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert close(attention(q, k, v, mask, 0.0), ref, 1e-6)
    assert close(attention(q, k, v, None, 0.0), torch.nn.functional.scaled_dot_product_attention(q, k, v), 1e-6)
    q1 = q[:, :, :1]  # the last layer's single [CLS] query per sequence
    assert close(attention(q1, k, v, mask, 0.0), torch.nn.functional.scaled_dot_product_attention(q1, k, v, attn_mask=mask), 1e-6)


def test_dropout_keeps_expectation():
    """Inverted dropout: kept values scaled by 1/(1-p), about p of them zeroed, identity in eval."""
    from minift.model import Dropout
    torch.manual_seed(0)
    d = Dropout(0.25)
    y = d(torch.ones(200_000))
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))
    assert torch.equal(d.eval()(torch.ones(5)), torch.ones(5))


def test_sdpa_branch_forced_on_cpu_matches_written_out():
    """attention(sdpa=True), the GPU path (and the CPU inference path where SDPA_CPU_INFERENCE says so),
    forced on the CPU against the written-out formula: boolean mask, every query and the single [CLS]
    query, fp32 within 1e-6."""
    from minift.model import attention
    g = torch.Generator().manual_seed(3)
    k, v = (torch.randn(4, 3, 11, 8, generator=g) for _ in range(2))
    m = torch.ones(4, 11, dtype=torch.bool)
    m[1, 4:], m[3, 9:] = False, False
    mask = m[:, None, None, :]
    for q in (torch.randn(4, 3, 11, 8, generator=g), torch.randn(4, 3, 1, 8, generator=g)):
        assert close(attention(q, k, v, mask, 0.0, sdpa=True), attention(q, k, v, mask, 0.0, sdpa=False), 1e-6)


def test_sdpa_chosen_by_query_length(monkeypatch):
    """On a CPU, SDPA from the class's query length on, for the dtypes listed, without dropout only."""
    import minift.model
    from minift.model import attention
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    monkeypatch.setattr(minift.model, "SDPA_CPU_INFERENCE", {minift.model.CPU_CLASS: {torch.float32: 16}})
    k = v = torch.randn(2, 3, 16, 8)
    for Tq, dtype, p_drop, chosen in ((8, torch.float32, 0.0, 0), (16, torch.float32, 0.0, 1),
                                      (16, torch.float32, 0.1, 0), (16, torch.bfloat16, 0.0, 0)):
        calls.clear()
        attention(torch.randn(2, 3, Tq, 8).to(dtype), k.to(dtype), v.to(dtype), None, p_drop)
        assert len(calls) == chosen, (Tq, dtype, p_drop)


def test_model_with_sdpa_inference_path_matches(minilm_dir, monkeypatch):
    """The whole classifier, inference through SDPA (as chosen per CPU class) against the written-out path."""
    import minift.model
    net = BertClassifier.from_pretrained(minilm_dir, id2label={0: "a", 1: "b"}).eval()
    ids = torch.randint(1000, 30000, (3, 13), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, 5:], mask[2, 10:] = 0, 0
    with torch.no_grad():
        monkeypatch.setattr(minift.model, "SDPA_CPU_INFERENCE", {})
        written = net(ids, mask)
        monkeypatch.setattr(minift.model, "SDPA_CPU_INFERENCE", {minift.model.CPU_CLASS: {torch.float32: 1}})
        assert close(net(ids, mask), written, 1e-5)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "written-out"])
def test_attention_dropout_statistics(sdpa):
    """Dropout on the probabilities, read out through v = identity: each probability is kept with chance
    1 - p and then scaled by 1 / (1 - p), padded keys stay 0, and the mean over draws is the probability
    without dropout. 4,000 draws: the dropped fraction within 0.01 of p (its sd is 0.0005), the mean within
    5% + 0.01 (at least 5 sd: the mean of a probability near 1 has an sd of 1%)."""
    from minift.model import attention
    torch.manual_seed(0)
    p, T = 0.3, 8
    q, k = torch.randn(2, 2, T, T), torch.randn(2, 2, T, T)
    v = torch.eye(T).expand(2, 2, T, T)  # output row = the dropped-out probability row
    mask = torch.ones(2, 1, 1, T, dtype=torch.bool)
    mask[1, ..., 5:] = False
    ref = attention(q, k, v, mask, 0.0, sdpa=False)
    draws = torch.stack([attention(q, k, v, mask, p, sdpa=sdpa) for _ in range(4000)])  # [4000, 2, 2, T, T]
    real = mask.expand_as(ref).expand_as(draws)
    assert (draws[~real] == 0).all()
    zero = (draws[real] == 0).float().mean().item()
    assert abs(zero - p) < 0.01
    kept = draws[real & (draws != 0)]
    assert torch.allclose(kept, ref.expand_as(draws)[real & (draws != 0)] / (1 - p), rtol=1e-5)
    assert torch.allclose(draws.mean(0)[mask.expand_as(ref)], ref[mask.expand_as(ref)], rtol=0.05, atol=0.01)


def test_the_model_and_the_tasks_read_the_family_never_model_type():
    """Each family's differences live in minift/families.py: the model and the task heads read named properties
    of config.family, so a new family needs no edit there (docs/families.md)."""
    from minift.families import FAMILIES
    files = [ROOT / "minift" / "model.py", *sorted((ROOT / "minift" / "tasks").glob("*.py"))]
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert "model_type" not in text, f
        assert not [t for t in FAMILIES if f'"{t}"' in text], f  # no family named by its model_type
