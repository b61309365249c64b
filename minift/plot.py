"""minift plot: a run's training curves from its metrics.jsonl, in one picture.

One panel per metric against the optimizer step: the losses together (train solid, dev dashed), then
every other dev metric. Several runs are overlaid, a colour each, which is how runs that differ in one
setting (the modes of bench/modes.py) are best compared. matplotlib is an optional extra: plot.
"""
import json
import math
from pathlib import Path

from minift.errors import MiniftError

PANEL = (4.0, 3.0)  # inches per panel; at DPI, 400 x 300 pixels
DPI = 100
COLUMNS = 3  # panels per row


def read_metrics(run) -> list[dict]:
    """The rows of run/metrics.jsonl; a last line still being written is left out."""
    file = Path(run) / "metrics.jsonl"
    if not Path(run).is_dir():
        raise MiniftError(f"{run}: no such run directory")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as e:
        raise MiniftError(f"{file}: cannot be read ({e})") from None
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete (or empty)
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MiniftError(f"{file}, line {n}: not a JSON line ({e.msg}); expected a row that train writes") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise MiniftError(f"{file}, line {n}: expected a JSON object with a whole-number \"step\"")
        odd = next((k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)), None)
        if odd is not None:  # Python's json reads NaN, Infinity and 1e999, which no curve can draw
            raise MiniftError(f"{file}, line {n}: \"{odd}\" is {row[odd]}, not a finite number; train writes one "
                              "as null, which leaves the point out")
        rows.append(row)
    if not rows:
        raise MiniftError(f"{run}: no metrics yet; a run writes a line to metrics.jsonl after each evaluation "
                          "(every epoch, and where --max-steps stops it)")
    return rows


def panels(runs: dict[str, list[dict]]) -> list[str]:
    """'loss' (train_loss and dev_loss), then every other metric any run has, in the order first seen."""
    names = []
    for rows in runs.values():
        for row in rows:
            for k, v in row.items():
                name = "loss" if k in ("train_loss", "dev_loss") else k
                if k not in ("step", "epoch", "kept") and isinstance(v, (int, float)) and name not in names:
                    names.append(name)
    return sorted(names, key=lambda n: n != "loss")


def plot(runs: list, output="curves.png") -> Path:
    """Draw the curves of every run directory in `runs` into the PNG `output`; returns its path."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise MiniftError("minift plot needs matplotlib, an optional extra: pip install 'minift[plot]' "
                          "(or pip install matplotlib)") from None
    series = {str(run): read_metrics(run) for run in runs}
    names = panels(series)
    cols, nrows = min(COLUMNS, len(names)), math.ceil(len(names) / COLUMNS)
    fig, axes = plt.subplots(nrows, cols, figsize=(PANEL[0] * cols, PANEL[1] * nrows), dpi=DPI, squeeze=False)
    for ax, name in zip(axes.flat, names):
        for i, (run, rows) in enumerate(series.items()):
            label = Path(run).name if len(series) > 1 else None
            for key, style in ((("train_loss", "-"), ("dev_loss", "--")) if name == "loss" else ((name, "-"),)):
                points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
                if points:
                    ax.plot(*zip(*points), style, marker="o", markersize=3, color=f"C{i % 10}",
                            label=label if key != "dev_loss" else None)
        ax.set_title("loss (train solid, dev dashed)" if name == "loss" else name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    if len(series) > 1:
        axes.flat[0].legend(fontsize=8)
    else:
        fig.suptitle(next(iter(series)), fontsize=10)
    fig.tight_layout()
    from minift.checkpoint import atomic_write
    atomic_write(Path(output), lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return Path(output)
