import json
import random
from collections import Counter

import pytest
import torch

from minift.data import length_batches, read_dataset
from minift.tasks.classify import encode_labels, label_map
from minift.errors import MiniftError


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(MiniftError) as e:
        fn(*args, **kwargs)
    return str(e.value)


# --- reading -------------------------------------------------------------------------------------

def test_csv_with_bom_quotes_newlines_and_crlf(tmp_path):
    content = ('\ufefftext,label\r\n'
               '"she said ""no"", then left",1\r\n'
               '"two\r\nlines, one text \n",-1\r\n'
               'plain,1\r\n')
    ds = read_dataset(write(tmp_path, "train.csv", content))
    assert ds.texts == ['she said "no", then left', "two\r\nlines, one text", "plain"]
    assert ds.labels == ["1", "-1", "1"]
    assert ds.pairs is None
    assert ds.lines == [2, 3, 6]  # two quoted newlines make the second example span lines 3-5
    label2id = label_map(ds.labels, "classify")
    assert label2id == {"-1": 0, "1": 1}
    assert encode_labels(ds, label2id, "classify").tolist() == [1, 0, 1]


def test_tsv_sentence_pairs_and_custom_columns(tmp_path):
    path = write(tmp_path, "pairs.tsv", "q\tp\tgold\nIs it?\tIt is, \"yes\".\tentail\nNo\tYes\tcontra\n")
    ds = read_dataset(path, text_column="q", text_pair_column="p", label_column="gold")
    assert ds.texts == ["Is it?", "No"]
    assert ds.pairs == ['It is, "yes".', "Yes"]
    assert label_map(ds.labels, "classify") == {"contra": 0, "entail": 1}


def test_jsonl_blank_lines_and_int_labels(tmp_path):
    lines = [json.dumps({"text": "a", "label": 10}), "", json.dumps({"text": "b", "label": 2}),
             "   ", json.dumps({"text": "c\u2028d", "label": 2, "extra": [1]}, ensure_ascii=False)]
    ds = read_dataset(write(tmp_path, "x.jsonl", "\n".join(lines) + "\n"))
    assert ds.texts == ["a", "b", "c\u2028d"]
    assert ds.lines == [1, 3, 5]
    label2id = label_map(ds.labels, "classify")
    assert label2id == {"2": 0, "10": 1}  # numeric order, not "10" < "2"
    assert encode_labels(ds, label2id, "classify").tolist() == [1, 0, 0]


def test_string_labels_sort_as_strings(tmp_path):
    ds = read_dataset(write(tmp_path, "x.ndjson", '{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n'))
    assert label_map(ds.labels, "classify") == {"neg": 0, "pos": 1}


def test_empty_texts_are_skipped_and_counted(tmp_path):
    ds = read_dataset(write(tmp_path, "x.csv", 'text,label\nok,1\n"   ",0\n,1\n"\n",0\nfine,0\n'))
    assert ds.texts == ["ok", "fine"]
    assert ds.skipped_empty == 3
    assert ds.lines == [2, 7]


def test_labels_not_needed(tmp_path):
    ds = read_dataset(write(tmp_path, "x.csv", "text\nhello\n"), need_labels=False)
    assert ds.texts == ["hello"] and ds.labels is None


# --- clear errors --------------------------------------------------------------------------------

def test_missing_column_names_file_column_and_columns_present(tmp_path):
    msg = error(read_dataset, write(tmp_path, "reviews.csv", "sentence,label\nhi,1\n"))
    assert "reviews.csv" in msg and "'text'" in msg and "'sentence'" in msg and "'label'" in msg
    msg = error(read_dataset, write(tmp_path, "r.jsonl", '{"text": "a"}\n'), label_column="y")
    assert "r.jsonl" in msg and "'y'" in msg and "line 1" in msg and "'text'" in msg


@pytest.mark.parametrize("content", ["", "text,label\n", "text,label\r\n\r\n"])
def test_empty_file_or_header_only(tmp_path, content):
    msg = error(read_dataset, write(tmp_path, "empty.csv", content))
    assert "empty.csv" in msg and "no examples" in msg


def test_empty_jsonl(tmp_path):
    assert "no examples" in error(read_dataset, write(tmp_path, "e.jsonl", "\n\n"))


def test_non_utf8_bytes_name_offset_and_line(tmp_path):
    path = write(tmp_path, "latin1.csv", "text,label\nok,1\n".encode() + "café,0\n".encode("latin-1"))
    msg = error(read_dataset, path)
    assert "latin1.csv" in msg and "byte 19" in msg and "line 3" in msg and "UTF-8" in msg


def test_wrong_field_count_names_line(tmp_path):
    msg = error(read_dataset, write(tmp_path, "x.csv", "text,label\nok,1\nunquoted, comma,1\n"))
    assert "x.csv, line 3" in msg and "3 fields" in msg


