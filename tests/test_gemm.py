"""minift/gemm.py: the fp32 linears through oneDNN (packed weights at inference, OneDNNLinear with gradients)
give transformers' outputs (1e-5 relative, as every fp32 path must) and gradients (1e-4) on MiniLM and on random
configs of every family; the choice of
path is a pure function of the measured times, overridable by MINIFT_GEMM, and falls back to torch's
default where the oneDNN ops are missing. Nothing here measures speed (bench/bench.py does)."""
import contextlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, ROOT
from minift import Bert, MiniftError, gemm
from test_families import CASES, IDS, T, assert_hidden_like_transformers, batch, hf_model, rel

needs_onednn = pytest.mark.skipif(not gemm.onednn_available(), reason="this PyTorch has no oneDNN packed linear")


@pytest.fixture
def onednn(monkeypatch):
    monkeypatch.setenv("MINIFT_GEMM", "onednn")


def spy_packed(monkeypatch):
    """Count the calls of oneDNN's linear, plain and with a feed-forward's activation fused, so that a test knows
    the packed path really ran."""
    calls, real, real_fused = [], gemm.packed_forward, gemm.fused_fc_act
    monkeypatch.setattr(gemm, "packed_forward", lambda m, x: calls.append("linear") or real(m, x))
    monkeypatch.setattr(gemm, "fused_fc_act", lambda layer, x: calls.append("fused") or real_fused(layer, x))
    return calls


@needs_onednn
def test_minilm_packed_matches_reference_and_default(minilm_dir, onednn, monkeypatch):
    ref = load_file(FIXTURES / "minilm_reference.safetensors")
    model = Bert.from_pretrained(minilm_dir).eval()
    args = ref["input_ids"], ref["attention_mask"], ref["token_type_ids"]
    calls = spy_packed(monkeypatch)
    with torch.inference_mode():
        h0, p0 = model(*args)
        with gemm.fast_linears(model):
            h, pooled = model(*args)
    # every linear of the 6 layers and the pooler; each layer's fc with its GELU fused
    assert calls.count("linear") == 6 * 3 + 1 and calls.count("fused") == 6
    m = ref["attention_mask"].bool()
    assert rel(h[m], ref["last_hidden_state"][m]) <= 1e-5 and rel(pooled, ref["pooler_output"]) <= 1e-5
    assert rel(h[m], h0[m]) <= 1e-5 and rel(pooled, p0) <= 1e-5
    assert "forward" not in vars(model.layers[0].fc) and "fc_act" not in vars(model.layers[0])  # default path back


@needs_onednn
@pytest.mark.parametrize("family,kw", CASES, ids=IDS)
def test_every_family_packed_matches_transformers(family, kw, tmp_path, onednn, monkeypatch):
    """Inference on packed weights: hidden states within 1e-5 of transformers'. Then with gradients
    (OneDNNLinear): hidden states within 1e-5, every parameter's gradient within 1e-4 (test_families' check)."""
    hf = hf_model(family, kw, seed=7)
    hf.save_pretrained(tmp_path / "hf")
    ours = Bert.from_pretrained(tmp_path / "hf").eval()
    ids, mask = batch(ours.config.pad_token_id, seed=11)
    calls = spy_packed(monkeypatch)
    with torch.inference_mode():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        with gemm.fast_linears(ours):
            h, _ = ours(ids, mask)
    assert calls
    m = mask.bool()
    assert rel(h[m], ref[m]) <= 1e-5
    w = torch.randn(T, ours.config.hidden_size, generator=torch.Generator().manual_seed(0))
    calls.clear()
    with gemm.fast_linears(ours):
        assert_hidden_like_transformers(ours, hf, ids, mask, w, tmp_path / "ours")
    assert calls


@needs_onednn
def test_minilm_gradients_through_onednn_match_the_default(minilm_dir, onednn):
    """One fp32 training loss of MiniLM's classifier: every gradient within 1e-4 of torch's default path."""
    from minift.tasks.classify import BertClassifier
    grads = []
    for fast in (False, True):
        torch.manual_seed(0)
        net = BertClassifier.from_pretrained(minilm_dir, id2label={0: "a", 1: "b"}).eval()
        g = torch.Generator().manual_seed(1)
        ids, mask = torch.randint(1000, 20000, (4, 23), generator=g), torch.ones(4, 23, dtype=torch.long)
        mask[1, 9:] = 0
        with gemm.fast_linears(net) if fast else contextlib.nullcontext():
            net(ids, mask, labels=torch.tensor([0, 1, 1, 0]))[1].backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    for name, ref in grads[0].items():
        assert (grads[1][name] is None) if ref is None else rel(grads[1][name], ref) <= 1e-4, name


@needs_onednn
def test_changed_weights_are_packed_again(tiny_dir, onednn):
    model = Bert.from_pretrained(tiny_dir).eval()
    ids = torch.randint(5, 90, (2, 9))
    with gemm.fast_linears(model):
        with torch.inference_mode():
            before = model(ids)[0]
        with torch.no_grad():  # what an optimizer step does: the weights change in place
            for p in model.parameters():
                p.mul_(1.5)
        with torch.inference_mode():
            after = model(ids)[0]
    with torch.inference_mode():
        assert rel(after, model(ids)[0]) <= 1e-5 and rel(before, after) > 1e-3


