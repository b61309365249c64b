"""Reliability: bad input at every entry point, interruption and crashes, numerical faults,
determinism, and what training writes.

Every refusal is checked twice, through the CLI (exit code 2, one "minift <cmd>: error:" paragraph
on stderr, no traceback) and through the Python API (MiniftError with the same message), for what
the message says (the file, the line and column where they apply, what was expected) and for what
it leaves behind: no --out or --output created, an existing run unchanged byte for byte.

fp16 loss scaling (GradScaler skipping an inf step and lowering its scale) is tested in test_fp16.py;
the non-finite tests below exercise the fp32 path of train_step.
"""
import contextlib
import csv
import io
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import minift.train_loop
from conftest import ROOT
from minift.checkpoint import load_train_state, save_train_state
from minift.cli import main
from minift.errors import MiniftError
from minift.tasks.classify import BertClassifier
from minift.predict import embed, evaluate, predict
from minift.train_loop import train
from minift.train_step import make_optimizer, make_schedule

LABELS = ("negative", "neutral", "positive")
WORDS = "the movie film story plot good bad great awful love hate fun boring funny sad happy dull fine".split()
FAST = ["--precision", "fp32", "--device", "cpu", "--compile", "off", "--max-length", "24"]
API_FAST = dict(precision="fp32", compile="off", device="cpu", max_length=24)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))


def write_csv(path, n, seed=0, labels=LABELS):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([sentence(rng), labels[i % len(labels)]] for i in range(n))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return write_csv(d / "train.csv", 12, seed=1), write_csv(d / "dev.csv", 6, seed=2)


