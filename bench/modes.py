"""Full fine-tuning versus training less of the network, measured.

Fine-tunes all-MiniLM-L6-v2 on the polarity set in modes head, top-2, full and lora with the
first 200, 800 and 3,200 training examples (3 epochs, batch 32, each mode's default learning
rate, seed 0), keeps the best epoch by dev accuracy, and reports test accuracy, dev accuracy
after the first epoch, wall time and trainable parameters.

    python bench/modes.py [--sizes 200 800 3200] [--modes head top-2 full lora] [--epochs 3]

Writes bench/results/modes.json, prints a Markdown table and draws it (needs matplotlib, the plot extra):
modes.png (test accuracy and wall time against training-set size, a line per mode) and modes-curves.png
(`minift plot` of every mode's run on the largest size, overlaid).
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import torch

from minift.model import count_params
from minift.tasks.classify import BertClassifier
from minift.modes import apply_mode
from minift.plot import plot
from minift.predict import evaluate
from minift.train_loop import DEFAULT_LR, train

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = ROOT / "weights" / "all-MiniLM-L6-v2", ROOT / "data" / "polarity"


def subset(n: int, tmp: Path) -> Path:
    """The first n rows of train.csv (the split is already shuffled)."""
    with open(DATA / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    path = tmp / f"train{n}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows[: n + 1])
    return path


def chart(rows: list[dict], path: Path):
    """The table as a picture: test accuracy and wall time against the training-set size, a line per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc, wall) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        n, a, w = zip(*[(r["train_examples"], r["test_accuracy"], r["wall_s"]) for r in rows if r["mode"] == mode])
        acc.plot(n, a, marker="o", label=mode)
        wall.plot(n, w, marker="o", label=mode)
    for ax, title in ((acc, "test accuracy"), (wall, "wall time, s")):
        ax.set_xscale("log")
        sizes = sorted({r["train_examples"] for r in rows})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training examples")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 800, 3200])
    ap.add_argument("--modes", nargs="+", default=["head", "top-2", "full", "lora"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        data = subset(n, out)
        for mode in args.modes:
            run = out / f"modes-{mode}-{n}"
            t0 = time.time()
            with open(run.with_suffix(".log"), "w") as log:  # the progress lines of each run
                train(MODEL, data, run, eval=DATA / "dev.csv", mode=mode, epochs=args.epochs, overwrite=True, log=log)
            wall = time.time() - t0
            first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
            test = evaluate(run, DATA / "test.csv")
            probe = apply_mode(BertClassifier.from_pretrained(MODEL, id2label={0: "-1", 1: "1"}), mode)
            row = {"train_examples": n, "mode": mode, "lr": DEFAULT_LR[mode.split("-")[0]],
                   "test_accuracy": round(test["accuracy"], 4), "dev_accuracy_epoch1": round(first["dev_accuracy"], 4),
                   "wall_s": round(wall, 1), "trainable_params": count_params(probe, trainable_only=True)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "epochs": args.epochs}
    (out / "modes.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print("| examples | mode | lr | test acc | dev acc after epoch 1 | wall s | trainable params |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['train_examples']} | {r['mode']} | {r['lr']:g} | {r['test_accuracy']:.3f} | "
              f"{r['dev_accuracy_epoch1']:.3f} | {r['wall_s']:.0f} | {r['trainable_params']:,} |")
    chart(rows, out / "modes.png")
    plot([out / f"modes-{mode}-{max(args.sizes)}" for mode in args.modes], out / "modes-curves.png")


if __name__ == "__main__":
    main()
