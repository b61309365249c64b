"""Reading tabular text files (CSV, TSV, JSON Lines) and batching examples of similar length."""

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from minift.errors import MiniftError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# The csv module refuses fields over 128 KB by default; a long document in one field is data like any other
# (JSON Lines has no such limit). The largest value the C long of every platform holds.
FIELD_LIMIT = 2 ** 31 - 1


@dataclass
class Dataset:
    path: str
    texts: list[str]
    pairs: list[str] | None  # second text of each pair, for sentence-pair tasks
    labels: list | None  # raw values as read (str from CSV/TSV, any JSON value); None when not requested
    lines: list[int]  # 1-based line in the file where each example starts, for error messages
    skipped_empty: int = 0  # rows whose text was empty or whitespace; the caller reports the count


def read_dataset(path, text_column="text", text_pair_column=None, label_column="label", need_labels=True) -> Dataset:
    path = str(path)
    fmt, text, records = read_records(path)
    text_columns = [text_column] + ([text_pair_column] if text_pair_column else [])
    columns = text_columns + ([label_column] if need_labels else [])

    ds = Dataset(path, [], [] if text_pair_column else None, [] if need_labels else None, [])
    for line, record in records:
        missing = [c for c in columns if c not in record]
        if missing:
            raise no_column(path, fmt, line, missing[0], record)
        texts = [_text(path, line, c, record[c]) for c in text_columns]
        if not all(texts):
            ds.skipped_empty += 1
            continue
        ds.texts.append(texts[0])
        if text_pair_column:
            ds.pairs.append(texts[1])
        if need_labels:
            ds.labels.append(record[label_column])
        ds.lines.append(line)
    if not ds.texts:
        why = ("the file is empty" if not text.strip() else
               f"all {ds.skipped_empty} rows have empty text" if ds.skipped_empty else "there are no data rows")
        expected = "one JSON object per line" if fmt == "jsonl" else "a header row, then one example per row"
        raise MiniftError(f"{path}: no examples ({why}). Expected {expected}.")
    return ds


def read_records(path) -> tuple[str, str, object]:
    """(format, the whole text, (line, {column: value}) per record) of a CSV, TSV or JSON Lines file."""
    path = str(path)
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise MiniftError(f"{path}: unsupported file type {Path(path).suffix or '(no extension)'!r}. "
                          f"minift reads {', '.join(FORMATS)} files, chosen by extension.")
    text = read_text(path)
    records = (json_lines(path, text.split("\n")) if fmt == "jsonl"  # not splitlines(): JSON strings may hold U+2028
               else _read_csv(path, io.StringIO(text, newline=""), "\t" if fmt == "tsv" else ","))
    return fmt, text, records


def read_text(path) -> str:
    """The whole of a UTF-8 text file, less a leading BOM (spreadsheet exports often start with one)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise MiniftError(f"Cannot read {path}: {e.strerror}.") from None
    return decode(path, raw).removeprefix("\ufeff")


def read_json(path):
    """The JSON value of a UTF-8 file (a model's settings, say); where it is not JSON, the error names the line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise MiniftError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})") from None


def lines_of(path):
    """The file's lines (ending at \n only, as wc -l counts them), read lazily, decoded as UTF-8 with their
    endings; a BOM is left out."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise MiniftError(f"Cannot read {path}: {e.strerror}.") from None
    with f:
        offset = 0
        for n, raw in enumerate(f, 1):
            line = decode(path, raw, offset, n)
            yield line.removeprefix("\ufeff") if n == 1 else line
            offset += len(raw)


def decode(path, raw: bytes, offset: int = 0, line: int = 1) -> str:
    """`raw` (the bytes of `path` from byte `offset`, which is on `line`) as UTF-8; where it is not, the error
    names the byte and its line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line += raw.count(b"\n", 0, e.start)
        raise MiniftError(f"{path}: byte {offset + e.start} (line {line}) is {raw[e.start:e.end]!r}, which is not "
                          "valid UTF-8. minift reads text files as UTF-8; re-save the file as UTF-8 "
                          "(e.g. `iconv -f latin1 -t utf-8`).") from None


def _read_csv(path, lines, delimiter):
    # lines: a text stream opened with newline="", so that newlines inside quoted fields stay part of the field.
    csv.field_size_limit(FIELD_LIMIT)
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader, [])]
        twice = next((h for i, h in enumerate(header) if h in header[:i]), None)
        if twice is not None:
            raise MiniftError(f"{path}, line 1: the header names the column {twice!r} twice; "
                              "give each column its own name")
        start = reader.line_num + 1
        for row in reader:
            if row:  # csv gives [] for a blank line
                if len(row) != len(header):
                    raise MiniftError(f"{path}, line {start}: {len(row)} fields, but the header has "
                                      f"{len(header)}. A field that contains the delimiter, a quote or a "
                                      f"newline must be wrapped in double quotes (\"\" for a quote inside).")
                yield start, dict(zip(header, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise MiniftError(f"{path}, line {reader.line_num}: malformed CSV ({e}).") from None


def json_lines(path, lines, like='{"text": "...", "label": "..."}', blanks=False):
    """(line number, object) per line of `lines`, a JSON Lines file's; blank lines are left out, or give (line
    number, None). A line that is not JSON, or not an object (shown `like` one; like=None: any JSON value), is
    an error naming the file and line."""
    for line, s in enumerate(lines, 1):
        if not s.strip():
            if blanks:
                yield line, None
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise MiniftError(f"{path}, line {line}, column {e.colno}: invalid JSON ({e.msg}). JSON Lines "
                              f"files need one complete JSON object per line.") from None
        if like is not None and not isinstance(obj, dict):
            raise MiniftError(f"{path}, line {line}: a JSON {type(obj).__name__}, expected an object like {like}.")
        yield line, obj


def no_column(path, fmt, line, column, record) -> MiniftError:
    where = "the header" if fmt != "jsonl" else f"the object on line {line}"
    return MiniftError(f"{path}: no column {column!r} in {where}; the columns there are "
                       f"{', '.join(map(repr, record)) or '(none)'}. Give the name of the column "
                       f"that holds it, or rename that column in the file.")


def _text(path, line, column, value):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MiniftError(f"{path}, line {line}: column {column!r} holds {value!r}; expected a string of text.")
    return value.strip()


def length_batches(lengths: list[int], batch_size: int, seed: int | None) -> list[list[int]]:
    """Index batches of similar length, so little compute goes to padding.

    Without a seed (inference) the order is fixed, longest first so that running out of memory shows up
    in the first batch rather than at the end. With a seed (the caller passes seed + epoch) examples are
    shuffled, sorted by length within chunks of 100 batches, and the batches are shuffled: each batch is
    near-uniform in length yet the batch order and membership vary between epochs.
    """
    n = len(lengths)
    if seed is None:
        order = sorted(range(n), key=lambda i: -lengths[i])
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    chunk = 100 * batch_size
    batches = []
    for c in range(0, n, chunk):
        part = sorted(order[c:c + chunk], key=lengths.__getitem__)
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches
