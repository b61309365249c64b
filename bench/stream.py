"""Streaming prediction: peak memory and throughput of `minift predict|embed --input --output` as the
input grows. Writes polarity-like inputs (sentences drawn at random from data/polarity/train.csv, one
per line, 1 in 50 empty) of each size, runs the command in a fresh process on each, and reports its
peak resident memory (the kernel's ru_maxrss) and lines per second.

    python bench/stream.py [--model weights/all-MiniLM-L6-v2] [--command predict|embed]
                           [--lines 10000 1000000] [--out bench/results]

Peak RSS should not depend on the number of lines.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_input(path: Path, n: int, sentences: list[str]):
    rng = random.Random(n)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(("" if i % 50 == 49 else rng.choice(sentences)) + "\n")


def run(argv: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes, stderr) of a child process."""
    t0 = time.time()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err}")
    return time.time() - t0, usage.ru_maxrss * 1024, err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "weights" / "all-MiniLM-L6-v2"))
    ap.add_argument("--command", default="predict", choices=["predict", "embed"])
    ap.add_argument("--lines", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(ROOT / "data" / "polarity" / "train.csv", newline="", encoding="utf-8") as f:
        sentences = [row[0] for row in list(csv.reader(f))[1:]]
    rows = []
    for n in args.lines:
        src, dst = out / f"stream-{n}.txt", out / f"stream-{n}.jsonl"
        write_input(src, n, sentences)
        dst.unlink(missing_ok=True)
        wall, peak, _ = run([sys.executable, "-m", "minift", args.command, "--model", args.model, "--input", str(src),
                             "--output", str(dst)])
        lines = sum(1 for _ in open(dst, encoding="utf-8"))
        assert lines == n, (lines, n)
        rows.append({"lines": n, "peak_rss_mb": round(peak / 2**20, 1), "wall_s": round(wall, 1),
                     "lines_per_s": round(n / wall, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)
        src.unlink()
        dst.unlink()
    result = {"model": args.model, "command": args.command, "cpu": cpu_name(), "rows": rows}
    (out / f"stream-{args.command}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| lines | peak RSS MB | wall s | lines/s |  ({args.command}, {Path(args.model).name}, {result['cpu']})")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['lines']:,} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} | {r['lines_per_s']:.0f} |")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return "unknown CPU"


if __name__ == "__main__":
    main()
