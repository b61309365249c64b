import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from minift.errors import MiniftError
from minift.tokenizer import Tokenizer, _longest_first

FIXTURES = Path(__file__).parent / "fixtures"
CORPUS = json.loads((FIXTURES / "tokenizer_corpus.json").read_text(encoding="utf-8"))
REFERENCE = json.loads((FIXTURES / "tokenizer_reference.json").read_text(encoding="utf-8"))
FIRSTS, SECONDS = [a for a, _ in CORPUS["pairs"]], [b for _, b in CORPUS["pairs"]]


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return Tokenizer.from_dir(minilm_dir)


@pytest.fixture(scope="module")
def vocab_only_dir(minilm_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab_only")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, d)
    return d


def corpus_encodings(tok):
    """Every (kind, max_length) of the corpus, keyed like the reference file."""
    out = {}
    for m in CORPUS["max_lengths"]:
        out[f"single/{m}"] = tok.encode(CORPUS["singles"], max_length=m)
        out[f"pair/{m}"] = tok.encode(FIRSTS, SECONDS, max_length=m)
    return out


# --- parity with the committed BertTokenizerFast reference ---------------------------------------

@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
def test_corpus_matches_reference(source, tok, vocab_only_dir):
    ours = tok if source == "tokenizer.json" else Tokenizer.from_dir(vocab_only_dir)
    for key, (ids, types) in corpus_encodings(ours).items():
        ref = REFERENCE[f"{source}/{key}"]
        for i, (a, b) in enumerate(zip(ids, ref["input_ids"])):
            assert a == b, f"{source}/{key}: text {i} differs"
        assert types == ref["token_type_ids"], f"{source}/{key}"


def test_truncation_and_padding_of_tokenizer_json_are_ignored(tok):
    # MiniLM's tokenizer.json pads and truncates everything to 128
    ids, _ = tok.encode(CORPUS["singles"], max_length=512)
    assert max(map(len, ids)) == 512 and min(map(len, ids)) == 2
    ids, types = tok.encode(FIRSTS, SECONDS, max_length=512)
    assert max(map(len, ids)) == 512 and all(len(t) == len(i) for t, i in zip(types, ids))


def test_padded_batch_matches_reference(tok):
    m = CORPUS["padded_max_length"]
    batch = tok(CORPUS["padded"], max_length=m)
    ref = REFERENCE[f"tokenizer.json/padded/{m}"]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    for k, v in batch.items():
        assert v.dtype == torch.long and v.tolist() == ref[k], k


def test_special_ids(tok):
    assert (tok.pad_id, tok.cls_id, tok.sep_id) == (0, 101, 102)
    assert tok.vocab_size == 30522


# --- padding ---------------------------------------------------------------------------------------

def test_pad_fills_with_pad_id_type_zero_mask_zero():
    batch = Tokenizer.pad([[5, 6, 7], [8], []], [[0, 1, 1], [0], []], pad_id=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3], [3, 3, 3]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert Tokenizer.pad([], [], pad_id=0)["input_ids"].shape == (0, 0)


def test_call_pads_pairs_and_refuses_ragged_without_padding(tok):
    texts, pairs = ["short", "a somewhat longer first text"], ["second", "x"]
    batch = tok(texts, pairs, max_length=64)
    ids, types = tok.encode(texts, pairs, max_length=64)
    for row, (i, t) in enumerate(zip(ids, types)):
        n = len(i)
        assert batch["input_ids"][row, :n].tolist() == i and batch["token_type_ids"][row, :n].tolist() == t
        assert (batch["input_ids"][row, n:] == tok.pad_id).all() and (batch["token_type_ids"][row, n:] == 0).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert 1 in batch["token_type_ids"][0].tolist()
    with pytest.raises(ValueError, match="padding=True"):
        tok(texts, pairs, max_length=64, padding=False)
    same = tok(["one two", "three four"], padding=False)
    assert same["attention_mask"].all() and same["input_ids"].shape == (2, 4)


# --- building from vocab.txt, saving ------------------------------------------------------------

def test_vocab_txt_equals_tokenizer_json(tok, vocab_only_dir):
    assert corpus_encodings(Tokenizer.from_dir(vocab_only_dir)) == corpus_encodings(tok)


def test_save_round_trip(tok, tmp_path):
    tok.encode(["leaves truncation set"], max_length=8)
    tok.save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert saved["truncation"] is None and saved["padding"] is None
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] is True
    assert config["model_max_length"] == 512
    special = json.loads((tmp_path / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert special["mask_token"] == "[MASK]" and special["pad_token"] == "[PAD]"
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()[:2] == ["[PAD]", "[unused0]"]
    expected = corpus_encodings(tok)
    assert corpus_encodings(Tokenizer.from_dir(tmp_path)) == expected
    (tmp_path / "tokenizer.json").unlink()  # the vocab.txt + tokenizer_config.json written must stand alone
    assert corpus_encodings(Tokenizer.from_dir(tmp_path)) == expected


def test_tokenizer_config_flags_override_tokenizer_json(minilm_dir, tmp_path):
    # as in BertTokenizerFast: tokenizer_config.json's do_lower_case wins over tokenizer.json's normalizer
    shutil.copy(minilm_dir / "tokenizer.json", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    ids, _ = Tokenizer.from_dir(tmp_path).encode(["HELLO hello"])
    assert ids == [[101, 100, 7592, 102]]
    (tmp_path / "tokenizer_config.json").unlink()  # without one, tokenizer.json's own settings stand
    ids, _ = Tokenizer.from_dir(tmp_path).encode(["HELLO hello"])
    assert ids == [[101, 7592, 7592, 102]]


@pytest.mark.parametrize("n1, n2, k1, k2", [
    (0, 0, 0, 0), (0, 2, 0, 2), (0, 8, 0, 7), (2, 4, 2, 4), (2, 8, 2, 5), (4, 4, 3, 4),
    (4, 8, 3, 4), (8, 0, 7, 0), (8, 2, 5, 2), (8, 4, 4, 3), (8, 8, 3, 4),
])
def test_longest_first_budget_7(n1, n2, k1, k2):
    # the cases of the `tokenizers` unit test for its LongestFirst truncation, at max_length 7
    a, b = _longest_first(list(range(n1)), list(range(100, 100 + n2)), 7)
    assert (a, b) == (list(range(k1)), list(range(100, 100 + k2)))


# --- errors ----------------------------------------------------------------------------------------

def test_missing_dir(tmp_path):
    with pytest.raises(MiniftError, match="tokenizer directory not found") as e:
        Tokenizer.from_dir(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_dir_without_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MiniftError, match="tokenizer.json, then vocab.txt") as e:
        Tokenizer.from_dir(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_bad_files(tmp_path):
    (tmp_path / "vocab.txt").write_text("hello\nworld\n")
    with pytest.raises(MiniftError, match=r"vocab\.txt: expected a BERT vocabulary with \[PAD\], \[UNK\]"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(MiniftError, match=r"tokenizer_config\.json, line 1, column 2: invalid JSON"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(MiniftError, match=r"tokenizer\.json: expected a `tokenizers` JSON file"):
        Tokenizer.from_dir(tmp_path)


def test_str_instead_of_list(tok):
    with pytest.raises(TypeError, match="texts must be a list of strings, got str"):
        tok.encode("a sentence")
    with pytest.raises(TypeError, match="pairs must be a list of strings, got str"):
        tok(["a sentence"], "another")


def test_bad_lengths(tok):
    with pytest.raises(ValueError, match="max_length 1"):
        tok.encode(["x"], max_length=1)
    with pytest.raises(ValueError, match="max_length 2"):
        tok.encode(["x"], ["y"], max_length=2)
    assert tok.encode(["x y"], max_length=2)[0] == [[101, 102]]
    assert tok.encode(["x y"], ["z"], max_length=3) == ([[101, 102, 102]], [[0, 0, 1]])
    with pytest.raises(ValueError, match="2 texts but 1 pairs"):
        tok.encode(["a", "b"], ["c"])


# --- live differential tests against transformers ----------------------------------------------

SCRIPTS = [
    (0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
    (0x900, 0x97F), (0xE00, 0xE7F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF),
    (0x2000, 0x206F), (0x2190, 0x22FF), (0x1F300, 0x1FAFF), (0x0, 0x1F), (0x7F, 0x9F), (0xE000, 0xE0FF),
    (0x20000, 0x2A6DF), (0xFE00, 0xFE0F), (0x1D400, 0x1D7FF),
]


def random_texts(n, seed, max_words=40):
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(0, max_words)):
            lo, hi = rng.choice(SCRIPTS)
            words.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.choice([1, 1, 2, 5, 12, 110]))))
            words.append(rng.choice([" ", " ", "", "\t", "\n", "\u3000", "[MASK]", "[SEP] ", ", "]))
        texts.append("".join(words))
    return texts


@pytest.fixture(scope="module")
def hf(minilm_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(minilm_dir)


@pytest.mark.parametrize("max_length", [2, 3, 7, 64, 512])
def test_live_random_unicode(tok, hf, max_length):
    texts = random_texts(200, seed=max_length)
    ref = hf(texts, truncation=True, max_length=max_length)
    assert tok.encode(texts, max_length=max_length) == (ref["input_ids"], ref["token_type_ids"])
    if max_length < 3:
        return
    # shorter pairs: transformers' own pair truncation is quadratic in the number of overflow windows
    firsts, seconds = random_texts(200, 1000 + max_length, max_words=12), random_texts(200, 2000 + max_length, 12)
    for a, b in [(firsts, seconds), (firsts[:50], firsts[:50])]:  # the second: every pair a tie
        assert tok.encode(a, b, max_length=max_length) == hf_pairs(hf, a, b, max_length)


def hf_pairs(hf, firsts, seconds, max_length):
    """transformers' ids and type ids of each pair, one tokenizer(text, pair) call each: there an empty
    second text makes a single text, which its batched call does not do."""
    outs = [hf(a, b, truncation=True, max_length=max_length) for a, b in zip(firsts, seconds)]
    return [o["input_ids"] for o in outs], [o["token_type_ids"] for o in outs]


def test_empty_second_text_is_a_single_text(tok, hf):
    ids, types = tok.encode(["a " * 400, "b", "c"], ["", "", "d"], max_length=64)
    assert ids[0] == [tok.cls_id] + [tok._tok.token_to_id("a")] * 62 + [tok.sep_id]
    assert (ids, types) == hf_pairs(hf, ["a " * 400, "b", "c"], ["", "", "d"], 64)
    assert types[2] == [0, 0, 0, 1, 1]  # a real pair still is one


def test_live_padded_pairs(tok, hf):
    texts, pairs = random_texts(16, seed=7), random_texts(16, seed=8)
    ref = hf(texts, pairs, truncation=True, max_length=48, padding=True, return_tensors="pt")
    ours = tok(texts, pairs, max_length=48)
    for k in ours:
        assert torch.equal(ours[k], ref[k]), k


def test_live_saved_dir_loads_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = CORPUS["singles"] + random_texts(50, seed=99)
    for m in (64, 512):
        ref = theirs(texts, truncation=True, max_length=m)
        assert Tokenizer.from_dir(tmp_path).encode(texts, max_length=m) == (ref["input_ids"], ref["token_type_ids"])
        assert tok.encode(FIRSTS, SECONDS, max_length=m) == hf_pairs(theirs, FIRSTS, SECONDS, m)
