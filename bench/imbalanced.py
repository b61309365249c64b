"""--class-weights on an imbalanced set: the tweets' three classes subsampled 10:1, with and without weights.

    python -m minift fetch data tweets --dir /tmp/tweets
    python bench/imbalanced.py --data /tmp/tweets/tweets [--seeds 0 1 2] [--epochs 3]

Training: the first 1,000 negative, 100 neutral and 100 positive tweets of train.csv (in file order); dev:
the same 10:1:1 from dev.csv (300, 30, 30), which keeps the best epoch by --metric macro_f1. Test: the
whole test.csv (its own, milder imbalance), where every class weighs alike in macro-F1. all-MiniLM-L6-v2,
full fine-tuning, batch 32, max length 64, each setting with every seed. Prints a Markdown table: test
macro-F1, accuracy and the F1 of each class, mean and min-max over the seeds.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import csv
import io
import statistics
import tempfile
from pathlib import Path

from minift.predict import predict
from minift.train_loop import train

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "weights" / "all-MiniLM-L6-v2"
KEEP = {"negative": 10, "neutral": 1, "positive": 1}  # the 10:1:1 ratio


def read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def subsample(src: Path, dst: Path, per_unit: int) -> Path:
    """The first KEEP[label] * per_unit rows of each label of src, in file order."""
    seen, out = dict.fromkeys(KEEP, 0), []
    for r in read(src):
        if seen[r["label"]] < KEEP[r["label"]] * per_unit:
            seen[r["label"]] += 1
            out.append(r)
    with open(dst, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"], extrasaction="ignore")
        w.writeheader()
        w.writerows(out)
    return dst


def scores(model: Path, test: Path) -> dict[str, float]:
    """Test macro-F1, accuracy and each class's F1 (every class occurs in the test set)."""
    rows = read(test)
    pred = [p["label"] for p in predict(model, [r["text"] for r in rows], max_length=64)]
    f1 = {}
    for c in KEEP:
        tp = sum(p == c == r["label"] for p, r in zip(pred, rows))
        f1[c] = 2 * tp / (pred.count(c) + sum(r["label"] == c for r in rows))
    acc = sum(p == r["label"] for p, r in zip(pred, rows)) / len(rows)
    return {"macro_f1": statistics.mean(f1.values()), "accuracy": acc, **f1}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the tweets directory (train.csv, dev.csv, test.csv)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    tr = subsample(args.data / "train.csv", tmp / "train.csv", 100)
    dev = subsample(args.data / "dev.csv", tmp / "dev.csv", 30)
    results = {}
    for seed in args.seeds:
        for weights in (None, "balanced"):
            out = tmp / f"{weights}-{seed}"
            train(MODEL, tr, out, eval=dev, class_weights=weights, metric="macro_f1", epochs=args.epochs,
                  batch_size=32, max_length=64, seed=seed, log=io.StringIO())
            results.setdefault(weights, []).append(scores(out, args.data / "test.csv"))
            print(f"{weights or 'none'} seed {seed}: {results[weights][-1]}", flush=True)
    keys = ["macro_f1", "accuracy", *KEEP]
    print("\n| --class-weights | " + " | ".join(k if k in ("macro_f1", "accuracy") else f"F1 {k}" for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for weights, rows in results.items():
        cells = [f"{statistics.mean(r[k] for r in rows):.3f} ({min(r[k] for r in rows):.3f}-"
                 f"{max(r[k] for r in rows):.3f})" for k in keys]
        print(f"| {weights or 'none'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
