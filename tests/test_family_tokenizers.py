"""The BERT family's tokenizers against transformers' fast tokenizers, on tiny vocabularies trained here.

Byte-level BPE (RoBERTa from vocab.json + merges.txt, and from tokenizer.json, also saved with
add_prefix_space=True; ModernBERT's layout), SentencePiece-style Unigram (XLM-R, CamemBERT) and WordPiece
(DistilBERT) directories are built with `tokenizers` and transformers' own tokenizer classes, then compared
on a varied corpus: English, Chinese, accents, emoji, random Unicode, empty strings, long texts and pairs,
at several max_lengths. Compared: input ids, token type ids (where the family returns them), offsets and
word ids, and the directory minift saves loading in transformers to the same ids; QA windows; and for
tagging, pre-split words (is_split_into_words=True) and the windows of long sentences.
"""
import json
import random

import pytest
from tokenizers import Tokenizer as HFTok
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from conftest import FIXTURES
from minift.errors import MiniftError
from minift.tokenizer import Tokenizer
from test_tokenizer import random_texts

transformers = pytest.importorskip("transformers")
CORPUS = json.loads((FIXTURES / "tokenizer_corpus.json").read_text(encoding="utf-8"))
TEXTS = CORPUS["singles"] + ["", " ", "Crème brûlée, naïve café 🙂🎉 👩‍👩‍👧", "中文和English混合 text"] + random_texts(60, 11)
# Pairs: transformers truncates a pair by combining every overflow window of one side with every one of the
# other, so its memory grows with the product of the lengths over max_length. Long pairs only at 512.
SHORT = [t[:60] for t in random_texts(40, 12, max_words=12)] + ["", "x"]
SHORT_PAIRS = [(a, b) for a, b in CORPUS["pairs"] if len(a) + len(b) < 400] + list(zip(SHORT, reversed(SHORT)))


def pairs(m):
    chosen = SHORT_PAIRS + ([(a, b) for a, b in CORPUS["pairs"] if len(a) + len(b) >= 400] if m >= 128 else [])
    return [a for a, _ in chosen], [b for _, b in chosen]


WORDS = CORPUS["singles"] + [t for ab in CORPUS["pairs"] for t in ab]
TRAIN = WORDS + SHORT + random_texts(50, 14)


def bpe(tmp, specials):
    """A byte-level BPE of 500 tokens, the specials first."""
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(TRAIN, trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def roberta_files(tmp):  # vocab.json + merges.txt only, as RoBERTa's first releases ship
    tmp.mkdir(parents=True)
    bpe(tmp, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]).model.save(str(tmp))
    return tmp


def roberta_json(tmp, **kw):  # what transformers' RobertaTokenizer saves: tokenizer.json and its config
    transformers.RobertaTokenizer.from_pretrained(roberta_files(tmp / "src"), **kw).save_pretrained(tmp / "out")
    return tmp / "out"


def unigram(tmp, cls):  # XLM-R / CamemBERT: a SentencePiece-style Unigram in transformers' class around it
    tok = HFTok(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    # on the corpus without the random texts: Unigram keeps every character seen, a few hundred here
    tok.train_from_iterator(WORDS, trainers.UnigramTrainer(vocab_size=len(set("".join(WORDS))) + 200, unk_token="<unk>",
                                                           show_progress=False,
                                                           special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    # `tokenizers` breaks a tie between two segmentations of equal score differently in each loaded instance
    # (its trie's hash order). Trained on so little text, scores tie exactly, so jitter them apart; and
    # "???" = "?" + "??" = "??" + "?" always ties, so leave out pieces that repeat a shorter one ("??", "abab").
    rng = random.Random(0)
    vocab = [(p, s + rng.uniform(-1e-3, 1e-3)) for p, s in json.loads(tok.to_str())["model"]["vocab"]
             if not any(len(p) % k == 0 and p[:k] * (len(p) // k) == p for k in range(1, len(p)))]
    vocab.append(("<mask>", 0.0))
    cls(vocab=vocab).save_pretrained(tmp)
    return tmp


def wordpiece(tmp):  # DistilBERT's (and ELECTRA's) tokenizer is BERT's WordPiece, without token types
    tok = HFTok(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(TRAIN, trainers.WordPieceTrainer(vocab_size=500, show_progress=False, special_tokens=specials))
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    transformers.DistilBertTokenizer(vocab=vocab).save_pretrained(tmp)
    return tmp


def modernbert(tmp):  # byte-level BPE with BERT's special tokens and template, in a bare tokenizer.json
    tok = bpe(tmp, ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"])
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 0), ("[SEP]", 1)])
    tok.decoder = decoders.ByteLevel()
    tmp.mkdir()
    tok.save(str(tmp / "tokenizer.json"))
    specials = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]",
                "unk_token": "[UNK]"}
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **specials}))
    return tmp


