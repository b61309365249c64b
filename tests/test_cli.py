"""The command line: train -> predict -> eval, embed, and how errors are reported.

Commands run in-process through minift.cli.main (fast); two smoke tests run `python -m minift`
in a subprocess. Outputs are compared with the library functions they wrap (probabilities and
embeddings within 1e-6: the same computation, only serialised through JSON or .npy).
"""
import contextlib
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from minift.cli import main
from minift.predict import embed, evaluate, predict

LABELS = ("negative", "neutral", "positive")
TEXTS = ["a good film", "the worst plot", "it was fine", "boring and sad", "really funny story"]
FAST = ["--precision", "fp32", "--device", "cpu"]


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rows = [(t, LABELS[i % 3]) for i, t in enumerate(TEXTS * 4)]
    return write_csv(d / "train.csv", rows), write_csv(d / "dev.csv", rows[:9])


@pytest.fixture(scope="module")
def trained(tiny_dir, data, tmp_path_factory):
    """`minift train` run once for the module: (out dir, exit code, stdout, stderr)."""
    out = tmp_path_factory.mktemp("run") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["train", "--model", str(tiny_dir), "--train", str(data[0]), "--eval", str(data[1]), "--out", str(out),
                   "--max-steps", "6", "--batch-size", "4", "--lr", "1e-3", "--max-length", "24", "--compile", "off", *FAST])
    return out, rc, stdout.getvalue(), stderr.getvalue()


def lines(text):
    return [json.loads(line) for line in text.splitlines()]


