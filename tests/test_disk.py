"""A full disk: a save that fails leaves what was there before intact and readable, removes its
temporary file, and stops the run with a message naming the directory and the bytes it needed.

The failures are injected at the write (OSError(ENOSPC), as a full disk raises it) during each of the
model save, the checkpoint save and the metrics line; and made real without root by a file-size limit
(RLIMIT_FSIZE: writes past it fail with EFBIG, through safetensors' own Rust I/O too).
"""
import errno
import io
import json
import os
import re
import resource
import subprocess
import sys

import pytest
import torch

import minift.checkpoint
from conftest import ROOT
from minift.checkpoint import append_line, load_train_state, save_pretrained
from minift.errors import MiniftError
from minift.lock import LOCK
from minift.tasks.classify import BertClassifier
from minift.train_loop import train
from minift.train_step import make_optimizer, make_schedule
from test_reliability import API_FAST, FAST, SUBPROCESS_ENV, snapshot, write_csv

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", 12, seed=1)


def run(tiny_dir, train_file, out, **kw):
    # No dev set: every epoch's model is kept, so each of the 2 epochs (3 steps each) saves the model,
    # appends a metrics line and saves a checkpoint, in that order.
    return train(tiny_dir, train_file, out, log=io.StringIO(), epochs=2, batch_size=4, lr=1e-3, **API_FAST, **kw)


def fail_second(monkeypatch, name, out):
    """The second save_file to `name` writes part of the file, then raises ENOSPC. Returns what `out`
    held just before (filled in when it fails)."""
    real, calls, before = minift.checkpoint.save_file, [], {}

    def save_file(tensors, path, metadata=None):
        if os.path.basename(path).startswith(f".{name}.tmp"):
            calls.append(path)
            if len(calls) == 2:
                before.update(snapshot(out))
                with open(path, "wb") as f:
                    f.write(b"\0" * 1000)  # half a file under the temporary name
                raise ENOSPC
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(minift.checkpoint, "save_file", save_file)
    return before


def check_refusal(e, out, size):
    """The message names the directory, the error and the size of the file it was writing (within 0.1%)."""
    msg = str(e.value)
    assert str(out.resolve()) in msg and "No space left on device" in msg, msg
    needed = int(msg.split("needs about ")[1].split(" bytes")[0].replace(",", ""))
    assert abs(needed - size) <= size / 1000, msg
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def fresh_state(tiny_dir):
    net = BertClassifier.from_pretrained(tiny_dir, id2label={0: "negative", 1: "neutral", 2: "positive"},
                                         new_head=True)
    opt = make_optimizer(net, 1e-3, 0.01, 1.0)
    return net, opt, make_schedule(opt, 0, 6)


@pytest.mark.parametrize("name", ["model.safetensors", "checkpoint.safetensors"])
def test_a_failed_save_leaves_the_previous_files(tiny_dir, train_file, tmp_path, monkeypatch, name):
    out = tmp_path / "out"
    before = fail_second(monkeypatch, name, out)
    with pytest.raises(MiniftError) as e:
        run(tiny_dir, train_file, out)
    before.pop(LOCK)  # the run held it then, and let go of it when it stopped
    assert before and snapshot(out) == before  # the model, checkpoint and metrics of epoch 1, byte for byte
    check_refusal(e, out, size=os.path.getsize(out / name))
    BertClassifier.from_pretrained(out)
    assert load_train_state(out / "checkpoint.safetensors", *fresh_state(tiny_dir), None)["step"] == 3
    monkeypatch.undo()  # room again: the run goes on from its last checkpoint
    assert run(tiny_dir, train_file, out, resume=True)["step"] == 6


def test_a_failed_metrics_line_is_cut_back(tiny_dir, train_file, tmp_path, monkeypatch):
    """The disk fills in the middle of the second line: the first half is written, the rest fails."""
    out = tmp_path / "out"
    real, before = os.write, {}

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl") and os.fstat(fd).st_size:
            if not before:
                before["metrics"] = (out / "metrics.jsonl").read_bytes()
                return real(fd, bytes(data[:len(data) // 2]))
            raise ENOSPC
        return real(fd, data)
    monkeypatch.setattr(os, "write", write)
    with pytest.raises(MiniftError) as e:
        run(tiny_dir, train_file, out)
    monkeypatch.undo()
    check_refusal(e, out, size=len(before["metrics"]))  # lines are alike in length
    assert (out / "metrics.jsonl").read_bytes() == before["metrics"]  # one whole line, no half of a second
    assert [json.loads(line)["step"] for line in before["metrics"].decode().splitlines()] == [3]


@pytest.fixture
def size_limit():
    """limit(n) sets the file-size limit of this process; the test's own limit comes back after it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(n):
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_real_write_errors_are_refusals(tiny_dir, tmp_path, size_limit):
    """Python ignores SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG (and stops short first)."""
    old = BertClassifier.from_pretrained(tiny_dir)
    save_pretrained(old, tmp_path)
    append_line(tmp_path / "metrics.jsonl", '{"step": 1}\n')
    before = snapshot(tmp_path)
    new = BertClassifier.from_pretrained(tiny_dir)
    with torch.no_grad():
        next(new.parameters()).add_(1)
    size_limit(20_000)  # under the model's 97 kB
    try:
        with pytest.raises(MiniftError, match="File too large"):
            save_pretrained(new, tmp_path)
        size_limit(len(before["metrics.jsonl"]) + 5)  # five bytes of the line fit, then no more
        with pytest.raises(MiniftError, match=r"cannot write metrics.jsonl in .*File too large"):
            append_line(tmp_path / "metrics.jsonl", '{"step": 2}\n')
    finally:
        size_limit(resource.RLIM_INFINITY)
    assert snapshot(tmp_path) == before


def test_cli_stops_with_a_refusal_when_the_disk_is_full(tiny_dir, train_file, tmp_path):
    """A real process under a 150 kB file-size limit: the model (97 kB) fits, the checkpoint (weights and
    AdamW's two moments) does not."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "minift", "train", "--model", str(tiny_dir), "--train", str(train_file),
            "--out", str(out), "--epochs", "1", "--batch-size", "4", *FAST]
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=SUBPROCESS_ENV, timeout=120,
                       preexec_fn=limit)
    assert r.returncode == 2, r.stderr
    assert re.search(f"minift train: error: cannot write checkpoint.safetensors in {re.escape(str(out.resolve()))}: "
                     r".*File too large.* It needs about [\d,]+ bytes", r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(os.listdir(out)) == ["config.json", "metrics.jsonl", "model.safetensors", "run.json",
                                       "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                                       "vocab.txt"]
    BertClassifier.from_pretrained(out)