def snapshot(root):
    """Every file and directory under root: {relative path: bytes, or None for a directory}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def refused(capsys, argv):
    """Run the CLI expecting a refusal; return the error message (without the 'minift <cmd>: error: ' prefix)."""
    argv = [str(a) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    prefix = f"minift {argv[0]}: error: "
    assert captured.err.startswith(prefix) and captured.err.endswith("\n"), captured.err
    assert "Traceback" not in captured.err and "\n\n" not in captured.err  # one paragraph
    return captured.err[len(prefix):-1]


def api_refused(fn, *args, **kwargs):
    with pytest.raises(MiniftError) as e:
        fn(*args, **kwargs)
    return str(e.value)


def copy_tiny(tiny_dir, dest):
    shutil.copytree(tiny_dir, dest, ignore=shutil.ignore_patterns("reference.safetensors"))
    return dest


# ---- 1. bad input at every entry point ----

def damage_truncated(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:5000])
    return [str(f), "truncated or corrupted"]


def damage_garbage(d):
    f = d / "model.safetensors"
    f.write_bytes(random.Random(0).randbytes(f.stat().st_size))
    return [str(f), "truncated or corrupted"]


def damage_shapes(d):
    config = json.loads((d / "config.json").read_text())
    config["intermediate_size"] = 40  # the weights hold 37
    (d / "config.json").write_text(json.dumps(config))
    return [str(d), "do not match config.json", "wrong shape",
            "encoder.layer.0.intermediate.dense.weight [37, 32] (expected [40, 32])"]


def damage_pickle_only(d):
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    return [str(d), "only pytorch_model.bin, a pickle file", "can run arbitrary code", "--allow-pickle",
            "weights_only=True"]


def damage_not_a_directory(d):
    shutil.rmtree(d)
    d.write_text("a file where the model directory should be")
    return [f"{d}: no such model directory"]


def damage_missing(d):
    shutil.rmtree(d)
    return [f"{d}: no such model directory"]


DAMAGE = {f.__name__.removeprefix("damage_"): f for f in (
    damage_truncated, damage_garbage, damage_shapes, damage_pickle_only, damage_not_a_directory, damage_missing)}
COMMANDS = ("train", "predict", "eval", "embed")


def cli_and_api(command, model, data, tmp_path):
    """(argv, API call) of `command` on `model`, each with an output that must not appear."""
    out, output = tmp_path / "out", tmp_path / "predictions.jsonl"
    if command == "train":
        return (["train", "--model", model, "--train", data[0], "--eval", data[1], "--out", out, *FAST],
                lambda: train(model, data[0], out, eval=data[1], log=io.StringIO(), **API_FAST))
    if command == "predict":
        return (["predict", "--model", model, "good film", "--output", output, "--device", "cpu",
                 "--precision", "fp32"],
                lambda: predict(model, ["good film"], device="cpu"))
    if command == "eval":
        return (["eval", "--model", model, "--data", data[1], "--device", "cpu", "--precision", "fp32"],
                lambda: evaluate(model, data[1], device="cpu"))
    return (["embed", "--model", model, "good film", "--output", tmp_path / "e.npy"],
            lambda: embed(model, ["good film"], device="cpu"))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_model_directory(damage, command, tiny_dir, data, tmp_path, capsys):
    model = copy_tiny(tiny_dir, tmp_path / "model")
    fragments = DAMAGE[damage](model)
    before = snapshot(tmp_path)
    argv, call = cli_and_api(command, model, data, tmp_path)
    message = refused(capsys, argv)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert api_refused(call) == message
    assert snapshot(tmp_path) == before  # no --out, no --output, the model directory untouched


def test_allow_pickle_loads_through_torch_load_weights_only(tiny_dir, data, tmp_path, capsys, monkeypatch):
    model = copy_tiny(tiny_dir, tmp_path / "model")
    damage_pickle_only(model)
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, "load", recording_load)

    want = predict(tiny_dir, ["good film"], device="cpu", precision="fp32")
    for command in COMMANDS:
        argv, _ = cli_and_api(command, model, data, tmp_path)
        assert main([str(a) for a in argv] + ["--allow-pickle"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert calls == [True] * 4
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()  # what train writes is safetensors
    (got,) = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert got["probs"] == pytest.approx(want[0]["probs"], abs=1e-6)

    # The Python API takes the same opt-in.
    assert predict(model, ["good film"], device="cpu", precision="fp32", allow_pickle=True)[0]["probs"] == \
        pytest.approx(want[0]["probs"], abs=1e-6)
    assert set(evaluate(model, data[1], device="cpu", allow_pickle=True)) >= {"loss", "accuracy"}
    assert embed(model, ["good film"], device="cpu", allow_pickle=True).shape == (1, 32)
    train(model, data[0], tmp_path / "out2", max_steps=1, allow_pickle=True, log=io.StringIO(), **API_FAST)
    assert calls == [True] * 8


# (file name, content, commands that read it, fragments the message must hold beside the file's path)
BAD_DATA = {
    "csv-field-count": ("x.csv", b"text,label\ngood,positive\nnot, quoted,negative\n", ("train", "eval", "predict"),
                        ["x.csv, line 3: 3 fields, but the header has 2", "double quotes"]),
    "csv-open-quote": ("x.csv", b'text,label\ngood,positive\n"never closed,negative\nbad,negative\n',
                       ("train", "eval", "predict"), ["x.csv, line 3: 1 fields, but the header has 2"]),
    "tsv-field-count": ("x.tsv", b"text\tlabel\ngood\tpositive\nbad\tnegative\textra\n", ("train", "eval", "predict"),
                        ["x.tsv, line 3: 3 fields, but the header has 2"]),
    "jsonl-syntax": ("x.jsonl", b'{"text": "good", "label": "positive"}\n{"text": "a", "label": }\n',
                     ("train", "eval", "predict"), ["x.jsonl, line 2, column 24: invalid JSON (Expecting value)"]),
    "jsonl-not-object": ("x.jsonl", b'{"text": "good", "label": "positive"}\n["bad", "negative"]\n',
                         ("train", "eval", "predict"), ["x.jsonl, line 2: a JSON list, expected an object"]),
    "jsonl-text-not-string": ("x.jsonl", b'{"text": 5, "label": "positive"}\n', ("train", "eval", "predict"),
                              ["x.jsonl, line 1: column 'text' holds 5; expected a string"]),
    "no-text-column": ("x.csv", b"review,label\ngood,positive\n", ("train", "eval", "predict"),
                       ["no column 'text' in the header", "'review', 'label'"]),
    "no-label-column": ("x.jsonl", b'{"text": "good", "label": "positive"}\n{"text": "bad"}\n', ("train", "eval"),
                        ["no column 'label' in the object on line 2", "'text'"]),
    "not-utf8": ("x.csv", b"text,label\nok,positive\ncaf\xe9,negative\n", ("train", "eval", "predict"),
                 ["byte 26 (line 3) is b'\\xe9'", "not valid UTF-8"]),
    # predict answers every record, an empty one with a skipped record (test_empty_texts_are_skipped...)
    "only-empty-texts": ("x.csv", b'text,label\n"  ",positive\n,negative\n', ("train", "eval"),
                         ["no examples (all 2 rows have empty text)"]),
    "single-class": ("x.csv", b"text,label\ngood,positive\ngreat,positive\n", ("train",),
                     ["1 distinct label(s) (positive)", "at least 2 classes"]),
    "missing-label": ("x.csv", b"text,label\ngood,positive\nbad,\nfine,neutral\n", ("train", "eval"),
                      ["x.csv, line 3: the label is missing"]),
    "unsupported-type": ("x.xlsx", b"PK\x03\x04", ("train", "eval", "predict"),
                         ["unsupported file type '.xlsx'", ".csv, .tsv, .jsonl"]),
}


@pytest.mark.parametrize("name, command", [(n, c) for n, case in BAD_DATA.items() for c in case[2]])
def test_bad_data_file(name, command, tiny_dir, data, tmp_path, capsys):
    file_name, content, _, fragments = BAD_DATA[name]
    f = tmp_path / file_name
    f.write_bytes(content)
    out, output = tmp_path / "out", tmp_path / "predictions.jsonl"
    argv, call = {
        "train": (["train", "--model", tiny_dir, "--train", f, "--out", out, *FAST],
                  lambda: train(tiny_dir, f, out, log=io.StringIO(), **API_FAST)),
        "eval": (["eval", "--model", tiny_dir, "--data", f, "--device", "cpu"],
                 lambda: evaluate(tiny_dir, f, device="cpu")),
        # predict reads its --input through the CLI only; the library takes a list of texts
        "predict": (["predict", "--model", tiny_dir, "--input", f, "--output", output, "--device", "cpu"], None),
    }[command]
    before = snapshot(tmp_path)
    message = refused(capsys, argv)
    assert str(f) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if call is not None:
        assert api_refused(call) == message
    assert snapshot(tmp_path) == before


def test_dev_set_errors_refuse_the_run(tiny_dir, data, tmp_path, capsys):
    """The dev set is read before anything is written: its errors leave no --out either."""
    dev = tmp_path / "dev.csv"
    out = tmp_path / "out"
    for content, fragments in ((b"text,label\ngood,positive,extra\n", [f"{dev}, line 2: 3 fields"]),):
        dev.write_bytes(content)
        message = refused(capsys, ["train", "--model", tiny_dir, "--train", data[0], "--eval", dev, "--out", out,
                                   *FAST])
        for fragment in fragments:
            assert fragment in message
        assert api_refused(train, tiny_dir, data[0], out, eval=dev, log=io.StringIO(), **API_FAST) == message
        assert not out.exists()


def test_missing_and_unreadable_files(tiny_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    a_dir = tmp_path / "folder.csv"  # a directory where a file is expected
    a_dir.mkdir()
    for path, why in ((tmp_path / "absent.csv", "No such file or directory"), (a_dir, "Is a directory")):
        message = refused(capsys, ["train", "--model", tiny_dir, "--train", path, "--out", out, *FAST])
        assert message == f"Cannot read {path}: {why}."
        message = refused(capsys, ["train", "--model", tiny_dir, "--train", data[0], "--eval", path, "--out", out,
                                   *FAST])
        assert message == f"Cannot read {path}: {why}."
        assert refused(capsys, ["eval", "--model", tiny_dir, "--data", path]) == f"Cannot read {path}: {why}."
    assert not out.exists()

    # config.json that is a directory, vocabulary that is a directory
    model = copy_tiny(tiny_dir, tmp_path / "model")
    (model / "config.json").unlink()
    (model / "config.json").mkdir()
    message = refused(capsys, ["predict", "--model", model, "good"])
    assert str(model / "config.json") in message and "no config.json" in message
    model2 = copy_tiny(tiny_dir, tmp_path / "model2")
    (model2 / "vocab.txt").unlink()
    (model2 / "vocab.txt").mkdir()
    message = refused(capsys, ["train", "--model", model2, "--train", data[0], "--out", out, *FAST])
    assert message == (f"{model2}: no tokenizer found (looked for tokenizer.json, then vocab.txt, then vocab.json + "
                       "merges.txt; a SentencePiece .model needs converting to tokenizer.json)")
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: file permissions do not stop root from reading")
def test_unreadable_files(tiny_dir, data, tmp_path, capsys):
    f = shutil.copy(data[0], tmp_path / "locked.csv")
    model = copy_tiny(tiny_dir, tmp_path / "model")
    os.chmod(f, 0)
    os.chmod(model / "config.json", 0)
    try:
        message = refused(capsys, ["train", "--model", tiny_dir, "--train", f, "--out", tmp_path / "out", *FAST])
        assert message == f"Cannot read {f}: Permission denied."
        message = refused(capsys, ["predict", "--model", model, "good"])
        assert message == f"{model / 'config.json'}: cannot be read (Permission denied)"
    finally:
        os.chmod(f, 0o644)
        os.chmod(model / "config.json", 0o644)
    assert not (tmp_path / "out").exists()


def test_empty_texts_are_skipped_and_counted_on_stderr(tiny_dir, tmp_path):
    f = tmp_path / "some-empty.csv"
    f.write_text('text,label\ngood film,positive\n"  ",negative\nbad plot,negative\n,neutral\nit was ok,neutral\n')
    runs = {
        "train": ["train", "--model", tiny_dir, "--train", f, "--eval", f, "--out", tmp_path / "out",
                  "--max-steps", "1", *FAST],
        "predict": ["predict", "--model", tiny_dir, "--input", f, "--device", "cpu"],
        "eval": ["eval", "--model", tiny_dir, "--data", f, "--device", "cpu"],
        "embed": ["embed", "--model", tiny_dir, "--input", f],
    }
    for command, argv in runs.items():
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert main([str(a) for a in argv]) == 0, stderr.getvalue()
        if command == "train":  # once for --train, once for --eval
            assert stderr.getvalue().count(f"{f}: skipped 2 example(s) with empty text") == 2
        else:
            assert f"{f}: skipped 2 row(s) with empty text" in stderr.getvalue(), command
        if command in ("predict", "embed"):  # one line per row: an empty one says it was skipped
            got = [json.loads(line) for line in stdout.getvalue().splitlines()]
            assert [r["text"] for r in got] == ["good film", "", "bad plot", "", "it was ok"]
            assert [r.get("skipped") for r in got] == [None, "empty text", None, "empty text", None]
        if command == "eval":
            result = json.loads(stdout.getvalue())
            assert result["examples"] == 3 and result["skipped_empty"] == 2


BAD_OPTIONS = [
    (["train", "--batch-size", "0"], "--batch-size 0: expected a positive whole number"),
    (["train", "--batch-size", "-4"], "--batch-size -4: expected a positive whole number"),
    (["train", "--lr", "0"], "--lr 0.0: expected a positive number"),
    (["train", "--lr", "-0.001"], "--lr -0.001: expected a positive number"),
    (["train", "--epochs", "0"], "--epochs 0: expected a positive whole number"),
    (["train", "--epochs", "-2"], "--epochs -2: expected a positive whole number"),
    (["train", "--max-steps", "0"], "--max-steps 0: expected a positive whole number"),
    (["train", "--max-length", "100"], "--max-length 100: expected 2 to 64 tokens ([CLS] and [SEP] included; the model has 64 positions"),
    (["train", "--max-length", "1"], "--max-length 1: expected at least 2 tokens"),
    (["train", "--max-length", "2", "--text-pair-column", "text"], "--max-length 2: expected at least 3 tokens"),
    (["predict", "--batch-size", "0"], "--batch-size 0: expected a positive whole number"),
    (["predict", "--max-length", "100"], "--max-length 100: expected 2 to 64 tokens"),
    (["predict", "--max-length", "1"], "--max-length 1: expected 2 to 64 tokens"),
    (["eval", "--batch-size", "-1"], "--batch-size -1: expected a positive whole number"),
    (["eval", "--max-length", "65"], "--max-length 65: expected 2 to 64 tokens"),
    (["embed", "--batch-size", "0"], "--batch-size 0: expected a positive whole number"),
    (["embed", "--max-length", "1"], "--max-length 1: expected 2 to 64 tokens"),
]


@pytest.mark.parametrize("argv, expected", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_sizes_and_rates(argv, expected, tiny_dir, data, tmp_path, capsys):
    command, options = argv[0], argv[1:]
    out = tmp_path / "out"
    where = {"train": ["--train", data[0], "--out", out, "--precision", "fp32", "--device", "cpu"],
             "predict": ["good " * 80, "--device", "cpu"],  # longer than 64 tokens: would index past the positions
             "eval": ["--data", data[1], "--device", "cpu"], "embed": ["good"]}[command]
    message = refused(capsys, [command, "--model", tiny_dir, *where, *options])
    assert message.startswith(expected), message
    assert not out.exists()

    # the same through the API
    values = {k.removeprefix("--").replace("-", "_"): v for k, v in zip(options[::2], options[1::2])}
    values = {k: v if k == "text_pair_column" else (float(v) if k == "lr" else int(v)) for k, v in values.items()}
    call = {"train": lambda: train(tiny_dir, data[0], out, log=io.StringIO(), precision="fp32", device="cpu", **values),
            "predict": lambda: predict(tiny_dir, ["good " * 80], device="cpu", **values),
            "eval": lambda: evaluate(tiny_dir, data[1], device="cpu", **values),
            "embed": lambda: embed(tiny_dir, ["good"], **values)}[command]
    assert api_refused(call) == message
    assert not out.exists()


def set_format_version(file, version):
    with safe_open(str(file), "pt") as f:
        meta = json.loads(f.metadata()["minift"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["format_version"] = version
    save_file(tensors, str(file), metadata={"minift": json.dumps(meta)})


def test_out_holding_another_run_is_left_unchanged(tiny_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--model", tiny_dir, "--train", data[0], "--out", out, "--max-steps", "2", "--batch-size", "4",
            *FAST]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(a) for a in argv]) == 0
    before = snapshot(out)
    assert {"run.json", "metrics.jsonl", "checkpoint.safetensors", "model.safetensors"} <= set(before)

    other = [*argv[:-len(FAST)], "--lr", "1e-4", *FAST]
    message = refused(capsys, other)
    assert message.startswith(f"--out {out}: the directory is not empty (it may hold another run)")
    assert "--resume" in message and "--overwrite" in message
    assert snapshot(out) == before

    message = refused(capsys, [*other, "--resume"])
    assert message.startswith(f"--resume: these settings differ from the run in {out} (was, now): "
                              "{'lr': (5e-05, 0.0001)}")
    assert snapshot(out) == before

    set_format_version(out / "checkpoint.safetensors", 99)
    before = snapshot(out)
    message = refused(capsys, [*argv, "--resume"])
    assert message == (f"{out / 'checkpoint.safetensors'}: checkpoint format version 99; "
                       "this minift reads version 1")
    assert snapshot(out) == before

    (out / "run.json").unlink()
    before = snapshot(out)
    message = refused(capsys, [*argv, "--resume"])
    assert message.startswith(f"--resume: {out / 'run.json'}, the record of the run's settings, cannot be read")
    assert snapshot(out) == before

    (out / "checkpoint.safetensors").unlink()
    before = snapshot(out)
    assert refused(capsys, [*argv, "--resume"]) == f"--resume: {out} holds no checkpoint.safetensors to resume from"
    assert snapshot(out) == before

    f = tmp_path / "a-file"
    f.write_text("not a directory")
    assert refused(capsys, [*argv[:5], "--out", f, *argv[7:]]) == f"--out {f}: exists and is not a directory"
    assert f.read_text() == "not a directory"


# ---- 2. interruption and crashes ----

def fresh_state(tiny_dir):
    net = BertClassifier.from_pretrained(tiny_dir)
    opt = make_optimizer(net, 1e-3, 0.01)
    return net, opt, make_schedule(opt, 0, 1)


def wait_for_line(proc, prefix, timeout=120):
    """Read proc's stderr until a line starts with prefix; kill proc if that takes longer than timeout."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(prefix):
                return seen
    finally:
        timer.cancel()
    raise AssertionError(f"no line starting with {prefix!r} before exit:\n{''.join(seen)}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_resume_finishes(sig, tiny_dir, tmp_path):
    """400 steps of 4 examples take ~1 s on one core; the signal comes after the first progress line
    (printed after step 1), so the stop lands early and --resume does the rest (once: resuming does not
    depend on which signal stopped the run)."""
    f = write_csv(tmp_path / "train.csv", 200)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "minift", "train", "--model", str(tiny_dir), "--train", str(f), "--out", str(out),
            "--max-steps", "400", "--batch-size", "4", "--lr", "1e-3", *FAST]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=SUBPROCESS_ENV)
    with proc:
        wait_for_line(proc, "step ")
        proc.send_signal(sig)
        # read on through the same file objects: communicate() would skip what they have buffered
        timer = threading.Timer(120, proc.kill)
        timer.start()
        stderr, stdout = proc.stderr.read(), proc.stdout.read()
        timer.cancel()
        proc.wait()
    assert proc.returncode == 0, stderr
    stopped = json.loads(stdout.splitlines()[-1])["stopped_at"]
    assert 1 <= stopped < 400
    assert f"minift: stopped by signal at step {stopped}; checkpoint saved. Continue with --resume." in stderr
    assert "Traceback" not in stderr
    progress = load_train_state(out / "checkpoint.safetensors", *fresh_state(tiny_dir), None)
    assert progress["step"] == stopped
    if sig == signal.SIGINT:
        return

    r = subprocess.run([*argv, "--resume"], capture_output=True, text=True, cwd=ROOT, env=SUBPROCESS_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.splitlines()[-1])
    assert row["step"] == 400 and row == json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert load_train_state(out / "checkpoint.safetensors", *fresh_state(tiny_dir), None)["step"] == 400
    BertClassifier.from_pretrained(out)


