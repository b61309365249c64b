"""Properties on arbitrary input (hypothesis): the tokenizer, the data readers (whole and streamed, and
question answering's SQuAD JSON / JSON Lines), and
the readers of metrics.jsonl (minift plot) and of an earlier output (--resume-from-output), and a model
directory's config.json and tokenizer files (loaded, or refused naming the file).

Bounded (60 examples a test) and derandomized, so every run, in CI too, tries the same examples.
"""
import csv
import dataclasses
import io
import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minift.config import BertConfig, param_count
from minift.families import FAMILIES
from minift.model import Bert
from minift.data import read_dataset
from minift.errors import MiniftError
from minift.plot import read_metrics
from minift.stream import done_lines, records
from minift.tasks import qa, tag
from minift.tokenizer import Tokenizer

# tmp_path is shared by a test's examples: each example rewrites its file, so that is fine
BOUNDED = settings(max_examples=60, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that stresses both the tokenizer and the file formats: any Unicode, plus the characters
# that CSV, TSV and JSON treat specially, a BOM, and whitespace that str.strip() removes.
SPECIAL = st.sampled_from(list(',"\t\n\r\\{}[]:\'\ufeff\u2028\x00\x1c \u00a0') + ["[SEP]", "[CLS]", '""'])
TEXT = st.lists(st.one_of(st.text(max_size=12), SPECIAL), max_size=8).map("".join)


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return Tokenizer.from_dir(tiny_dir)


# ---- the tokenizer ----

@BOUNDED
@given(texts=st.lists(TEXT, min_size=1, max_size=4), max_length=st.integers(3, 64))
def test_tokenizer_single_texts(tok, texts, max_length):
    ids, types = tok.encode(texts, None, max_length)
    assert len(ids) == len(types) == len(texts)
    for i, t in zip(ids, types):
        assert 2 <= len(i) <= max_length
        assert i[0] == tok.cls_id and i[-1] == tok.sep_id
        assert t == [0] * len(i)
        assert all(0 <= x < tok.vocab_size for x in i)


@BOUNDED
@given(pairs=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4), max_length=st.integers(3, 64))
def test_tokenizer_pairs(tok, pairs, max_length):
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    ids, types = tok.encode(firsts, seconds, max_length)
    singles, _ = tok.encode(firsts, None, max_length)
    for i, t, b, single in zip(ids, types, seconds, singles):
        if not b:  # an empty second text makes a single text, as in transformers
            assert i == single and set(t) == {0}
            continue
        assert 3 <= len(i) <= max_length and len(t) == len(i)
        assert i[0] == tok.cls_id and i[-1] == tok.sep_id
        first = t.index(1)  # type ids: 0 for [CLS] a [SEP], then 1 for b [SEP]
        assert first >= 2 and t == [0] * first + [1] * (len(t) - first)
        assert i[first - 1] == tok.sep_id
    batch = Tokenizer.pad(ids, types, tok.pad_id)
    assert batch["input_ids"].shape == (len(pairs), max(map(len, ids)))
    assert batch["attention_mask"].sum(1).tolist() == [len(i) for i in ids]


# ---- the data readers ----

ROWS = st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=8)


def check_round_trip(path, rows):
    """read_dataset gives back the texts (stripped, empty ones skipped and counted) and the raw labels,
    or refuses with a MiniftError; nothing else."""
    try:
        ds = read_dataset(path)
    except MiniftError as e:
        # The one refusal a well-formed file can earn: no text left at all.
        assert all(not text.strip() for text, _ in rows), str(e)
        assert "no examples" in str(e)
        return
    kept = [(text.strip(), label) for text, label in rows if text.strip()]
    assert ds.texts == [text for text, _ in kept]
    assert ds.labels == [label for _, label in kept]
    assert ds.skipped_empty == len(rows) - len(kept)


@BOUNDED
@given(rows=ROWS, delimiter=st.sampled_from([",", "\t"]), bom=st.booleans())
def test_csv_and_tsv_written_by_csv_writer_read_back(tmp_path, rows, delimiter, bom):
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter=delimiter)
    w.writerow(["text", "label"])
    w.writerows(rows)
    path = tmp_path / ("x.csv" if delimiter == "," else "x.tsv")
    path.write_bytes(("\ufeff" if bom else "").encode() + buf.getvalue().encode("utf-8"))
    check_round_trip(path, rows)


