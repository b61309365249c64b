"""int8 inference (minift/quantize.py): against fp32 on the same model, against its own formula, and
its refusals.

The polarity classifier is MiniLM (fetched by `make test`) fine-tuned on data/polarity/train.csv in
LoRA mode, committed as its adapters and head alone (tests/fixtures/make_polarity_lora.py, 0.9 MB).
Its predictions on the 400 test sentences must agree in int8 and fp32 on at least 98% of them, and
its accuracy move by at most 1 point.
"""
import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import minift.quantize
from conftest import FIXTURES, ROOT
from minift import BertClassifier
from minift.cli import main
from minift.errors import MiniftError
from minift.modes import apply_mode, merge_lora
from minift.predict import outputs_of, task_options
from minift.quantize import Int8Linear, engine, quantize
from minift.tasks import TASKS
from minift.tokenizer import Tokenizer

POLARITY = ROOT / "data" / "polarity"


def polarity_classifier(minilm_dir, names=("-1", "1")):
    # The fixture's class 0 is the negative class and 1 the positive one, whatever the file calls them:
    # -1 / 1 before fetch named them, negative / positive since (both sort to that order).
    net = apply_mode(BertClassifier.from_pretrained(minilm_dir, id2label=dict(enumerate(names))), "lora")  # rank 8
    state = {k: v.float() for k, v in load_file(FIXTURES / "polarity_lora.safetensors").items()}
    _, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and len(state) == 4 * 2 * net.config.num_hidden_layers + 4  # A, B per linear; head
    return merge_lora(net).eval()


def test_int8_agrees_with_fp32_on_polarity(minilm_dir):
    if not (POLARITY / "test.csv").exists():
        pytest.fail("data/polarity not found: run `minift fetch data polarity` (`make test` does it)", pytrace=False)
    task = TASKS["classify"]
    opts = task_options({}, task)
    examples = task.read(POLARITY / "test.csv", opts)
    tok = Tokenizer.from_dir(minilm_dir)
    net = polarity_classifier(minilm_dir, ("negative", "positive") if "positive" in examples.labels else ("-1", "1"))

    def logits(precision, quantize=None):  # what `minift eval` computes, [N, 2]; and the labels [N]
        out, feats = outputs_of(net, tok, task, examples, opts, 64, 128, precision, quantize)
        return torch.stack(out), feats.labels
    fp32, y = logits("fp32")
    int8, _ = logits("auto", "int8")
    assert sum(isinstance(m, Int8Linear) for m in net.modules()) == 4 * net.config.num_hidden_layers
    agree = (fp32.argmax(1) == int8.argmax(1)).float().mean().item()
    acc32, acc8 = ((x.argmax(1) == y).float().mean().item() for x in (fp32, int8))
    print(f"int8 vs fp32 on {len(y)} polarity test sentences: {agree:.2%} agree; accuracy {acc8:.4f} vs {acc32:.4f}")
    assert agree >= 0.98
    assert abs(acc8 - acc32) <= 0.01
    assert acc32 > 0.78  # the fixture is a fine-tuned classifier, not chance


def test_int8_linear_is_within_its_rounding_bound():
    """y = x W^T + b with W rounded per output channel (step s_j = max|W_j| / 127) and x rounded to 256
    (or 128, reduce_range) levels over its range (step d): each output is off by at most
    sum_k |x_k| s_j / 2 + |W_jk| d / 2 + s_j d / 4, and the error is mostly far smaller."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    with torch.no_grad():
        lin.weight.mul_(torch.logspace(-2, 1, 40).unsqueeze(1))  # channels of very different scales
    x = torch.randn(7, 96, generator=g) * 3
    name, reduce_range = engine()
    y = Int8Linear(lin, name, reduce_range)(x)
    ref = lin(x).detach()
    s = lin.weight.detach().abs().amax(1) / 127  # [40]
    d = (x.max().clamp_min(0) - x.min().clamp_max(0)) / (127 if reduce_range else 255)
    bound = x.abs() @ (s / 2).expand(96, 40) + d / 2 * lin.weight.detach().abs().sum(1) + 96 * s * d / 4
    err = (y - ref).abs()
    assert (err <= bound * 1.001 + 1e-5).all()
    assert err.mean() < bound.mean() / 4
    rel = (err.amax(0) / ref.abs().amax(0)).max()  # per channel: a small-scale channel is not swamped
    assert rel < 0.05


def test_embed_int8_close_to_fp32(minilm_dir):
    from minift.predict import embed
    texts = ["A gorgeous, witty, heartfelt film.", "The plot is a mess.", "这是一个正面的句子。", "It is a movie."]
    a, b = embed(minilm_dir, texts, device="cpu"), embed(minilm_dir, texts, device="cpu", quantize="int8")
    cos = F.cosine_similarity(a, b, dim=1)
    assert (cos > 0.98).all(), cos


def test_quantised_model_refuses_training_and_saving(tiny_dir, tmp_path):
    net = quantize(BertClassifier.from_pretrained(tiny_dir))
    with pytest.raises(MiniftError, match="inference only"):
        net.train()
    with pytest.raises(MiniftError, match="cannot be saved"):
        net.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q" / "model.safetensors").exists()


def test_quantize_refusals(tiny_dir, monkeypatch):
    net = BertClassifier.from_pretrained(tiny_dir)
    with pytest.raises(MiniftError, match="--quantize 'int4': expected one of int8"):
        quantize(net, "int4")
    with pytest.raises(MiniftError, match="--precision bf16 does not combine"):
        quantize(net, "int8", "bf16")
    monkeypatch.delattr(torch, "quantize_per_channel")  # a PyTorch that has dropped the deprecated API
    with pytest.raises(MiniftError, match=r"no longer has the quantized kernels.*run without --quantize"):
        quantize(net)
    assert not any(isinstance(m, Int8Linear) for m in net.modules())


def test_cli_predict_eval_embed_int8(tiny_dir, tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\na good film,positive\nthe worst plot,negative\n")
    cfg = (tiny_dir / "config.json").read_text()
    assert "id2label" in cfg  # the tiny model is a classifier: predict and eval run on it
    for argv in (["predict", "--model", str(tiny_dir), "a good film", "--quantize", "int8", "--device", "cpu"],
                 ["eval", "--model", str(tiny_dir), "--data", str(csv), "--quantize", "int8", "--device", "cpu"],
                 ["embed", "--model", str(tiny_dir), "a good film", "--quantize", "int8"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(argv) == 0
        assert out.getvalue().count("\n") == 1
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["predict", "--model", str(tiny_dir), "x", "--quantize", "int8", "--precision", "bf16"]) == 2
    assert "minift predict: error: --quantize int8 computes the rest in fp32" in err.getvalue()
    assert minift.quantize.available()
