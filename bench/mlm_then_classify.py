"""Masked-LM adaptation before classification, against classification alone, measured.

Continues all-MiniLM-L6-v2's pretraining objective (--task mlm, fresh head: the checkpoint has none) on
the texts of the 3,200 polarity training sentences (their labels unused), once; then fine-tunes a
classifier from it and from all-MiniLM-L6-v2 itself on the first 200, 800 and 3,200 labelled sentences
(full fine-tuning, 3 epochs, batch 32, lr 5e-5, best epoch by dev accuracy, as bench/modes.py), and
reports test accuracy for both starts.

    python bench/mlm_then_classify.py [--sizes 200 800 3200] [--mlm-epochs 1] [--max-length 64] [--seeds 0]
                                      [--reuse-mlm] [--jobs 1]

--reuse-mlm takes the adapted model from an earlier run with the same settings (bench/results/mlm-polarity);
--jobs N runs the classifier fine-tunings N at a time, one thread each (on a busy machine a process gets
more of the CPU than a thread does; each run's accuracy does not depend on it beyond the last bits).

Writes bench/results/mlm_then_classify.json and prints Markdown tables.
"""
if __name__ == "__main__" and not __package__:  # `python bench/x.py`: import bench/ as a package (bench/__init__.py)
    import sys; sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # noqa: E702
import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from minift.predict import evaluate
from minift.train_loop import train

from bench.modes import DATA, MODEL, ROOT, subset  # noqa: E402  (the same subsets as bench/modes.py)


def timed_train(log_path, *args, **kw) -> float:
    t0 = time.time()
    with open(log_path, "w") as log:
        train(*args, overwrite=True, log=log, **kw)
    return time.time() - t0


def classify(job) -> dict:
    """One classifier fine-tuning from `model` on the first n sentences, and its test accuracy."""
    n, start, model, seed, data, run, threads = job
    if threads:
        torch.set_num_threads(threads)
    wall = timed_train(run.with_suffix(".log"), model, data, run, eval=DATA / "dev.csv", epochs=3, seed=seed)
    best = max(json.loads(line)["dev_accuracy"] for line in (run / "metrics.jsonl").read_text().splitlines())
    row = {"train_examples": n, "start": start, "seed": seed, "dev_accuracy": round(best, 4),
           "test_accuracy": round(evaluate(run, DATA / "test.csv")["accuracy"], 4), "wall_s": round(wall, 1)}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 800, 3200])
    ap.add_argument("--mlm-epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=64, help="tokens per packed MLM sequence")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="classifier seeds (the MLM run uses seed 0)")
    ap.add_argument("--reuse-mlm", action="store_true", help="reuse the adapted model of an earlier run")
    ap.add_argument("--jobs", type=int, default=1, help="classifier fine-tunings at a time (one thread each if > 1)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    adapted = out / "mlm-polarity"
    mlm_s = None
    if args.reuse_mlm:
        done = json.loads((adapted / "run.json").read_text())
        mlm_rows = [json.loads(line) for line in (adapted / "metrics.jsonl").read_text().splitlines()]
        if (done["epochs"], done["max_length"], len(mlm_rows)) != (args.mlm_epochs, args.max_length, args.mlm_epochs):
            sys.exit(f"{adapted} is not a finished run of {args.mlm_epochs} epochs at max-length {args.max_length}")
    else:
        mlm_s = timed_train(adapted.with_suffix(".log"), MODEL, DATA / "train.csv", adapted, eval=DATA / "dev.csv",
                            task="mlm", epochs=args.mlm_epochs, max_length=args.max_length)
        mlm_rows = [json.loads(line) for line in (adapted / "metrics.jsonl").read_text().splitlines()]
    print(json.dumps({"mlm_wall_s": mlm_s and round(mlm_s, 1), "mlm_dev": mlm_rows}), file=sys.stderr)

    jobs = [(n, start, model, seed, subset(n, out), out / f"mlmclf-{n}-{'mlm' if model == adapted else 'base'}-{seed}",
             1 if args.jobs > 1 else None)
            for n in args.sizes for start, model in (("MiniLM", MODEL), ("MiniLM + MLM", adapted)) for seed in args.seeds]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:  # fresh processes: no forked thread pools
            rows = pool.map(classify, jobs, chunksize=1)
    else:
        rows = [classify(job) for job in jobs]
    meta = {"torch": torch.__version__, "threads": 1 if args.jobs > 1 else torch.get_num_threads(),
            "jobs": args.jobs, "cpu": platform.processor() or platform.machine(), "mlm_epochs": args.mlm_epochs,
            "max_length": args.max_length, "mlm_wall_s": mlm_s and round(mlm_s, 1)}
    (out / "mlm_then_classify.json").write_text(json.dumps({"meta": meta, "mlm": mlm_rows, "rows": rows}, indent=2) + "\n")

    print("| MLM epoch | step | dev masked-token loss | dev accuracy | dev perplexity |")
    print("|---:|---:|---:|---:|---:|")
    for r in mlm_rows:
        print(f"| {r['epoch']:g} | {r['step']} | {r['dev_loss']:.3f} | {r['dev_accuracy']:.3f} | {r['dev_perplexity']:.1f} |")
    print()
    print("| labelled examples | start | test acc | best dev acc | wall s |")
    print("|---:|---|---:|---:|---:|")
    for n in args.sizes:
        for start in ("MiniLM", "MiniLM + MLM"):
            rs = [r for r in rows if r["train_examples"] == n and r["start"] == start]
            test = [r["test_accuracy"] for r in rs]
            spread = f" ({min(test):.3f}-{max(test):.3f})" if len(rs) > 1 else ""
            print(f"| {n} | {start} | {statistics.median(test):.3f}{spread} | "
                  f"{statistics.median(r['dev_accuracy'] for r in rs):.3f} | "
                  f"{statistics.median(r['wall_s'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