def test_bad_jsonl_line(tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": 1,}\n')
    msg = error(read_dataset, path)
    assert "bad.jsonl, line 3" in msg and "invalid JSON" in msg
    msg = error(read_dataset, write(tmp_path, "list.jsonl", '["a", 1]\n'))
    assert "line 1" in msg and "expected an object" in msg


def test_unsupported_extension(tmp_path):
    msg = error(read_dataset, write(tmp_path, "data.xlsx", "whatever"))
    assert "data.xlsx" in msg and ".csv" in msg and ".jsonl" in msg


def test_unseen_labels_get_ids_after_the_known_and_are_counted(tmp_path):
    train = read_dataset(write(tmp_path, "train.csv", "text,label\na,pos\nb,neg\n"))
    dev = read_dataset(write(tmp_path, "dev.csv", "text,label\na,pos\nb,neutral\nc,odd\nd,neutral\n"))
    unseen = Counter()
    assert encode_labels(dev, label_map(train.labels, "classify"), "classify", unseen).tolist() == [1, 2, 3, 2]
    assert unseen == {"neutral": 2, "odd": 1}
    multi = read_dataset(write(tmp_path, "m.jsonl", '{"text": "a", "label": ["x", "new"]}\n{"text": "b", "label": []}\n'))
    unseen = Counter()
    assert encode_labels(multi, {"x": 0, "y": 1}, "multilabel", unseen).tolist() == [[1, 0, 1], [0, 0, 0]]
    assert unseen == {"new": 1}


def test_single_class(tmp_path):
    ds = read_dataset(write(tmp_path, "x.csv", "text,label\na,1\nb,1\n"))
    msg = error(label_map, ds.labels, "classify")
    assert "1 distinct" in msg and "at least 2" in msg


def test_missing_label_value_names_line(tmp_path):
    ds = read_dataset(write(tmp_path, "x.csv", "text,label\na,1\nb,\nc,0\n"))
    msg = error(encode_labels, ds, label_map(ds.labels, "classify"), "classify")
    assert "x.csv, line 3" in msg and "label is missing" in msg


def test_list_label_in_classify(tmp_path):
    ds = read_dataset(write(tmp_path, "x.jsonl", '{"text": "a", "label": ["x"]}\n'))
    assert "multilabel" in error(label_map, ds.labels, "classify")


# --- regression and multilabel -------------------------------------------------------------------

def test_regression(tmp_path):
    ds = read_dataset(write(tmp_path, "x.csv", "text,label\na,0.5\nb,-2\nc,3e1\n"))
    assert label_map(ds.labels, "regression") == {}
    y = encode_labels(ds, {}, "regression")
    assert y.dtype == torch.float32 and y.tolist() == [0.5, -2.0, 30.0]


@pytest.mark.parametrize("bad", ["high", "", "nan"])
def test_bad_regression_value(tmp_path, bad):
    ds = read_dataset(write(tmp_path, "x.csv", f"text,label\na,1\nb,{bad}\n"))
    msg = error(encode_labels, ds, {}, "regression")
    assert "x.csv, line 3" in msg and repr(bad) in msg


def test_multilabel_csv_and_jsonl(tmp_path):
    ds = read_dataset(write(tmp_path, "x.csv", 'text,label\na,sports|politics\nb,\nc," politics "\n'))
    label2id = label_map(ds.labels, "multilabel")
    assert label2id == {"politics": 0, "sports": 1}
    y = encode_labels(ds, label2id, "multilabel")
    assert y.dtype == torch.float32 and y.tolist() == [[1, 1], [0, 0], [1, 0]]
    js = read_dataset(write(tmp_path, "y.jsonl", '{"text": "a", "label": ["sports"]}\n{"text": "b", "label": []}\n'))
    assert encode_labels(js, label2id, "multilabel").tolist() == [[0, 1], [0, 0]]
    unseen = Counter()
    new = read_dataset(write(tmp_path, "z.jsonl", '{"text": "a", "label": ["art"]}\n'))
    assert encode_labels(new, label2id, "multilabel", unseen).tolist() == [[0, 0, 1]]  # a column after the known
    assert unseen == {"art": 1}


# --- length-bucketed batches ---------------------------------------------------------------------

def lengths(n=5000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(5, 300) for _ in range(n)]


def padding(batches, lens):
    return sum(max(lens[i] for i in b) * len(b) - sum(lens[i] for i in b) for b in batches)


@pytest.mark.parametrize("seed", [None, 0, 7])
def test_every_index_exactly_once(seed):
    lens = lengths(1003)
    batches = length_batches(lens, 16, seed)
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(1 <= len(b) <= 16 for b in batches)


def test_deterministic_per_seed_and_seeds_differ():
    lens = lengths()
    assert length_batches(lens, 32, 3) == length_batches(lens, 32, 3)
    assert length_batches(lens, 32, 3) != length_batches(lens, 32, 4)
    assert length_batches(lens, 32, None) == length_batches(lens, 32, None)


def test_batch_order_is_shuffled():
    lens = lengths(1000)
    first = [lens[b[0]] for b in length_batches(lens, 10, 0)]
    assert first != sorted(first) and first != sorted(first, reverse=True)


def test_inference_order_is_longest_first():
    lens = lengths(100)
    flat = [i for b in length_batches(lens, 8, None) for i in b]
    assert [lens[i] for i in flat] == sorted(lens, reverse=True)


def test_bucketing_wastes_little_padding():
    lens = lengths()
    order = list(range(len(lens)))
    random.Random(1).shuffle(order)
    random_batches = [order[i:i + 32] for i in range(0, len(order), 32)]
    assert padding(length_batches(lens, 32, 0), lens) < 0.1 * padding(random_batches, lens)