# The child saves two different states by turns to the same paths, forever; it prints a line before
# each pair of saves. A model of ~4M parameters (16 MB a file) makes each save last long enough
# (tens of milliseconds) for the kills to land inside the writes.
SAVER = r"""
import sys, torch
from minift.checkpoint import save_train_state
from minift.config import BertConfig
from minift.tasks.classify import BertClassifier
from minift.train_step import make_optimizer, make_schedule
torch.set_num_threads(1)
root = sys.argv[1]
cfg = BertConfig(vocab_size=30000, hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=256, max_position_embeddings=64, id2label={0: "a", 1: "b"})
states = []
for k in range(2):
    torch.manual_seed(k)
    net = BertClassifier(cfg)
    opt = make_optimizer(net, 1e-3, 0.01)
    states.append((net, opt, make_schedule(opt, 0, 10)))
for k, (net, opt, sched) in enumerate(states):  # after both inits: every save then holds the same RNG state
    if sys.argv[2] == "first":
        save_train_state(f"{root}/ref{k}.safetensors", net, opt, sched, None, {"step": k})
        net.save_pretrained(f"{root}/ref{k}")
i = 0
while True:
    print(i, flush=True)
    net, opt, sched = states[i % 2]
    save_train_state(f"{root}/checkpoint.safetensors", net, opt, sched, None, {"step": i % 2})
    net.save_pretrained(f"{root}/model")
    i += 1
"""


