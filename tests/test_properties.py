"""Properties on arbitrary input (hypothesis): the tokenizer, the data readers (whole and streamed, and
question answering's SQuAD JSON / JSON Lines), and
the readers of metrics.jsonl (minift plot) and of an earlier output (--resume-from-output).

Bounded (60 examples a test) and derandomized, so every run, in CI too, tries the same examples.
"""
import csv
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    try:
        n, _ = done_lines(out)
        assert n == body.count(b"\n")
    except MiniftError as e:
        assert str(out) in str(e)
    assert out.read_bytes() == body[:body.rfind(b"\n") + 1]  # a torn last line is cut off, whatever else


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