@BOUNDED
@given(rows=ROWS, ensure_ascii=st.booleans())
def test_jsonl_written_by_json_dumps_reads_back(tmp_path, rows, ensure_ascii):
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": label}, ensure_ascii=ensure_ascii) + "\n"
                            for t, label in rows), encoding="utf-8")
    check_round_trip(path, rows)


HEADERS = {".csv": b"text,label\n", ".tsv": b"text\tlabel\n", ".jsonl": b'{"text": "a", "label": "b"}\n'}
# Bytes near the formats' syntax find parser corners faster than uniform noise.
SYNTAX = st.text(alphabet=',"\t\n\r{}[]:\\ab0 \ufeff\u2028', max_size=80).map(str.encode)


@BOUNDED
@given(suffix=st.sampled_from(sorted(HEADERS)), body=st.one_of(st.binary(max_size=200), SYNTAX),
       with_header=st.booleans())
def test_malformed_bytes_are_read_or_refused(tmp_path, suffix, body, with_header):
    path = tmp_path / f"x{suffix}"
    path.write_bytes((HEADERS[suffix] if with_header else b"") + body)
    try:
        ds = read_dataset(path)
    except MiniftError as e:
        assert str(path) in str(e)  # every refusal names the file
        return
    assert len(ds.texts) == len(ds.labels) == len(ds.lines) and all(t == t.strip() and t for t in ds.texts)


# ---- the streaming reader of predict / embed, and the readers of earlier outputs ----

@BOUNDED
@given(suffix=st.sampled_from(sorted(HEADERS) + [".txt"]), body=st.one_of(st.binary(max_size=200), SYNTAX),
       with_header=st.booleans())
def test_streamed_records_of_malformed_bytes_are_read_or_refused(tmp_path, suffix, body, with_header):
    path = tmp_path / f"x{suffix}"
    path.write_bytes((HEADERS.get(suffix, b"") if with_header else b"") + body)
    try:
        got = list(records(path))
    except MiniftError as e:
        assert str(path) in str(e)
        return
    assert all(isinstance(t, str) and p is None for t, p in got)
    if suffix == ".txt":  # one record per line, as wc -l counts lines
        assert len(got) == path.read_bytes().count(b"\n") + (not path.read_bytes().endswith(b"\n") and bool(body))


