"""The BERT family's masked-LM and token classification heads against transformers, on the random tiny
configurations of tests/test_families.py (odd head counts, ELECTRA's narrow embeddings, ModernBERT's short
and long windows, with and without biases; padded rows).

Each head: logits at the real tokens and the loss within 1e-5, every parameter's gradient within 1e-4
(relative to the reference's largest magnitude, fp32) of the family's *ForMaskedLM / *ForTokenClassification;
transformers' saved directory loads in minift, and minift's saved directory loads in transformers'
AutoModelFor... to the same logits. Then, per family, `minift train` through the CLI on a tiny random
checkpoint: masked-LM training lowers the masked tokens' loss, and a tagger learns 6 sentences by heart.
"""
import json
import random

import pytest
import torch

from minift.cli import main
from minift.config import BertConfig
from minift.families import FAMILIES
from minift.errors import MiniftError
from minift.tasks import TaskOptions, get
from minift.tasks.mlm import BertForMaskedLM, Texts
from minift.tasks.tag import BertTagger
from minift.tokenizer import Tokenizer
from test_families import CASES, IDS, assert_like_transformers, batch, hf_model, random_checkpoint, rel
from test_family_tokenizers import LAYOUTS as TOKENIZERS

transformers = pytest.importorskip("transformers")

# ModernBERT's masked LM may have a decoder without a bias (decoder_bias=false).
MLM_CASES = CASES + [("modernbert", dict(CASES[11][1], decoder_bias=False))]
MLM_IDS = IDS + ["modernbert-no-decoder-bias"]


@pytest.mark.parametrize("family,kw", MLM_CASES, ids=MLM_IDS)
def test_masked_lm_matches_transformers_both_ways(family, kw, tmp_path):
    auto = transformers.AutoModelForMaskedLM
    hf = hf_model(family, kw, seed=17 + len(kw), auto=auto)
    hf.save_pretrained(tmp_path / "hf")
    ours = BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert ours.config.decoder_bias == kw.get("decoder_bias", True)
    ids, mask = batch(ours.config.pad_token_id, seed=19)
    m = mask.bool()
    labels = torch.where(m & (torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.4), ids, -100)
    labels[:, 0] = ids[:, 0]  # a target in every row, the one-token row too
    o = hf(input_ids=ids, attention_mask=mask, labels=labels)
    logits, loss = ours(ids, mask, labels=labels)  # [M, V] at the labelled positions
    assert rel(logits, o.logits[labels != -100]) <= 1e-5 and rel(loss, o.loss) <= 1e-5
    with torch.no_grad():
        assert rel(ours(ids, mask)[m], o.logits[m]) <= 1e-5  # every real token's row
    o.loss.backward()
    loss.backward()
    assert type(hf).__name__ == f"{FAMILIES[family].stem}ForMaskedLM"
    assert_like_transformers(ours, hf, lambda model: model(input_ids=ids, attention_mask=mask).logits[m],
                             tmp_path / "ours", auto)


@pytest.mark.parametrize("family,kw", CASES, ids=IDS)
def test_token_classifier_matches_transformers_both_ways(family, kw, tmp_path):
    auto = transformers.AutoModelForTokenClassification
    hf = hf_model(family, dict(kw, num_labels=5), seed=23 + len(kw), auto=auto)
    hf.save_pretrained(tmp_path / "hf")
    ours = BertTagger.from_pretrained(tmp_path / "hf").eval()
    ids, mask = batch(ours.config.pad_token_id, seed=29)
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(4)).masked_fill(mask == 0, -100)
    labels[0, 2] = -100  # a word's second piece
    o = hf(input_ids=ids, attention_mask=mask, labels=labels)
    logits, loss = ours(ids, mask, labels=labels)
    m = mask.bool()
    assert rel(logits[m], o.logits[m]) <= 1e-5 and rel(loss, o.loss) <= 1e-5
    o.loss.backward()
    loss.backward()
    assert type(hf).__name__ == f"{FAMILIES[family].stem}ForTokenClassification"
    assert_like_transformers(ours, hf, lambda model: model(input_ids=ids, attention_mask=mask).logits[m],
                             tmp_path / "ours", auto)


