"""Streaming prediction and embedding: the input is read, run and written a chunk of records at a time,
so memory stays flat however long the input is, and the output grows as the run goes.

Output line N answers input record N: a line of a .txt or .jsonl file, a data row of a .csv or .tsv. A
record with empty text is answered by {"text": "", "skipped": "empty text"}. Each chunk is appended whole
or cut back (append_line), so an interrupted run leaves complete lines only; a process killed outright
in the middle of a write may leave part of a last line, which --resume-from-output drops before it
continues after the complete ones.
"""
import json
import sys
from itertools import islice
from pathlib import Path

from minift.checkpoint import append_line
from minift.data import FORMATS, _read_csv, _read_jsonl, _text
from minift.errors import MiniftError

CHUNK = 2048  # records per chunk: enough to sort into batches of similar length, little memory
SKIPPED = "empty text"


def records(path, text_column="text", text_pair_column=None):
    """(text, pair) per record of the file, read lazily; text is "" for an empty record."""
    path = Path(path)
    fmt = "txt" if path.suffix.lower() == ".txt" else FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MiniftError(f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; expected one text "
                          f"per line (.txt) or a {', '.join(FORMATS)} file, chosen by extension")
    if fmt == "txt":
        for line in lines_of(path):
            yield line.rstrip("\n").removesuffix("\r"), None
        return
    rows = (_read_jsonl(path, lines_of(path), blanks=True) if fmt == "jsonl"
            else _read_csv(path, lines_of(path), "\t" if fmt == "tsv" else ","))
    for n, row in rows:
        if row is None:  # a blank line of a .jsonl
            yield "", None
            continue
        for c in (text_column, text_pair_column):
            if c and c not in row:
                where = "the header" if fmt != "jsonl" else f"the object on line {n}"
                raise MiniftError(f"{path}: no column {c!r} in {where}; the columns there are "
                                  f"{', '.join(map(repr, row)) or '(none)'}. Give the name of the column that "
                                  "holds it, or rename that column in the file.")
        yield (_text(path, n, text_column, row[text_column]),
               _text(path, n, text_pair_column, row[text_pair_column]) if text_pair_column else None)


def lines_of(path: Path):
    """The file's lines (ending at \n only, as wc -l counts them), decoded as UTF-8 with their endings."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise MiniftError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        offset = 0
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MiniftError(f"{path}: byte {offset + e.start} (line {n}) is {raw[e.start:e.end]!r}, which is not "
                                  "valid UTF-8. minift reads text files as UTF-8; re-save the file as UTF-8 "
                                  "(e.g. `iconv -f latin1 -t utf-8`).") from None
            yield line.removeprefix("\ufeff") if n == 1 else line  # a BOM, as spreadsheet exports write
            offset += len(raw)


def done_lines(output: Path) -> tuple[int, str | None]:
    """(complete lines of an earlier output, the text its last one answered); a torn last line is cut off."""
    try:
        f = open(output, "rb+")
    except OSError as e:
        raise MiniftError(f"--resume-from-output: {output} cannot be opened ({e.strerror})") from None
    with f:
        count, pos, start, end = 0, 0, 0, 0  # the last complete line is [start, end)
        while block := f.read(1 << 20):
            last = block.rfind(b"\n")
            if last >= 0:
                before = block.rfind(b"\n", 0, last)
                start = pos + before + 1 if before >= 0 else end
                end = pos + last + 1
                count += block.count(b"\n")
            pos += len(block)
        f.truncate(end)
        f.seek(start)
        line = f.read(end - start)
    if not count:
        return 0, None
    try:
        return count, json.loads(line)["text"]
    except (ValueError, KeyError, TypeError):
        raise MiniftError(f"--resume-from-output: the last line of {output} is not a record minift wrote") from None


def stream(recs, answer, output=None, resume=False, source="input", log=None) -> int:
    """answer(texts, pairs) -> one dict per text, for the non-empty records of every chunk of `recs`;
    the JSON lines go to `output` (or stdout) as each chunk is done. Returns the number of lines written."""
    log = sys.stderr if log is None else log
    recs, done = iter(recs), 0
    if resume:
        if output is None:
            raise MiniftError("--resume-from-output needs --output FILE")
        done, last_text = done_lines(Path(output))
        seen, last = 0, None
        for seen, (last, _) in enumerate(islice(recs, done), 1):  # past the records already answered
            pass
        if seen < done or (done and last != last_text):
            raise MiniftError(f"--resume-from-output: {output} does not answer this input: its {done} lines end "
                              f"with the text {last_text!r}, the input's record {seen} is {last!r}")
        print(f"{output}: {done} lines already done; continuing", file=log)
    elif output is not None and Path(output).exists():
        raise MiniftError(f"--output {output}: exists. Pass --resume-from-output to continue it, or remove it")
    written = skipped = 0
    while batch := list(islice(recs, CHUNK)):
        keep = [i for i, (text, _) in enumerate(batch) if text.strip()]
        skipped += len(batch) - len(keep)
        pairs = [batch[i][1] for i in keep] if any(batch[i][1] is not None for i in keep) else None
        results = dict(zip(keep, answer([batch[i][0] for i in keep], pairs))) if keep else {}
        lines = "".join(json.dumps(results.get(i) or {"text": text, "skipped": SKIPPED}, ensure_ascii=False) + "\n"
                        for i, (text, _) in enumerate(batch))
        if output is None:
            sys.stdout.write(lines)
            sys.stdout.flush()
        else:
            append_line(Path(output), lines)
        written += len(batch)
    if skipped:
        print(f"{source}: skipped {skipped} row(s) with empty text; their output lines say so", file=log)
    if output is not None:
        print(f"wrote {written} lines to {output}" + (f" ({done + written} in all)" if done else ""), file=log)
    return written


def stream_npy(make_records, vectors, dim: int, output, log=None) -> int:
    """vectors(texts) -> [n, dim] for the non-empty records, written row by row into a float32 .npy that
    is renamed into place when whole (a .npy states its row count first: the input is read twice). An
    empty record's row is NaN. make_records() gives a fresh iterator of the records each time."""
    import numpy as np
    from minift.checkpoint import atomic_write
    log = sys.stderr if log is None else log
    n = sum(1 for _ in make_records())

    def write(tmp):
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        recs, at = iter(make_records()), 0
        while batch := list(islice(recs, CHUNK)):
            keep = [i for i, (text, _) in enumerate(batch) if text.strip()]
            rows[at:at + len(batch)] = np.nan
            if keep:
                rows[[at + i for i in keep]] = vectors([batch[i][0] for i in keep]).numpy()
            at += len(batch)
        rows.flush()
        del rows
    atomic_write(Path(output), write, 128 + 4 * n * dim)
    print(f"wrote ({n}, {dim}) float32 to {output}", file=log)
    return n