def test_kill_9_during_save_never_leaves_a_torn_file(tmp_path):
    rng = random.Random(0)
    refs = None
    mid_write, seen = 0, set()
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path), "first" if attempt == 0 else "again"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=SUBPROCESS_ENV)
        with proc:
            timer = threading.Timer(120, proc.kill)
            timer.start()
            try:
                for line in proc.stdout:  # both paths hold a complete file from the second pair on
                    if int(line) >= 2 + rng.randrange(3):
                        break
                time.sleep(rng.uniform(0, 0.05))
            finally:
                timer.cancel()
            proc.kill()
            proc.wait()
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        if refs is None:
            refs = [(tmp_path / f"ref{k}.safetensors").read_bytes() for k in range(2)]
            ref_models = [snapshot(tmp_path / f"ref{k}") for k in range(2)]
        # Each path holds one of the two states, whole: the rename is the only step readers can see.
        ckpt = (tmp_path / "checkpoint.safetensors").read_bytes()
        assert ckpt in refs
        k = refs.index(ckpt)
        net = BertClassifier.from_pretrained(tmp_path / "ref0")
        opt = make_optimizer(net, 1e-3, 0.01)
        assert load_train_state(tmp_path / "checkpoint.safetensors", net, opt, make_schedule(opt, 0, 10), None) == \
            {"step": k}
        model = {name: data for name, data in snapshot(tmp_path / "model").items() if ".tmp" not in name}
        assert model in ref_models
        BertClassifier.from_pretrained(tmp_path / "model")
        # A kill mid-write leaves a temporary file, never a partial file under the real name: atomic_write's
        # (named by the dead process's id), or safetensors' own (.tmpXXXXXX, renamed onto atomic_write's).
        leftovers = {p.relative_to(tmp_path) for p in [*tmp_path.iterdir(), *(tmp_path / "model").iterdir()]
                     if ".tmp" in p.name}
        for p in leftovers:
            assert re.fullmatch(r"\.((checkpoint|model)\.safetensors|config\.json)\.tmp\d+|\.tmp\w{6}", p.name), p
        mid_write += bool(leftovers - seen)
        seen |= leftovers
    assert mid_write >= 1, "no kill landed inside a write; the test did not exercise what it is for"
    # The next save of a file clears the temporary files a killed save of it left.
    net = BertClassifier.from_pretrained(tmp_path / "ref0")
    opt = make_optimizer(net, 1e-3, 0.01)
    save_train_state(tmp_path / "checkpoint.safetensors", net, opt, make_schedule(opt, 0, 10), None, {"step": 0})
    net.save_pretrained(tmp_path / "model")
    left = [p.name for p in [*tmp_path.iterdir(), *(tmp_path / "model").iterdir()] if re.search(r"\.tmp\d+$", p.name)]
    assert not left, left


