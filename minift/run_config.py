"""What a training run is given, and where it may write.

RunConfig holds every option of a run (saved as out/run.json; the CLI's flags are its fields) and checks them
all before any file is read or any memory is taken. The guards below keep a run from writing over what it
reads, from mixing with another run in one directory, and from resuming with other settings.
"""
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from minift import tasks
from minift.class_weights import TASKS as CLASS_WEIGHT_TASKS
from minift.errors import MiniftError
from minift.lock import LOCK
from minift.modes import parse_mode
from minift.predict import check_max_length
from minift.tasks.qa import DOC_STRIDE
from minift.train_step import SCHEDULES, pick_device

# A frozen encoder leaves few, freshly initialised parameters to move: they take larger steps.
DEFAULT_LR = {"full": 5e-5, "top": 1e-4, "lora": 5e-4, "head": 1e-3}
# Everything a run writes into --out, in the order --overwrite removes them: the checkpoint first (a run
# killed meanwhile cannot be resumed half-removed), run.json last (until then the directory is known as a run).
RUN_FILES = ("checkpoint.safetensors", "config.json", "model.safetensors", "tokenizer.json", "vocab.txt",
             "tokenizer_config.json", "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
             "1_Pooling/config.json", "metrics.jsonl", "run.json")

@dataclass(kw_only=True)
class RunConfig(tasks.TaskOptions):
    """Every choice of a run. Saved as out/run.json; the CLI's flags are these fields (and the task's, inherited)."""
    model: str
    train: str
    out: str
    eval: str | None = None
    task: str = "classify"
    epochs: int = 3
    max_steps: int | None = None
    lr: float | None = None  # by mode: DEFAULT_LR
    batch_size: int = 32
    grad_accum: int = 1
    max_length: int | None = None  # the task's default_max_length, or fewer if the model has fewer positions
    warmup: float = 0.1
    schedule: str = "linear"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    layer_decay: float = 1.0
    class_weights: str | None = None  # balanced, FILE or label=w,... (minift/class_weights.py)
    label_smoothing: float = 0.0
    mode: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    checkpointing: bool = False
    precision: str = "auto"
    compile: str = "auto"
    device: str = "auto"
    metric: str | None = None
    eval_every: int | None = None  # steps; besides each epoch's end
    save_every: int | None = None  # steps
    patience: int | None = None  # evaluations
    min_delta: float = 0.0
    seed: int = 0

    def check(self):
        for f in dataclasses.fields(self):  # nan and inf pass every comparison below unnoticed
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise MiniftError(f"--{f.name.replace('_', '-')} {v}: expected a finite number")
        if not 0 <= self.seed < 2 ** 63:
            raise MiniftError(f"--seed {self.seed}: expected a whole number from 0 to 2**63 - 1")

        def positive(name, integer=True):
            v = getattr(self, name)
            if v is not None and (v <= 0 or (integer and int(v) != v)):
                kind = "a positive whole number" if integer else "a positive number"
                raise MiniftError(f"--{name.replace('_', '-')} {v}: expected {kind}")
        for name in ("epochs", "max_steps", "batch_size", "grad_accum", "max_length", "lora_rank", "eval_every",
                     "save_every", "patience"):
            positive(name)
        for name in ("lr", "max_grad_norm", "lora_alpha", "layer_decay"):  # lr None: set below
            positive(name, integer=False)
        if self.max_length is not None:
            check_max_length(self.max_length, bool(self.text_pair_column))
        if not 0 <= self.warmup < 1:
            raise MiniftError(f"--warmup {self.warmup}: expected the warmup fraction of all steps, in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise MiniftError(f"--schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if not 0 <= self.min_lr_ratio <= 1 or (self.min_lr_ratio and self.schedule != "cosine"):
            raise MiniftError(f"--min-lr-ratio {self.min_lr_ratio}: expected a fraction of the peak rate in [0, 1], "
                              "with --schedule cosine")
        if not 0 <= self.label_smoothing < 1 or (self.label_smoothing and self.task not in ("classify", "tag")):
            raise MiniftError(f"--label-smoothing {self.label_smoothing}: expected a number in [0, 1), "
                              "for --task classify or tag")
        if self.class_weights is not None and self.task not in CLASS_WEIGHT_TASKS:
            raise MiniftError(f"--class-weights is for --task {', '.join(CLASS_WEIGHT_TASKS)}, "
                              f"and this is --task {self.task}")
        if self.patience and not self.eval:
            raise MiniftError(f"--patience {self.patience}: early stopping watches the dev set; give it with --eval")
        if self.eval_corpus and not self.eval:
            raise MiniftError(f"--eval-corpus {self.eval_corpus}: its passages join the dev set's retrieval; give "
                              "the dev set with --eval")
        if self.min_delta < 0:
            raise MiniftError(f"--min-delta {self.min_delta}: expected a number >= 0")
        if self.weight_decay < 0:
            raise MiniftError(f"--weight-decay {self.weight_decay}: expected a number >= 0")
        task = tasks.get(self.task)
        tasks.check_options(task, self)
        pick_device(self.device)  # an unknown device is refused before any data is read
        if self.compile not in ("auto", "on", "off"):
            raise MiniftError(f"--compile {self.compile!r}: expected auto, on or off")
        kind, _ = parse_mode(self.mode)
        if self.lr is None:
            self.lr = DEFAULT_LR[kind]
        if self.metric is None:
            self.metric = task.metrics[0]
        if self.task == "qa" and self.doc_stride is None:  # run.json records the number the run used
            self.doc_stride = DOC_STRIDE
        if self.metric not in task.metrics:
            raise MiniftError(f"--metric {self.metric!r}: for task {self.task} expected one of {', '.join(task.metrics)}")


def forget_if_nothing_kept(out: Path):
    """A new run that failed before it kept a model or a checkpoint (a full disk, a divergence) leaves no
    records behind either, so that the same command can simply be run again."""
    if not any((out / name).exists() for name in ("model.safetensors", "checkpoint.safetensors")):
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


def check_inputs_apart(model: Path, out: Path, data: list):
    """Refuse an --out that would write over what the run reads: the model directory (--out equal to it,
    inside it or holding it) or a data file that is one of the files a run writes."""
    m, o = model.resolve(), out.resolve()
    if m == o or m in o.parents or o in m.parents:
        how = "is" if m == o else "is inside" if m in o.parents else "contains"
        raise MiniftError(f"--out {out}: {how} the --model directory {model}, which the run reads and would "
                          "overwrite; choose an --out apart from it")
    for f in data:
        if f is not None and Path(f).resolve().parent == o and Path(f).name in RUN_FILES:
            raise MiniftError(f"--out {out}: the run writes {Path(f).name} there, which is the data file {f}; "
                              "move the data or choose another --out")


def check_out_dir(out: Path, resume: bool, overwrite: bool):
    """Refuse to mix two runs in one directory: a previous run is only replaced or continued on request,
    and --overwrite replaces only a run of minift's (one with run.json), never another program's files."""
    if resume:
        if not (out / "checkpoint.safetensors").exists():
            raise MiniftError(f"--resume: {out} holds no checkpoint.safetensors to resume from")
        return
    if out.exists() and not out.is_dir():
        raise MiniftError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(p.name != LOCK for p in out.iterdir()) and not overwrite:
        raise MiniftError(f"--out {out}: the directory is not empty (it may hold another run). "
                          "Pass --resume to continue the run there, --overwrite to replace it, or choose another --out.")
    theirs = [name for name in RUN_FILES if (out / name).exists()]
    if overwrite and theirs and not (out / "run.json").exists():
        raise MiniftError(f"--overwrite: {out} holds {', '.join(theirs)} but no run.json, so no run of minift's; "
                          "--overwrite replaces only a run minift wrote. Choose another --out.")


def check_same_settings(out: Path, settings: dict):
    try:
        saved = json.loads((out / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise MiniftError(f"--resume: {out / 'run.json'}, the record of the run's settings, cannot be read "
                          f"({e}); start a new run instead") from None

    def same(k, was, now):  # a path is the same file however it is written (relative, absolute, a trailing /)
        if k in ("model", "train", "out", "eval", "eval_corpus") and isinstance(was, str) and isinstance(now, str):
            return os.path.realpath(was) == os.path.realpath(now)
        return was == now
    changed = {k: (saved.get(k), v) for k, v in settings.items() if not same(k, saved.get(k), v)}
    if changed:
        raise MiniftError(f"--resume: these settings differ from the run in {out} (was, now): {changed}; "
                          "resume with the same settings, or start a new run")