LAYOUTS = {"roberta-vocab.json": roberta_files, "roberta-tokenizer.json": roberta_json,
           # saved after loading with add_prefix_space=True, as a RoBERTa tagger fine-tuned with transformers is
           "roberta-add-prefix-space": lambda t: roberta_json(t, add_prefix_space=True),
           "xlm-roberta": lambda t: unigram(t, transformers.XLMRobertaTokenizer),
           "camembert": lambda t: unigram(t, transformers.CamembertTokenizer),
           "distilbert": wordpiece, "modernbert": modernbert}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request, tmp_path_factory):
    """(layout name, the tokenizer directory it built)."""
    return request.param, LAYOUTS[request.param](tmp_path_factory.mktemp(request.param) / "tok")


@pytest.fixture(scope="module")
def pair(layout):
    """(minift's tokenizer, transformers' fast tokenizer) of one layout."""
    name, d = layout
    # a directory of vocab.json + merges.txt alone names no class: the model's config.json would
    hf = transformers.RobertaTokenizer if name == "roberta-vocab.json" else transformers.AutoTokenizer
    return Tokenizer.from_dir(d), hf.from_pretrained(d)


def calls(hf, a, b, m, **kw):
    """transformers' encodings; pairs one call each: there an empty second text makes a single text, which
    its batched call does not do."""
    if b is None:
        return hf(a, truncation=True, max_length=m, **kw)
    return [hf(x, y, truncation=True, max_length=m, **kw) for x, y in zip(a, b)]


def reference(hf, a, b, m):
    ref = calls(hf, a, b, m)
    if b is None:
        return ref["input_ids"], ref.get("token_type_ids")
    return [r["input_ids"] for r in ref], None if "token_type_ids" not in ref[0] else [r["token_type_ids"] for r in ref]


@pytest.mark.parametrize("m", [6, 512])
def test_ids_and_types_match_transformers(pair, m):
    ours, hf = pair
    for a, b in [(TEXTS, None), pairs(m)]:
        ids, types = ours.encode(a, b, max_length=m)
        ref_ids, ref_types = reference(hf, a, b, m)
        for i, (x, y) in enumerate(zip(ids, ref_ids)):
            assert x == y, (i, a[i])
        assert ref_types is None or types == ref_types
        assert all(len(x) <= m for x in ids)
    assert (ours.pad_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id)


def test_offsets_match_transformers(pair):
    """encode_offsets (what question answering maps answers back through): the ids and character spans of
    transformers' fast tokenizer without special tokens, for single texts and for both sides of pairs."""
    ours, hf = pair
    a, b = pairs(512)
    for texts in (TEXTS, a, b):
        ids, offsets = ours.encode_offsets(texts)
        ref = hf(texts, add_special_tokens=False, return_offsets_mapping=True)
        for i, text in enumerate(texts):
            assert ids[i] == ref["input_ids"][i], (i, text)
            assert offsets[i] == [tuple(o) for o in ref["offset_mapping"][i]], (i, text)