def test_checkpoint_format_version_is_checked(tiny_dir, tmp_path):
    f = tmp_path / "checkpoint.safetensors"
    save_train_state(f, *fresh_state(tiny_dir), None, {"step": 3})
    assert load_train_state(f, *fresh_state(tiny_dir), None) == {"step": 3}
    for version in (2, 0, None):
        set_format_version(f, version)
        message = api_refused(load_train_state, f, *fresh_state(tiny_dir), None)
        assert message == f"{f}: checkpoint format version {version!r}; this minift reads version 1"
    save_file({"x": torch.zeros(1)}, str(f))  # a safetensors file, but not a minift checkpoint
    message = api_refused(load_train_state, f, *fresh_state(tiny_dir), None)
    assert message.startswith(f"{f}: not a readable minift checkpoint")


# ---- 3. numerical faults ----

def inject_non_finite(monkeypatch, bad_steps, kind):
    """On the given (1-based) steps make the loss NaN (kind 'loss') or one gradient inf (kind 'grad').

    Also records, per step, whether train_step applied it, the parameters after it, and the learning rate."""
    real_make, real_step = minift.train_loop.make_loss_fn, minift.train_loop.train_step
    calls, record, models = [], [], []

    def make_loss_fn(model, *args, **kwargs):
        models.append(model)
        inner = real_make(model, *args, **kwargs)
        word = model.bert.embeddings.word.weight
        word.register_hook(lambda g: torch.full_like(g, math.inf) if kind == "grad" and len(calls) in bad_steps else g)

        def loss_fn(**batch):
            calls.append(1)  # one call per step: grad_accum is 1
            loss = inner(**batch)
            return loss * math.nan if kind == "loss" and len(calls) in bad_steps else loss
        return loss_fn

    def train_step(loss_fn, opt, sched, *args):
        lr = sched.get_last_lr()
        result = real_step(loss_fn, opt, sched, *args)
        params = [p.detach().clone() for p in models[0].parameters()]
        record.append({"applied": result[2], "params": params, "lr_before": lr, "lr_after": sched.get_last_lr()})
        return result

    monkeypatch.setattr(minift.train_loop, "make_loss_fn", make_loss_fn)
    monkeypatch.setattr(minift.train_loop, "train_step", train_step)
    return record


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_one_non_finite_step_is_skipped(kind, tiny_dir, data, tmp_path, monkeypatch):
    record = inject_non_finite(monkeypatch, {3}, kind)
    row = train(tiny_dir, data[0], tmp_path / "out", max_steps=6, batch_size=4, lr=1e-3, log=io.StringIO(), **API_FAST)
    assert row["step"] == 6  # training went on
    assert [r["applied"] for r in record] == [True, True, False, True, True, True]
    assert same(record[2]["params"], record[1]["params"])  # the bad step changed no weight
    assert record[2]["lr_after"] == record[2]["lr_before"]  # nor the schedule
    for k in (1, 3, 4, 5):
        assert not same(record[k]["params"], record[k - 1]["params"])
    for name, t in load_file(tmp_path / "out" / "model.safetensors").items():
        assert torch.isfinite(t).all(), name


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_five_non_finite_steps_stop_with_the_last_good_model_on_disk(kind, tiny_dir, data, tmp_path, monkeypatch):
    """12 examples of 4: an epoch is 3 steps, each epoch end saves. Steps 5-9 fail: the stop comes at step 9;
    the last save (end of epoch 2, step 6) holds the weights of step 4, the last applied one."""
    out = tmp_path / "out"
    record = inject_non_finite(monkeypatch, set(range(5, 10)), kind)
    message = api_refused(train, tiny_dir, data[0], out, max_steps=20, batch_size=4, lr=1e-3, log=io.StringIO(),
                          **API_FAST)
    assert message.startswith("training stopped at step 9: the loss or gradients were not finite for 5 steps in a row")
    assert f"The last good model is in {out}." in message
    assert [r["applied"] for r in record] == [True] * 4 + [False] * 5
    good = record[3]["params"]

    net = BertClassifier.from_pretrained(out)
    assert same([p for p in net.parameters()], good)
    net, opt, sched = fresh_state(tiny_dir)
    assert load_train_state(out / "checkpoint.safetensors", net, opt, sched, None)["step"] == 6
    assert same([p for p in net.parameters()], good)
    assert all(torch.isfinite(v).all() for s in opt.state.values() for v in s.values())


