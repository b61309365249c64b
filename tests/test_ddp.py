"""torchrun: two CPU processes (gloo) train the same model as one process with the same global batch.

Each rank takes half of every global batch of 8 and DistributedDataParallel averages the two ranks'
gradients, so the update is that of the whole batch: ((g1 + g2) / 2, each g the mean over 4) instead
of the mean over 8 at once. Only the rounding of those sums differs (~1e-7 relative in fp32), and
Adam's normalised steps keep that small: after 8 steps of lr 1e-3 the weights agree within 1e-5
(measured: 2e-8), while training moved them by ~3e-3. Dropout is off in the model copy, because each
rank draws its own dropout masks and the single process draws others.
"""
import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import ROOT
from minift.train_loop import train

WORDS = "the movie film story plot good bad great awful love hate fun boring funny sad happy dull fine".split()
LABELS = ("negative", "neutral", "positive")
OPTIONS = dict(max_steps=8, batch_size=8, lr=1e-3, precision="fp32", compile="off", device="cpu", max_length=24,
               grad_accum=1)


def write_csv(path, n, seed):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))), LABELS[i % 3]] for i in range(n))
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_weights(out):
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}


def no_dropout_model_and_data(tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model, ignore=shutil.ignore_patterns("reference.safetensors"))
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    # 32 examples of 8: 4 steps an epoch, every batch full, so each rank gets 4 examples of each
    return model, write_csv(tmp_path / "train.csv", 32, seed=0), write_csv(tmp_path / "dev.csv", 8, seed=1)


def train_command(model, data, dev, out):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    return ["-m", "minift", "train", "--model", str(model), "--train", str(data), "--eval", str(dev),
            "--out", str(out), *flags]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def torchrun_train(model, data, out, opts: dict) -> subprocess.CompletedProcess:
    """`minift train` of `data` into `out` as 2 processes under torchrun, with train()'s keyword options."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master-port={free_port()}", "-m", "minift", "train", "--model", str(model),
                           "--train", str(data), "--out", str(out), *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV)


def assert_same_weights(model, one, two):
    """The kept model (model.safetensors) and the final state (checkpoint) agree, and training moved them."""
    start = load_file(model / "model.safetensors")
    for a, b in ((load_file(one / "model.safetensors"), load_file(two / "model.safetensors")),
                 (checkpoint_weights(one), checkpoint_weights(two))):
        assert set(a) == set(b)
        for k in a:
            assert (a[k] - b[k]).abs().max().item() < 1e-5, k
    moved = max((load_file(one / "model.safetensors")[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # far above the tolerance: training really happened in both


def test_two_processes_match_one(tiny_dir, tmp_path):
    model, data, dev = no_dropout_model_and_data(tiny_dir, tmp_path)
    one = tmp_path / "one"
    one_row = train(model, data, one, eval=dev, log=io.StringIO(), **OPTIONS)

    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master-port={free_port()}", *train_command(model, data, dev, two)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr

    # One result line (rank 0's), one progress log.
    (line,) = [line for line in r.stdout.splitlines() if line.strip()]
    two_row = json.loads(line)
    assert r.stderr.count("minift: full fine-tuning") == 1 and "2 processes" in r.stderr
    assert r.stderr.count("eval step 8") == 1

    # Rank 0 alone wrote: the same files as the single process, one metrics row per evaluation.
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    rows = (two / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in rows] == [4, 8] and len(set(rows)) == len(rows)
    assert two_row == json.loads(rows[-1])
    assert two_row["step"] == one_row["step"] == 8
    for k in ("train_loss", "dev_loss", "dev_accuracy"):
        assert two_row[k] == pytest.approx(one_row[k], abs=1e-5), k

    assert_same_weights(model, one, two)


def test_two_nodes_by_c10d_rendezvous_match_one(tiny_dir, tmp_path):
    """Two launchers, as on two machines: `--nnodes 2`, one process each, meeting at a c10d rendezvous
    on 127.0.0.1 that assigns the node ranks; the same weights as one process with the global batch."""
    model, data, dev = no_dropout_model_and_data(tiny_dir, tmp_path)
    one = tmp_path / "one"
    one_row = train(model, data, one, eval=dev, log=io.StringIO(), **OPTIONS)

    two = tmp_path / "two"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", f"--rdzv-id={tmp_path.name}",
                *train_command(model, data, dev, two)]
    # Each launcher leads its own process group, so a kill reaches its worker too.
    nodes = [subprocess.Popen(launcher, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=ENV, start_new_session=True) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=120) for p in nodes]  # a hung rendezvous fails here
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    for p, (_, stderr) in zip(nodes, outputs):
        assert p.returncode == 0, stderr

    # Global rank 0 (on whichever node the rendezvous made node 0) printed the one result line.
    (line,) = [x for stdout, _ in outputs for x in stdout.splitlines() if x.strip()]
    two_row = json.loads(line)
    assert "2 processes" in "".join(stderr for _, stderr in outputs)
    assert two_row["step"] == one_row["step"] == 8
    assert two_row["train_loss"] == pytest.approx(one_row["train_loss"], abs=1e-5)
    assert_same_weights(model, one, two)


def test_sigterm_under_torchrun_stops_every_rank_after_the_same_step(tiny_dir, tmp_path):
    """torchrun forwards SIGTERM to its workers, which may see it in different steps; the ranks agree on
    the step to stop after (one all-reduce per step), rank 0 saves, all exit cleanly, and --resume finishes."""
    import time
    data = write_csv(tmp_path / "train.csv", 64, seed=0)
    out = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in dict(OPTIONS, max_steps=3000, lr=1e-4).items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master-port={free_port()}",
           "-m", "minift", "train", "--model", str(tiny_dir), "--train", str(data), "--out", str(out), *flags]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    deadline = time.time() + 120
    while not (out / "run.json").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    time.sleep(3)  # well into training
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert "stopped by signal at step" in stderr, stderr
    (line,) = [x for x in stdout.splitlines() if x.strip()]  # rank 0's line only
    stopped = json.loads(line)["stopped_at"]
    assert 0 < stopped < 3000
    assert "terminate called" not in stderr
    ckpt = checkpoint_weights(out)
    assert ckpt, "rank 0 saved the checkpoint"
