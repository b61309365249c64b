"""Streaming prediction and embedding: the input is read, run and written a chunk of records at a time,
so memory stays flat however long the input is, and the output grows as the run goes.

Output line N answers input record N: a line of a .txt or .jsonl file, a data row of a .csv or .tsv. A
record with empty text is answered by {"text": "", "skipped": "empty text"}. Each chunk is appended whole
or cut back (append_line), so an interrupted run leaves complete lines only; a process killed outright
in the middle of a write may leave part of a last line, which --resume-from-output drops before it
continues after the complete ones.
"""
import errno
import json
import os
import sys
from itertools import islice
from pathlib import Path

from minift.checkpoint import append_line, json_line
from minift.data import FORMATS, _read_csv, _text, json_lines, lines_of, no_column
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
    rows = (json_lines(path, lines_of(path), blanks=True) if fmt == "jsonl"
            else _read_csv(path, lines_of(path), "\t" if fmt == "tsv" else ","))
    for n, row in rows:
        if row is None:  # a blank line of a .jsonl
            yield "", None
            continue
        for c in (text_column, text_pair_column):
            if c and c not in row:
                raise no_column(path, fmt, n, c, row)
        yield (_text(path, n, text_column, row[text_column]),
               _text(path, n, text_pair_column, row[text_pair_column]) if text_pair_column else None)


def done_lines(output: Path, recs) -> int:
    """Prove that `output` answers the records `recs` so far before changing a byte of it: each complete
    line must be a JSON object whose "text" is the text of the input record at its place. Only then is a
    torn last line (a write cut by a kill) dropped. Returns the number of complete lines; `recs` is left
    after the records they answer."""
    try:
        f = open(output, "rb+")
    except OSError as e:
        raise MiniftError(f"--resume-from-output: {output} cannot be opened ({e.strerror})") from None
    with f:
        count = end = 0
        for raw in f:
            if not raw.endswith(b"\n"):  # the torn last line
                if not raw.startswith(b"{"):
                    raise MiniftError(f"--resume-from-output: {output}, line {count + 1}: not a record minift "
                                      "wrote; the file is not left by an earlier run of this command")
                break
            count += 1
            try:
                text = json.loads(raw)["text"]
            except (ValueError, KeyError, TypeError):
                raise MiniftError(f"--resume-from-output: {output}, line {count}: not a record minift wrote "
                                  "(a JSON object with its \"text\"); the file is left as it was") from None
            rec = next(recs, None)
            if rec is None or rec[0] != text:
                said = "the input has no more records" if rec is None else f"the input's record is {rec[0]!r}"
                raise MiniftError(f"--resume-from-output: {output}, line {count}: answers the text {text!r}, but "
                                  f"{said}; the file does not answer this input and is left as it was")
            end += len(raw)
        f.truncate(end)
    return count


def stream(recs, answer, output=None, resume=False, source="input", log=None, force=False) -> int:
    """answer(texts, pairs) -> one dict per text, for the non-empty records of every chunk of `recs`;
    the JSON lines go to `output` (or stdout) as each chunk is done. Returns the number of lines written.
    force=True replaces an existing `output` when the new one is whole: until then it grows under a
    temporary name, and the old file stays as it was."""
    log = sys.stderr if log is None else log
    recs, done = iter(recs), 0
    if resume:
        if output is None:
            raise MiniftError("--resume-from-output needs --output FILE")
        done = done_lines(Path(output), recs)
        print(f"{output}: {done} lines already done; continuing", file=log)
    elif output is not None and Path(output).exists() and not force:
        raise MiniftError(f"--output {output}: exists. Pass --resume-from-output to continue it, --force to "
                          "replace it, or choose another file")
    target = None if output is None else Path(output)
    write_to = target.with_name(f".{target.name}.tmp{os.getpid()}") if target and not resume and target.exists() \
        else target
    try:
        written, skipped = write_chunks(recs, answer, write_to)
        if write_to != target:
            os.replace(write_to, target)
    finally:
        if write_to != target:
            write_to.unlink(missing_ok=True)
    if skipped:
        print(f"{source}: skipped {skipped} row(s) with empty text; their output lines say so", file=log)
    if output is not None:
        print(f"wrote {written} lines to {output}" + (f" ({done + written} in all)" if done else ""), file=log)
    return written


def write_chunks(recs, answer, output: Path | None) -> tuple[int, int]:
    """Answer and write `recs` a chunk at a time: (lines written, records skipped for empty text)."""
    written = skipped = 0
    while batch := list(islice(recs, CHUNK)):
        keep = [i for i, (text, _) in enumerate(batch) if text.strip()]
        skipped += len(batch) - len(keep)
        pairs = [batch[i][1] for i in keep] if any(batch[i][1] is not None for i in keep) else None
        results = dict(zip(keep, answer([batch[i][0] for i in keep], pairs))) if keep else {}
        lines = "".join(json_line(results.get(i) or {"text": text, "skipped": SKIPPED})
                        for i, (text, _) in enumerate(batch))
        if output is None:
            sys.stdout.write(lines)
            sys.stdout.flush()
        else:
            append_line(output, lines)
        written += len(batch)
    if output is not None and not output.exists():
        append_line(output, "")  # an empty input's output is there too, with no line
    return written, skipped


def stream_npy(make_records, vectors, dim: int, output, log=None) -> int:
    """vectors(texts) -> [n, dim] for the non-empty records, written a chunk of rows at a time into a float32
    .npy that is renamed into place when whole (a .npy states its row count first: the input is read twice).
    An empty record's row is NaN. make_records() gives a fresh iterator of the records each time.

    The file is written with plain writes into space reserved first, never through a memory map: a memory
    map that meets a full disk kills the process (SIGBUS) where a write raises an error."""
    import numpy as np
    from minift.checkpoint import atomic_write
    log = sys.stderr if log is None else log
    n = sum(1 for _ in make_records())

    def write(tmp):
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
            reserve(f, f.tell() + 4 * n * dim)
            recs = iter(make_records())
            while batch := list(islice(recs, CHUNK)):
                keep = [i for i, (text, _) in enumerate(batch) if text.strip()]
                rows = np.full((len(batch), dim), np.nan, dtype="<f4")
                if keep:
                    rows[keep] = vectors([batch[i][0] for i in keep]).numpy()
                f.write(rows.tobytes())
    atomic_write(Path(output), write, 128 + 4 * n * dim)
    print(f"wrote ({n}, {dim}) float32 to {output}", file=log)
    return n


def reserve(f, size: int):
    """Claim the disk space of a file of `size` bytes now, so that a full disk is found before any work
    (where the file system cannot reserve space, the writes themselves still find it)."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