def test_saved_directory_loads_in_transformers(pair, tmp_path):
    ours, _ = pair
    ours.save(tmp_path)
    theirs, again = transformers.AutoTokenizer.from_pretrained(tmp_path), Tokenizer.from_dir(tmp_path)
    for a, b in [(TEXTS, None), pairs(64)]:
        ids = ours.encode(a, b, max_length=64)
        assert again.encode(a, b, max_length=64) == ids
        assert reference(theirs, a, b, 64)[0] == ids[0]


# Not with a RoBERTa tokenizer saved with add_prefix_space=True: there transformers' RobertaProcessing trims the
# space off every token's offsets but the first of an encoding, and each overflow window is an encoding of its
# own, so the first context token of each window after the first keeps its space (43, 45) where minift, which
# cuts the windows from one encoding of the context, gives (44, 45). Ids and labels are the same.
@pytest.mark.parametrize("layout", [n for n in LAYOUTS if n != "roberta-add-prefix-space"], indirect=True)
@pytest.mark.parametrize("max_length,stride", [(64, 8), (128, 32)])
def test_qa_windows_match_transformers(pair, max_length, stride):
    """Question-answering windows over long contexts in the family's layout (<s> q </s></s> c </s>, ...),
    as the fast tokenizer cuts them (return_overflowing_tokens), and run_qa.py's answer labels."""
    from minift.tasks import TaskOptions
    from minift.tasks.qa import make_features
    from test_qa import qa_examples, reference_features, squad_rows
    ours, hf = pair
    rows = squad_rows(random.Random(max_length))
    enc, starts, ends, offsets = reference_features(hf, rows, max_length, stride)
    f = make_features(qa_examples(rows), ours, max_length, TaskOptions(doc_stride=stride))
    assert f.ids == enc["input_ids"] and f.example == enc["overflow_to_sample_mapping"]
    assert "token_type_ids" not in enc or f.types == enc["token_type_ids"]
    assert [f.offsets[i][s:s + b - a + 1] for i, s, (a, b) in zip(f.example, f.first, f.window)] == offsets
    assert f.start.tolist() == starts and f.end.tolist() == ends


# ---- pre-split words (tagging) ----

# Texts split at whitespace (so no word holds a space), the empty sentence, and one long sentence of every
# corpus text's words that needs windows at small max_lengths.
WORD_SENTENCES = [t.split() for t in TEXTS] + [[w for t in CORPUS["singles"] for w in t.split()]]


def word_reference(name, d):
    """transformers' fast tokenizer as pre-split words need it: add_prefix_space=True, which it requires of a
    byte-level BPE with is_split_into_words=True. ModernBERT's bare tokenizer.json loads in a generic class that
    ignores that argument (transformers issue 37883), so its reference is RobertaTokenizerFast, the workaround
    given in AnswerDotAI/ModernBERT issue 149, whose single-text layout ([CLS] text [SEP]) is the same."""
    byte_level = name.startswith("roberta") or name == "modernbert"
    cls = transformers.RobertaTokenizerFast if byte_level else transformers.AutoTokenizer
    return cls.from_pretrained(d, add_prefix_space=True)


def reference_pieces(hf, words):
    """Per word, the token ids transformers gives it (no special tokens); [] for a word that vanishes."""
    r = hf(words, is_split_into_words=True, add_special_tokens=False)
    pieces = [[] for _ in words]
    for i, w in zip(r["input_ids"], r.word_ids()):
        pieces[w].append(i)
    return pieces


def test_words_match_transformers_split_into_words(layout):
    """Each word's token ids as transformers' fast tokenizer gives them with is_split_into_words=True (a word
    that vanishes there, such as a lone control character for WordPiece, is the unknown token in minift)."""
    name, d = layout
    ours, hf = Tokenizer.from_dir(d), word_reference(name, d)
    got = ours.encode_words(WORD_SENTENCES)
    for words, pieces in zip(WORD_SENTENCES, got):
        assert pieces == [p or [hf.unk_token_id] for p in reference_pieces(hf, words)], words
    if name.startswith("roberta") or name == "modernbert":  # every word in its after-a-space form, "Ġword"
        firsts = [p[0] for ps in got for p in ps if p[0] not in hf.all_special_ids]  # (random texts hold "[MASK]")
        assert firsts and all(hf.convert_ids_to_tokens(i).startswith("Ġ") for i in firsts)