def test_older_files_with_the_decoder_stored_load(tmp_path):
    """Files that hold the tied decoder's weight and its bias under the decoder's name (RoBERTa's first
    releases): the weight is the word embeddings again, the bias is lm_head.bias."""
    from safetensors.torch import load_file, save_file
    hf = hf_model("roberta", CASES[0][1], seed=2, auto=transformers.AutoModelForMaskedLM)
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["lm_head.decoder.weight"] = sd["roberta.embeddings.word_embeddings.weight"].clone()
    sd["lm_head.decoder.bias"] = sd.pop("lm_head.bias")
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask = batch(1, seed=5)
    with torch.no_grad():
        assert rel(ours(ids, mask)[mask.bool()], hf(input_ids=ids, attention_mask=mask).logits[mask.bool()]) <= 1e-5


def test_an_untied_decoder_is_refused(tmp_path):
    kw = dict(CASES[0][1], tie_word_embeddings=False)
    hf_model("roberta", kw, seed=1, auto=transformers.AutoModelForMaskedLM).save_pretrained(tmp_path)
    with pytest.raises(MiniftError, match="tie_word_embeddings=false is not supported for --task mlm"):
        BertForMaskedLM.from_pretrained(tmp_path)


# ---- masking with the family's tokens ----

WORDS = "the movie was good and bad naïvely, really funny 电影 sad 🙂 un-believably boring".split()


@pytest.mark.parametrize("layout", ["roberta-tokenizer.json", "xlm-roberta", "modernbert"])
def test_masked_lm_features_use_the_family_tokens(layout, tmp_path):
    """Sequences are the family's fast tokenizer's ids (<s> ... </s>), masks are its mask token, its special
    tokens are never masked, and whole-word masking takes the pieces of whitespace-separated words whole
    (words as fairseq's whole-word masking reads BPE and SentencePiece: a piece without the leading-space mark
    continues the word before it)."""
    d = TOKENIZERS[layout](tmp_path / "tok")
    tok, hf_tok = Tokenizer.from_dir(d), transformers.AutoTokenizer.from_pretrained(d)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) for _ in range(40)]
    task, opts = get("mlm"), TaskOptions(whole_word_mask=True, no_pack=True)
    f = task.features(Texts("texts.txt", texts, list(range(1, len(texts) + 1))), tok, 512,
                      BertConfig(vocab_size=tok.vocab_size), opts)
    assert f.ids == hf_tok(texts)["input_ids"]
    assert f.mask_id == hf_tok.mask_token_id
    assert sorted(f.special) == sorted({hf_tok.cls_token_id, hf_tok.sep_token_id})
    torch.manual_seed(0)
    b = task.batch(f, list(range(len(texts))), tok.pad_id)
    chosen = b["labels"] != -100
    assert 0.6 < (b["input_ids"][chosen] == tok.mask_id).float().mean() < 0.95  # 80% become the mask token
    for i, text in enumerate(texts):
        enc = hf_tok(text, return_offsets_mapping=True)
        # each token's whitespace-separated word: the one its first non-space character falls in
        ends = [j for j, c in enumerate(text + " ") if c == " "]
        word = [None if a == z else sum(e < a + (text[a] == " ") for e in ends) for a, z in enc["offset_mapping"]]
        row = chosen[i, :len(word)]
        assert not row[0] and not row[-1]  # never <s> or </s>
        for w in set(word) - {None}:
            pieces = row[[j for j, x in enumerate(word) if x == w]]
            assert pieces.all() or not pieces.any(), (text, w)


# ---- the CLI, end to end, per family ----

SENTENCES = [("the movie was good", "D N V A"), ("a really funny story", "D R A N"), ("it was sad", "N V A"),
             ("the plot was boring and dull", "D N V A C A"), ("we love the film", "N V D N"),
             ("an awful movie", "D A N")]