def test_decision_is_the_least_time_and_default_on_a_tie():
    assert gemm.decide({"mkl": 2.0, "onednn": 1.0}) == "onednn"
    assert gemm.decide({"mkl": 1.0, "onednn": 2.0}) == "mkl"
    assert gemm.decide({"mkl": 1.0, "onednn": 1.0}) == "mkl"
    assert gemm.decide({"mkl": 1.0}) == "mkl"


def test_measuring_leaves_the_seeded_random_state_alone(tiny_dir):
    """A training run measures the paths after seeding: drawing its test matrices from the global generator
    would make a process's first run draw other dropout masks and batches than the same run after it."""
    net = Bert.from_pretrained(tiny_dir)
    gemm.measured.cache_clear()
    gemm.onednn_available.cache_clear()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    gemm.choose(gemm.linear_shapes(net), torch.get_num_threads(), "auto")
    assert torch.equal(torch.get_rng_state(), state)


@needs_onednn
@pytest.mark.parametrize("times,expected", [({"mkl": 3e-3, "onednn": 1e-3}, "onednn"),
                                            ({"mkl": 1e-3, "onednn": 3e-3}, "mkl")])
def test_choice_follows_the_measurement_once_per_process(times, expected, monkeypatch):
    measured = []
    monkeypatch.setattr(gemm, "measure", lambda shapes: measured.append(shapes) or times)
    gemm.measured.cache_clear()
    try:
        shapes = ((8, 24), (24, 8))
        assert [gemm.choose(shapes, 1, "auto")[0] for _ in range(3)] == [expected] * 3
        assert measured == [shapes]  # measured once, then cached for the process
    finally:
        gemm.measured.cache_clear()


def test_override_and_the_missing_ops(monkeypatch):
    monkeypatch.setattr(gemm, "measure", lambda shapes: pytest.fail("an override must not measure"))
    assert gemm.choose(((8, 8),), 1, "mkl") == ("mkl", "MINIFT_GEMM=mkl")
    if gemm.onednn_available():
        assert gemm.choose(((8, 8),), 1, "onednn") == ("onednn", "MINIFT_GEMM=onednn")
    monkeypatch.setattr(gemm, "onednn_available", lambda: False)  # a PyTorch without the private ops
    for request in ("onednn", "auto"):
        assert gemm.choose(((8, 8),), 1, request)[0] == "mkl"
    monkeypatch.setenv("MINIFT_GEMM", "fast")
    with pytest.raises(MiniftError, match="MINIFT_GEMM='fast'"):
        gemm.requested()


def test_without_onednn_the_model_runs_on_the_default_path(tiny_dir, monkeypatch):
    monkeypatch.setattr(gemm, "onednn_available", lambda: False)
    monkeypatch.setattr(gemm, "packed_forward", lambda m, x: pytest.fail("oneDNN's path taken without it"))
    model = Bert.from_pretrained(tiny_dir).eval()
    ids = torch.randint(5, 90, (2, 9))
    with torch.inference_mode(), gemm.fast_linears(model):
        assert torch.equal(model(ids)[0], Bert.from_pretrained(tiny_dir).eval()(ids)[0])


@pytest.mark.parametrize("request_", ["mkl", "onednn"])
def test_first_line_names_the_path(tiny_dir, request_):
    env = {"PYTHONPATH": str(ROOT), "MINIFT_GEMM": request_, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "minift", "embed", "--model", str(tiny_dir), "a text"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    first = r.stderr.splitlines()[0]
    name = "oneDNN, packed weights" if request_ == "onednn" and gemm.onednn_available() else "torch's default"
    assert first.startswith("minift embed: matmuls: fp32 through ") and name in first, first


def test_a_resumed_run_keeps_the_path_its_first_part_measured(tiny_dir, tmp_path, monkeypatch):
    """A new measurement at --resume could pick the other path, and a resumed run would then no longer be
    bit-identical to one never stopped: the checkpoint records the path, and the resumed run takes it."""
    import csv
    import json
    import minift.train_loop
    import minift.train_step
    from conftest import interrupt_at
    from minift.train_loop import train
    from safetensors import safe_open
    data = tmp_path / "d.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label")] + [(f"good film {i}", "positive") for i in range(8)]
                                + [(f"bad plot {i}", "negative") for i in range(8)])
    kw = dict(precision="fp32", compile="off", device="cpu", max_length=16, batch_size=4, epochs=2)
    monkeypatch.setattr(gemm, "measured", lambda shapes, threads: {"mkl": 2.0, "onednn": 1.0})  # onednn wins
    interrupt_at(monkeypatch, 3)
    train(str(tiny_dir), str(data), str(tmp_path / "run"), **kw)
    with safe_open(tmp_path / "run" / "checkpoint.safetensors", "pt") as f:
        assert json.loads(f.metadata()["minift"])["progress"]["gemm"] == "onednn"
    monkeypatch.setattr(minift.train_loop, "train_step", minift.train_step.train_step)
    monkeypatch.setattr(gemm, "measured", lambda shapes, threads: {"mkl": 1.0, "onednn": 2.0})  # now mkl would win
    seen = []
    real = gemm.path_for
    monkeypatch.setattr(gemm, "path_for", lambda model: seen.append(real(model)) or seen[-1])
    train(str(tiny_dir), str(data), str(tmp_path / "run"), resume=True, **kw)
    assert seen and all(path == "onednn" for path, _ in seen), seen
    assert gemm.PINNED[0] is None  # and a later run in this process measures again