@pytest.mark.parametrize("max_length", [16, 512])
def test_tagging_windows_match_transformers_split_into_words(layout, max_length):
    """The tagging features (minift/tasks/tag.py): each window of a sentence is transformers' encoding of its
    words with is_split_into_words=True (special tokens included; a word longer than a window keeps its first
    pieces), and each owned word is labelled at its first token by transformers' word ids."""
    from minift.config import BertConfig
    from minift.tasks import TaskOptions
    from minift.tasks.tag import Sentences, Tag, windows
    name, d = layout
    ours, hf = Tokenizer.from_dir(d), word_reference(name, d)
    # sentences where no word vanishes in transformers (minift keeps those as the unknown token: above)
    sentences = [ws for ws in WORD_SENTENCES if ws and all(reference_pieces(hf, ws))]
    ds = Sentences("<test>", sentences, [["O"] * len(ws) for ws in sentences], [[1] * len(ws) for ws in sentences],
                   [""] * len(sentences), [[]] * len(sentences))
    f = Tag().features(ds, ours, max_length, BertConfig(id2label={0: "O"}), TaskOptions())
    budget, k = max_length - ours.n_specials(pair=False), 0
    for s, words in enumerate(sentences):
        for a, b, own in windows([min(len(p), budget) for p in reference_pieces(hf, words)], budget):
            r = hf(words[a:b], is_split_into_words=True)
            keep = [w is None or r.word_ids()[:i].count(w) < budget for i, w in enumerate(r.word_ids())]
            ids = [i for i, x in zip(r["input_ids"], keep) if x]
            word_ids = [w for w, x in zip(r.word_ids(), keep) if x]
            assert (f.sentence[k], f.ids[k]) == (s, ids), words[a:b]
            assert f.owned[k] == [(word_ids.index(w - a), w) for w in own]
            first = [w is not None and (p, w + a) in f.owned[k] for p, w in enumerate(word_ids)]
            assert f.labels[k] == [0 if x else -100 for x in first]
            k += 1
    assert k == len(f.ids) and (max_length == 512 or k > len(sentences))  # at 16, long sentences were split


def test_word_spans_of_plain_text(pair):
    """Plain text to tag is split into words by the pre-tokenizer: spans in order, none empty, none with
    whitespace at either end (a byte-level BPE's pre-tokens carry the space before them), and with a
    byte-level BPE, which drops nothing, every other character inside one."""
    ours, hf = pair
    byte_level = isinstance(ours._tok.pre_tokenizer, pre_tokenizers.ByteLevel)
    for text in TEXTS:
        spans = ours.word_spans(text)
        assert all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:] + [(len(text), 0)])), text
        assert all(text[a:b].strip() == text[a:b] for a, b in spans), text
        covered = {i for a, b in spans for i in range(a, b)}
        assert not byte_level or all(c.isspace() or i in covered for i, c in enumerate(text)), text


def test_a_nested_byte_level_step_is_refused_for_words(tmp_path):
    """Where a byte-level step sits inside a sequence of pre-tokenizers, adding each word's leading space to it
    would add one to every piece a step before it splits off: refused, with the reason, not encoded wrong."""
    d = roberta_json(tmp_path)
    config = json.loads((d / "tokenizer.json").read_text())
    config["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                                     config["pre_tokenizer"]]}
    (d / "tokenizer.json").write_text(json.dumps(config))
    tok = Tokenizer.from_dir(d)
    assert tok.encode(["a 12"])[0]  # plain texts are fine
    with pytest.raises(MiniftError, match="nests a ByteLevel step in Sequence"):
        tok.encode_words([["a", "12"]])