FAST = ["--precision", "fp32", "--device", "cpu"]


def test_the_length_leaves_roberta_its_reserved_positions():
    """RoBERTa's positions start after pad_token_id: 514 of them hold sequences of 512 tokens (the CLI's
    default --max-length and its bound; the CLI runs below evaluate at that bound)."""
    assert BertConfig.from_dict({"model_type": "roberta", "max_position_embeddings": 514}).max_tokens == 512
    assert BertConfig.from_dict({"model_type": "electra", "max_position_embeddings": 512}).max_tokens == 512


def run_eval(model, data, capsys):
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(data), *FAST]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("family,layout,kw", [
    ("roberta", "roberta-vocab.json", CASES[0][1]), ("xlm-roberta", "xlm-roberta", CASES[1][1]),
    ("distilbert", "distilbert", CASES[5][1]), ("electra", "distilbert", CASES[8][1]),
    ("modernbert", "modernbert", CASES[11][1])], ids=["roberta", "xlm-roberta", "distilbert", "electra", "modernbert"])
def test_cli_masked_lm_training_lowers_the_loss(family, layout, kw, tmp_path, capsys):
    """`minift train --task mlm` from the family's random *ForMaskedLM, 90 steps: the masked tokens' loss on
    the training texts (the same masks before and after) falls from chance (ln 500 = 6.2, or above) by over
    2 nats, towards the entropy of their words (about 3); the run saves the family's class, and predict fills
    the family's own mask token typed in a text."""
    d = random_checkpoint(family, kw, layout, tmp_path / "model", transformers.AutoModelForMaskedLM)
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{s}\n" for s, _ in SENTENCES) * 30)  # epochs of 15 steps: few checkpoints
    before = run_eval(d, texts, capsys)
    assert main(["train", "--task", "mlm", "--model", str(d), "--train", str(texts), "--out", str(tmp_path / "out"),
                 "--no-pack", "--epochs", "6", "--batch-size", "12", "--lr", "3e-3", "--warmup", "0.05",
                 "--compile", "off", *FAST]) == 0
    after = run_eval(tmp_path / "out", texts, capsys)
    assert before["loss"] > 6 and after["loss"] < before["loss"] - 2, (before, after)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == family and saved["architectures"] == [f"{FAMILIES[family].stem}ForMaskedLM"]
    mask = Tokenizer.from_dir(d).specials["mask"]  # [MASK], <mask>
    assert main(["predict", "--model", str(tmp_path / "out"), f"the movie {mask} good", *FAST]) == 0
    masks = json.loads(capsys.readouterr().out)["masks"]
    assert len(masks) == 1 and len(masks[0]) == 5


@pytest.mark.parametrize("family,kw", [CASES[0], CASES[5], CASES[8], CASES[11]],
                         ids=["roberta", "distilbert", "electra", "modernbert"])
def test_cli_tagging_memorises_a_batch(family, kw, tmp_path, capsys):
    """`minift train --task tag` from the family's random encoder (WordPiece-tokenised words): every word of
    the 6 training sentences tagged right afterwards, and the run saves the family's *ForTokenClassification."""
    d = random_checkpoint(family, kw, "distilbert", tmp_path / "model", transformers.AutoModel)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"tokens": s.split(), "tags": t.split()}) + "\n" for s, t in SENTENCES))
    (tmp_path / "many.jsonl").write_text(data.read_text() * 10)  # epochs of 10 steps: few checkpoints
    assert main(["train", "--task", "tag", "--model", str(d), "--train", str(tmp_path / "many.jsonl"), "--out",
                 str(tmp_path / "out"), "--epochs", "10", "--batch-size", "6", "--lr", "3e-3", "--warmup", "0.05",
                 "--compile", "off", *FAST]) == 0
    metrics = run_eval(tmp_path / "out", data, capsys)
    assert metrics["accuracy"] == 1.0, metrics
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == family and saved["architectures"] == [f"{FAMILIES[family].stem}ForTokenClassification"]
