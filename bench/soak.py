"""Soak: resident memory and open files over a long fine-tuning run.

Runs minift's train() (evaluation, model and checkpoint saves, metrics lines included) on generated
texts of random lengths, and before every step samples the process's resident memory (/proc/self/statm)
and its open files (/proc/self/fd). After warm-up (the first 10% of steps) neither should grow: the
report compares the highest RSS of the last 10% of steps with the highest of the 10% after warm-up.

    python bench/soak.py [--model weights/all-MiniLM-L6-v2] [--steps 5000] [--batch-size 32]
                         [--max-length 128] [--precision auto] [--json FILE]

tests/test_soak.py runs it small (the tiny model, 2,000 steps). Linux only (/proc).
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import csv
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

import minift.train_loop
from minift.train_loop import train

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the movie film story plot good bad great awful love hate fun boring funny sad happy dull fine best "
         "worst not very really acting music script scene ending actors director slow moving").split()


def write_data(path: Path, n: int, max_words: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):  # lengths uniform in 1..max_words, so batch shapes keep changing
            w.writerow([" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))), ("neg", "pos")[i % 2]])
    return path


def soak(model, steps: int, batch_size: int, max_length: int, examples: int, precision: str, log) -> dict:
    """Train for `steps` steps, sampling RSS (bytes) and open files before each; returns the samples."""
    page, rss, fds = os.sysconf("SC_PAGE_SIZE"), [], []
    real = minift.train_loop.train_step

    def step(*args, **kwargs):
        with open("/proc/self/statm") as f:
            rss.append(int(f.read().split()[1]) * page)
        fds.append(len(os.listdir("/proc/self/fd")) - 1)  # less the one listdir holds
        return real(*args, **kwargs)

    minift.train_loop.train_step = step
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = write_data(Path(tmp) / "train.csv", examples, max_length - 2, seed=0)
            dev = write_data(Path(tmp) / "dev.csv", max(examples // 10, 2), max_length - 2, seed=1)
            t0 = time.time()
            train(model, data, Path(tmp) / "out", eval=dev, max_steps=steps, batch_size=batch_size,
                  max_length=max_length, precision=precision, log=log)
            wall = time.time() - t0
    finally:
        minift.train_loop.train_step = real
    return {"rss": rss, "fds": fds, "wall_s": wall}


def report(samples: dict) -> dict:
    rss, fds, n = samples["rss"], samples["fds"], len(samples["rss"])
    warm, tail = rss[n // 10: n // 5], rss[-(n // 10):]
    return {"steps": n, "rss_after_warmup_mb": max(warm) / 2**20, "rss_end_mb": max(tail) / 2**20,
            "rss_growth": max(tail) / max(warm) - 1, "fds_after_warmup": max(fds[n // 10: n // 5]),
            "fds_end": max(fds[-(n // 10):]), "fds_max": max(fds[n // 10:]), "wall_s": samples["wall_s"]}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "weights" / "all-MiniLM-L6-v2"))
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--examples", type=int, default=3200, help="training set size (an epoch, then a dev evaluation and saves)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", help="write the report and every sample here")
    args = ap.parse_args()
    samples = soak(args.model, args.steps, args.batch_size, args.max_length, args.examples, args.precision,
                   sys.stderr)
    result = {**report(samples), "model": args.model, "batch_size": args.batch_size, "max_length": args.max_length,
              "precision": args.precision, "cpu": cpu_name(), "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps({**result, **samples}) + "\n")


if __name__ == "__main__":
    main()
