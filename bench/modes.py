"""Full fine-tuning versus training less of the network, measured over several seeds.

Fine-tunes all-MiniLM-L6-v2 on the polarity set in modes head, top-2, full and lora, and full with
layer-wise rate decay, on the first 200, 800 and 3,200 training examples (3 epochs, batch 32, each
mode's default learning rate), once per seed. Each run keeps its best model by dev accuracy; the runs
on at most 200 examples (7 steps an epoch) are also evaluated every --eval-every steps, so that the
model kept is picked at a finer grain than the epoch. Reports per row the test accuracy (mean and
min-max over the seeds), the steps whose models were kept, where early stopping (--patience, replayed on
the runs' evaluations) would have stopped and what it would have kept, the mean wall time and the
trainable parameters.

    python bench/modes.py [--sizes 200 800 3200] [--modes head top-2 full lora] [--layer-decay 0.8]
                          [--seeds 0 1 2] [--epochs 3] [--eval-every 3] [--patience 3] [--report]

Writes bench/results/modes.json, prints a Markdown table and draws it (needs matplotlib, the plot extra):
modes.png (test accuracy, mean and min-max, and wall time against training-set size, a line per row) and
modes-curves.png (`minift plot` of every row's first-seed run on the largest size, overlaid).
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from minift.model import count_params
from minift.tasks.classify import BertClassifier
from minift.modes import apply_mode
from minift.plot import plot
from minift.predict import evaluate
from minift.run_config import DEFAULT_LR
from minift.train_loop import train

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = ROOT / "weights" / "all-MiniLM-L6-v2", ROOT / "data" / "polarity"
SMALL = 200  # training sets of at most this many examples are also evaluated by steps (--eval-every)


def subset(n: int, tmp: Path) -> Path:
    """The first n rows of train.csv (the split is already shuffled)."""
    with open(DATA / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    path = tmp / f"train{n}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows[: n + 1])
    return path


def run_dir(out: Path, name: str, n: int, seed: int) -> Path:
    return out / f"modes-{name.replace(', layer decay ', '-ld')}-{n}-seed{seed}"


def evaluations(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def replay_patience(evals: list[dict], patience: int) -> tuple[int, int]:
    """(the step it stops at, the step whose model it keeps) had the run been given --patience. The rate
    schedule does not depend on the stop, so up to it the run is this one: its metrics tell."""
    waited, kept = 0, None
    for e in evals:
        waited = 0 if e["kept"] else waited + 1
        kept = e["step"] if e["kept"] else kept
        if waited >= patience:
            break
    return e["step"], kept


def settings(modes: list[str], layer_decay: float) -> dict[str, dict]:
    """The table's rows: name -> train() options. Each mode as it is, and full with --layer-decay."""
    rows = {mode: {"mode": mode} for mode in modes}
    if layer_decay != 1:
        rows[f"full, layer decay {layer_decay:g}"] = {"mode": "full", "layer_decay": layer_decay}
    return rows


def one_run(run: Path, data: Path, n: int, options: dict, seed: int, args) -> dict:
    """Train one setting with one seed; its test accuracy, wall time and the step of the model kept."""
    t0 = time.time()
    with open(run.with_suffix(".log"), "w") as log:  # the progress lines of each run
        train(MODEL, data, run, eval=DATA / "dev.csv", epochs=args.epochs, seed=seed, overwrite=True, log=log,
              eval_every=args.eval_every if n <= SMALL else None, **options)
    wall = time.time() - t0
    evals = evaluations(run)
    kept = [e["step"] for e in evals if e["kept"]][-1]
    return {"seed": seed, "test_accuracy": evaluate(run, DATA / "test.csv")["accuracy"], "wall_s": wall,
            "kept_step": kept, "steps": evals[-1]["step"], "evaluations": len(evals)}