# ---- 4. determinism ----

def test_same_seed_same_weights_other_seed_other_weights(tiny_dir, data, tmp_path):
    def run(name, seed):
        train(tiny_dir, data[0], tmp_path / name, max_steps=6, batch_size=4, lr=1e-3, seed=seed, log=io.StringIO(),
              **API_FAST)
        return load_file(tmp_path / name / "model.safetensors")
    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---- 6. safety: train writes inside --out only ----

def test_train_writes_nothing_outside_out(tiny_dir, tmp_path):
    model = copy_tiny(tiny_dir, tmp_path / "model")
    (tmp_path / "data").mkdir()
    f = write_csv(tmp_path / "data" / "train.csv", 12)
    dev = write_csv(tmp_path / "data" / "dev.csv", 6, seed=1)
    for name in ("home", "tmp", "cwd", "runs"):
        (tmp_path / name).mkdir()
    before = snapshot(tmp_path)
    out = tmp_path / "runs" / "out"
    env = {**SUBPROCESS_ENV, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"),
           "XDG_CACHE_HOME": str(tmp_path / "home" / ".cache"), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "minift", "train", "--model", str(model), "--train", str(f),
                        "--eval", str(dev), "--out", str(out), "--max-steps", "4", "--batch-size", "4", *FAST],
                       capture_output=True, text=True, cwd=tmp_path / "cwd", env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    after = snapshot(tmp_path)
    # torch's optimizer imports torch._dynamo, whose import creates an empty inductor cache directory
    # in $TMPDIR; that is torch's own, and the one thing allowed outside --out.
    inductor = [p for p in after if p.startswith(os.path.join("tmp", "torchinductor_"))]
    assert all(after[p] is None and p.count(os.sep) == 1 for p in inductor), inductor
    written = {p for p in after if p.startswith(os.path.join("runs", "out"))} | set(inductor)
    assert {p: v for p, v in after.items() if p not in written} == before  # model, data, HOME, TMPDIR, cwd as they were
    assert sorted(os.path.relpath(p, os.path.join("runs", "out")) for p in written
                  if p.startswith(os.path.join("runs", "out", ""))) == \
        sorted(["checkpoint.safetensors", "config.json", "metrics.jsonl", "model.safetensors", "run.json",
                "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"])