def test_python_m_minift_help():
    r = subprocess.run([sys.executable, "-m", "minift", "--help"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 0, r.stderr
    for command in ("fetch", "embed", "train", "predict", "eval", "plot"):
        assert command in r.stdout


def test_python_m_minift_error_exit(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minift", "predict", "--model", str(tmp_path / "nope"), "good film"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"minift predict: error: {tmp_path / 'nope'}: no such model directory"]
    assert r.stdout == ""


def test_train_prints_the_final_row(trained):
    out, rc, stdout, stderr = trained
    assert rc == 0, stderr
    (row,) = lines(stdout)
    assert row["step"] == 6 and set(row) >= {"train_loss", "dev_loss", "dev_accuracy", "dev_macro_f1", "kept"}
    assert row == lines((out / "metrics.jsonl").read_text())[-1]
    assert "step 6/6" in stderr and "eval step 6" in stderr  # progress goes to stderr
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "run.json"):
        assert (out / name).exists(), name


def test_predict_texts(trained, capsys):
    out = trained[0]
    assert main(["predict", "--model", str(out), *TEXTS[:3], *FAST]) == 0
    got = lines(capsys.readouterr().out)
    want = predict(out, TEXTS[:3], precision="fp32", device="cpu")
    assert [r["text"] for r in got] == TEXTS[:3]
    for g, w in zip(got, want):
        assert list(g) == ["label", "text", "probs"]  # the answer first, as a person reads it
        assert g["label"] == w["label"] and g["label"] in LABELS
        assert set(g["probs"]) == set(LABELS) and sum(g["probs"].values()) == pytest.approx(1, abs=1e-6)
        assert g["probs"] == pytest.approx(w["probs"], abs=1e-6)


def test_numeric_labels_still_work(tiny_dir, tmp_path, capsys):
    """Files written before labels had names (polarity's -1 / 1) train and predict as before: the names
    are whatever the file holds, in numeric order."""
    f = write_csv(tmp_path / "train.csv", [(t, ("-1", "1")[i % 2]) for i, t in enumerate(TEXTS * 2)])
    out = tmp_path / "out"
    assert main(["train", "--model", str(tiny_dir), "--train", str(f), "--out", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--compile", "off", *FAST]) == 0
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "-1", "1": "1"}
    capsys.readouterr()
    assert main(["predict", "--model", str(out), TEXTS[0], *FAST]) == 0
    (got,) = lines(capsys.readouterr().out)
    assert list(got) == ["label", "text", "probs"] and got["label"] in ("-1", "1") and set(got["probs"]) == {"-1", "1"}


def test_predict_from_files_to_jsonl(trained, tmp_path, capsys):
    out = trained[0]
    txt = tmp_path / "in.txt"
    txt.write_text("a good film\n\n  \nthe worst plot\nit was fine\n")  # blank lines get a skipped record
    src = write_csv(tmp_path / "in.csv", [("x", "a good film"), ("y", "the worst plot"), ("z", "it was fine")],
                    header=("id", "review"))
    want = predict(out, TEXTS[:3], precision="fp32", device="cpu")
    skipped = [{"text": "", "skipped": "empty text"}, {"text": "  ", "skipped": "empty text"}]
    for args, n in ((["--input", str(txt)], 5), (["--input", str(src), "--text-column", "review"], 3)):
        dest = tmp_path / "pred.jsonl"
        dest.unlink(missing_ok=True)
        assert main(["predict", "--model", str(out), *args, "--output", str(dest), *FAST]) == 0
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"wrote {n} lines to {dest}" in captured.err
        got = lines(dest.read_text())
        if n == 5:  # line N answers line N
            assert got[1:3] == skipped
            got = got[:1] + got[3:]
        assert [r["text"] for r in got] == TEXTS[:3]
        assert [r["label"] for r in got] == [r["label"] for r in want]


def test_eval_prints_json_metrics(trained, data, capsys):
    out = trained[0]
    assert main(["eval", "--model", str(out), "--data", str(data[1]), *FAST]) == 0
    (got,) = lines(capsys.readouterr().out)
    want = evaluate(out, data[1], precision="fp32", device="cpu")
    assert set(got) == {"loss", "accuracy", "macro_f1", "examples", "skipped_empty"}
    assert got["examples"] == 9
    assert got == pytest.approx(want, abs=1e-6)


def test_embed_npy_and_jsonl(tiny_dir, tmp_path, capsys):
    npy = tmp_path / "e.npy"
    assert main(["embed", "--model", str(tiny_dir), *TEXTS, "--output", str(npy)]) == 0
    assert "wrote (5, 32) float32" in capsys.readouterr().err
    vectors = np.load(npy)
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    want = embed(tiny_dir, TEXTS, device="cpu").numpy()
    np.testing.assert_allclose(vectors, want, rtol=0, atol=1e-6)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3  # different texts, different vectors

    dest = tmp_path / "e.jsonl"
    assert main(["embed", "--model", str(tiny_dir), *TEXTS[:2], "--output", str(dest)]) == 0
    got = lines(dest.read_text())
    assert [r["text"] for r in got] == TEXTS[:2]
    np.testing.assert_allclose(np.array([r["embedding"] for r in got]), want[:2], rtol=0, atol=1e-6)

    assert main(["embed", "--model", str(tiny_dir), TEXTS[0]]) == 0  # no --output: JSON lines on stdout
    (row,) = lines(capsys.readouterr().out)
    assert len(row["embedding"]) == 32


ERRORS = [
    # (argv after the model directory is filled in, message fragment)
    (["predict", "--model", "{missing}", "good"], "no such model directory"),
    (["embed", "--model", "{missing}", "good"], "no such model directory"),
    (["eval", "--model", "{missing}", "--data", "{dev}"], "no such model directory"),
    (["predict", "--model", "{model}", "--input", "{tmp}/absent.txt"], "absent.txt: No such file or directory"),
    (["eval", "--model", "{model}", "--data", "{tmp}/absent.csv"], "Cannot read"),
    (["predict", "--model", "{model}", "--input", "{tmp}/texts.xml"], "unsupported file type '.xml'"),
    (["eval", "--model", "{model}", "--data", "{tmp}/dev.xlsx"], "unsupported file type '.xlsx'"),
    (["predict", "--model", "{model}"], "no texts"),
    (["predict", "--model", "{model}", "good", "--input", "{tmp}/in.txt"], "not both"),
    (["train", "--model", "{model}", "--train", "{dev}", "--out", "{tmp}/out", "--batch-size", "0"], "--batch-size 0"),
    (["train", "--model", "{model}", "--train", "{dev}", "--out", "{tmp}/out", "--max-length", "100"], "--max-length 100"),
    # another task's setting would change nothing: refused, never silently ignored
    (["train", "--model", "{model}", "--train", "{dev}", "--out", "{tmp}/out", "--doc-stride", "64"],
     "--doc-stride is a setting of --task qa, and this is --task classify"),
    (["train", "--task", "tag", "--model", "{model}", "--train", "{dev}", "--out", "{tmp}/out", "--whole-word-mask"],
     "--whole-word-mask is a setting of --task mlm, and this is --task tag"),
    (["predict", "--model", "{model}", "good", "--squad-v2"], "--squad-v2 is a setting of --task qa"),
    (["eval", "--model", "{model}", "--data", "{dev}", "--format", "conll"], "--format is a setting of --task tag"),
]


@pytest.mark.parametrize("argv, message", ERRORS, ids=[f"{a[0]}-{m}" for a, m in ERRORS])
def test_errors_exit_2_with_one_line(trained, data, tmp_path, capsys, argv, message):
    (tmp_path / "in.txt").write_text("good\n")
    fill = {"missing": str(tmp_path / "missing"), "model": str(trained[0]), "dev": str(data[1]), "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    assert main([*argv, *(FAST if argv[0] != "embed" else [])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"minift {argv[0]}: error: "), captured.err
    assert message in err[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()