def cell(name: str, options: dict, n: int, data: Path, out: Path, args) -> dict:
    """One row of the table: a setting on one training-set size, every seed."""
    runs = [one_run(run_dir(out, name, n, s), data, n, options, s, args) for s in args.seeds]
    acc = [r["test_accuracy"] for r in runs]
    probe = apply_mode(BertClassifier.from_pretrained(MODEL, id2label={0: "-1", 1: "1"}), options["mode"])
    return {"train_examples": n, "setting": name, "lr": DEFAULT_LR[options["mode"].split("-")[0]],
            "test_accuracy_mean": statistics.mean(acc), "test_accuracy_min": min(acc), "test_accuracy_max": max(acc),
            "wall_s_mean": statistics.mean(r["wall_s"] for r in runs),
            "trainable_params": count_params(probe, trainable_only=True), "runs": runs}


def table(rows: list[dict], out: Path, patience: int):
    """The Markdown table; per seed, the step whose model was kept, and where --patience would have stopped."""
    print(f"| examples | setting | lr | test acc, mean | min-max | evaluations | steps kept | --patience {patience}: "
          "stop (keep) | wall s | trainable params |")
    print("|---:|---|---:|---:|---:|---:|---|---|---:|---:|")
    for r in rows:
        kept = ", ".join(f"{x['kept_step']}" for x in r["runs"])
        stops = ", ".join("{} ({})".format(*replay_patience(evaluations(run_dir(out, r["setting"], r["train_examples"],
                                                                                    x["seed"])), patience))
                          for x in r["runs"])
        print(f"| {r['train_examples']} | {r['setting']} | {r['lr']:g} | {r['test_accuracy_mean']:.3f} | "
              f"{r['test_accuracy_min']:.3f}-{r['test_accuracy_max']:.3f} | {r['runs'][0]['evaluations']} | "
              f"{kept} of {r['runs'][0]['steps']} | {stops} | {r['wall_s_mean']:.0f} | {r['trainable_params']:,} |")


def chart(rows: list[dict], path: Path):
    """The table as a picture: test accuracy (mean, min-max bars) and wall time against the training-set size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc, wall) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    for name in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == name]
        n = [r["train_examples"] for r in mine]
        mean = [r["test_accuracy_mean"] for r in mine]
        bars = [[m - r["test_accuracy_min"] for m, r in zip(mean, mine)],
                [r["test_accuracy_max"] - m for m, r in zip(mean, mine)]]
        acc.errorbar(n, mean, yerr=bars, marker="o", capsize=3, label=name)
        wall.plot(n, [r["wall_s_mean"] for r in mine], marker="o", label=name)
    sizes = sorted({r["train_examples"] for r in rows})
    for ax, title in ((acc, "test accuracy (mean, min-max)"), (wall, "wall time, s")):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training examples")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    acc.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 800, 3200])
    ap.add_argument("--modes", nargs="+", default=["head", "top-2", "full", "lora"])
    ap.add_argument("--layer-decay", type=float, default=0.8, help="a row of full fine-tuning with it (1: none)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=3, help=f"steps, for training sets of at most {SMALL} examples")
    ap.add_argument("--patience", type=int, default=3, help="replayed on each run's evaluations for the table")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--report", action="store_true", help="no training: the table and charts of --out/modes.json")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.report:
        measure(args, out)
    rows = json.loads((out / "modes.json").read_text())["rows"]
    table(rows, out, args.patience)
    chart(rows, out / "modes.png")
    biggest = max(r["train_examples"] for r in rows)
    plot([run_dir(out, r["setting"], biggest, r["runs"][0]["seed"]) for r in rows if r["train_examples"] == biggest],
         out / "modes-curves.png")


def measure(args, out: Path):
    """Every cell, every seed; writes out/modes.json."""
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.time()
    for n in args.sizes:
        data = subset(n, out)
        for name, options in settings(args.modes, args.layer_decay).items():
            rows.append(cell(name, options, n, data, out, args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), file=sys.stderr, flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "epochs": args.epochs, "seeds": args.seeds, "eval_every": args.eval_every, "total_s": time.time() - t0}
    (out / "modes.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
