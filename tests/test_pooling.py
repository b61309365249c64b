"""Sentence pooling (minift/pooling.py) against sentence-transformers: the real MiniLM as it ships and random
checkpoints of every family, in each mode; `minift embed` reads the mode from the model directory."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from minift import MiniftError
from minift.fetch import MINILM_DIR, WEIGHTS
from minift.pooling import Pooling, read_pooling, write_pooling
from minift.predict import embed

st = pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")

MINILM = Path(__file__).parent.parent / "weights" / "all-MiniLM-L6-v2"
TEXTS = ["A gorgeous, witty, heartfelt film.", "The plot is a mess", "我喜欢这部电影 🙂", "ok",
         "Crème brûlée in Zürich, and a much longer sentence so that the batch has padding in it."]
# all-MiniLM-L6-v2's sentence-transformers files as published (their sha256 is pinned in minift/fetch.py)
MINILM_ST = {
    "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                     {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                     {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
    "1_Pooling/config.json": {"word_embedding_dimension": 384, "pooling_mode_cls_token": False,
                              "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                              "pooling_mode_mean_sqrt_len_tokens": False},
    "sentence_bert_config.json": {"max_seq_length": 256, "do_lower_case": False}}


def minilm_dir(d: Path) -> Path:
    """The MiniLM weights with their sentence-transformers files, as `minift fetch weights minilm` leaves them
    (a copy fetched before those were pinned lacks them: they are written here, byte for byte as published)."""
    if not (MINILM / "model.safetensors").exists():
        pytest.fail(f"real weights not found at {MINILM}: run `minift fetch weights minilm` first (`make test` does "
                    "it)", pytrace=False)
    d.mkdir()
    for f in MINILM.iterdir():
        if f.is_file():
            os.symlink(f.resolve(), d / f.name)
    pins = {m.removeprefix(MINILM_DIR): h for m, h in WEIGHTS["minilm"][1].members.items()}
    for name, obj in MINILM_ST.items():
        if not (d / name).exists():
            (d / name).parent.mkdir(exist_ok=True)
            (d / name).write_text(json.dumps(obj, indent=2))
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == pins[name], name
    return d


def reference(d, texts=TEXTS) -> np.ndarray:
    model = st.SentenceTransformer(str(d), device="cpu")
    return model.encode(texts, convert_to_numpy=True, batch_size=2)


def set_mode(d: Path, mode: str, normalize: bool, max_length: int = 256):
    config = json.loads((d / "config.json").read_text())
    write_pooling(d, Pooling(mode, normalize), config.get("hidden_size") or config["dim"], max_length)
    if not normalize and (d / "2_Normalize").exists():
        (d / "2_Normalize").rmdir()


def test_minilm_as_shipped_matches_sentence_transformers(tmp_path):
    d = minilm_dir(tmp_path / "minilm")
    assert read_pooling(d) == Pooling("mean", True, 256)
    ref = reference(d)  # fp32: within 1e-5 of the largest value (the matmul path may sum in another order)
    np.testing.assert_allclose(embed(d, TEXTS, device="cpu", batch_size=2).numpy(), ref, rtol=0,
                               atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("mode,normalize", [("cls", True), ("max", False), ("mean", False)])
def test_minilm_every_mode_matches_sentence_transformers(tmp_path, mode, normalize):
    d = minilm_dir(tmp_path / "minilm")
    for name in MINILM_ST:  # replaced, not written through the links' targets
        (d / name).unlink()
    set_mode(d, mode, normalize)
    assert read_pooling(d) == Pooling(mode, normalize, 256)
    ref = reference(d)  # fp32: within 1e-5 of the largest value (the matmul path may sum in another order)
    np.testing.assert_allclose(embed(d, TEXTS, device="cpu", batch_size=2).numpy(), ref, rtol=0,
                               atol=1e-5 * np.abs(ref).max())


FAMILIES = [("bert", "distilbert", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=37)),
            ("roberta", "roberta-vocab.json", 0), ("xlm-roberta", "xlm-roberta", 1), ("camembert", "camembert", 2),
            ("distilbert", "distilbert", 5), ("electra", "distilbert", 8), ("modernbert", "modernbert", 11)]


@pytest.mark.parametrize("family,layout,kw", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_and_mode_matches_sentence_transformers(family, layout, kw, tmp_path):
    from test_families import CASES, random_checkpoint
    kw = CASES[kw][1] if isinstance(kw, int) else kw
    d = random_checkpoint(family, kw, layout, tmp_path / "model", transformers.AutoModel)
    for mode, normalize in (("mean", True), ("cls", False), ("max", True)):
        set_mode(d, mode, normalize, max_length=60)  # the random checkpoints have 64 positions
        got = embed(d, TEXTS, device="cpu", batch_size=2, max_length=60).numpy()
        np.testing.assert_allclose(got, reference(d), rtol=1e-5, atol=2e-6, err_msg=f"{family} {mode}")


def test_pooling_option_without_files_and_over_them(tmp_path):
    d = Path(__file__).parent.parent / "weights" / "tiny-bert"
    assert read_pooling(d) == Pooling("mean") and read_pooling(d, "cls") == Pooling("cls")
    x = embed(d, TEXTS, device="cpu", pooling="cls")
    from minift.predict import load_encoder
    model, tok = load_encoder(d, "cpu")
    ids, types = tok.encode(TEXTS, None, 256)
    with torch.no_grad():
        first = torch.stack([model(torch.tensor([i]))[0][0, 0] for i in ids])
    torch.testing.assert_close(x, torch.nn.functional.normalize(first, dim=-1), rtol=1e-5, atol=1e-6)
    with pytest.raises(MiniftError, match="--pooling 'sum'"):
        read_pooling(d, "sum")


@pytest.mark.parametrize("files,message", [
    ({"modules.json": "[1, 2]"}, "modules.json: expected a list of modules"),
    ({"modules.json": json.dumps(MINILM_ST["modules.json"][:2] + [{"type": "sentence_transformers.models.Dense"}])},
     "not Dense"),
    ({"modules.json": json.dumps(MINILM_ST["modules.json"]), "1_Pooling/config.json": '{"pooling_mode": "lasttoken"}'},
     "1_Pooling/config.json: pooling mode lasttoken"),
    ({"modules.json": json.dumps(MINILM_ST["modules.json"]), "1_Pooling/config.json": "{"},
     "1_Pooling/config.json, line 1, column 2: invalid JSON")])
def test_bad_pooling_files_are_clear_errors(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(MiniftError, match=message):
        read_pooling(tmp_path)


def test_cli_embed_reads_the_pooling(tmp_path, capsys):
    from minift.cli import main
    d = minilm_dir(tmp_path / "minilm")
    for name in MINILM_ST:
        (d / name).unlink()
    set_mode(d, "cls", True)
    assert main(["embed", "--model", str(d), *TEXTS[:2]]) == 0
    got = np.array([json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()])
    np.testing.assert_allclose(got, reference(d, TEXTS[:2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
def test_pooled_vectors_and_the_loss_stay_fp32_under_bf16(mode):
    """bf16 hidden states pool into fp32 vectors, and the contrastive loss is fp32 under autocast: cosine x 20
    rounded to bf16 would be off by some 0.1."""
    from minift.contrastive import LossSpec, embedding_loss
    from minift.pooling import pool
    h = torch.randn(4, 5, 8).to(torch.bfloat16)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0], [1] * 2 + [0] * 3])
    x = pool(h, mask, Pooling(mode))
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, pool(h.float(), mask, Pooling(mode)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = embedding_loss(x.view(2, 2, 8), torch.arange(4).view(2, 2), LossSpec())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(embedding_loss(x.view(2, 2, 8), torch.arange(4).view(2, 2), LossSpec()).item(),
                                        rel=1e-6)