@BOUNDED
@given(rows=ROWS, delimiter=st.sampled_from([",", "\t"]))
def test_streamed_records_answer_every_row(tmp_path, rows, delimiter):
    """Unlike read_dataset, which skips empty texts, the stream keeps them: record N is row N."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter=delimiter)
    w.writerow(["text", "label"])
    w.writerows(rows)
    path = tmp_path / ("x.csv" if delimiter == "," else "x.tsv")
    path.write_bytes(buf.getvalue().encode("utf-8"))
    assert [t for t, _ in records(path)] == [text.strip() for text, _ in rows]


@BOUNDED
@given(body=st.one_of(st.binary(max_size=300), SYNTAX))
def test_metrics_and_earlier_outputs_are_read_or_refused(tmp_path, body):
    (tmp_path / "metrics.jsonl").write_bytes(body)
    try:
        rows = read_metrics(tmp_path)
        assert rows and all(isinstance(r["step"], int) for r in rows)
    except MiniftError as e:
        assert str(tmp_path) in str(e)
    out = tmp_path / "out.jsonl"
    out.write_bytes(body)
    try:  # against the input a well-formed output would answer: accepted, or refused without a byte changed
        n = done_lines(out, iter(answered(body)))
        assert n == body.count(b"\n")
        assert out.read_bytes() == body[:body.rfind(b"\n") + 1]  # a torn last line is cut off, whatever else
    except MiniftError as e:
        assert str(out) in str(e)
        assert out.read_bytes() == body


def answered(body: bytes) -> list[tuple]:
    """The input records whose answers the complete lines of body would be (their "text"), where they say."""
    recs = []
    for line in body.split(b"\n")[:-1]:
        try:
            recs.append((json.loads(line)["text"], None))
        except (ValueError, KeyError, TypeError):
            recs.append(("", None))
    return recs


# ---- question answering's SQuAD reader ----

KEYS = ["data", "paragraphs", "context", "qas", "id", "question", "answers", "text", "answer_start",
        "is_impossible", "title"]
JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from(["", " ", "a b", "b"])),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                    max_leaves=25)


def check_squad(path):
    try:
        ds = qa.read(path, labelled=True)
    except MiniftError as e:
        assert str(path) in str(e)  # every refusal names the file
        return
    assert len(ds.ids) == len(ds.questions) == len(ds.contexts) == len(ds.answers) == len(set(ds.ids)) > 0
    for context, gold in zip(ds.contexts, ds.answers):
        assert all(context[start:start + len(text)] == text for text, start in gold)


@BOUNDED
@given(doc=JSON, whole=st.booleans())
def test_squad_json_of_random_structure_is_read_or_refused(tmp_path, doc, whole):
    """Random structure as the whole document, or as its questions (right outer layers, anything inside)."""
    path = tmp_path / "x.json"
    if not whole:
        doc = {"data": [{"paragraphs": [{"context": "a b", "qas": doc if isinstance(doc, list) else [doc]}]}]}
    path.write_text(json.dumps(doc))
    check_squad(path)


@BOUNDED
@given(answers=JSON, jsonl=st.booleans())
def test_squad_answers_of_random_structure_are_read_or_refused(tmp_path, answers, jsonl):
    """A well-formed question whose answers are anything."""
    rec = {"id": 1, "question": "b", "answers": answers}
    path = tmp_path / ("x.jsonl" if jsonl else "x.json")
    path.write_text(json.dumps({**rec, "context": "a b"}) + "\n" if jsonl else
                    json.dumps({"data": [{"paragraphs": [{"context": "a b", "qas": [rec]}]}]}))
    check_squad(path)


@BOUNDED
@given(recs=st.lists(JSON, max_size=4))
def test_squad_jsonl_of_random_structure_is_read_or_refused(tmp_path, recs):
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    check_squad(path)


@BOUNDED
@given(suffix=st.sampled_from([".json", ".jsonl"]), body=st.one_of(st.binary(max_size=200), SYNTAX))
def test_squad_malformed_bytes_are_read_or_refused(tmp_path, suffix, body):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(body)
    check_squad(path)


# ---- token tagging's readers: CoNLL, JSON Lines, word/TAG ----

@BOUNDED
@given(suffix=st.sampled_from([".conll", ".jsonl", ".txt"]), labelled=st.booleans(),
       body=st.one_of(st.binary(max_size=200), SYNTAX, st.text(alphabet=" \t\n/abBIO-_X0", max_size=80).map(str.encode)))
def test_tagged_files_of_malformed_bytes_are_read_or_refused(tmp_path, suffix, labelled, body):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(body)
    try:
        ds = tag.read_tagged(path, labelled=labelled)
    except MiniftError as e:
        assert str(path) in str(e)  # every refusal names the file
        return
    assert len(ds.words) > 0 and all(ws and all(w for w in ws) for ws in ds.words)
    if labelled:
        assert [len(t) for t in ds.tags] == [len(w) for w in ds.words]


# ---- a model directory's config.json and tokenizer files ----

# Values that are wrong in type or range for most settings, and right for some.
VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2, 70), st.sampled_from([10 ** 10, 2 ** 63, -10 ** 12]),
                  st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["", "gelu", "bert", "0", "x"]),
                  st.lists(st.sampled_from([0, "a", "full_attention", None]), max_size=3),
                  st.dictionaries(st.sampled_from(["0", "1", "2", "x", "-1"]), st.sampled_from(["a", "b", 1, None]),
                                  max_size=3))
# Every name some family's config.json has for a setting minift reads.
CONFIG_KEYS = sorted({f.name for f in dataclasses.fields(BertConfig)} | set().union(*(f.renames for f in FAMILIES.values()))
                     | {"num_labels", "global_attn_every_n_layers", "rope_parameters", "embedding_dropout",
                        "norm_bias", "is_decoder", "global_rope_theta"})


def copy_model(tiny_dir, tmp_path):
    d = tmp_path / "m"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(tiny_dir, d)
    return d


def load_or_refuse(load, culprit: str):
    """load() succeeds, or raises a MiniftError naming the culprit file; any other exception fails the test."""
    try:
        load()
    except MiniftError as e:
        assert culprit in str(e), str(e)


@BOUNDED
@given(family=st.sampled_from(sorted(FAMILIES)), changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), VALUE,
                                                                        min_size=1, max_size=4))
def test_config_json_mutations_load_or_are_refused(tiny_dir, tmp_path, family, changes):
    """A config.json that loads also builds a model that runs; one that does not is refused naming the file."""
    d = copy_model(tiny_dir, tmp_path)
    config = {**json.loads((d / "config.json").read_text()), "model_type": family, **changes}
    (d / "config.json").write_text(json.dumps(config))  # NaN and Infinity as Python's json writes them

    def load_and_run():
        cfg = BertConfig.from_json(d)
        if param_count(cfg) > 10 ** 7:  # valid, but too large to build in a test
            return
        model = Bert(cfg).eval()
        ids = torch.arange(min(cfg.vocab_size, 5, cfg.max_tokens)).view(1, -1)
        h, _ = model(ids, torch.ones_like(ids), torch.zeros_like(ids))
        assert h.shape == (1, ids.shape[1], cfg.hidden_size)
    load_or_refuse(load_and_run, str(d / "config.json"))


@BOUNDED
@given(body=st.one_of(st.binary(max_size=200), SYNTAX), cut=st.integers(0, 900))
def test_config_json_bytes_load_or_are_refused(tiny_dir, tmp_path, body, cut):
    d = copy_model(tiny_dir, tmp_path)
    (d / "config.json").write_bytes((d / "config.json").read_bytes()[:cut] + body)
    load_or_refuse(lambda: BertConfig.from_json(d), str(d / "config.json"))


TOKENIZER_KEYS = ["do_lower_case", "strip_accents", "tokenize_chinese_chars", "model_max_length", "pad_token",
                  "unk_token", "cls_token", "sep_token", "mask_token", "add_prefix_space", "trim_offsets"]


@BOUNDED
@given(changes=st.dictionaries(st.sampled_from(TOKENIZER_KEYS), VALUE, max_size=4),
       vocab=st.one_of(st.none(), st.binary(max_size=120), st.lists(st.sampled_from(
           ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "##b", "", " ", "\u2028"]), max_size=8)),
       as_json=st.booleans())
def test_tokenizer_file_mutations_load_or_are_refused(tiny_dir, tmp_path, changes, vocab, as_json):
    """tokenizer_config.json with odd values, and vocab.txt (or tokenizer.json) replaced by odd contents."""
    d = copy_model(tiny_dir, tmp_path)
    if as_json:  # the same vocabulary as a tokenizer.json
        Tokenizer.from_dir(d).save(d)
    config = {**json.loads((d / "tokenizer_config.json").read_text()), **changes}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    names = ["tokenizer_config.json"]
    if vocab is not None and not as_json:
        (d / "vocab.txt").write_bytes(vocab if isinstance(vocab, bytes) else "\n".join(vocab).encode())
        names.append("vocab.txt")
    elif vocab is not None:
        doc = json.loads((d / "tokenizer.json").read_text())
        doc["model"]["vocab"] = ({t: i for i, t in enumerate(vocab)} if isinstance(vocab, list) else vocab.hex())
        (d / "tokenizer.json").write_text(json.dumps(doc))
        names.append("tokenizer.json")
    try:
        tok = Tokenizer.from_dir(d)
        tok.encode(["a b", ""], None, 8)
        tok.encode_words([["a", "b"]])
    except MiniftError as e:
        assert any(str(d / n) in str(e) for n in names), str(e)


@BOUNDED
@given(body=st.one_of(st.binary(max_size=200), SYNTAX), cut=st.integers(0, 3000))
def test_tokenizer_json_bytes_load_or_are_refused(tiny_dir, tmp_path, body, cut):
    d = copy_model(tiny_dir, tmp_path)
    Tokenizer.from_dir(d).save(d)
    (d / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes()[:cut] + body)
    load_or_refuse(lambda: Tokenizer.from_dir(d), str(d / "tokenizer.json"))
