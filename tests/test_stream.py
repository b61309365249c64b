"""Streaming predict and embed: line N of the output answers record N of the input (an empty one with a
skipped record); the output grows chunk by chunk, complete lines only; --resume-from-output continues an
interrupted run (one killed outright too) to the very output an uninterrupted run writes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import minift.stream
from conftest import ROOT
from minift.cli import main
from minift.errors import MiniftError
from minift.predict import embed, predict
from minift.stream import records, stream
from test_reliability import SUBPROCESS_ENV, sentence

FAST = ["--precision", "fp32", "--device", "cpu"]


def write_lines(path, n, blank_every=7):
    import random
    rng = random.Random(0)
    path.write_text("".join(("" if i % blank_every == 3 else sentence(rng)) + "\n" for i in range(n)))
    return path


def run_predict(tiny_dir, capsys, *args):
    code = main(["predict", "--model", str(tiny_dir), *map(str, args), *FAST])
    return code, capsys.readouterr()


def test_line_n_answers_line_n(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(minift.stream, "CHUNK", 16)  # several chunks
    src = write_lines(tmp_path / "in.txt", 50)
    texts = src.read_text().split("\n")[:-1]
    out = tmp_path / "out.jsonl"
    code, cap = run_predict(tiny_dir, capsys, "--input", src, "--output", out)
    assert code == 0, cap.err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in got] == texts
    kept = [t for t in texts if t]
    want = predict(tiny_dir, kept, precision="fp32", device="cpu")
    answered = [r for r in got if "skipped" not in r]
    assert [r["label"] for r in answered] == [w["label"] for w in want]
    for r, w in zip(answered, want):
        assert r["probs"] == pytest.approx(w["probs"], abs=1e-6)
    assert all(r == {"text": "", "skipped": "empty text"} for r in got if not r["text"])
    assert f"{src}: skipped {len(texts) - len(kept)} row(s) with empty text" in cap.err


def test_embed_streams_jsonl_and_npy(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(minift.stream, "CHUNK", 16)
    src = write_lines(tmp_path / "in.txt", 40)
    texts = src.read_text().split("\n")[:-1]
    kept = [i for i, t in enumerate(texts) if t]
    want = embed(tiny_dir, [texts[i] for i in kept], device="cpu")
    assert main(["embed", "--model", str(tiny_dir), "--input", str(src), "--output", str(tmp_path / "e.npy")]) == 0
    assert main(["embed", "--model", str(tiny_dir), "--input", str(src), "--output", str(tmp_path / "e.jsonl")]) == 0
    npy = np.load(tmp_path / "e.npy")
    lines = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert npy.shape == (len(texts), want.shape[1]) and len(lines) == len(texts)
    assert np.isnan(npy[[i for i in range(len(texts)) if i not in kept]]).all()  # empty lines: NaN rows
    torch.testing.assert_close(torch.from_numpy(npy[kept]), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor([lines[i]["embedding"] for i in kept]), want, rtol=1e-5, atol=1e-6)
    assert [r.get("skipped") for r in lines] == [None if t else "empty text" for t in texts]


def test_interrupted_then_resumed_is_the_uninterrupted_output(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(minift.stream, "CHUNK", 8)
    src = write_lines(tmp_path / "in.txt", 60)
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    assert run_predict(tiny_dir, capsys, "--input", src, "--output", whole)[0] == 0

    # Ctrl-C in the middle of writing the fourth chunk: the chunk is cut back, 3 whole chunks stay.
    real, writes = os.write, []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") == str(part):
            writes.append(1)
            if len(writes) == 4:
                real(fd, bytes(data[:len(data) // 2]))
                raise KeyboardInterrupt
        return real(fd, data)
    monkeypatch.setattr(os, "write", write)
    code, cap = run_predict(tiny_dir, capsys, "--input", src, "--output", part)
    monkeypatch.setattr(os, "write", real)
    assert code == 130 and "interrupted" in cap.err
    assert part.read_text() == "".join(whole.read_text().splitlines(keepends=True)[:24])

    # A process killed outright mid-write can leave part of a line: resume drops it, then goes on.
    with open(part, "a") as f:
        f.write('{"label": "pos')
    code, cap = run_predict(tiny_dir, capsys, "--input", src, "--output", part, "--resume-from-output")
    assert code == 0, cap.err
    assert f"{part}: 24 lines already done; continuing" in cap.err
    assert part.read_bytes() == whole.read_bytes()


def test_resume_refusals(tiny_dir, tmp_path, capsys):
    src = write_lines(tmp_path / "in.txt", 10)
    other = write_lines(tmp_path / "other.txt", 10, blank_every=2)
    out = tmp_path / "out.jsonl"
    assert run_predict(tiny_dir, capsys, "--input", src, "--output", out)[0] == 0
    before = out.read_bytes()
    for args, message in (
            (["--input", src, "--output", out], f"--output {out}: exists. Pass --resume-from-output"),
            (["--input", other, "--output", out, "--resume-from-output"], "does not answer this input"),
            (["--input", src, "--resume-from-output"], "--resume-from-output needs --output FILE")):
        code, cap = run_predict(tiny_dir, capsys, *args)
        assert code == 2 and message in cap.err, cap.err
        assert out.read_bytes() == before
    longer = tmp_path / "long.txt"
    longer.write_text(src.read_text() + "one more line\n")
    code, cap = run_predict(tiny_dir, capsys, "--input", longer, "--output", out, "--resume-from-output")
    assert code == 0 and out.read_bytes().startswith(before) and len(out.read_text().splitlines()) == 11


def test_a_killed_run_leaves_a_valid_prefix(tiny_dir, tmp_path):
    """A real process, killed (SIGKILL) while it writes: every line but perhaps a torn last one is a
    complete record of its input line, and --resume-from-output finishes the same output."""
    src = write_lines(tmp_path / "in.txt", 40_000)
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "minift", "predict", "--model", str(tiny_dir), "--input", str(src), "--output",
            str(out), *FAST]
    proc = subprocess.Popen(argv, cwd=ROOT, env=SUBPROCESS_ENV, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while (not out.exists() or out.stat().st_size < 100_000) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
    texts = src.read_text().split("\n")[:-1]
    done = out.read_bytes().split(b"\n")
    assert 0 < len(done) - 1 < len(texts)
    assert [json.loads(line)["text"] for line in done[:-1]] == texts[:len(done) - 1]
    r = subprocess.run([*argv, "--resume-from-output"], cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in got] == texts


def test_records_of_a_jsonl(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": "b", "p": "c"}\n')
    it = records(f, "text")
    assert next(it) == ("a", None) and next(it) == ("", None) and next(it) == ("b", None)
    with pytest.raises(MiniftError, match=r"in.jsonl: no column 'p' in the object on line 1"):
        list(records(f, "text", "p"))
    assert stream([("x", None), ("", None)], lambda texts, pairs: [{"n": len(t)} for t in texts], log=open(os.devnull, "w")) == 2
